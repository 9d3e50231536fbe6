//! The `smp` check: starts every application processor the MADT lists with
//! INIT-SIPI-SIPI (broadcast to all but self) and waits until each has reached long mode
//! and incremented `BULKHEAD_AP_COUNT`. The real-mode trampoline lives in the binary's
//! entry code; the binary registers its location with `set_trampoline`.

use crate::arch::{mmio_read32, mmio_write32};
use crate::ctx::Ctx;
use crate::fmt::Line;
use crate::mem::{Phys, IDENTITY_END};
use crate::time::{delay_ms, Deadline};
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Incremented by each AP once it runs 64-bit code (referenced from the entry assembly).
#[no_mangle]
pub static BULKHEAD_AP_COUNT: AtomicU32 = AtomicU32::new(0);

static TRAMP_START: AtomicU64 = AtomicU64::new(0);
static TRAMP_END: AtomicU64 = AtomicU64::new(0);

const PAGE: u64 = 4096;
/// Highest page considered for the trampoline (below the EBDA at 0x9FC00).
const TRAMP_LIMIT: u64 = 0x9f000;
const LAPIC_SVR: u64 = 0xf0;
const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;
const ICR_PENDING: u32 = 1 << 12;
/// INIT, level, assert, destination shorthand "all excluding self".
const ICR_INIT: u32 = 0x000c_4500;
/// Start-up IPI, shorthand "all excluding self"; the low byte is the page number.
const ICR_SIPI: u32 = 0x000c_4600;
const WAIT_MS: u64 = 5000;

/// Records where the AP trampoline's bytes are (called by the binary before `run`).
pub fn set_trampoline(start: u64, end: u64) {
    TRAMP_START.store(start, Ordering::Relaxed);
    TRAMP_END.store(end, Ordering::Relaxed);
}

fn overlaps(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

/// A RAM page below 1 MiB that holds none of the boot data still in use.
fn trampoline_page(ctx: &Ctx<'_>) -> Option<u64> {
    let si = &ctx.start_info;
    let busy = [
        (ctx.start_info_addr, 64),
        (si.memmap_paddr, u64::from(si.memmap_entries) * 24),
        (si.cmdline_paddr, ctx.cmdline.raw().len() as u64 + 1),
    ];
    (1..TRAMP_LIMIT / PAGE).map(|p| p * PAGE).find(|&page| {
        si.ram_contains(&Phys, page, PAGE) && busy.iter().all(|&(a, l)| !overlaps(page, PAGE, a, l))
    })
}

struct Lapic(u64);

impl Lapic {
    fn read(&self, reg: u64) -> u32 {
        // SAFETY: the address was checked to lie inside the identity map; `reg` < 0x400.
        unsafe { mmio_read32(self.0 + reg) }
    }

    fn write(&self, reg: u64, v: u32) {
        // SAFETY: as in `read`.
        unsafe { mmio_write32(self.0 + reg, v) }
    }

    /// Sends an IPI after the previous one left the ICR (bounded wait).
    fn ipi(&self, low: u32) {
        let mut d = Deadline::after_ms(100);
        while self.read(ICR_LOW) & ICR_PENDING != 0 && !d.expired() {}
        self.write(ICR_HIGH, 0);
        self.write(ICR_LOW, low);
    }
}

/// Runs the check; writes the report detail into `d`.
pub fn check(ctx: &Ctx<'_>, d: &mut Line) -> bool {
    let Some(acpi) = &ctx.acpi else {
        let _ = write!(d, "ACPI tables unusable");
        return false;
    };
    let aps = acpi.cpus.saturating_sub(1);
    let _ = write!(d, "cpus={}", acpi.cpus);
    if aps == 0 {
        let _ = write!(d, " started=0");
        return acpi.cpus == 1;
    }
    let (start, end) = (
        TRAMP_START.load(Ordering::Relaxed),
        TRAMP_END.load(Ordering::Relaxed),
    );
    let len = end.saturating_sub(start);
    if start == 0 || len == 0 || len > PAGE {
        let _ = write!(d, " error: no AP trampoline registered");
        return false;
    }
    let lapic = acpi.lapic_addr;
    if lapic == 0 || !lapic.is_multiple_of(PAGE) || lapic + PAGE > IDENTITY_END {
        let _ = write!(d, " error: local APIC address {lapic:#x} unusable");
        return false;
    }
    let Some(page) = trampoline_page(ctx) else {
        let _ = write!(
            d,
            " error: no free RAM page below 0x9f000 for the AP trampoline"
        );
        return false;
    };
    // SAFETY: `page` is a RAM page below 1 MiB (checked against the memory map) that
    // holds none of the boot data in use; the source is the trampoline in our image.
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, page as *mut u8, len as usize) };
    let apic = Lapic(lapic);
    apic.write(LAPIC_SVR, 0x1ff);
    apic.ipi(ICR_INIT);
    delay_ms(10);
    let vector = (page / PAGE) as u32;
    apic.ipi(ICR_SIPI | vector);
    delay_ms(1);
    apic.ipi(ICR_SIPI | vector);
    let ms = ctx.cmdline.get_u64("smp.wait_ms").unwrap_or(WAIT_MS);
    let mut deadline = Deadline::after_ms(ms);
    while BULKHEAD_AP_COUNT.load(Ordering::SeqCst) < aps && !deadline.expired() {}
    let started = BULKHEAD_AP_COUNT.load(Ordering::SeqCst);
    let _ = write!(d, " started={started} trampoline={page:#x}");
    if started != aps {
        let _ = write!(
            d,
            " error: {aps} application processors expected within {ms} ms"
        );
    }
    started == aps
}
