//! Split virtqueue (virtio 1.2 §2.7) in one page of DMA memory: descriptor table at 0,
//! available ring at 512, used ring at 1024 (queue size at most 32). The driver polls the
//! used ring; interrupts are suppressed (`VIRTQ_AVAIL_F_NO_INTERRUPT`). Every index and
//! length the device writes is checked before use.
//!
//! Optional ring features, when the driver negotiated them: indirect descriptors
//! (§2.7.5.3: a chain becomes one descriptor pointing at a table in a second DMA page,
//! 64 bytes per head) and EVENT_IDX (§2.7.10: the driver notifies only when the device's
//! `avail_event` asks for it, [`Queue::should_notify`]).

use crate::dma::{self, Buf};
use core::sync::atomic::{fence, Ordering};

/// Largest queue the driver sets up.
pub const MAX_SIZE: u16 = 32;
const AVAIL_OFF: u64 = 512;
const USED_OFF: u64 = 1024;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
/// Descriptors per indirect table (one table per chain head).
const INDIRECT_MAX: usize = 4;
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// One buffer of a descriptor chain.
#[derive(Clone, Copy, Debug)]
pub struct Seg {
    pub addr: u64,
    pub len: u32,
    /// The device writes this buffer (else it reads it).
    pub write: bool,
}

impl Seg {
    /// The device reads `b`.
    pub fn read(b: &Buf) -> Seg {
        Seg {
            addr: b.addr,
            len: b.len as u32,
            write: false,
        }
    }

    /// The device writes `b`.
    pub fn write(b: &Buf) -> Seg {
        Seg {
            addr: b.addr,
            len: b.len as u32,
            write: true,
        }
    }
}

/// Errors a queue reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    NoMemory,
    Full,
    /// The device put an id in the used ring that is not an outstanding chain head.
    BadUsedId(u32),
}

impl core::fmt::Display for QueueError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            QueueError::NoMemory => write!(f, "out of DMA memory"),
            QueueError::Full => write!(f, "virtqueue full"),
            QueueError::BadUsedId(id) => write!(f, "device returned unknown descriptor id {id}"),
        }
    }
}

/// A split virtqueue owned by the driver.
pub struct Queue {
    pub index: u16,
    pub size: u16,
    page: u64,
    free_head: u16,
    num_free: u16,
    avail_idx: u16,
    last_used: u16,
    /// Per chain head: the caller's token, and whether the chain is outstanding.
    token: [u64; MAX_SIZE as usize],
    busy: [bool; MAX_SIZE as usize],
    /// With indirect descriptors: the page holding one table per head.
    indirect: Option<u64>,
    event_idx: bool,
    /// Notifications EVENT_IDX let the driver leave out.
    pub kicks_saved: u32,
}

impl Queue {
    /// Allocates a queue of `size` entries (a power of two, at most `MAX_SIZE`).
    pub fn new(index: u16, size: u16) -> Result<Queue, QueueError> {
        let page = dma::alloc(4096, 4096).ok_or(QueueError::NoMemory)?;
        page.zero();
        let q = Queue {
            index,
            size,
            page: page.addr,
            free_head: 0,
            num_free: size,
            avail_idx: 0,
            last_used: 0,
            token: [0; MAX_SIZE as usize],
            busy: [false; MAX_SIZE as usize],
            indirect: None,
            event_idx: false,
            kicks_saved: 0,
        };
        for i in 0..size {
            q.set_desc(i, 0, 0, 0, (i + 1) % size);
        }
        q.w16(AVAIL_OFF, AVAIL_F_NO_INTERRUPT);
        Ok(q)
    }

    /// Guest physical addresses of the descriptor table, available ring, used ring.
    pub fn addresses(&self) -> (u64, u64, u64) {
        (self.page, self.page + AVAIL_OFF, self.page + USED_OFF)
    }

    fn w16(&self, off: u64, v: u16) {
        // SAFETY: `off` is inside this queue's own DMA page (all offsets are < 4096).
        unsafe { core::ptr::write_volatile((self.page + off) as *mut u16, v) }
    }

    fn r16(&self, off: u64) -> u16 {
        // SAFETY: as in `w16`.
        unsafe { core::ptr::read_volatile((self.page + off) as *const u16) }
    }

    fn r32(&self, off: u64) -> u32 {
        // SAFETY: as in `w16`.
        unsafe { core::ptr::read_volatile((self.page + off) as *const u32) }
    }

    fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.page + u64::from(i) * 16;
        // SAFETY: descriptor `i` < size <= 32 lies in the first 512 bytes of the page.
        unsafe {
            core::ptr::write_volatile(d as *mut u64, addr);
            core::ptr::write_volatile((d + 8) as *mut u32, len);
            core::ptr::write_volatile((d + 12) as *mut u16, flags);
            core::ptr::write_volatile((d + 14) as *mut u16, next);
        }
    }

    fn desc_next(&self, i: u16) -> (u16, u16) {
        let d = u64::from(i) * 16;
        (self.r16(d + 12), self.r16(d + 14))
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Uses indirect tables for chains of 2 to 4 segments (VIRTIO_RING_F_INDIRECT_DESC
    /// was negotiated).
    pub fn use_indirect(&mut self) -> Result<(), QueueError> {
        let page = dma::alloc(4096, 4096).ok_or(QueueError::NoMemory)?;
        page.zero();
        self.indirect = Some(page.addr);
        Ok(())
    }

    /// Follows the device's `avail_event` (VIRTIO_RING_F_EVENT_IDX was negotiated).
    pub fn use_event_idx(&mut self) {
        self.event_idx = true;
    }

    /// The ring features in use, for reports.
    pub fn ring_features(&self) -> (bool, bool) {
        (self.indirect.is_some(), self.event_idx)
    }

    /// The avail index now (pass it to [`Queue::should_notify`] after pushing).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Whether the device wants a notification for the chains made available since
    /// the avail index was `old`: always without EVENT_IDX, else when `avail_event`
    /// lies in `[old, new)` (`vring_need_event`).
    pub fn should_notify(&self, old: u16) -> bool {
        if !self.event_idx {
            return true;
        }
        fence(Ordering::SeqCst);
        let event = self.r16(USED_OFF + 4 + 8 * u64::from(self.size));
        let new = self.avail_idx;
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    /// Makes a chain of `segs` available to the device, remembering `token` for it.
    /// The caller notifies the device afterwards.
    pub fn push(&mut self, segs: &[Seg], token: u64) -> Result<(), QueueError> {
        if let (Some(page), 2..=INDIRECT_MAX) = (self.indirect, segs.len()) {
            return self.push_indirect(page, segs, token);
        }
        if segs.is_empty() || segs.len() > usize::from(self.num_free) {
            return Err(QueueError::Full);
        }
        let head = self.free_head;
        let mut i = head;
        for (n, s) in segs.iter().enumerate() {
            let (_, next_free) = self.desc_next(i);
            let last = n + 1 == segs.len();
            let flags = if s.write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.set_desc(i, s.addr, s.len, flags, if last { 0 } else { next_free });
            if last {
                self.free_head = next_free;
            } else {
                i = next_free;
            }
        }
        self.num_free -= segs.len() as u16;
        self.publish(head, token);
        Ok(())
    }

    /// One ring descriptor pointing at `segs` written into the head's indirect table.
    fn push_indirect(&mut self, page: u64, segs: &[Seg], token: u64) -> Result<(), QueueError> {
        if self.num_free == 0 {
            return Err(QueueError::Full);
        }
        let head = self.free_head;
        let (_, next_free) = self.desc_next(head);
        let table = page + u64::from(head) * (INDIRECT_MAX as u64 * 16);
        for (n, s) in segs.iter().enumerate() {
            let last = n + 1 == segs.len();
            let flags = if s.write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            let d = table + n as u64 * 16;
            // SAFETY: table `head` (< 32) of 4 descriptors lies inside the indirect page.
            unsafe {
                core::ptr::write_volatile(d as *mut u64, s.addr);
                core::ptr::write_volatile((d + 8) as *mut u32, s.len);
                core::ptr::write_volatile((d + 12) as *mut u16, flags);
                core::ptr::write_volatile(
                    (d + 14) as *mut u16,
                    if last { 0 } else { n as u16 + 1 },
                );
            }
        }
        self.set_desc(head, table, segs.len() as u32 * 16, F_INDIRECT, 0);
        self.free_head = next_free;
        self.num_free -= 1;
        self.publish(head, token);
        Ok(())
    }

    /// Puts chain `head` in the available ring.
    fn publish(&mut self, head: u16, token: u64) {
        self.token[usize::from(head)] = token;
        self.busy[usize::from(head)] = true;
        let slot = u64::from(self.avail_idx % self.size);
        self.w16(AVAIL_OFF + 4 + slot * 2, head);
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.w16(AVAIL_OFF + 2, self.avail_idx);
        fence(Ordering::SeqCst);
    }

    /// Takes one completed chain from the used ring: `(token, bytes written by device)`.
    pub fn pop(&mut self) -> Result<Option<(u64, u32)>, QueueError> {
        let used_idx = self.r16(USED_OFF + 2);
        if used_idx == self.last_used {
            return Ok(None);
        }
        fence(Ordering::SeqCst);
        let slot = u64::from(self.last_used % self.size);
        let id = self.r32(USED_OFF + 4 + slot * 8);
        let len = self.r32(USED_OFF + 8 + slot * 8);
        self.last_used = self.last_used.wrapping_add(1);
        let head = match u16::try_from(id) {
            Ok(h) if h < self.size && self.busy[usize::from(h)] => h,
            _ => return Err(QueueError::BadUsedId(id)),
        };
        self.busy[usize::from(head)] = false;
        // Return the chain to the free list (our own descriptors: bounded walk).
        let mut i = head;
        let mut n = 1;
        loop {
            let (flags, next) = self.desc_next(i);
            if flags & F_NEXT == 0 || n >= self.size {
                break;
            }
            i = next % self.size;
            n += 1;
        }
        self.set_desc(i, 0, 0, 0, self.free_head);
        self.free_head = head;
        self.num_free += n;
        Ok(Some((self.token[usize::from(head)], len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain as the device sees it: head and (addr, len, flags) per descriptor.
    type Chain = (u16, std::vec::Vec<(u64, u32, u16)>);

    /// Plays the device: reads the avail ring, completes chains in the used ring.
    struct FakeDevice {
        avail: u64,
        used: u64,
        desc: u64,
        size: u16,
        seen_avail: u16,
        used_idx: u16,
    }

    impl FakeDevice {
        fn new(q: &Queue) -> Self {
            let (desc, avail, used) = q.addresses();
            FakeDevice {
                avail,
                used,
                desc,
                size: q.size,
                seen_avail: 0,
                used_idx: 0,
            }
        }

        fn r16(addr: u64) -> u16 {
            // SAFETY: test memory inside the queue's DMA page.
            unsafe { core::ptr::read_volatile(addr as *const u16) }
        }

        /// Next chain the driver made available: (head, [(addr, len, flags)]).
        fn next_chain(&mut self) -> Option<Chain> {
            if Self::r16(self.avail + 2) == self.seen_avail {
                return None;
            }
            let head = Self::r16(self.avail + 4 + u64::from(self.seen_avail % self.size) * 2);
            self.seen_avail = self.seen_avail.wrapping_add(1);
            let mut segs = std::vec::Vec::new();
            let mut i = head;
            loop {
                let d = self.desc + u64::from(i) * 16;
                // SAFETY: descriptor table inside the queue's page.
                let (addr, len, flags, next) = unsafe {
                    (
                        core::ptr::read_volatile(d as *const u64),
                        core::ptr::read_volatile((d + 8) as *const u32),
                        core::ptr::read_volatile((d + 12) as *const u16),
                        core::ptr::read_volatile((d + 14) as *const u16),
                    )
                };
                segs.push((addr, len, flags));
                if flags & F_NEXT == 0 {
                    break;
                }
                i = next;
            }
            Some((head, segs))
        }

        fn complete(&mut self, id: u32, len: u32) {
            let slot = u64::from(self.used_idx % self.size);
            // SAFETY: used ring inside the queue's page.
            unsafe {
                core::ptr::write_volatile((self.used + 4 + slot * 8) as *mut u32, id);
                core::ptr::write_volatile((self.used + 8 + slot * 8) as *mut u32, len);
                self.used_idx = self.used_idx.wrapping_add(1);
                core::ptr::write_volatile((self.used + 2) as *mut u16, self.used_idx);
            }
        }
    }

    const fn seg(addr: u64, len: u32, write: bool) -> Seg {
        Seg { addr, len, write }
    }

    /// A block request's shape: header, data the device writes, status byte.
    const BLK_REQUEST: [Seg; 3] = [
        seg(0x1000, 16, false),
        seg(0x2000, 512, true),
        seg(0x3000, 1, true),
    ];

    #[test]
    fn chains_round_trip_and_descriptors_are_recycled() {
        let mut q = Queue::new(0, 8).unwrap();
        let mut dev = FakeDevice::new(&q);
        for round in 0..20u64 {
            q.push(&BLK_REQUEST, round).unwrap();
            let (head, segs) = dev.next_chain().unwrap();
            assert_eq!(
                segs,
                [
                    (0x1000, 16, F_NEXT),
                    (0x2000, 512, F_NEXT | F_WRITE),
                    (0x3000, 1, F_WRITE)
                ]
            );
            assert_eq!(q.num_free(), 5);
            assert_eq!(q.pop().unwrap(), None);
            dev.complete(u32::from(head), 513);
            assert_eq!(q.pop().unwrap(), Some((round, 513)));
            assert_eq!(q.num_free(), 8);
        }
    }

    #[test]
    fn indirect_chains_take_one_ring_descriptor() {
        let mut q = Queue::new(3, 4).unwrap();
        q.use_indirect().unwrap();
        let mut dev = FakeDevice::new(&q);
        for round in 0..10u64 {
            q.push(&BLK_REQUEST, round).unwrap();
            assert_eq!(q.num_free(), 3);
            let (head, segs) = dev.next_chain().unwrap();
            assert_eq!(segs.len(), 1);
            let (table, len, flags) = segs[0];
            assert_eq!((len, flags), (48, F_INDIRECT));
            let d = |i: u64, off: u64| table + i * 16 + off;
            // SAFETY: the indirect table the driver wrote, in its DMA page.
            let entries: std::vec::Vec<(u64, u32, u16, u16)> = (0..3)
                .map(|i| unsafe {
                    (
                        core::ptr::read_volatile(d(i, 0) as *const u64),
                        core::ptr::read_volatile(d(i, 8) as *const u32),
                        core::ptr::read_volatile(d(i, 12) as *const u16),
                        core::ptr::read_volatile(d(i, 14) as *const u16),
                    )
                })
                .collect();
            assert_eq!(
                entries,
                [
                    (0x1000, 16, F_NEXT, 1),
                    (0x2000, 512, F_NEXT | F_WRITE, 2),
                    (0x3000, 1, F_WRITE, 0)
                ]
            );
            dev.complete(u32::from(head), 1);
            assert_eq!(q.pop().unwrap(), Some((round, 1)));
            assert_eq!(q.num_free(), 4);
        }
        // One segment needs no table.
        q.push(&[seg(0x1000, 8, true)], 99).unwrap();
        assert_eq!(dev.next_chain().unwrap().1, [(0x1000, 8, F_WRITE)]);
    }

    #[test]
    fn event_idx_notifies_only_when_avail_event_asks() {
        let mut q = Queue::new(4, 8).unwrap();
        let (_, _, used) = q.addresses();
        let set_avail_event = |v: u16| {
            // SAFETY: avail_event follows the 8 used elements, inside the queue's page.
            unsafe { core::ptr::write_volatile((used + 4 + 8 * 8) as *mut u16, v) }
        };
        // Without EVENT_IDX: always.
        let old = q.avail_idx();
        q.push(&[seg(1, 1, true)], 1).unwrap();
        set_avail_event(7);
        assert!(q.should_notify(old));
        q.use_event_idx();
        // avail 1 -> 2 with avail_event 1: the device asked for index 1.
        set_avail_event(1);
        let old = q.avail_idx();
        q.push(&[seg(1, 1, true)], 2).unwrap();
        assert!(q.should_notify(old));
        // avail 2 -> 3, avail_event still 1 (the device has not caught up): quiet.
        let old = q.avail_idx();
        q.push(&[seg(1, 1, true)], 3).unwrap();
        assert!(!q.should_notify(old));
        // Two pushed at once (3 -> 5) with avail_event 4: inside the batch.
        set_avail_event(4);
        let old = q.avail_idx();
        q.push(&[seg(1, 1, true)], 4).unwrap();
        q.push(&[seg(1, 1, true)], 5).unwrap();
        assert!(q.should_notify(old));
        // Wrap-around of the 16-bit indices.
        let mut w = Queue::new(5, 4).unwrap();
        w.use_event_idx();
        w.avail_idx = u16::MAX;
        let (_, _, wused) = w.addresses();
        // SAFETY: as above, for the 4-entry queue.
        unsafe { core::ptr::write_volatile((wused + 4 + 8 * 4) as *mut u16, u16::MAX) };
        w.push(&[seg(1, 1, true)], 1).unwrap();
        assert_eq!(w.avail_idx(), 0);
        assert!(w.should_notify(u16::MAX));
    }

    #[test]
    fn full_queue_is_refused() {
        let mut q = Queue::new(1, 4).unwrap();
        q.push(&[seg(1, 1, true), seg(2, 1, true), seg(3, 1, true)], 1)
            .unwrap();
        assert_eq!(
            q.push(&[seg(4, 1, true), seg(5, 1, true)], 2),
            Err(QueueError::Full)
        );
        assert_eq!(q.push(&[], 2), Err(QueueError::Full));
        q.push(&[seg(4, 1, true)], 2).unwrap();
        assert_eq!(q.num_free(), 0);
    }

    #[test]
    fn bogus_used_ids_are_errors_not_corruption() {
        let mut q = Queue::new(2, 4).unwrap();
        let mut dev = FakeDevice::new(&q);
        q.push(&[seg(0x1000, 8, true)], 7).unwrap();
        let (head, _) = dev.next_chain().unwrap();
        // Out of range, and an id that is not an outstanding head.
        dev.complete(99, 0);
        assert_eq!(q.pop(), Err(QueueError::BadUsedId(99)));
        dev.complete(u32::from(head) + 1, 0);
        assert_eq!(q.pop(), Err(QueueError::BadUsedId(u32::from(head) + 1)));
        // The real completion still works, and a duplicate of it is refused.
        dev.complete(u32::from(head), 8);
        assert_eq!(q.pop().unwrap(), Some((7, 8)));
        dev.complete(u32::from(head), 8);
        assert_eq!(q.pop(), Err(QueueError::BadUsedId(u32::from(head))));
        assert_eq!(q.num_free(), 4);
    }
}
