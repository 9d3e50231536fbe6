//! Time from the TSC. Its frequency comes from KVM's paravirtual clock (kvmclock) when the
//! hypervisor offers it, else from CPUID leaf 0x15/0x16, else an assumed 2 GHz. Deadlines
//! also count loop iterations, so a TSC that does not advance cannot hang the guest.

use crate::arch::{cpuid, rdtsc, wrmsr};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
const ASSUMED_HZ: u64 = 2_000_000_000;

static TSC_HZ: AtomicU64 = AtomicU64::new(ASSUMED_HZ);
static SOURCE: AtomicU32 = AtomicU32::new(0);

/// Where the TSC frequency came from.
pub fn source() -> &'static str {
    match SOURCE.load(Ordering::Relaxed) {
        1 => "kvmclock",
        2 => "cpuid15",
        3 => "cpuid16",
        _ => "assumed",
    }
}

/// TSC ticks per second.
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// The `pvclock_vcpu_time_info` record KVM fills in.
#[repr(C, align(64))]
struct PvClock(UnsafeCell<[u32; 8]>);

// SAFETY: a single vCPU runs this program; the hypervisor is the only other writer.
unsafe impl Sync for PvClock {}

static PVCLOCK: PvClock = PvClock(UnsafeCell::new([0; 8]));

fn kvm_clock_hz() -> Option<u64> {
    let (max, b, c, d) = cpuid(0x4000_0000, 0);
    let is_kvm = b.to_le_bytes() == *b"KVMK"
        && c.to_le_bytes() == *b"VMKV"
        && d.to_le_bytes() == *b"M\0\0\0";
    if !is_kvm || max < 0x4000_0001 {
        return None;
    }
    if cpuid(0x4000_0001, 0).0 & KVM_FEATURE_CLOCKSOURCE2 == 0 {
        return None;
    }
    let addr = PVCLOCK.0.get() as u64;
    // SAFETY: the MSR exists (KVM_FEATURE_CLOCKSOURCE2); the record is a 64-byte aligned
    // static the hypervisor may write at any time (read only through volatile loads).
    unsafe { wrmsr(MSR_KVM_SYSTEM_TIME_NEW, addr | 1) };
    for _ in 0..1000 {
        let p = PVCLOCK.0.get() as *const u32;
        // SAFETY: `p` points at the static record; volatile because the hypervisor writes it.
        let (v1, mul, shift_word, v2) = unsafe {
            let v1 = core::ptr::read_volatile(p);
            core::sync::atomic::fence(Ordering::SeqCst);
            let mul = core::ptr::read_volatile(p.add(6));
            let sw = core::ptr::read_volatile(p.add(7));
            core::sync::atomic::fence(Ordering::SeqCst);
            (v1, mul, sw, core::ptr::read_volatile(p))
        };
        if v1 != v2 || v1 & 1 != 0 || mul == 0 {
            continue;
        }
        // ns = (ticks << shift) * mul >> 32  =>  hz = 1e9 * 2^32 / (mul << shift)
        let shift = (shift_word & 0xff) as u8 as i8;
        let mut denom = u128::from(mul);
        let mut num = 1_000_000_000u128 << 32;
        if shift >= 0 {
            denom <<= shift as u32;
        } else {
            num <<= (-shift) as u32;
        }
        // SAFETY: disables the clock updates again (bit 0 clear); the MSR exists.
        unsafe { wrmsr(MSR_KVM_SYSTEM_TIME_NEW, 0) };
        let hz = (num / denom) as u64;
        return (hz > 1_000_000).then_some(hz);
    }
    // SAFETY: as above.
    unsafe { wrmsr(MSR_KVM_SYSTEM_TIME_NEW, 0) };
    None
}

fn cpuid_hz() -> Option<(u64, u32)> {
    let max = cpuid(0, 0).0;
    if max >= 0x15 {
        let (den, num, crystal, _) = cpuid(0x15, 0);
        if den != 0 && num != 0 && crystal != 0 {
            return Some((u64::from(crystal) * u64::from(num) / u64::from(den), 2));
        }
    }
    if max >= 0x16 {
        let mhz = cpuid(0x16, 0).0 & 0xffff;
        if mhz != 0 {
            return Some((u64::from(mhz) * 1_000_000, 3));
        }
    }
    None
}

/// Determines the TSC frequency.
pub fn init() {
    let (hz, src) = match kvm_clock_hz() {
        Some(hz) => (hz, 1),
        None => cpuid_hz().unwrap_or((ASSUMED_HZ, 0)),
    };
    TSC_HZ.store(hz, Ordering::Relaxed);
    SOURCE.store(src, Ordering::Relaxed);
}

/// Microseconds since an arbitrary point.
pub fn now_us() -> u64 {
    (u128::from(rdtsc()) * 1_000_000 / u128::from(tsc_hz().max(1))) as u64
}

/// A point in the future, for bounded polling loops.
pub struct Deadline {
    end_tsc: u64,
    spins: u64,
    max_spins: u64,
}

impl Deadline {
    /// `ms` milliseconds from now. The iteration bound assumes one check takes at least
    /// 10 ns (it includes a PAUSE), so it only trips if the TSC is broken.
    pub fn after_ms(ms: u64) -> Self {
        let ticks = (tsc_hz() / 1000).saturating_mul(ms);
        Deadline {
            end_tsc: rdtsc().saturating_add(ticks),
            spins: 0,
            max_spins: ms.saturating_mul(100_000).max(1_000_000),
        }
    }

    /// True once the time is up. Call once per polling iteration.
    pub fn expired(&mut self) -> bool {
        self.spins += 1;
        core::hint::spin_loop();
        self.spins > self.max_spins || rdtsc() >= self.end_tsc
    }
}

/// Busy-waits about `ms` milliseconds.
pub fn delay_ms(ms: u64) {
    let mut d = Deadline::after_ms(ms);
    while !d.expired() {}
}
