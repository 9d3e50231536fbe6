//! Power-off and reset. The ACPI sleep control register (address space, address and width
//! from the FADT) with `SLP_TYP` from `\_S5_`; if the VM is still running after that, the
//! FADT reset register, then the i8042 reset line, then HLT forever. Also the `power`
//! check: wait for the power button (the ACPI Generic Event Device's interrupt).

use crate::acpi::{Acpi, Gas};
use crate::apic::Route;
use crate::arch::{halt_forever, outb, outl, outw};
use crate::ctx::Ctx;
use crate::fmt::Line;
use crate::report;
use crate::time::{delay_ms, now_us, Deadline};
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

const SLP_EN: u8 = 1 << 5;
/// SLP_TYP used when the DSDT has no `\_S5_` (the machine model's value).
const DEFAULT_S5: u8 = 5;

static SLEEP_ADDR: AtomicU64 = AtomicU64::new(0);
static SLEEP_SPACE: AtomicU8 = AtomicU8::new(0);
static SLEEP_WIDTH: AtomicU8 = AtomicU8::new(0);
static SLEEP_VALUE: AtomicU8 = AtomicU8::new(0);
static RESET_ADDR: AtomicU64 = AtomicU64::new(0);
static RESET_SPACE: AtomicU8 = AtomicU8::new(0);
static RESET_VALUE: AtomicU8 = AtomicU8::new(0);

/// Remembers the registers found in ACPI, for `off()` (also used by panic paths).
pub fn configure(acpi: &Acpi) {
    if let Some(g) = acpi.sleep_control {
        let typ = acpi.s5.unwrap_or(DEFAULT_S5) & 7;
        SLEEP_VALUE.store((typ << 2) | SLP_EN, Ordering::Relaxed);
        SLEEP_SPACE.store(g.space, Ordering::Relaxed);
        SLEEP_WIDTH.store(g.bit_width, Ordering::Relaxed);
        SLEEP_ADDR.store(g.address, Ordering::Relaxed);
    }
    if let Some((g, v)) = acpi.reset {
        RESET_SPACE.store(g.space, Ordering::Relaxed);
        RESET_VALUE.store(v, Ordering::Relaxed);
        RESET_ADDR.store(g.address, Ordering::Relaxed);
    }
}

fn write_reg(gas: Gas, value: u8) {
    match gas.space {
        1 => {
            let Ok(port) = u16::try_from(gas.address) else {
                return;
            };
            match gas.bit_width {
                16 => outw(port, u16::from(value)),
                32 => outl(port, u32::from(value)),
                _ => outb(port, value),
            }
        }
        0 if gas.address < crate::mem::IDENTITY_END => {
            let a = gas.address;
            // SAFETY: the FADT names this address as a register; it is inside the identity
            // map (checked), and writing it is the documented way to power off or reset.
            unsafe {
                match gas.bit_width {
                    16 if a.is_multiple_of(2) => {
                        core::ptr::write_volatile(a as *mut u16, u16::from(value))
                    }
                    32 if a.is_multiple_of(4) => {
                        core::ptr::write_volatile(a as *mut u32, u32::from(value))
                    }
                    _ => core::ptr::write_volatile(a as *mut u8, value),
                }
            }
        }
        _ => {}
    }
}

/// Powers the VM off; never returns.
pub fn off() -> ! {
    let addr = SLEEP_ADDR.load(Ordering::Relaxed);
    if addr != 0 {
        let gas = Gas {
            space: SLEEP_SPACE.load(Ordering::Relaxed),
            bit_width: SLEEP_WIDTH.load(Ordering::Relaxed),
            address: addr,
        };
        write_reg(gas, SLEEP_VALUE.load(Ordering::Relaxed));
        delay_ms(500);
    }
    let reset = RESET_ADDR.load(Ordering::Relaxed);
    if reset != 0 {
        let gas = Gas {
            space: RESET_SPACE.load(Ordering::Relaxed),
            bit_width: 8,
            address: reset,
        };
        write_reg(gas, RESET_VALUE.load(Ordering::Relaxed));
        delay_ms(500);
    }
    outb(0x64, 0xfe);
    delay_ms(500);
    halt_forever()
}

/// Vector the power-button interrupt is routed to (never delivered: IF stays clear).
const BUTTON_VECTOR: u8 = 0x50;
/// Default wait for the power button.
const BUTTON_WAIT_MS: u64 = 30_000;

/// The `power` check: routes the GED interrupt (GSI from the DSDT's `ACPI0013` device)
/// to the boot CPU, prints `BULKHEAD-GUEST power.wait ready gsi=N`, and waits up to
/// `power.wait_ms` (30000) for it. The host raises it with the control socket's
/// `shutdown` request (QEMU: `system_powerdown`).
pub fn check_button(ctx: &Ctx<'_>, d: &mut Line) -> bool {
    let Some(acpi) = &ctx.acpi else {
        let _ = write!(d, "ACPI tables unusable");
        return false;
    };
    let Some(gsi) = acpi.ged_gsi else {
        let _ = write!(
            d,
            "no Generic Event Device (ACPI0013) with an interrupt in the DSDT"
        );
        return false;
    };
    let route = match Route::new(acpi.lapic_addr, acpi.ioapics(), gsi, BUTTON_VECTOR) {
        Ok(r) => r,
        Err(e) => {
            let _ = write!(d, "gsi={gsi} error: {e}");
            return false;
        }
    };
    let ms = ctx
        .cmdline
        .get_u64("power.wait_ms")
        .unwrap_or(BUTTON_WAIT_MS);
    let mut l = Line::new();
    let _ = write!(l, "power.wait ready gsi={gsi}");
    report::info(l.as_bytes());
    let t0 = now_us();
    let mut deadline = Deadline::after_ms(ms);
    let mut seen = false;
    while !deadline.expired() {
        if route.pending() {
            seen = true;
            break;
        }
    }
    route.mask();
    let waited = (now_us().saturating_sub(t0)) / 1000;
    if seen {
        let _ = write!(d, "button gsi={gsi} waited_ms={waited}");
    } else {
        let _ = write!(
            d,
            "gsi={gsi} error: no power-button interrupt within {ms} ms"
        );
    }
    seen
}
