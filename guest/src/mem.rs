//! Access to guest physical memory. The entry code identity-maps the first 4 GiB, so a
//! physical address below 4 GiB is a valid pointer. Parsers take a `Mem` so host unit
//! tests can feed them synthetic memory.

/// End of the identity map built by the entry code.
pub const IDENTITY_END: u64 = 1 << 32;

/// Byte-level read access to (guest physical) memory.
pub trait Mem {
    /// `len` bytes at `addr`, or `None` if the range is not accessible.
    fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]>;

    /// A little-endian u16 at `addr`.
    fn u16(&self, addr: u64) -> Option<u16> {
        self.bytes(addr, 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    /// A little-endian u32 at `addr`.
    fn u32(&self, addr: u64) -> Option<u32> {
        self.bytes(addr, 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A little-endian u64 at `addr`.
    fn u64(&self, addr: u64) -> Option<u64> {
        self.bytes(addr, 8).map(le64)
    }
}

/// Little-endian u16 from the start of `b` (which must hold 2 bytes).
pub fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

/// Little-endian u32 from the start of `b` (which must hold 4 bytes).
pub fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Little-endian u64 from the start of `b` (which must hold 8 bytes).
pub fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// The guest's own physical memory (identity mapped, below 4 GiB, never address 0).
pub struct Phys;

impl Mem for Phys {
    fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let end = addr.checked_add(len as u64)?;
        if addr == 0 || end > IDENTITY_END {
            return None;
        }
        // SAFETY: the range lies inside the identity map (checked above) and is not null;
        // it is only read. Firmware tables and boot data are not written while borrowed.
        Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
    }
}

/// Synthetic memory for host unit tests: one contiguous buffer at a base address.
#[cfg(test)]
pub struct TestMem {
    pub base: u64,
    pub data: std::vec::Vec<u8>,
}

#[cfg(test)]
impl TestMem {
    pub fn new(base: u64, size: usize) -> Self {
        TestMem {
            base,
            data: std::vec![0; size],
        }
    }

    pub fn put(&mut self, addr: u64, bytes: &[u8]) {
        let off = (addr - self.base) as usize;
        self.data[off..off + bytes.len()].copy_from_slice(bytes);
    }
}

#[cfg(test)]
impl Mem for TestMem {
    fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let off = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        self.data.get(off..off.checked_add(len)?)
    }
}
