//! `bulkhead-vmm`: parses the command line and runs one VM. Exit status: 0
//! guest powered off or stopped on request, 2 guest reset, 1 error
//! (including bad arguments).

use clap::error::ErrorKind;
use clap::Parser;

fn fail(msg: &str) -> ! {
    eprintln!("bulkhead-vmm: {msg}");
    std::process::exit(1);
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
    match vmm::vm::run(cli) {
        Ok(code) => std::process::exit(code),
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
