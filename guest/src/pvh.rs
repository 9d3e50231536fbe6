//! The PVH `hvm_start_info` structure (magic 0x336ec578) the monitor leaves at `EBX`,
//! its memory map (`hvm_memmap_table_entry`) and its command line.

use crate::mem::{le32, le64, Mem};

/// `hvm_start_info.magic`.
pub const MAGIC: u32 = 0x336e_c578;
/// Longest command line accepted (the machine model reserves 64 KiB).
pub const CMDLINE_MAX: usize = 64 * 1024;
/// Most memory map entries looked at.
pub const MEMMAP_MAX: u32 = 128;
/// `hvm_memmap_table_entry.type` for usable RAM.
pub const MEMMAP_RAM: u32 = 1;

/// The fields of `hvm_start_info` the guest uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartInfo {
    pub version: u32,
    pub nr_modules: u32,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
}

/// Why the start info could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartInfoError {
    Unreadable(u64),
    BadMagic(u32),
}

impl core::fmt::Display for StartInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StartInfoError::Unreadable(a) => write!(f, "hvm_start_info at {a:#x} is not readable"),
            StartInfoError::BadMagic(m) => {
                write!(f, "hvm_start_info magic {m:#x}, want {MAGIC:#x}")
            }
        }
    }
}

impl StartInfo {
    /// Reads the start info at `addr`.
    pub fn read(mem: &impl Mem, addr: u64) -> Result<Self, StartInfoError> {
        let b = mem
            .bytes(addr, 56)
            .ok_or(StartInfoError::Unreadable(addr))?;
        let magic = le32(&b[0..]);
        if magic != MAGIC {
            return Err(StartInfoError::BadMagic(magic));
        }
        let version = le32(&b[4..]);
        let (memmap_paddr, memmap_entries) = if version >= 1 {
            (le64(&b[40..]), le32(&b[48..]))
        } else {
            (0, 0)
        };
        Ok(StartInfo {
            version,
            nr_modules: le32(&b[12..]),
            cmdline_paddr: le64(&b[24..]),
            rsdp_paddr: le64(&b[32..]),
            memmap_paddr,
            memmap_entries,
        })
    }

    /// The NUL-terminated command line (empty if there is none or it is unreadable).
    /// A line without a NUL within `CMDLINE_MAX` bytes (or the end of memory) is cut there.
    pub fn cmdline<'m>(&self, mem: &'m impl Mem) -> &'m [u8] {
        if self.cmdline_paddr == 0 {
            return &[];
        }
        // Read in pages so a command line near the end of RAM is still found.
        let mut len = 0usize;
        while len < CMDLINE_MAX {
            let Some(chunk) = mem.bytes(self.cmdline_paddr + len as u64, 256) else {
                break;
            };
            if let Some(nul) = chunk.iter().position(|&c| c == 0) {
                len += nul;
                return mem.bytes(self.cmdline_paddr, len).unwrap_or(&[]);
            }
            len += 256;
        }
        let len = len.min(CMDLINE_MAX);
        mem.bytes(self.cmdline_paddr, len).unwrap_or(&[])
    }

    /// Summarizes the memory map: (entries, bytes of RAM, highest RAM end).
    /// `None` if the table is missing or unreadable.
    pub fn memmap_summary(&self, mem: &impl Mem) -> Option<MemmapSummary> {
        if self.memmap_paddr == 0 || self.memmap_entries == 0 || self.memmap_entries > MEMMAP_MAX {
            return None;
        }
        let table = mem.bytes(self.memmap_paddr, self.memmap_entries as usize * 24)?;
        let mut s = MemmapSummary {
            entries: self.memmap_entries,
            ..Default::default()
        };
        for e in table.chunks_exact(24) {
            let (addr, size, ty) = (le64(&e[0..]), le64(&e[8..]), le32(&e[16..]));
            if ty == MEMMAP_RAM {
                s.ram_bytes = s.ram_bytes.saturating_add(size);
                s.ram_end = s.ram_end.max(addr.saturating_add(size));
                s.ram_ranges += 1;
            }
        }
        Some(s)
    }
}

impl StartInfo {
    /// True if `[addr, addr+len)` lies inside one RAM entry of the memory map.
    pub fn ram_contains(&self, mem: &impl Mem, addr: u64, len: u64) -> bool {
        if self.memmap_paddr == 0 || self.memmap_entries == 0 || self.memmap_entries > MEMMAP_MAX {
            return false;
        }
        let Some(table) = mem.bytes(self.memmap_paddr, self.memmap_entries as usize * 24) else {
            return false;
        };
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        table.chunks_exact(24).any(|e| {
            let (base, size, ty) = (le64(&e[0..]), le64(&e[8..]), le32(&e[16..]));
            ty == MEMMAP_RAM && base <= addr && end <= base.saturating_add(size)
        })
    }
}

/// What the memory map says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemmapSummary {
    pub entries: u32,
    pub ram_ranges: u32,
    pub ram_bytes: u64,
    pub ram_end: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::TestMem;

    fn start_info(mem: &mut TestMem, at: u64, cmdline: u64, memmap: u64, entries: u32) {
        let mut b = [0u8; 56];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&cmdline.to_le_bytes());
        b[32..40].copy_from_slice(&0xe0000u64.to_le_bytes());
        b[40..48].copy_from_slice(&memmap.to_le_bytes());
        b[48..52].copy_from_slice(&entries.to_le_bytes());
        mem.put(at, &b);
    }

    fn entry(addr: u64, size: u64, ty: u32) -> [u8; 24] {
        let mut e = [0u8; 24];
        e[0..8].copy_from_slice(&addr.to_le_bytes());
        e[8..16].copy_from_slice(&size.to_le_bytes());
        e[16..20].copy_from_slice(&ty.to_le_bytes());
        e
    }

    #[test]
    fn reads_start_info_cmdline_and_memmap() {
        let mut mem = TestMem::new(0x1000, 0x40000);
        start_info(&mut mem, 0x6000, 0x20000, 0x6038, 3);
        mem.put(0x6038, &entry(0, 0x9fc00, 1));
        mem.put(0x6050, &entry(0x9fc00, 0x400, 2));
        mem.put(0x6068, &entry(0x100000, 0x7f00000, 1));
        mem.put(0x20000, b"checks=cmdline,memmap x=1\0junk");
        let si = StartInfo::read(&mem, 0x6000).unwrap();
        assert_eq!(si.rsdp_paddr, 0xe0000);
        assert_eq!(si.cmdline(&mem), b"checks=cmdline,memmap x=1");
        assert!(si.ram_contains(&mem, 0x8000, 0x1000));
        assert!(!si.ram_contains(&mem, 0x9f000, 0x1000));
        assert!(si.ram_contains(&mem, 0x7fff000, 0x1000));
        assert!(!si.ram_contains(&mem, 0x7fff000, 0x1001));
        let s = si.memmap_summary(&mem).unwrap();
        assert_eq!(
            s,
            MemmapSummary {
                entries: 3,
                ram_ranges: 2,
                ram_bytes: 0x9fc00 + 0x7f00000,
                ram_end: 0x8000000
            }
        );
    }

    #[test]
    fn rejects_bad_magic_and_bounds() {
        let mut mem = TestMem::new(0x1000, 0x10000);
        assert_eq!(
            StartInfo::read(&mem, 0x6000),
            Err(StartInfoError::BadMagic(0))
        );
        assert_eq!(
            StartInfo::read(&mem, 0x100000),
            Err(StartInfoError::Unreadable(0x100000))
        );
        start_info(&mut mem, 0x6000, 0x10ff0, 0x6038, 5000);
        let si = StartInfo::read(&mem, 0x6000).unwrap();
        // Command line running into the end of memory without a NUL: empty, no panic.
        assert!(si.cmdline(&mem).len() <= 16);
        assert_eq!(si.memmap_summary(&mem), None);
    }
}
