//! Just enough local APIC and IOAPIC programming to see an interrupt arrive without
//! taking it: the IOAPIC routes a GSI to a vector on this CPU's local APIC, and with
//! RFLAGS.IF clear the vector stays pending in the local APIC's IRR, where it is polled.

use crate::arch::{mmio_read32, mmio_write32};
use crate::mem::IDENTITY_END;

const LAPIC_ID: u64 = 0x20;
const LAPIC_TPR: u64 = 0x80;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_IRR: u64 = 0x200;
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const IOAPIC_VER: u32 = 0x01;
const IOREDTBL: u32 = 0x10;
const MASKED: u32 = 1 << 16;

/// Why an interrupt route could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    BadAddress(u64),
    NoIoapicFor(u32),
}

impl core::fmt::Display for ApicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ApicError::BadAddress(a) => write!(f, "APIC address {a:#x} outside the identity map"),
            ApicError::NoIoapicFor(g) => write!(f, "no IOAPIC in the MADT serves GSI {g}"),
        }
    }
}

fn check_window(addr: u64) -> Result<u64, ApicError> {
    if addr == 0 || !addr.is_multiple_of(16) || addr.saturating_add(0x400) > IDENTITY_END {
        return Err(ApicError::BadAddress(addr));
    }
    Ok(addr)
}

/// A GSI routed to `vector` on the boot CPU, observed through the IRR.
pub struct Route {
    lapic: u64,
    ioapic: u64,
    pin: u32,
    vector: u8,
}

impl Route {
    /// Software-enables the local APIC and routes `gsi` (edge, active high) to `vector`.
    pub fn new(
        lapic: u64,
        ioapics: &[(u64, u32)],
        gsi: u32,
        vector: u8,
    ) -> Result<Route, ApicError> {
        let lapic = check_window(lapic)?;
        for &(addr, base) in ioapics {
            let ioapic = check_window(addr)?;
            let Some(pin) = gsi.checked_sub(base) else {
                continue;
            };
            let r = Route {
                lapic,
                ioapic,
                pin,
                vector,
            };
            let max_pin = (r.io_read(IOAPIC_VER) >> 16) & 0xff;
            if pin > max_pin {
                continue;
            }
            r.lapic_write(LAPIC_TPR, 0);
            r.lapic_write(LAPIC_SVR, 0x1ff); // APIC enabled, spurious vector 0xff
            let apic_id = r.lapic_read(LAPIC_ID) >> 24;
            r.io_write(IOREDTBL + 2 * pin + 1, apic_id << 24);
            r.io_write(IOREDTBL + 2 * pin, u32::from(vector)); // fixed, physical, edge, high, unmasked
            return Ok(r);
        }
        Err(ApicError::NoIoapicFor(gsi))
    }

    fn lapic_read(&self, reg: u64) -> u32 {
        // SAFETY: `lapic` was checked to be inside the identity map; `reg` < 0x400.
        unsafe { mmio_read32(self.lapic + reg) }
    }

    fn lapic_write(&self, reg: u64, v: u32) {
        // SAFETY: as in `lapic_read`.
        unsafe { mmio_write32(self.lapic + reg, v) }
    }

    fn io_read(&self, reg: u32) -> u32 {
        // SAFETY: `ioapic` was checked to be inside the identity map; IOREGSEL/IOWIN are
        // its two registers.
        unsafe {
            mmio_write32(self.ioapic + IOREGSEL, reg);
            mmio_read32(self.ioapic + IOWIN)
        }
    }

    fn io_write(&self, reg: u32, v: u32) {
        // SAFETY: as in `io_read`.
        unsafe {
            mmio_write32(self.ioapic + IOREGSEL, reg);
            mmio_write32(self.ioapic + IOWIN, v);
        }
    }

    /// True once the vector is pending in the IRR.
    pub fn pending(&self) -> bool {
        let reg = LAPIC_IRR + 0x10 * u64::from(self.vector / 32);
        self.lapic_read(reg) & (1 << (self.vector % 32)) != 0
    }

    /// Masks the IOAPIC pin again.
    pub fn mask(&self) {
        self.io_write(IOREDTBL + 2 * self.pin, MASKED | u32::from(self.vector));
    }
}
