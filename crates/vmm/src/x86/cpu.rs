//! Per-vCPU x86 state at boot: CPUID (with the documented mask), boot MSRs,
//! FPU, LAPIC LINT0/LINT1, and the registers, GDT and identity page tables
//! for the two entry modes (PVH 32-bit protected mode, Linux 64-bit).

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

#[derive(Debug, Error)]
pub enum CpuError {
    #[error("KVM {0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    #[error("KVM accepted only {0} of {1} boot MSRs")]
    Msrs(usize, usize),
    #[error("cannot write boot structures to guest memory: {0}")]
    Memory(vm_memory::GuestMemoryError),
    #[error("building MSR list failed")]
    MsrList,
}

type Result<T> = std::result::Result<T, CpuError>;

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, EBX = start info.
    Pvh { entry: u64, start_info: u64 },
    /// Linux 64-bit boot protocol: long mode, RSI = zero page.
    Linux64 { entry: u64, zero_page: u64 },
}

// CPUID bits we touch.
const LEAF1_ECX_CX16: u32 = 1 << 13;
const LEAF1_ECX_POPCNT: u32 = 1 << 23;
const LEAF1_ECX_XSAVE: u32 = 1 << 26;
const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
const LEAF1_ECX_AVX: u32 = 1 << 28;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const LEAF7_EBX_SMAP: u32 = 1 << 20;
const LEAF7_EBX_AVX2: u32 = 1 << 5;
const LEAF7_EBX_AVX512F: u32 = 1 << 16;

/// Adjusts the host-supported CPUID for vCPU `index` of `count`.
///
/// Always: leaf 1 EBX[31:24] and leaf 0xB EDX = APIC ID (= vCPU index),
/// leaf 1 EBX[23:16] = logical processor count, HTT when more than one vCPU,
/// and the hypervisor bit.
///
/// On kvm_pvm (`pvm = true`) we also hide what its instruction emulator
/// cannot execute: CMPXCHG16B (CX16), POPCNT, XSAVE/OSXSAVE and everything built on
/// it (AVX, AVX2, AVX-512, leaf 0xD), and SMAP (so the kernel never patches in
/// `clac`/`stac`). VT-x/AMD-V hosts keep those features.
pub fn filter_cpuid(cpuid: &mut CpuId, index: u32, count: u32, pvm: bool) {
    for e in cpuid.as_mut_slice().iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (index << 24) | ((count.min(255)) << 16);
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if pvm {
                    e.ecx &= !(LEAF1_ECX_CX16
                        | LEAF1_ECX_POPCNT
                        | LEAF1_ECX_XSAVE
                        | LEAF1_ECX_OSXSAVE
                        | LEAF1_ECX_AVX);
                }
            }
            7 if e.index == 0 && pvm => {
                e.ebx &= !(LEAF7_EBX_SMAP | LEAF7_EBX_AVX2 | LEAF7_EBX_AVX512F);
            }
            0xb => {
                e.edx = index;
            }
            0xd if pvm => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

/// Whether the host's KVM is kvm_pvm (paravirtual nested KVM without
/// VT-x/AMD-V). Its instruction emulator is limited; the monitor hides CPU
/// features and emulates a few instructions itself.
pub fn host_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// Boot MSRs: syscall/sysenter state cleared, fast strings on, MTRRs enabled
/// with write-back as the default type.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entry = |index: u32, data: u64| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, 1),
        entry(MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::MsrList)?;
    let n = vcpu
        .set_msrs(&msrs)
        .map_err(|e| CpuError::Kvm("KVM_SET_MSRS", e))?;
    if n != entries.len() {
        return Err(CpuError::Msrs(n, entries.len()));
    }
    Ok(())
}

/// x87 control word and MXCSR at their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| CpuError::Kvm("KVM_SET_FPU", e))
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 4;
const APIC_MODE_EXTINT: u32 = 7;

fn lapic_reg(regs: &[std::os::raw::c_char], off: usize) -> u32 {
    let b = |i: usize| regs[off + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char], off: usize, v: u32) {
    for (i, byte) in v.to_le_bytes().iter().enumerate() {
        regs[off + i] = *byte as std::os::raw::c_char;
    }
}

/// LINT0 as ExtINT (the legacy PIC path) and LINT1 as NMI, as firmware does.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| CpuError::Kvm("KVM_GET_LAPIC", e))?;
    let lvt0 = lapic_reg(&lapic.regs, APIC_LVT0);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT0,
        (lvt0 & !0x700) | (APIC_MODE_EXTINT << 8),
    );
    let lvt1 = lapic_reg(&lapic.regs, APIC_LVT1);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT1,
        (lvt1 & !0x700) | (APIC_MODE_NMI << 8),
    );
    vcpu.set_lapic(&lapic)
        .map_err(|e| CpuError::Kvm("KVM_SET_LAPIC", e))
}

/// A GDT descriptor from flags (access byte + flags nibble), base and limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0xf0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The `kvm_segment` a selector loads from a descriptor.
pub fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if present == 1 { 0 } else { 1 },
        padding: 0,
    }
}

const X86_CR0_PE: u64 = 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Writes the GDT and (for long mode) the identity page tables, and loads
/// segment and control registers for `mode`.
pub fn setup_sregs(mem: &GuestMemoryMmap, vcpu: &VcpuFd, mode: EntryMode) -> Result<()> {
    let long = matches!(mode, EntryMode::Linux64 { .. });
    // Selector 0x10 is the boot code segment in both protocols (Linux's
    // __BOOT_CS), 0x18 the data segment (__BOOT_DS), 0x20 the TSS.
    let gdt: [u64; 5] = [
        0,
        gdt_entry(0xa09b, 0, 0xfffff), // 0x08: 64-bit code
        if long {
            gdt_entry(0xa09b, 0, 0xfffff)
        } else {
            gdt_entry(0xc09b, 0, 0xfffff) // 32-bit code
        },
        gdt_entry(0xc093, 0, 0xfffff), // 0x18: data
        gdt_entry(0x008b, 0, 0x67),    // 0x20: 32-bit busy TSS
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(layout::GDT_ADDR + i as u64 * 8))
            .map_err(CpuError::Memory)?;
    }
    let mut sregs: kvm_sregs = vcpu
        .get_sregs()
        .map_err(|e| CpuError::Kvm("KVM_GET_SREGS", e))?;
    sregs.gdt.base = layout::GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    let code = segment_from_gdt(gdt[2], 2);
    let data = segment_from_gdt(gdt[3], 3);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[4], 4);

    if long {
        write_identity_page_tables(mem)?;
        sregs.cr3 = layout::PML4_ADDR;
        sregs.cr4 = X86_CR4_PAE;
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
        sregs.efer = EFER_LME | EFER_LMA;
    } else {
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
        sregs.cr3 = 0;
        sregs.cr4 = 0;
        sregs.efer = 0;
    }
    vcpu.set_sregs(&sregs)
        .map_err(|e| CpuError::Kvm("KVM_SET_SREGS", e))
}

/// PML4 → PDPT → four PDs of 2 MiB pages: identity map of the first 4 GiB.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let w = |v: u64, a: u64| mem.write_obj(v, GuestAddress(a)).map_err(CpuError::Memory);
    w(layout::PDPT_ADDR | 0x3, layout::PML4_ADDR)?;
    for i in 0..4u64 {
        let pd = layout::PD_ADDR + i * 0x1000;
        w(pd | 0x3, layout::PDPT_ADDR + i * 8)?;
        for j in 0..512u64 {
            let addr = ((i * 512 + j) << 21) | 0x83; // present, writable, 2 MiB page
            w(addr, pd + j * 8)?;
        }
    }
    Ok(())
}

/// General-purpose registers at entry.
pub fn setup_regs(vcpu: &VcpuFd, mode: EntryMode) -> Result<()> {
    let regs = match mode {
        EntryMode::Pvh { entry, start_info } => kvm_regs {
            rip: entry,
            rbx: start_info,
            rflags: 0x2,
            ..Default::default()
        },
        EntryMode::Linux64 { entry, zero_page } => kvm_regs {
            rip: entry,
            rsi: zero_page,
            rflags: 0x2,
            // A small stack below the zero page, never used by the 64-bit entry
            // before it sets up its own.
            rsp: layout::ZERO_PAGE_ADDR - 0x10,
            rbp: layout::ZERO_PAGE_ADDR - 0x10,
            ..Default::default()
        },
    };
    vcpu.set_regs(&regs)
        .map_err(|e| CpuError::Kvm("KVM_SET_REGS", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn gdt_entries_round_trip() {
        let code64 = gdt_entry(0xa09b, 0, 0xfffff);
        assert_eq!(code64, 0x00af_9b00_0000_ffff);
        let s = segment_from_gdt(code64, 1);
        assert_eq!(s.selector, 8);
        assert_eq!(s.l, 1);
        assert_eq!(s.db, 0);
        assert_eq!(s.type_, 0xb);
        assert_eq!(s.limit, 0xffff_ffff);
        let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 3);
        assert_eq!(data.db, 1);
        assert_eq!(data.type_, 3);
        assert_eq!(data.present, 1);
        let tss = segment_from_gdt(gdt_entry(0x008b, 0, 0x67), 4);
        assert_eq!(tss.limit, 0x67);
        assert_eq!(tss.s, 0);
    }

    #[test]
    fn cpuid_mask() {
        let ent = |function, index, ecx, ebx, edx| kvm_cpuid_entry2 {
            function,
            index,
            ecx,
            ebx,
            edx,
            ..Default::default()
        };
        let all = u32::MAX;
        let mut cpuid = CpuId::from_entries(&[
            ent(1, 0, all, all, all),
            ent(7, 0, 0, all, 0),
            ent(0xb, 0, 0, 0, 0),
            ent(0xb, 1, 0, 0, 0),
            ent(0xd, 0, 1, 1, 1),
        ])
        .unwrap();
        filter_cpuid(&mut cpuid, 3, 4, true);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ecx & LEAF1_ECX_CX16, 0);
        assert_eq!(e[0].ecx & LEAF1_ECX_POPCNT, 0);
        assert_eq!(e[0].ecx & LEAF1_ECX_XSAVE, 0);
        assert_ne!(e[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(e[1].ebx & LEAF7_EBX_SMAP, 0);
        assert_eq!(e[2].edx, 3);
        assert_eq!(e[3].edx, 3);
        assert_eq!(e[4].eax | e[4].ebx | e[4].ecx | e[4].edx, 0);

        let mut plain = CpuId::from_entries(&[ent(1, 0, all, 0, 0), ent(7, 0, 0, all, 0)]).unwrap();
        filter_cpuid(&mut plain, 0, 1, false);
        let e = plain.as_slice();
        assert_ne!(e[0].ecx & LEAF1_ECX_CX16, 0);
        assert_ne!(e[0].ecx & LEAF1_ECX_XSAVE, 0);
        assert_ne!(e[1].ebx & LEAF7_EBX_SMAP, 0);
        assert_eq!(e[0].edx & LEAF1_EDX_HTT, 0);
    }
}
