//! A minimal guest-side virtio driver for unit tests and fuzz targets: lays
//! out split virtqueues in a `GuestMemoryMmap`, adds descriptor chains,
//! reads the used ring, and drives an `MmioTransport` through the register
//! handshake. Not used by the monitor itself.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::mmio::{self, MmioTransport};
use super::VIRTIO_F_VERSION_1;
use crate::devices::BusDevice;

/// An anonymous read-write file of `len` zero bytes (a disk image, a
/// snapshot target): nothing on disk to clean up.
pub fn memfd(len: u64) -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a static NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"bulkhead-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor owned by nothing else.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.set_len(len).expect("memfd size");
    f
}

/// Guest memory of `size` bytes at address 0.
pub fn guest_memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("test guest memory")
}

/// A split virtqueue laid out by the "driver" at a fixed place.
#[derive(Clone, Debug)]
pub struct TestQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl TestQueue {
    /// Rings at `base` (16-byte aligned): descriptor table, then avail
    /// ring, then used ring (4-byte aligned).
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        let q = TestQueue {
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        };
        let zeros = vec![0u8; (used + 6 + 8 * u64::from(size) - base) as usize];
        mem.write_slice(&zeros, GuestAddress(base))
            .expect("queue inside test memory");
        q
    }

    /// Bytes the rings occupy from `desc`.
    pub fn footprint(size: u16) -> u64 {
        let avail = 16 * u64::from(size);
        ((avail + 6 + 2 * u64::from(size) + 3) & !3) + 6 + 8 * u64::from(size)
    }

    /// Write a raw descriptor at table index `idx`.
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        idx: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = self.desc + 16 * u64::from(idx);
        let _ = mem.write_obj(addr.to_le(), GuestAddress(at));
        let _ = mem.write_obj(len.to_le(), GuestAddress(at + 8));
        let _ = mem.write_obj(flags.to_le(), GuestAddress(at + 12));
        let _ = mem.write_obj(next.to_le(), GuestAddress(at + 14));
    }

    /// Put `head` in the available ring and publish it.
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        let _ = mem.write_obj(head.to_le(), GuestAddress(self.avail + 4 + 2 * slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = mem.write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2));
    }

    /// Add a chain of `(addr, len, device_writable)` buffers; returns the
    /// head index.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let mut flags = if write { 2 } else { 0 };
            if !last {
                flags |= 1;
            }
            let next = (idx + 1) % self.size;
            self.write_desc(mem, idx, addr, len, flags, next);
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % self.size;
        self.publish(mem, head);
        head
    }

    /// The used ring's index as written by the device.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj::<u16>(GuestAddress(self.used + 2))
            .map(u16::from_le)
            .unwrap_or(0)
    }

    /// Next `(id, len)` from the used ring, if the device added one.
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u32, u32)> {
        if self.used_idx(mem) == self.used_seen {
            return None;
        }
        let slot = u64::from(self.used_seen % self.size);
        let at = self.used + 4 + 8 * slot;
        let id = mem.read_obj::<u32>(GuestAddress(at)).ok()?;
        let len = mem.read_obj::<u32>(GuestAddress(at + 4)).ok()?;
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((u32::from_le(id), u32::from_le(len)))
    }

    /// Wait (polling, up to `secs` seconds) for the next used element.
    pub fn wait_used(&mut self, mem: &GuestMemoryMmap, secs: u64) -> Option<(u32, u32)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(u) = self.pop_used(mem) {
                return Some(u);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// 32-bit register read.
pub fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// 32-bit register write.
pub fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Run the driver initialisation sequence (virtio 1.2 §3.1.1) accepting
/// `features` (VERSION_1 is added) and configuring `queues`; returns the
/// final Status register.
pub fn driver_init(t: &mut MmioTransport, features: u64, queues: &[TestQueue]) -> u32 {
    let features = features | (1u64 << VIRTIO_F_VERSION_1);
    wr(t, 0x70, 0);
    wr(t, 0x70, mmio::STATUS_ACKNOWLEDGE);
    wr(t, 0x70, mmio::STATUS_ACKNOWLEDGE | mmio::STATUS_DRIVER);
    wr(t, 0x24, 0);
    wr(t, 0x20, features as u32);
    wr(t, 0x24, 1);
    wr(t, 0x20, (features >> 32) as u32);
    let s = mmio::STATUS_ACKNOWLEDGE | mmio::STATUS_DRIVER | mmio::STATUS_FEATURES_OK;
    wr(t, 0x70, s);
    if rd(t, 0x70) & mmio::STATUS_FEATURES_OK == 0 {
        return rd(t, 0x70);
    }
    for (i, q) in queues.iter().enumerate() {
        wr(t, 0x30, i as u32);
        wr(t, 0x38, u32::from(q.size));
        wr(t, 0x80, q.desc as u32);
        wr(t, 0x84, (q.desc >> 32) as u32);
        wr(t, 0x90, q.avail as u32);
        wr(t, 0x94, (q.avail >> 32) as u32);
        wr(t, 0xa0, q.used as u32);
        wr(t, 0xa4, (q.used >> 32) as u32);
        wr(t, 0x44, 1);
    }
    wr(t, 0x70, s | mmio::STATUS_DRIVER_OK);
    rd(t, 0x70)
}
