//! virtio-mmio version 2 transport (virtio 1.2 §4.2.2): probing, feature negotiation,
//! queue setup, notification, device configuration space. Devices are found through
//! ACPI (`LNRO0005`); nothing here assumes a fixed address.

pub mod queue;

use crate::arch::{mmio_read32, mmio_read8, mmio_write32};
use crate::mem::IDENTITY_END;
use crate::time::Deadline;
pub use queue::{Queue, QueueError, Seg};

const MAGIC: u32 = 0x7472_6976; // "virt"
const R_MAGIC: u64 = 0x000;
const R_VERSION: u64 = 0x004;
const R_DEVICE_ID: u64 = 0x008;
const R_DEVICE_FEATURES: u64 = 0x010;
const R_DEVICE_FEATURES_SEL: u64 = 0x014;
const R_DRIVER_FEATURES: u64 = 0x020;
const R_DRIVER_FEATURES_SEL: u64 = 0x024;
const R_QUEUE_SEL: u64 = 0x030;
const R_QUEUE_NUM_MAX: u64 = 0x034;
const R_QUEUE_NUM: u64 = 0x038;
const R_QUEUE_READY: u64 = 0x044;
const R_QUEUE_NOTIFY: u64 = 0x050;
const R_STATUS: u64 = 0x070;
const R_QUEUE_DESC: u64 = 0x080;
const R_QUEUE_DRIVER: u64 = 0x090;
const R_QUEUE_DEVICE: u64 = 0x0a0;
const R_CONFIG_GENERATION: u64 = 0x0fc;
const R_CONFIG: u64 = 0x100;
/// Smallest configuration space the drivers read (8 bytes: capacity, CID, MAC).
const CONFIG_MIN: u64 = 8;

const S_ACKNOWLEDGE: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;
const S_FAILED: u32 = 128;

/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const F_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const F_EVENT_IDX: u64 = 1 << 29;

/// The ring features a driver asks for: indirect descriptors and EVENT_IDX, as Linux
/// takes them, unless the command line says `<key>=plain`.
pub fn wanted_ring_features(ctx: &crate::ctx::Ctx<'_>, key: &str) -> u64 {
    if ctx.cmdline.get(key) == Some(&b"plain"[..]) {
        0
    } else {
        F_INDIRECT_DESC | F_EVENT_IDX
    }
}

/// Device types (virtio 1.2 §5).
pub const ID_NET: u32 = 1;
pub const ID_BLOCK: u32 = 2;
pub const ID_ENTROPY: u32 = 4;
pub const ID_VSOCK: u32 = 19;

/// Default bound on one device request.
pub const REQUEST_TIMEOUT_MS: u64 = 5000;

/// Transport-level failures, with a message naming the problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    BadAddress(u64),
    BadMagic(u32),
    Version(u32),
    NoVersion1,
    FeaturesRejected,
    QueueUnavailable(u16),
    QueueInUse(u16),
    Queue(QueueError),
    Timeout(&'static str),
    NotFound(&'static str),
    Device(&'static str),
}

impl From<QueueError> for Error {
    fn from(e: QueueError) -> Self {
        Error::Queue(e)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::BadAddress(a) => write!(f, "virtio-mmio base {a:#x} outside the identity map"),
            Error::BadMagic(m) => write!(f, "bad virtio-mmio magic {m:#x}"),
            Error::Version(v) => write!(f, "virtio-mmio version {v}, need 2"),
            Error::NoVersion1 => write!(f, "device does not offer VIRTIO_F_VERSION_1"),
            Error::FeaturesRejected => {
                write!(f, "device did not accept the features (FEATURES_OK clear)")
            }
            Error::QueueUnavailable(q) => write!(f, "queue {q} not available (QueueNumMax 0)"),
            Error::QueueInUse(q) => write!(f, "queue {q} already ready before setup"),
            Error::Queue(e) => write!(f, "{e}"),
            Error::Timeout(what) => write!(f, "timeout waiting for {what}"),
            Error::NotFound(what) => write!(f, "no {what} device"),
            Error::Device(what) => write!(f, "{what}"),
        }
    }
}

/// One virtio-mmio device.
pub struct Device {
    pub base: u64,
    /// Size of the register window (from the DSDT).
    pub size: u64,
    pub device_id: u32,
    pub features: u64,
}

impl Device {
    fn r(&self, off: u64) -> u32 {
        // SAFETY: the window `[base, base+size)` was checked at probe time to lie inside
        // the identity map with size >= 0x100 + CONFIG_MIN; callers pass register offsets
        // below 0x100 or config offsets clamped by `config_off`.
        unsafe { mmio_read32(self.base + off) }
    }

    fn w(&self, off: u64, v: u32) {
        // SAFETY: as in `r`.
        unsafe { mmio_write32(self.base + off, v) }
    }

    /// Reads the registers of the `size`-byte window at `base`: `Ok(None)` for an empty
    /// slot (device id 0).
    pub fn probe(base: u64, size: u64) -> Result<Option<Device>, Error> {
        if base == 0
            || !base.is_multiple_of(16)
            || size < R_CONFIG + CONFIG_MIN
            || base.saturating_add(size) > IDENTITY_END
        {
            return Err(Error::BadAddress(base));
        }
        let d = Device {
            base,
            size,
            device_id: 0,
            features: 0,
        };
        let magic = d.r(R_MAGIC);
        if magic != MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let version = d.r(R_VERSION);
        if version != 2 {
            return Err(Error::Version(version));
        }
        let id = d.r(R_DEVICE_ID);
        Ok((id != 0).then_some(Device { device_id: id, ..d }))
    }

    /// Resets the device and negotiates `VIRTIO_F_VERSION_1` plus whichever of `wanted`
    /// it offers. Leaves the device in FEATURES_OK; call `setup_queue` then `driver_ok`.
    pub fn init(&mut self, wanted: u64) -> Result<u64, Error> {
        self.w(R_STATUS, 0);
        self.w(R_STATUS, S_ACKNOWLEDGE);
        self.w(R_STATUS, S_ACKNOWLEDGE | S_DRIVER);
        self.w(R_DEVICE_FEATURES_SEL, 0);
        let lo = self.r(R_DEVICE_FEATURES);
        self.w(R_DEVICE_FEATURES_SEL, 1);
        let hi = self.r(R_DEVICE_FEATURES);
        let offered = (u64::from(hi) << 32) | u64::from(lo);
        if offered & F_VERSION_1 == 0 {
            self.w(R_STATUS, S_FAILED);
            return Err(Error::NoVersion1);
        }
        let chosen = offered & (wanted | F_VERSION_1);
        self.w(R_DRIVER_FEATURES_SEL, 0);
        self.w(R_DRIVER_FEATURES, chosen as u32);
        self.w(R_DRIVER_FEATURES_SEL, 1);
        self.w(R_DRIVER_FEATURES, (chosen >> 32) as u32);
        self.w(R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        if self.r(R_STATUS) & S_FEATURES_OK == 0 {
            self.w(R_STATUS, S_FAILED);
            return Err(Error::FeaturesRejected);
        }
        self.features = chosen;
        Ok(chosen)
    }

    /// Sets up queue `index` with up to `want` entries.
    pub fn setup_queue(&self, index: u16, want: u16) -> Result<Queue, Error> {
        self.w(R_QUEUE_SEL, u32::from(index));
        if self.r(R_QUEUE_READY) != 0 {
            return Err(Error::QueueInUse(index));
        }
        let max = self.r(R_QUEUE_NUM_MAX);
        if max == 0 {
            return Err(Error::QueueUnavailable(index));
        }
        let limit = u32::from(want.clamp(1, queue::MAX_SIZE)).min(max);
        // Largest power of two not above the limit.
        let size = 1u16 << (31 - limit.leading_zeros());
        let q = Queue::new(index, size)?;
        let (desc, avail, used) = q.addresses();
        self.w(R_QUEUE_NUM, u32::from(size));
        for (reg, addr) in [
            (R_QUEUE_DESC, desc),
            (R_QUEUE_DRIVER, avail),
            (R_QUEUE_DEVICE, used),
        ] {
            self.w(reg, addr as u32);
            self.w(reg + 4, (addr >> 32) as u32);
        }
        self.w(R_QUEUE_READY, 1);
        Ok(q)
    }

    /// Tells the device the driver is ready.
    pub fn driver_ok(&self) {
        self.w(
            R_STATUS,
            S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
    }

    /// Resets the device (it stops using our memory).
    pub fn reset(&self) {
        self.w(R_STATUS, 0);
    }

    /// Status register (to see DEVICE_NEEDS_RESET, bit 6).
    pub fn status(&self) -> u32 {
        self.r(R_STATUS)
    }

    /// Notifies the device about new buffers in queue `index`.
    pub fn notify(&self, index: u16) {
        self.w(R_QUEUE_NOTIFY, u32::from(index));
    }

    /// Clamps a configuration offset so an access of `width` bytes stays in the window.
    fn config_off(&self, off: u64, width: u64) -> u64 {
        R_CONFIG + off.min(self.size - R_CONFIG - width)
    }

    /// A byte of device configuration.
    pub fn config_u8(&self, off: u64) -> u8 {
        // SAFETY: the offset is clamped into the probed window (see `r`).
        unsafe { mmio_read8(self.base + self.config_off(off, 1)) }
    }

    /// A 64-bit configuration field, read as two 32-bit halves under the generation counter.
    pub fn config_u64(&self, off: u64) -> u64 {
        let off = self.config_off(off & !3, 8) - R_CONFIG;
        for _ in 0..8 {
            let g = self.r(R_CONFIG_GENERATION);
            let lo = self.r(R_CONFIG + off);
            let hi = self.r(R_CONFIG + off + 4);
            if self.r(R_CONFIG_GENERATION) == g {
                return (u64::from(hi) << 32) | u64::from(lo);
            }
        }
        0
    }

    /// Pushes a chain, notifies and polls until the device returns a chain on this
    /// queue (or the timeout passes). Returns `(token, written length)`.
    pub fn transact(
        &self,
        q: &mut Queue,
        segs: &[Seg],
        token: u64,
        what: &'static str,
    ) -> Result<(u64, u32), Error> {
        let old = q.avail_idx();
        q.push(segs, token)?;
        self.kick(q, old);
        wait(q, REQUEST_TIMEOUT_MS, what)
    }

    /// Notifies the device about the chains pushed to `q` since its avail index was
    /// `old`, unless EVENT_IDX says the device does not want to hear about them yet.
    /// A device that does not keep `avail_event` current then never sees the chains
    /// and the caller times out: that is the check of the device's EVENT_IDX support.
    pub fn kick(&self, q: &mut Queue, old: u16) {
        if q.should_notify(old) {
            self.notify(q.index);
        } else {
            q.kicks_saved += 1;
        }
    }

    /// Negotiates the ring features on the queues (`features` from [`Device::init`]).
    pub fn use_ring_features(features: u64, queues: &mut [&mut Queue]) -> Result<(), Error> {
        for q in queues.iter_mut() {
            if features & F_INDIRECT_DESC != 0 {
                q.use_indirect()?;
            }
            if features & F_EVENT_IDX != 0 {
                q.use_event_idx();
            }
        }
        Ok(())
    }
}

/// Polls `q` until a chain completes or `ms` pass.
pub fn wait(q: &mut Queue, ms: u64, what: &'static str) -> Result<(u64, u32), Error> {
    let mut d = Deadline::after_ms(ms);
    loop {
        if let Some(done) = q.pop()? {
            return Ok(done);
        }
        if d.expired() {
            return Err(Error::Timeout(what));
        }
    }
}

/// Finds the first device of type `id` among the ACPI virtio-mmio slots; reports probe
/// problems of other slots only if nothing matching is found.
pub fn find(
    acpi: Option<&crate::acpi::Acpi>,
    id: u32,
    name: &'static str,
) -> Result<Device, Error> {
    find_nth(acpi, id, 0, name)
}

/// Finds the `n`th (0-based, in slot order) device of type `id`.
pub fn find_nth(
    acpi: Option<&crate::acpi::Acpi>,
    id: u32,
    n: usize,
    name: &'static str,
) -> Result<Device, Error> {
    let acpi = acpi.ok_or(Error::Device(
        "ACPI tables unusable, cannot find virtio devices",
    ))?;
    let mut first_err = None;
    let mut seen = 0;
    for slot in acpi.virtio() {
        match Device::probe(slot.base, u64::from(slot.size)) {
            Ok(Some(d)) if d.device_id == id => {
                if seen == n {
                    return Ok(d);
                }
                seen += 1;
            }
            Ok(_) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or(Error::NotFound(name)))
}
