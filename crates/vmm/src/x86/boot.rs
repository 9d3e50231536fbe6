//! Loading the guest kernel, initrd and command line, and writing the boot
//! information the kernel reads: PVH `hvm_start_info` (ELF kernels) or the
//! Linux zero page (bzImage). The format is detected from the file's magic.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, Elf, KernelLoader};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;
use crate::x86::cpu::EntryMode;

#[derive(Debug, Error)]
pub enum BootError {
    #[error("cannot read kernel {0}: {1}")]
    ReadKernel(String, std::io::Error),
    #[error("kernel {0} is neither an ELF image with a PVH entry nor a bzImage")]
    UnknownFormat(String),
    #[error("kernel {0}: {1}")]
    Load(String, linux_loader::loader::Error),
    #[error("kernel {0} is an ELF image without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")]
    NoPvhEntry(String),
    #[error("kernel {0}: Linux boot protocol {1}.{2:02} is too old or lacks the 64-bit entry (need >= 2.12 with XLF_KERNEL_64)")]
    OldBzImage(String, u16, u16),
    #[error("kernel {0} needs {1} MiB of memory from 1 MiB up to decompress; guest has {2} MiB of low RAM")]
    KernelTooBig(String, u64, u64),
    #[error("cannot read initrd {0}: {1}")]
    ReadInitrd(String, std::io::Error),
    #[error("initrd {0} ({1} bytes) does not fit in guest memory between the kernel end {2:#x} and {3:#x}")]
    InitrdTooBig(String, u64, u64, u64),
    #[error("invalid --cmdline: {0}")]
    Cmdline(String),
    #[error("kernel command line is {0} bytes; this kernel accepts at most {1}")]
    CmdlineTooLong(usize, usize),
    #[error("cannot write boot information to guest memory: {0}")]
    Memory(String),
}

type Result<T> = std::result::Result<T, BootError>;

/// Kernel image formats we boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// Detects the kernel format from its first bytes (at least 0x206).
pub fn detect_format(head: &[u8]) -> Option<KernelFormat> {
    if head.len() >= 4 && head[..4] == *b"\x7fELF" {
        return Some(KernelFormat::Elf);
    }
    if head.len() >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Some(KernelFormat::BzImage);
    }
    None
}

/// Where the initrd goes: 4 KiB aligned, as high as fits below `limit`, and
/// not below `floor` (the end of the kernel).
pub fn place_initrd(size: u64, floor: u64, limit: u64) -> Option<u64> {
    let top = limit.checked_sub(size)? & !0xfff;
    if top < floor {
        return None;
    }
    Some(top)
}

fn build_cmdline(cmdline: &str, capacity: usize) -> Result<Cmdline> {
    let mut c = Cmdline::new(capacity).map_err(|e| BootError::Cmdline(e.to_string()))?;
    if !cmdline.is_empty() {
        c.insert_str(cmdline)
            .map_err(|e| BootError::Cmdline(e.to_string()))?;
    }
    Ok(c)
}

/// What the boot set up.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    pub format: KernelFormat,
    pub entry: EntryMode,
    pub kernel_end: u64,
    pub initrd: Option<(u64, u64)>,
}

struct Initrd {
    file: File,
    size: u64,
    name: String,
}

fn open_initrd(path: Option<&Path>) -> Result<Option<Initrd>> {
    let Some(p) = path else { return Ok(None) };
    let name = p.display().to_string();
    let file = File::open(p).map_err(|e| BootError::ReadInitrd(name.clone(), e))?;
    let size = file
        .metadata()
        .map_err(|e| BootError::ReadInitrd(name.clone(), e))?
        .len();
    Ok(Some(Initrd { file, size, name }))
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    initrd: &mut Initrd,
    floor: u64,
    limit: u64,
) -> Result<(u64, u64)> {
    let addr = place_initrd(initrd.size, floor, limit)
        .ok_or_else(|| BootError::InitrdTooBig(initrd.name.clone(), initrd.size, floor, limit))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut initrd.file, initrd.size as usize)
        .map_err(|e| {
            BootError::ReadInitrd(initrd.name.clone(), std::io::Error::other(e.to_string()))
        })?;
    Ok((addr, initrd.size))
}

/// Loads everything and returns how the boot vCPU must start.
pub fn load(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel_path: &Path,
    initrd_path: Option<&Path>,
    cmdline: &str,
    rsdp_addr: u64,
) -> Result<BootInfo> {
    let kname = kernel_path.display().to_string();
    let mut kernel =
        File::open(kernel_path).map_err(|e| BootError::ReadKernel(kname.clone(), e))?;
    let mut head = vec![0u8; 0x400];
    let mut n = 0;
    loop {
        let r = kernel
            .read(&mut head[n..])
            .map_err(|e| BootError::ReadKernel(kname.clone(), e))?;
        if r == 0 || n + r == head.len() {
            n += r;
            break;
        }
        n += r;
    }
    head.truncate(n);
    kernel
        .seek(SeekFrom::Start(0))
        .map_err(|e| BootError::ReadKernel(kname.clone(), e))?;
    let format = detect_format(&head).ok_or_else(|| BootError::UnknownFormat(kname.clone()))?;
    let mut initrd = open_initrd(initrd_path)?;
    let low_end = layout::low_ram_end(mem_size);

    match format {
        KernelFormat::Elf => {
            let res = Elf::load(
                mem,
                None,
                &mut kernel,
                Some(GuestAddress(layout::KERNEL_START)),
            )
            .map_err(|e| BootError::Load(kname.clone(), e))?;
            let entry = match res.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(a) => a.0,
                _ => return Err(BootError::NoPvhEntry(kname)),
            };
            let cl = build_cmdline(cmdline, layout::CMDLINE_MAX)?;
            load_cmdline(mem, GuestAddress(layout::CMDLINE_ADDR), &cl)
                .map_err(|e| BootError::Cmdline(e.to_string()))?;
            let kernel_end = (res.kernel_end + 0xfff) & !0xfff;
            let initrd_loc = match initrd.as_mut() {
                Some(i) => Some(load_initrd(mem, i, kernel_end, low_end)?),
                None => None,
            };
            write_pvh_info(mem, mem_size, rsdp_addr, initrd_loc)?;
            Ok(BootInfo {
                format,
                entry: EntryMode::Pvh {
                    entry,
                    start_info: layout::PVH_INFO_ADDR,
                },
                kernel_end,
                initrd: initrd_loc,
            })
        }
        KernelFormat::BzImage => {
            let res = BzImage::load(
                mem,
                None,
                &mut kernel,
                Some(GuestAddress(layout::KERNEL_START)),
            )
            .map_err(|e| BootError::Load(kname.clone(), e))?;
            let Some(mut hdr) = res.setup_header else {
                return Err(BootError::UnknownFormat(kname));
            };
            let version = hdr.version;
            let xloadflags = hdr.xloadflags;
            if version < 0x20c || xloadflags & 1 == 0 {
                return Err(BootError::OldBzImage(kname, version >> 8, version & 0xff));
            }
            // The kernel decompresses in place and needs init_size bytes from
            // its load address.
            let load = res.kernel_load.0;
            let kernel_end =
                (load + u64::from(hdr.init_size).max(res.kernel_end - load) + 0xfff) & !0xfff;
            if kernel_end > low_end {
                return Err(BootError::KernelTooBig(
                    kname,
                    (kernel_end - layout::KERNEL_START) >> 20,
                    low_end >> 20,
                ));
            }
            let max_cmdline = (hdr.cmdline_size as usize).min(layout::CMDLINE_MAX - 1);
            if cmdline.len() > max_cmdline {
                return Err(BootError::CmdlineTooLong(cmdline.len(), max_cmdline));
            }
            let cl = build_cmdline(cmdline, max_cmdline + 1)?;
            load_cmdline(mem, GuestAddress(layout::CMDLINE_ADDR), &cl)
                .map_err(|e| BootError::Cmdline(e.to_string()))?;
            let initrd_limit = low_end.min(u64::from(hdr.initrd_addr_max) + 1);
            let initrd_loc = match initrd.as_mut() {
                Some(i) => Some(load_initrd(mem, i, kernel_end, initrd_limit)?),
                None => None,
            };

            hdr.type_of_loader = 0xff;
            hdr.boot_flag = 0xaa55;
            hdr.header = 0x5372_6448;
            hdr.cmd_line_ptr = layout::CMDLINE_ADDR as u32;
            hdr.cmdline_size = cmdline.len() as u32;
            hdr.loadflags |= 0x80; // CAN_USE_HEAP
            hdr.heap_end_ptr = 0xfe00;
            if let Some((addr, size)) = initrd_loc {
                hdr.ramdisk_image = addr as u32;
                hdr.ramdisk_size = size as u32;
            }
            let mut params = boot_params {
                hdr,
                ..Default::default()
            };
            params.acpi_rsdp_addr = rsdp_addr;
            let map = layout::e820_map(mem_size);
            for (i, e) in map.iter().enumerate() {
                params.e820_table[i] = boot_e820_entry {
                    addr: e.addr,
                    size: e.size,
                    r#type: e.kind,
                };
            }
            params.e820_entries = map.len() as u8;
            mem.write_obj(params, GuestAddress(layout::ZERO_PAGE_ADDR))
                .map_err(|e| BootError::Memory(e.to_string()))?;
            Ok(BootInfo {
                format,
                entry: EntryMode::Linux64 {
                    entry: load + 0x200,
                    zero_page: layout::ZERO_PAGE_ADDR,
                },
                kernel_end,
                initrd: initrd_loc,
            })
        }
    }
}

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

fn write_pvh_info(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    rsdp_addr: u64,
    initrd: Option<(u64, u64)>,
) -> Result<()> {
    let map: Vec<hvm_memmap_table_entry> = layout::e820_map(mem_size)
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let info_size = std::mem::size_of::<hvm_start_info>() as u64;
    let memmap_addr = layout::PVH_INFO_ADDR + ((info_size + 7) & !7);
    let modlist_addr =
        memmap_addr + (map.len() * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_ADDR,
        rsdp_paddr: rsdp_addr,
        memmap_paddr: memmap_addr,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let mods: Vec<hvm_modlist_entry> = initrd
        .map(|(paddr, size)| hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    if !mods.is_empty() {
        info.nr_modules = mods.len() as u32;
        info.modlist_paddr = modlist_addr;
    }
    let mut params = BootParams::new(&info, GuestAddress(layout::PVH_INFO_ADDR));
    params.set_sections(&map, GuestAddress(memmap_addr));
    if !mods.is_empty() {
        params.set_modules(&mods, GuestAddress(modlist_addr));
    }
    PvhBootConfigurator::write_bootparams(&params, mem)
        .map_err(|e| BootError::Memory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(detect_format(b"\x7fELF\x02\x01"), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect_format(&bz), Some(KernelFormat::BzImage));
        assert_eq!(detect_format(b"MZ\0\0"), None);
        assert_eq!(detect_format(&[]), None);
        assert_eq!(detect_format(&vec![0u8; 0x300]), None);
    }

    #[test]
    fn initrd_placement() {
        // Top of a 128 MiB guest, page aligned.
        assert_eq!(
            place_initrd(0x1000, 0x20_0000, 128 << 20),
            Some((128 << 20) - 0x1000)
        );
        assert_eq!(
            place_initrd(0x1800, 0x20_0000, 128 << 20),
            Some((128 << 20) - 0x2000)
        );
        // Does not fit above the kernel.
        assert_eq!(place_initrd(127 << 20, 0x20_0000, 128 << 20), None);
        assert_eq!(place_initrd(u64::MAX, 0, 128 << 20), None);
    }

    fn write_tmp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("bulkhead-boot-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn rejects_garbage_and_loads_pvh_info() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        let junk = write_tmp("junk", &[0x55; 4096]);
        let err = load(&mem, 32 << 20, &junk, None, "", 0xE0000).unwrap_err();
        assert!(matches!(err, BootError::UnknownFormat(_)), "{err}");
        let _ = std::fs::remove_file(&junk);

        write_pvh_info(&mem, 32 << 20, 0xE0000, Some((0x100_0000, 0x1234))).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(layout::PVH_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.version, 1);
        assert_eq!(info.rsdp_paddr, 0xE0000);
        assert_eq!(info.memmap_entries, 4);
        assert_eq!(info.nr_modules, 1);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((m.paddr, m.size), (0x100_0000, 0x1234));
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(info.memmap_paddr + 3 * 24))
            .unwrap();
        assert_eq!(last.addr + last.size, 32 << 20);
    }
}
