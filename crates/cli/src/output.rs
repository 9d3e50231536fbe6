//! Output: tables (the default), JSON or YAML on stdout; a progress spinner on stderr only
//! when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Prints `v` as JSON or YAML, or the given table.
pub fn print<T: Serialize>(
    format: Format,
    v: &T,
    table: impl FnOnce() -> Vec<Vec<String>>,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(v)?)?,
        Format::Yaml => write!(out, "{}", serde_yaml::to_string(v)?)?,
        Format::Table => {
            let rows = table();
            let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
            let mut w = vec![0usize; cols];
            for r in &rows {
                for (i, c) in r.iter().enumerate() {
                    w[i] = w[i].max(c.chars().count());
                }
            }
            for r in &rows {
                let mut line = String::new();
                for (i, c) in r.iter().enumerate() {
                    if i + 1 == r.len() {
                        line.push_str(c);
                    } else {
                        line.push_str(c);
                        line.push_str(&" ".repeat(w[i] - c.chars().count() + 2));
                    }
                }
                writeln!(out, "{}", line.trim_end())?;
            }
        }
    }
    Ok(())
}

/// A spinner with a description on stderr while long work runs (only on a terminal).
pub struct Spinner {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    pub fn start(what: &str) -> Spinner {
        let stop = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Spinner { stop, thread: None };
        }
        let s = stop.clone();
        let what = what.to_string();
        let thread = std::thread::spawn(move || {
            // Short work shows nothing at all.
            std::thread::sleep(std::time::Duration::from_millis(300));
            let frames = ['|', '/', '-', '\\'];
            let mut i = 0;
            let started = std::time::Instant::now();
            while !s.load(Ordering::Relaxed) {
                eprint!("\r{} {what} ({:.0?})", frames[i % 4], started.elapsed());
                i += 1;
                std::thread::sleep(std::time::Duration::from_millis(120));
            }
            if i > 0 {
                eprint!("\r\x1b[2K");
            }
        });
        Spinner {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
