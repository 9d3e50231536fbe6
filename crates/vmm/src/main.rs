//! `bulkhead-vmm`: reads the VM's configuration (the flags, or `--config
//! <file.json>`), installs the stderr log and runs one VM. Exit status: 0
//! guest powered off or stopped on request, 2 guest reset, 1 error
//! (including bad arguments).

use std::fmt::Write as _;
use std::io::Write as _;

use clap::error::ErrorKind;
use clap::Parser;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

fn fail(msg: &str) -> ! {
    eprintln!("bulkhead-vmm: {msg}");
    std::process::exit(1);
}

/// The library's `tracing` events as one line each on stderr,
/// `bulkhead-vmm: <message> [field=value …]`, info and above. Deliberately
/// tiny: it runs inside the jail, under every thread's seccomp filter, and
/// does nothing but format and `write(2)`.
struct StderrLog;

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl Subscriber for StderrLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::INFO
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = Line(String::from("bulkhead-vmm: "));
        event.record(&mut line);
        line.0.push('\n');
        let _ = std::io::stderr().lock().write_all(line.0.as_bytes());
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn main() {
    let cli = match vmm::config::Cli::try_parse() {
        Ok(c) => c,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            // clap's message is multi-line; keep its first paragraph as one line.
            let text = e.render().to_string();
            let para: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty())
                .collect();
            let line = para.join(" ");
            fail(line.strip_prefix("error: ").unwrap_or(&line));
        }
    };
    let _ = tracing::subscriber::set_global_default(StderrLog);
    let cfg = match cli.load() {
        Ok(c) => c,
        Err(e) => fail(&e.to_string()),
    };
    if let Err(e) = cfg.validate() {
        fail(&cli.explain(&e));
    }
    match vmm::vm::run(&cfg) {
        Ok(reason) => std::process::exit(reason.exit_code()),
        Err(e) => {
            // One line: the error and its causes.
            let msg = e
                .chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": ");
            fail(&msg);
        }
    }
}
