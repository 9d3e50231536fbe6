//! The serial report protocol of docs/vmm-design.md:
//! `BULKHEAD-GUEST <check> ok|FAIL <detail>` lines, then `BULKHEAD-GUEST done <passed> <failed>`.
//! Pass/fail counters are global so the panic and exception paths can finish the report.

use crate::fmt::Line;
use crate::serial;
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, Ordering};

static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);

/// Prefix of every line the guest prints.
pub const PREFIX: &str = "BULKHEAD-GUEST";

/// Prints one check result and counts it.
pub fn result(check: &str, ok: bool, detail: &[u8]) {
    if ok {
        PASSED.fetch_add(1, Ordering::Relaxed);
    } else {
        FAILED.fetch_add(1, Ordering::Relaxed);
    }
    let mut l = Line::new();
    let _ = write!(l, "{PREFIX} {check} {} ", if ok { "ok" } else { "FAIL" });
    l.push_printable(detail);
    l.push_byte(b'\n');
    serial::write(l.as_bytes());
}

/// Prints an informational line (`BULKHEAD-GUEST <text>`) that is not a check result.
pub fn info(text: &[u8]) {
    let mut l = Line::new();
    let _ = write!(l, "{PREFIX} ");
    l.push_printable(text);
    l.push_byte(b'\n');
    serial::write(l.as_bytes());
}

/// Prints the final `done` line.
pub fn done() {
    let mut l = Line::new();
    let _ = writeln!(
        l,
        "{PREFIX} done {} {}",
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed)
    );
    serial::write(l.as_bytes());
}
