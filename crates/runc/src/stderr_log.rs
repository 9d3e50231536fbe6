//! The zone library reports warnings as `tracing` events; bulkhead-runc prints them on
//! stderr the way runc prints its warnings (`bulkhead-runc: warning: <message>`). A tiny
//! subscriber instead of a formatting framework: one line per event, no spans.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Prints events at `max` or more severe as one line on stderr.
pub struct StderrLog {
    max: Level,
}

impl StderrLog {
    /// Install as the global default: warnings and errors, plus info/debug with `--debug`.
    pub fn install(debug: bool) {
        let max = if debug { Level::DEBUG } else { Level::WARN };
        // Only fails if a subscriber is already set, which leaves that one in charge.
        let _ = tracing::subscriber::set_global_default(StderrLog { max });
    }
}

/// Collects the message and the other fields of one event.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

/// The text of one event: `warning: <message> key="value"…`.
pub fn format_event(level: &Level, message: &str, fields: &str) -> String {
    let word = match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    };
    format!("bulkhead-runc: {word}: {message}{fields}")
}

impl Subscriber for StderrLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }
    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _span: &Id, _values: &Record<'_>) {}
    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = Line::default();
        event.record(&mut line);
        eprintln!(
            "{}",
            format_event(event.metadata().level(), &line.message, &line.fields)
        );
    }
    fn enter(&self, _span: &Id) {}
    fn exit(&self, _span: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warning_line_shape() {
        assert_eq!(
            format_event(&Level::WARN, "hook failed", " id=\"c1\""),
            "bulkhead-runc: warning: hook failed id=\"c1\""
        );
    }
}
