//! bulkhead-guest binary: the PVH entry code, the panic and exception handlers, and the
//! hand-off to `bulkhead_guest::run`. Everything else lives in the library.

#![no_std]
#![no_main]

mod entry;
mod memfuncs;

use bulkhead_guest::{fmt::Line, power, report};
use core::fmt::Write;

/// Called by the entry code in long mode with `EBX` (the `hvm_start_info` address).
#[no_mangle]
pub extern "C" fn guest_main(start_info: u32) -> ! {
    extern "C" {
        static pvh_ap_tramp_start: u8;
        static pvh_ap_tramp_end: u8;
    }
    // Only the addresses of the two labels around the AP trampoline are taken.
    let start = core::ptr::addr_of!(pvh_ap_tramp_start) as u64;
    let end = core::ptr::addr_of!(pvh_ap_tramp_end) as u64;
    bulkhead_guest::smp::set_trampoline(start, end);
    bulkhead_guest::run(u64::from(start_info))
}

/// Called by the exception stubs with a pointer to
/// `[vector, error code, rip, cs, rflags, rsp, ss]`.
///
/// # Safety
/// Only the exception stubs in `entry` call this, with `frame` pointing at that frame.
#[no_mangle]
pub unsafe extern "C" fn guest_exception(frame: *const u64) -> ! {
    let mut f = [0u64; 5];
    for (i, v) in f.iter_mut().enumerate() {
        // SAFETY: the stub pushed the vector and error code on top of the CPU's interrupt
        // frame; all seven words are on the current stack.
        *v = unsafe { core::ptr::read_volatile(frame.add(i)) };
    }
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
    let mut l = Line::new();
    let _ = write!(
        l,
        "vector={} error={:#x} rip={:#x} cr2={cr2:#x}",
        f[0], f[1], f[2]
    );
    report::result("exception", false, l.as_bytes());
    report::done();
    power::off()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut l = Line::new();
    let _ = write!(l, "{}", info.message());
    if let Some(loc) = info.location() {
        let _ = write!(l, " at {}:{}", loc.file(), loc.line());
    }
    report::result("panic", false, l.as_bytes());
    report::done();
    power::off()
}
