//! Shared helpers of the fuzz targets: reading structured values from the
//! fuzz input, guest memory built from input bytes, queues validated the way
//! the MMIO transport validates them, and a worker context to drive device
//! backends synchronously (no worker thread).
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::FromRawFd;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::{Ctx, Interrupt};
use vmm_sys_util::eventfd::EventFd;

/// Reads integers from the front of the input; zero once it runs out.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | (u16::from(self.u8()) << 8)
    }
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
    pub fn rest(&mut self) -> &'a [u8] {
        let r = self.0;
        self.0 = &[];
        r
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Guest memory of `size` bytes at 0 with `image` copied to address 0.
pub fn memory(size: usize, image: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("guest memory");
    let n = image.len().min(size);
    mem.write_slice(&image[..n], GuestAddress(0))
        .expect("image fits");
    mem
}

/// A queue as the transport would build it; `None` if the transport would
/// refuse the configuration.
/// `rings` = (descriptor table, driver area, device area); `idx` =
/// (next_avail, next_used) as after a restore.
pub fn queue(
    mem: &GuestMemoryMmap,
    max: u16,
    size: u16,
    rings: (u64, u64, u64),
    idx: (u16, u16),
) -> Option<Queue> {
    let (desc, avail, used) = rings;
    let (next_avail, next_used) = idx;
    let mut q = Queue::new(max).ok()?;
    q.try_set_size(size).ok()?;
    q.try_set_desc_table_address(GuestAddress(desc)).ok()?;
    q.try_set_avail_ring_address(GuestAddress(avail)).ok()?;
    q.try_set_used_ring_address(GuestAddress(used)).ok()?;
    if avail == 0 {
        // The transport refuses a driver area at 0 (virtio-queue's "unset").
        return None;
    }
    q.set_ready(true);
    if !q.is_valid(mem) {
        return None;
    }
    q.set_next_avail(next_avail);
    q.set_next_used(next_used);
    Some(q)
}

/// A worker context over `queues`, without a thread; with `event_idx` the
/// driver negotiated VIRTIO_RING_F_EVENT_IDX (used_event / avail_event).
pub fn ctx(mem: GuestMemoryMmap, queues: Vec<Queue>, event_idx: bool) -> Ctx {
    let evts = queues
        .iter()
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))
        .collect();
    Ctx::new(
        mem,
        queues,
        Interrupt::new().expect("interrupt"),
        (1 << 32) | if event_idx { 1 << 29 } else { 0 },
        evts,
    )
    .expect("ctx")
}

/// A SOCK_SEQPACKET pair: one end stands in for a TAP (message boundaries
/// are frame boundaries), the other is the "network".
pub fn seqpacket_pair() -> (File, File) {
    let mut fds = [0i32; 2];
    // SAFETY: socketpair writes two fds into `fds`.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair");
    // SAFETY: both fds are fresh and owned by us.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// Lay out a split queue at `base` and add chains: each record is
/// `(addr, len, flags, next)` written straight into the descriptor table,
/// and `heads` go into the available ring.
pub struct RawQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub idx: u16,
}

impl RawQueue {
    pub fn new(base: u64, size: u16) -> RawQueue {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        RawQueue {
            size,
            desc,
            avail,
            used,
            idx: 0,
        }
    }
    pub fn desc(&self, mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.desc + 16 * u64::from(i % self.size));
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        let _ = mem.write_slice(&d, at);
    }
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.idx % self.size);
        let _ = mem.write_obj(head.to_le(), GuestAddress(self.avail + 4 + 2 * slot));
        self.idx = self.idx.wrapping_add(1);
        let _ = mem.write_obj(self.idx.to_le(), GuestAddress(self.avail + 2));
    }
    pub fn queue(&self, mem: &GuestMemoryMmap, max: u16) -> Queue {
        queue(
            mem,
            max,
            self.size,
            (self.desc, self.avail, self.used),
            (0, 0),
        )
        .expect("valid layout")
    }
}
