//! Memory shared with devices (virtqueues and buffers): a bump allocator over a static,
//! page-aligned pool. Nothing is ever freed; drivers allocate once and reuse buffers.
//! Physical address == virtual address (identity map), so an allocation's address is
//! what the device is told.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

const POOL_PAGES: usize = 192;
const PAGE: usize = 4096;

#[repr(C, align(4096))]
struct Pool(UnsafeCell<[u8; POOL_PAGES * PAGE]>);

// SAFETY: one vCPU runs this program; the pool is only handed out in disjoint pieces.
unsafe impl Sync for Pool {}

/// In `.noinit` (not zeroed at boot, see link.ld): queues zero their page, and drivers
/// only read what a device reported writing.
#[link_section = ".noinit.dma"]
static POOL: Pool = Pool(UnsafeCell::new([0; POOL_PAGES * PAGE]));
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A piece of device-visible memory.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: u64,
    pub len: usize,
}

impl Buf {
    /// Copies `data` in at `off` (truncated to the buffer).
    pub fn write(&self, off: usize, data: &[u8]) {
        let n = data.len().min(self.len.saturating_sub(off));
        // SAFETY: `[addr, addr+len)` is an allocation from the pool owned by this Buf's
        // driver; the range written is inside it (n is clamped).
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), (self.addr as *mut u8).add(off), n) }
    }

    /// Copies out `out.len()` bytes from `off` (truncated to the buffer); returns the count.
    pub fn read(&self, off: usize, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len.saturating_sub(off));
        core::sync::atomic::fence(Ordering::SeqCst);
        // SAFETY: as in `write`; the device has finished with the buffer (its used-ring
        // entry was seen, followed by the fence above).
        unsafe {
            core::ptr::copy_nonoverlapping((self.addr as *const u8).add(off), out.as_mut_ptr(), n)
        }
        n
    }

    /// Fills the buffer with zeros.
    pub fn zero(&self) {
        // SAFETY: as in `write`.
        unsafe { core::ptr::write_bytes(self.addr as *mut u8, 0, self.len) }
    }

    /// A sub-range of this buffer.
    pub fn slice(&self, off: usize, len: usize) -> Buf {
        let off = off.min(self.len);
        Buf {
            addr: self.addr + off as u64,
            len: len.min(self.len - off),
        }
    }
}

/// Allocates `len` bytes aligned to `align` (a power of two, at most 4096).
pub fn alloc(len: usize, align: usize) -> Option<Buf> {
    let base = POOL.0.get() as usize;
    let mut start = 0;
    NEXT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
        start = (base + cur).next_multiple_of(align.max(1)) - base;
        start
            .checked_add(len)
            .filter(|&end| end <= POOL_PAGES * PAGE)
    })
    .ok()?;
    Some(Buf {
        addr: (base + start) as u64,
        len,
    })
}
