//! Snapshots of a paused VM: guest memory as a raw file (`memory`, regions
//! in address order, sparse: all-zero blocks are holes) and everything else
//! as JSON (`state.json`): per-vCPU
//! registers, special registers, FPU, LAPIC, XCRs, pending events, MP state
//! and MSRs; the VM's irqchip (PIC, IOAPIC) and clock; the serial port; and
//! each virtio transport's own JSON state. KVM structures are stored as hex
//! of their kernel ABI bytes (via `zerocopy`), which is what KVM hands back.
//!
//! Both files are written to temporary names and renamed into place, so a
//! snapshot directory holds either the old snapshot or the new one, and a VM
//! restored from `memory` (mapped copy-on-write, see [`open_memory`]) never sees
//! that file truncated under it when a new snapshot goes to the same place.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use kvm_bindings::{
    kvm_clock_data, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vm_superio::serial::SerialState;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Format version of `state.json`.
pub const VERSION: u32 = 1;

/// Hex of a KVM structure's bytes.
pub fn enc<T: IntoBytes + Immutable>(v: &T) -> String {
    v.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// A KVM structure from its hex; the length must match exactly.
pub fn dec<T: FromBytes>(s: &str, what: &str) -> Result<T> {
    if !s.is_ascii() {
        bail!("snapshot field {what} is not hex");
    }
    if s.len() & 1 != 0 {
        bail!("snapshot field {what} has an odd number of hex digits");
    }
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16))
        .collect::<std::result::Result<Vec<u8>, _>>()
        .map_err(|_| anyhow!("snapshot field {what} is not hex"))?;
    T::read_from_bytes(&bytes).map_err(|_| {
        anyhow!(
            "snapshot field {what} has {} bytes, expected {}",
            bytes.len(),
            std::mem::size_of::<T>()
        )
    })
}

/// MSRs saved per vCPU (those KVM refuses are skipped at save time).
const SAVED_MSRS: &[u32] = &[
    0x10,        // TSC
    0x1b,        // APIC_BASE
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0x1a0,       // MISC_ENABLE
    0x277,       // PAT
    0x2ff,       // MTRR default type
    0x6e0,       // TSC_DEADLINE
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SYSCALL_MASK
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
    0x4b56_4d00, // KVM wall clock
    0x4b56_4d01, // KVM system time
    0x4b56_4d02, // KVM async PF
    0x4b56_4d03, // KVM steal time
    0x4b56_4d04, // KVM PV EOI
];

/// `kvm_fpu` field by field (kvm-bindings has no byte view of it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FpuSnapshot {
    pub fpr: Vec<[u8; 16]>,
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: Vec<[u8; 16]>,
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuSnapshot {
    fn from(f: &kvm_fpu) -> Self {
        FpuSnapshot {
            fpr: f.fpr.to_vec(),
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm.to_vec(),
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuSnapshot> for kvm_fpu {
    fn from(s: &FpuSnapshot) -> Self {
        let mut f = kvm_fpu {
            fcw: s.fcw,
            fsw: s.fsw,
            ftwx: s.ftwx,
            last_opcode: s.last_opcode,
            last_ip: s.last_ip,
            last_dp: s.last_dp,
            mxcsr: s.mxcsr,
            ..Default::default()
        };
        for (d, v) in f.fpr.iter_mut().zip(s.fpr.iter()) {
            *d = *v;
        }
        for (d, v) in f.xmm.iter_mut().zip(s.xmm.iter()) {
            *d = *v;
        }
        f
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: String,
    pub sregs: String,
    pub fpu: FpuSnapshot,
    pub lapic: String,
    pub xcrs: Option<String>,
    pub events: String,
    pub mp_state: String,
    pub msrs: Vec<(u32, u64)>,
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> anyhow::Error {
    move |e| anyhow!("{what}: {e}")
}

fn get_msr(fd: &VcpuFd, index: u32) -> Option<u64> {
    let mut m = Msrs::from_entries(&[kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .ok()?;
    match fd.get_msrs(&mut m) {
        Ok(1) => Some(m.as_slice()[0].data),
        _ => None,
    }
}

/// Captures a vCPU that is out of `KVM_RUN` with no pending I/O.
pub fn save_vcpu(fd: &VcpuFd) -> Result<VcpuState> {
    let regs = fd.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    let fpu = fd.get_fpu().map_err(kvm_err("KVM_GET_FPU"))?;
    let lapic = fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    let xcrs = fd.get_xcrs().ok();
    let events = fd
        .get_vcpu_events()
        .map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?;
    let mp = fd.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?;
    let msrs = SAVED_MSRS
        .iter()
        .filter_map(|&i| get_msr(fd, i).map(|d| (i, d)))
        .collect();
    Ok(VcpuState {
        regs: enc(&regs),
        sregs: enc(&sregs),
        fpu: FpuSnapshot::from(&fpu),
        lapic: enc(&lapic),
        xcrs: xcrs.as_ref().map(enc),
        events: enc(&events),
        mp_state: enc(&mp),
        msrs,
    })
}

/// Applies a saved vCPU state (after CPUID is set).
pub fn restore_vcpu(fd: &VcpuFd, s: &VcpuState) -> Result<()> {
    let mp: kvm_mp_state = dec(&s.mp_state, "mp_state")?;
    fd.set_mp_state(mp).map_err(kvm_err("KVM_SET_MP_STATE"))?;
    let sregs: kvm_sregs = dec(&s.sregs, "sregs")?;
    fd.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    let regs: kvm_regs = dec(&s.regs, "regs")?;
    fd.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
    let fpu = kvm_fpu::from(&s.fpu);
    fd.set_fpu(&fpu).map_err(kvm_err("KVM_SET_FPU"))?;
    if let Some(x) = &s.xcrs {
        let xcrs: kvm_xcrs = dec(x, "xcrs")?;
        fd.set_xcrs(&xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
    }
    let entries: Vec<kvm_msr_entry> = s
        .msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| anyhow!("too many MSRs in snapshot"))?;
    let n = fd.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
    if n != entries.len() {
        bail!("KVM refused MSR {:#x} from the snapshot", entries[n].index);
    }
    let lapic: kvm_lapic_state = dec(&s.lapic, "lapic")?;
    fd.set_lapic(&lapic).map_err(kvm_err("KVM_SET_LAPIC"))?;
    let events: kvm_vcpu_events = dec(&s.events, "events")?;
    fd.set_vcpu_events(&events)
        .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SerialSnapshot {
    pub regs: [u8; 9],
    pub in_buffer: Vec<u8>,
}

impl From<&SerialState> for SerialSnapshot {
    fn from(s: &SerialState) -> Self {
        SerialSnapshot {
            regs: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer.clone(),
        }
    }
}

impl From<&SerialSnapshot> for SerialState {
    fn from(s: &SerialSnapshot) -> Self {
        let r = s.regs;
        SerialState {
            baud_divisor_low: r[0],
            baud_divisor_high: r[1],
            interrupt_enable: r[2],
            interrupt_identification: r[3],
            line_control: r[4],
            line_status: r[5],
            modem_control: r[6],
            modem_status: r[7],
            scratch: r[8],
            in_buffer: s.in_buffer.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    #[serde(rename = "type")]
    pub kind: String,
    pub state: Value,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmSnapshot {
    pub version: u32,
    pub mem_size: u64,
    pub vcpus: Vec<VcpuState>,
    /// PIC master, PIC slave, IOAPIC.
    pub irqchip: Vec<String>,
    pub clock: String,
    pub serial: SerialSnapshot,
    pub devices: Vec<DeviceSnapshot>,
}

const CHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

/// The VM-wide KVM state: irqchips and clock.
pub fn save_vm(vm: &VmFd) -> Result<(Vec<String>, String)> {
    let mut chips = Vec::new();
    for id in CHIPS {
        let mut c = kvm_irqchip {
            chip_id: id,
            ..Default::default()
        };
        vm.get_irqchip(&mut c).map_err(kvm_err("KVM_GET_IRQCHIP"))?;
        chips.push(enc(&c));
    }
    let clock = vm.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?;
    Ok((chips, enc(&clock)))
}

pub fn restore_vm(vm: &VmFd, chips: &[String], clock: &str) -> Result<()> {
    if chips.len() != CHIPS.len() {
        bail!("snapshot has {} irqchips, expected 3", chips.len());
    }
    for c in chips {
        let chip: kvm_irqchip = dec(c, "irqchip")?;
        vm.set_irqchip(&chip).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
    }
    let mut clock: kvm_clock_data = dec(clock, "clock")?;
    // Only the clock value is meaningful on another host/process.
    clock.flags = 0;
    vm.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
    Ok(())
}

/// Granularity of the zero-block check when writing memory.
const MEMORY_BLOCK: usize = 64 << 10;

/// This process's page table as `/proc/self/pagemap` shows it (opened before
/// the jail hides `/proc`): which pages of a mapping are populated, present
/// or swapped out. An anonymous page that is neither was never written, or
/// was discarded, and reads as zero, so a snapshot need not read it (reading
/// would map the zero page for each, for nothing).
pub struct PageMap(File);

/// Pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PAGE: u64 = 4096;

impl PageMap {
    pub fn open() -> std::io::Result<PageMap> {
        File::open("/proc/self/pagemap").map(PageMap)
    }

    /// Whether any of the pages of one snapshot block from host address
    /// `addr` (page aligned, at most [`MEMORY_BLOCK`] bytes) is populated.
    fn any_populated(&self, addr: u64, len: usize) -> std::io::Result<bool> {
        use std::os::unix::fs::FileExt;
        const ENTRIES: usize = MEMORY_BLOCK / PAGE as usize;
        let mut raw = [0u8; ENTRIES * 8];
        let raw = &mut raw[..len.div_ceil(PAGE as usize).min(ENTRIES) * 8];
        self.0.read_exact_at(raw, addr / PAGE * 8)?;
        Ok(raw.chunks_exact(8).any(|e| {
            let mut b = [0u8; 8];
            b.copy_from_slice(e);
            u64::from_le_bytes(b) & (PM_PRESENT | PM_SWAPPED) != 0
        }))
    }
}

/// Writes guest memory to `f` (already sized to the whole memory), skipping
/// all-zero blocks, which stay holes. With `pagemap`, blocks of anonymous
/// memory with no populated page are skipped without being read; file-backed
/// memory (a VM restored from a snapshot) is always read, because its
/// unpopulated pages hold the file's data. Returns the bytes written.
fn write_memory_sparse(
    f: &File,
    mem: &GuestMemoryMmap,
    pagemap: Option<&PageMap>,
) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let other = |e: vm_memory::GuestMemoryError| std::io::Error::other(e.to_string());
    let mut buf = vec![0u8; MEMORY_BLOCK];
    let mut file_off = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let host = mem.get_host_address(region.start_addr()).map_err(other)? as u64;
        let skippable =
            pagemap.filter(|_| region.file_offset().is_none() && host.is_multiple_of(PAGE));
        let mut done = 0u64;
        while done < region.len() {
            let n = (region.len() - done).min(MEMORY_BLOCK as u64) as usize;
            if let Some(pm) = skippable {
                if !pm.any_populated(host + done, n)? {
                    done += n as u64;
                    continue;
                }
            }
            let block = &mut buf[..n];
            mem.read_slice(block, region.start_addr().unchecked_add(done))
                .map_err(other)?;
            if block.iter().any(|&b| b != 0) {
                f.write_all_at(block, file_off + done)?;
                written += n as u64;
            }
            done += n as u64;
        }
        file_off += region.len();
    }
    Ok(written)
}

/// Writes `path` through `path.tmp` + rename; `fill` writes the content.
fn write_replacing(path: &Path, fill: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let res = fill(&mut f).and_then(|()| {
        f.sync_all()
            .with_context(|| format!("cannot sync {}", tmp.display()))
    });
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// Writes `memory` and `state.json` into `dir` (created if needed). Returns
/// the bytes of guest memory actually written (all-zero blocks are skipped;
/// see [`PageMap`] for `pagemap`).
pub fn write(
    dir: &Path,
    mem: &GuestMemoryMmap,
    snap: &VmSnapshot,
    pagemap: Option<&PageMap>,
) -> Result<u64> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create snapshot directory {}", dir.display()))?;
    let mpath = dir.join("memory");
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    let mut written = 0;
    write_replacing(&mpath, |f| {
        f.set_len(total)
            .with_context(|| format!("cannot size {}", mpath.display()))?;
        written = write_memory_sparse(f, mem, pagemap)
            .with_context(|| format!("cannot write {}", mpath.display()))?;
        Ok(())
    })?;
    let spath = dir.join("state.json");
    write_replacing(&spath, |f| {
        serde_json::to_writer(&mut *f, snap)?;
        f.write_all(b"\n")?;
        Ok(())
    })?;
    // Make the renames durable.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(written)
}

/// Reads `state.json` from `dir`.
pub fn read_state(dir: &Path) -> Result<VmSnapshot> {
    let spath = dir.join("state.json");
    let mut text = String::new();
    File::open(&spath)
        .and_then(|mut f| f.read_to_string(&mut text))
        .with_context(|| format!("cannot read snapshot {}", spath.display()))?;
    let snap: VmSnapshot = serde_json::from_str(&text)
        .with_context(|| format!("snapshot {} is corrupt", spath.display()))?;
    if snap.version != VERSION {
        bail!(
            "snapshot {} has format version {}, this monitor reads {VERSION}",
            spath.display(),
            snap.version
        );
    }
    Ok(snap)
}

/// Opens `dir/memory` for a restore and checks that it holds `mem_size`
/// bytes. The caller maps it copy-on-write (`MAP_PRIVATE`) as guest memory:
/// pages are read from the file when the guest first touches them, the
/// guest's writes never reach the file, and a restore costs no copy.
pub fn open_memory(dir: &Path, mem_size: u64) -> Result<File> {
    let mpath = dir.join("memory");
    let f = File::open(&mpath).with_context(|| format!("cannot open {}", mpath.display()))?;
    let meta = f
        .metadata()
        .with_context(|| format!("cannot stat {}", mpath.display()))?;
    if !meta.is_file() {
        bail!("snapshot memory {} is not a regular file", mpath.display());
    }
    if meta.len() != mem_size {
        bail!(
            "snapshot memory {} has {} bytes, the snapshot's VM has {mem_size}",
            mpath.display(),
            meta.len()
        );
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guest memory (two regions, as across the PCI hole) with a few bytes
    /// written, snapshotted with and without the page map: same file, and
    /// with the page map only the populated blocks are read.
    #[test]
    fn sparse_memory_write_with_and_without_the_page_map() {
        use std::os::unix::fs::FileExt;
        let mem = GuestMemoryMmap::from_ranges(&[
            (vm_memory::GuestAddress(0), 4 << 20),
            (vm_memory::GuestAddress(1 << 32), 4 << 20),
        ])
        .unwrap();
        mem.write_slice(b"low", vm_memory::GuestAddress(0x1234))
            .unwrap();
        mem.write_slice(b"high", vm_memory::GuestAddress((1 << 32) + (3 << 20) + 7))
            .unwrap();
        // A block that was touched but holds zeros again: read, not written.
        mem.write_slice(&[0u8; 8], vm_memory::GuestAddress(2 << 20))
            .unwrap();
        let pm = PageMap::open().expect("/proc/self/pagemap");
        let mut contents = Vec::new();
        for pagemap in [Some(&pm), None] {
            let f = crate::devices::virtio::testing::memfd(8 << 20);
            let written = write_memory_sparse(&f, &mem, pagemap).unwrap();
            assert_eq!(written, 2 * MEMORY_BLOCK as u64);
            let mut all = vec![0u8; 8 << 20];
            f.read_exact_at(&mut all, 0).unwrap();
            assert_eq!(&all[0x1234..0x1237], b"low");
            assert_eq!(&all[(7 << 20) + 7..(7 << 20) + 11], b"high");
            contents.push(all);
        }
        assert!(contents[0] == contents[1]);
    }

    #[test]
    fn page_map_tells_written_pages_from_untouched_ones() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 4 << 20)]).unwrap();
        mem.write_slice(b"x", vm_memory::GuestAddress(0x1234))
            .unwrap();
        let pm = PageMap::open().expect("/proc/self/pagemap");
        let host = mem.get_host_address(vm_memory::GuestAddress(0)).unwrap() as u64;
        let page = |i: u64| pm.any_populated(host + i * PAGE, PAGE as usize).unwrap();
        assert!(page(1), "page of 0x1234 not populated");
        assert!(!page(1000), "untouched page populated");
        // A whole block counts as populated when one of its pages is.
        assert!(pm.any_populated(host, MEMORY_BLOCK).unwrap());
        assert!(!pm.any_populated(host + (1 << 20), MEMORY_BLOCK).unwrap());
    }

    #[test]
    fn hex_round_trip_and_length_check() {
        let r = kvm_regs {
            rip: 0x1234_5678,
            rflags: 2,
            ..Default::default()
        };
        let s = enc(&r);
        let back: kvm_regs = dec(&s, "regs").unwrap();
        assert_eq!(back.rip, 0x1234_5678);
        assert_eq!(back.rflags, 2);
        assert!(dec::<kvm_regs>(&s[..s.len() - 2], "regs").is_err());
        assert!(dec::<kvm_regs>("zz", "regs").is_err());
        assert!(dec::<kvm_regs>("abc", "regs").is_err());
        assert!(dec::<kvm_regs>("é1", "regs").is_err());
    }

    #[test]
    fn fpu_round_trip() {
        let mut f = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        f.xmm[3][5] = 9;
        f.fpr[7][0] = 1;
        let back = kvm_fpu::from(&FpuSnapshot::from(&f));
        assert_eq!(FpuSnapshot::from(&back), FpuSnapshot::from(&f));
        assert_eq!(back.xmm[3][5], 9);
    }

    #[test]
    fn serial_state_round_trip() {
        let st = SerialState {
            interrupt_enable: 3,
            in_buffer: vec![1, 2],
            ..Default::default()
        };
        let back = SerialState::from(&SerialSnapshot::from(&st));
        assert_eq!(back, st);
    }
}
