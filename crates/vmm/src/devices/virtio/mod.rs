//! Virtio devices (block, net, vsock, entropy) and the virtio-mmio transport
//! that exposes them to the guest. Everything read from guest memory or a
//! virtqueue is hostile input.
//!
//! Contract with the rest of the monitor:
//! - `MmioTransport::new(Box<dyn VirtioDevice>, GuestMemoryMmap)` implements
//!   `crate::devices::BusDevice` for the device's 0x1000-byte MMIO slot;
//! - `transport.queue_events()` → one `EventFd` per queue, which the monitor
//!   registers as an ioeventfd on `base + 0x50` with datamatch = queue index;
//! - `transport.interrupt_event()` → the `EventFd` the monitor registers as an
//!   irqfd on the slot's GSI.
//! - `transport.pause()` / `resume()` stop and restart the device's worker
//!   thread (pause returns once the worker is idle); `snapshot()` /
//!   `restore()` capture and re-apply transport + queue + device state as
//!   JSON. Restore on a freshly constructed transport (same device kind and
//!   queue layout), after guest memory has been restored and the eventfds
//!   registered, before the vCPUs run. Vsock host connections do not
//!   survive: the restored device sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
//! - `transport.device_error()` says why the device set DEVICE_NEEDS_RESET
//!   (driver protocol violation, or a worker that could not start).
//!
//! Devices are constructed by the monitor with `Block::new`, `Net::new`,
//! `Vsock::new` and `Rng::new`, boxed, and handed to `MmioTransport::new`.
//! Each activated device runs one worker thread (see `worker`) with its own
//! epoll loop, spawned by whichever thread writes DRIVER_OK (a vCPU thread)
//! and stopped on reset or drop. Workers' syscalls: epoll, eventfd, dup,
//! read/write, pread64/pwrite64, fdatasync, getrandom, accept4, socket
//! (AF_UNIX) + connect, recvfrom (MSG_PEEK), shutdown, ioctl(FIONBIO),
//! thread creation.

pub mod block;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod testing;
#[cfg(test)]
mod tests;
pub mod vsock;
mod worker;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use block::Block;
pub use mmio::MmioTransport;
pub use net::Net;
pub use rng::Rng;
pub use vsock::Vsock;
pub use worker::{Backend, Chain, Ctx, WorkerHandle, BACKEND_TOKEN_BASE};

/// Virtio device types (virtio 1.2 §5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;

/// Feature bit every device offers and every driver must accept.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Descriptors may point at a table of further descriptors (virtio 1.2 §2.7.5.3).
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// `used_event` / `avail_event` suppress interrupts and notifications
/// (virtio 1.2 §2.7.7, §2.7.10).
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// Ring features every device offers; the transport adds them to the
/// device's own feature bits and the worker honours them (`worker::Ctx`).
pub const RING_FEATURES: u64 = (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX);

/// InterruptStatus bits.
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// Errors a user can hit while creating or running a virtio device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open disk image \"{path}\": {source}")]
    OpenDisk { path: String, source: io::Error },
    #[error("cannot open TAP device \"{name}\": {source}")]
    OpenTap { name: String, source: io::Error },
    #[error("invalid TAP device name \"{0}\": must be 1 to 15 bytes without NUL")]
    TapName(String),
    #[error(
        "TAP device \"{0}\" does not exist in the monitor's network namespace \
         (create it first, e.g. `ip tuntap add {0} mode tap`)"
    )]
    NoSuchTap(String),
    #[error("invalid vsock guest CID {0}: must be at least 3 and below 2^32-1")]
    VsockCid(u64),
    #[error("cannot listen on vsock Unix socket \"{path}\": {source}")]
    VsockListen { path: String, source: io::Error },
    #[error("cannot create eventfd: {0}")]
    EventFd(io::Error),
    #[error("cannot start virtio device worker: {0}")]
    Worker(io::Error),
    #[error("invalid virtio snapshot: {0}")]
    Snapshot(String),
}

/// The interrupt line of one virtio-mmio device: the InterruptStatus register
/// shared between the transport (vCPU thread) and the worker, and the irqfd.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    evt: Arc<EventFd>,
    needs_reset: Arc<AtomicBool>,
    reason: Arc<Mutex<Option<String>>>,
}

impl Interrupt {
    pub fn new() -> Result<Self, Error> {
        Ok(Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            evt: Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?),
            needs_reset: Arc::new(AtomicBool::new(false)),
            reason: Arc::new(Mutex::new(None)),
        })
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        // A full eventfd counter (EAGAIN) still means "interrupt pending".
        let _ = self.evt.write(1);
    }

    /// Tell the driver that buffers were put in a used ring.
    pub fn signal_used(&self) {
        self.raise(INT_USED_RING);
    }

    /// Tell the driver that the configuration (or NEEDS_RESET) changed.
    pub fn signal_config(&self) {
        self.raise(INT_CONFIG);
    }

    /// Mark the device as broken (DEVICE_NEEDS_RESET) with a reason, and
    /// notify the driver with a configuration-change interrupt.
    pub fn set_needs_reset(&self, reason: &str) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            if let Ok(mut r) = self.reason.lock() {
                *r = Some(reason.to_string());
            }
            self.signal_config();
        }
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
        if let Ok(mut r) = self.reason.lock() {
            *r = None;
        }
    }

    fn reason(&self) -> Option<String> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}

/// Everything a device needs to start processing queues: handed over by the
/// transport when the driver sets DRIVER_OK (or on restore).
pub struct Activation {
    pub mem: GuestMemoryMmap,
    /// Queues in device order, all validated and ready.
    pub queues: Vec<Queue>,
    /// Duplicates of the transport's queue EventFds (same order).
    pub queue_evts: Vec<EventFd>,
    pub interrupt: Interrupt,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// Device-specific state from a snapshot, `Null` on a fresh start.
    pub restored: serde_json::Value,
}

/// A virtio device behind a transport. Persistent resources (image file, TAP
/// fd, listening socket) live in the device; per-activation state lives in
/// the worker that `activate` starts and is dropped on reset.
pub trait VirtioDevice: Send {
    /// Virtio device ID (`TYPE_*`).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue, in queue order.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (must include `VIRTIO_F_VERSION_1`);
    /// the transport adds [`RING_FEATURES`].
    fn features(&self) -> u64;
    /// Read `data.len()` bytes of device configuration space at `offset`;
    /// bytes beyond the configuration structure read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Driver write to configuration space; the devices here have read-only
    /// configuration, so the default ignores it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Start the worker thread that serves the queues.
    fn activate(&mut self, act: Activation) -> Result<WorkerHandle, Error>;
}

/// Copy the part of `config` at `offset` into `data`, zero-filling the rest.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}
