//! bulkhead-guest: a freestanding x86-64 program booted through PVH that checks the
//! machine model of docs/vmm-design.md (command line, memory map, ACPI, virtio-mmio
//! block/net/entropy/vsock devices) and reports over COM1. The library is `no_std`; its
//! parsers are unit-tested on the host.

#![cfg_attr(not(test), no_std)]

pub mod acpi;
pub mod apic;
pub mod arch;
pub mod blk;
pub mod cmdline;
pub mod ctx;
pub mod dma;
pub mod fmt;
pub mod mem;
pub mod net;
pub mod netproto;
pub mod power;
pub mod pvh;
pub mod report;
pub mod rng;
pub mod serial;
pub mod smp;
pub mod time;
pub mod virtio;
pub mod vsock;

use crate::cmdline::Cmdline;
use crate::fmt::Line;
use crate::mem::Phys;
use core::fmt::Write;

pub use crate::ctx::Ctx;

/// The guest's main program: runs the checks named on the command line, prints the
/// report, powers off.
pub fn run(start_info_addr: u64) -> ! {
    serial::init();
    time::init();
    let mem = Phys;
    let start_info = match pvh::StartInfo::read(&mem, start_info_addr) {
        Ok(si) => si,
        Err(e) => {
            let mut l = Line::new();
            let _ = write!(l, "{e}");
            report::result("boot", false, l.as_bytes());
            report::done();
            power::off()
        }
    };
    let cmdline = Cmdline::new(start_info.cmdline(&mem));
    let acpi_result =
        acpi::find_rsdp(&mem, start_info.rsdp_paddr).and_then(|r| acpi::parse(&mem, r));
    if let Ok(a) = &acpi_result {
        power::configure(a);
    }
    let ctx = Ctx {
        start_info_addr,
        start_info,
        cmdline,
        acpi: acpi_result.ok(),
        acpi_error: acpi_result.err(),
    };

    for name in cmdline.checks() {
        run_check(&ctx, name);
    }
    report::done();
    power::off()
}

/// Runs one named check and reports it.
fn run_check(ctx: &Ctx<'_>, name: &[u8]) {
    let mut d = Line::new();
    let (label, ok) = match name {
        b"cmdline" => {
            d.push_printable(ctx.cmdline.raw());
            ("cmdline", true)
        }
        b"memmap" => ("memmap", check_memmap(ctx, &mut d)),
        b"acpi" => ("acpi", check_acpi(ctx, &mut d)),
        b"blk" => ("blk", virtio_result(blk::check(ctx, &mut d), &mut d)),
        b"blkread" => (
            "blkread",
            virtio_result(blk::read_throughput(ctx, &mut d), &mut d),
        ),
        b"rng" => ("rng", virtio_result(rng::check(ctx, &mut d), &mut d)),
        b"net" => return net::run(ctx),
        b"vsock" => return vsock::run(ctx),
        b"tick" => ("tick", tick(ctx, &mut d)),
        b"power" => ("power", power::check_button(ctx, &mut d)),
        b"smp" => ("smp", smp::check(ctx, &mut d)),
        b"fault" => {
            // Proves exception delivery: the handler reports `exception FAIL vector=6`
            // and powers off, so nothing after this check runs.
            // SAFETY: UD2 raises #UD, which the entry code's IDT routes to `guest_exception`.
            unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
            ("fault", false)
        }
        other => {
            let mut l = Line::new();
            l.push_printable(other);
            let _ = write!(
                d,
                "unknown check (known: cmdline memmap acpi blk blkread rng net vsock tick power smp fault)"
            );
            report::result(
                core::str::from_utf8(l.as_bytes()).unwrap_or("?"),
                false,
                d.as_bytes(),
            );
            return;
        }
    };
    report::result(label, ok, d.as_bytes());
}

fn virtio_result(r: Result<(), virtio::Error>, d: &mut Line) -> bool {
    match r {
        Ok(()) => true,
        Err(e) => {
            if !d.is_empty() {
                d.push_byte(b' ');
            }
            let _ = write!(d, "error: {e}");
            false
        }
    }
}

/// Prints `BULKHEAD-GUEST tick <n>` every `tick.ms` (200) milliseconds, `tick.count`
/// (5) times.
fn tick(ctx: &Ctx<'_>, d: &mut Line) -> bool {
    let count = ctx.cmdline.get_u64("tick.count").unwrap_or(5);
    let ms = ctx.cmdline.get_u64("tick.ms").unwrap_or(200);
    for n in 1..=count {
        time::delay_ms(ms);
        let mut l = Line::new();
        let _ = write!(l, "tick {n}");
        report::info(l.as_bytes());
    }
    let _ = write!(
        d,
        "count={count} ms={ms} tsc_hz={} tsc_source={}",
        time::tsc_hz(),
        time::source()
    );
    true
}

fn check_memmap(ctx: &Ctx<'_>, d: &mut Line) -> bool {
    match ctx.start_info.memmap_summary(&Phys) {
        Some(s) => {
            let _ = write!(
                d,
                "entries={} ram={} ram_mib={} ranges={} end={:#x}",
                s.entries,
                s.ram_bytes,
                s.ram_bytes >> 20,
                s.ram_ranges,
                s.ram_end
            );
            s.ram_bytes > 0
        }
        None => {
            let _ = write!(
                d,
                "no usable memory map (version={} paddr={:#x} entries={})",
                ctx.start_info.version, ctx.start_info.memmap_paddr, ctx.start_info.memmap_entries
            );
            false
        }
    }
}

fn check_acpi(ctx: &Ctx<'_>, d: &mut Line) -> bool {
    let a = match (&ctx.acpi, &ctx.acpi_error) {
        (Some(a), _) => a,
        (None, Some(e)) => {
            let _ = write!(d, "{e}");
            return false;
        }
        (None, None) => return false,
    };
    let _ = write!(
        d,
        "rsdp={:#x} rev={} cpus={} ioapics={} tables=",
        a.rsdp, a.revision, a.cpus, a.ioapics
    );
    for (i, t) in a.tables().iter().enumerate() {
        if i > 0 {
            d.push_byte(b',');
        }
        d.push_printable(t);
    }
    let _ = write!(d, " hw_reduced={}", u8::from(a.hw_reduced));
    match a.sleep_control {
        Some(g) => {
            let _ = write!(d, " sleep={g}");
        }
        None => {
            let _ = write!(d, " sleep=none");
        }
    }
    match a.s5 {
        Some(s) => {
            let _ = write!(d, " s5={s}");
        }
        None => {
            let _ = write!(d, " s5=none");
        }
    }
    match a.ged_gsi {
        Some(g) => {
            let _ = write!(d, " ged_gsi={g}");
        }
        None => {
            let _ = write!(d, " ged_gsi=none");
        }
    }
    let _ = write!(d, " virtio={}", a.virtio_count);
    for v in a.virtio() {
        let _ = write!(d, " {:#x}", v.base);
        if let Some(g) = v.gsi {
            let _ = write!(d, "@{g}");
        }
    }
    a.cpus > 0 && a.sleep_control.is_some()
}
