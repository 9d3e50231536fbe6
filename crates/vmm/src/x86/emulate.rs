//! Fallbacks for kvm_pvm's instruction emulator. When KVM reports an
//! emulation failure we fetch the faulting instruction ourselves (walking the
//! guest page tables from CR3), and handle the few instructions a Linux guest
//! needs there: `int3` (inject #BP as the CPU would) and `clac`/`stac` (flip
//! RFLAGS.AC). Anything else stops the VM with a report of the bytes.
//!
//! Hand-rolled because no rust-vmm crate walks guest page tables for a VMM
//! without KVM_TRANSLATE (which kvm_pvm does not implement for every mode).

use kvm_bindings::kvm_regs;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The part of the control-register state that decides how to translate.
#[derive(Clone, Copy, Debug, Default)]
pub struct PagingState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PTE_P: u64 = 1;
const PTE_PS: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WalkError {
    #[error("page table entry at {0:#x} is outside guest memory")]
    OutsideMemory(u64),
    #[error("{0:#x} is not mapped (entry at level {1} not present)")]
    NotPresent(u64, u32),
}

fn read_u64(mem: &GuestMemoryMmap, gpa: u64) -> Result<u64, WalkError> {
    mem.read_obj::<u64>(GuestAddress(gpa))
        .map_err(|_| WalkError::OutsideMemory(gpa))
}

fn read_u32(mem: &GuestMemoryMmap, gpa: u64) -> Result<u64, WalkError> {
    mem.read_obj::<u32>(GuestAddress(gpa))
        .map(u64::from)
        .map_err(|_| WalkError::OutsideMemory(gpa))
}

/// Translates a linear address to a guest physical address.
pub fn translate(mem: &GuestMemoryMmap, ps: &PagingState, va: u64) -> Result<u64, WalkError> {
    if ps.cr0 & CR0_PG == 0 {
        return Ok(va & 0xffff_ffff);
    }
    if ps.cr4 & CR4_PAE == 0 {
        // 32-bit paging: two levels of 4-byte entries, optional 4 MiB pages.
        let va = va & 0xffff_ffff;
        let pde_addr = (ps.cr3 & 0xffff_f000) + ((va >> 22) & 0x3ff) * 4;
        let pde = read_u32(mem, pde_addr)?;
        if pde & PTE_P == 0 {
            return Err(WalkError::NotPresent(va, 2));
        }
        if pde & PTE_PS != 0 && ps.cr4 & CR4_PSE != 0 {
            let base = (pde & 0xffc0_0000) | ((pde & 0x001f_e000) << 19);
            return Ok(base | (va & 0x3f_ffff));
        }
        let pte_addr = (pde & 0xffff_f000) + ((va >> 12) & 0x3ff) * 4;
        let pte = read_u32(mem, pte_addr)?;
        if pte & PTE_P == 0 {
            return Err(WalkError::NotPresent(va, 1));
        }
        return Ok((pte & 0xffff_f000) | (va & 0xfff));
    }
    let (mut table, top_level) = if ps.efer & EFER_LMA != 0 {
        let levels = if ps.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
        (ps.cr3 & ADDR_MASK, levels)
    } else {
        // PAE: four PDPTEs at CR3 (32-byte aligned), indexed by bits 31:30.
        let va32 = va & 0xffff_ffff;
        let pdpte = read_u64(mem, (ps.cr3 & 0xffff_ffe0) + (va32 >> 30) * 8)?;
        if pdpte & PTE_P == 0 {
            return Err(WalkError::NotPresent(va32, 3));
        }
        (pdpte & ADDR_MASK, 2)
    };
    let mut level = top_level;
    loop {
        let shift = 12 + 9 * (level - 1);
        let index = (va >> shift) & 0x1ff;
        let entry = read_u64(mem, table + index * 8)?;
        if entry & PTE_P == 0 {
            return Err(WalkError::NotPresent(va, level));
        }
        if level == 1 || (entry & PTE_PS != 0 && (level == 2 || level == 3)) {
            let page_mask = (1u64 << shift) - 1;
            return Ok((entry & ADDR_MASK & !page_mask) | (va & page_mask));
        }
        table = entry & ADDR_MASK;
        level -= 1;
    }
}

/// Reads up to `buf.len()` instruction bytes at linear address `va`, page by
/// page. Returns how many bytes could be read (stops at the first unmapped page).
pub fn fetch(mem: &GuestMemoryMmap, ps: &PagingState, va: u64, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let cur = va.wrapping_add(done as u64);
        let Ok(gpa) = translate(mem, ps, cur) else {
            break;
        };
        let in_page = (0x1000 - (cur & 0xfff)) as usize;
        let n = in_page.min(buf.len() - done);
        if mem
            .read_slice(&mut buf[done..done + n], GuestAddress(gpa))
            .is_err()
        {
            break;
        }
        done += n;
    }
    done
}

/// What the monitor does for an instruction kvm_pvm failed to emulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// `popcnt reg, reg` (F3 [66] [REX] 0F B8 /r with a register operand):
    /// count the source's set bits into the destination, flags as the CPU
    /// sets them. kvm_pvm's CPUID reports POPCNT and ignores our mask, so
    /// Linux patches it in; its emulator cannot execute it.
    Popcnt {
        dst: u8,
        src: u8,
        /// Operand size in bytes: 2, 4 or 8.
        size: u8,
        len: u8,
    },
    /// `int3` (CC): advance RIP by 1 and inject #BP (vector 3), as the CPU
    /// would for this trap.
    Breakpoint,
    /// `clac` (0F 01 CA): clear RFLAGS.AC, advance RIP by 3.
    Clac,
    /// `stac` (0F 01 CB): set RFLAGS.AC, advance RIP by 3.
    Stac,
    /// `fwait` (9B): with no unmasked x87 exception pending (FSW.ES clear,
    /// checked by the caller) it does nothing; advance RIP by 1.
    Fwait,
    /// `ldmxcsr`/`stmxcsr`/`fxsave`/`fxrstor` (0F AE /2 /3 /0 /1) with a
    /// memory operand at linear address `addr` (64-bit mode only); the
    /// caller moves the data between guest memory and the vCPU's FPU state.
    FpuMem { op: FpuMemOp, addr: u64, len: u8 },
}

impl Fallback {
    /// Instruction length.
    pub fn length(self) -> u64 {
        match self {
            Fallback::Breakpoint | Fallback::Fwait => 1,
            Fallback::Clac | Fallback::Stac => 3,
            Fallback::Popcnt { len, .. } | Fallback::FpuMem { len, .. } => u64::from(len),
        }
    }

    /// Small index per kind (for "reported once" bookkeeping).
    pub fn kind_index(self) -> usize {
        match self {
            Fallback::Breakpoint => 0,
            Fallback::Clac => 1,
            Fallback::Stac => 2,
            Fallback::Popcnt { .. } => 3,
            Fallback::Fwait => 4,
            Fallback::FpuMem { .. } => 5,
        }
    }
}

/// Names of the kinds, by `kind_index`.
pub const FALLBACK_NAMES: [&str; FALLBACK_KINDS] =
    ["int3", "clac", "stac", "popcnt", "fwait", "fpu_mem"];

/// Number of `Fallback` kinds.
pub const FALLBACK_KINDS: usize = 6;

/// The memory-operand FPU/SSE state instructions handled in `FpuMem`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FpuMemOp {
    Fxsave,
    Fxrstor,
    Ldmxcsr,
    Stmxcsr,
}

impl FpuMemOp {
    /// Bytes of guest memory the instruction touches.
    pub fn size(self) -> usize {
        match self {
            FpuMemOp::Fxsave | FpuMemOp::Fxrstor => 512,
            FpuMemOp::Ldmxcsr | FpuMemOp::Stmxcsr => 4,
        }
    }
}

/// What `decode_mem` needs from the vCPU: 64-bit mode registers and the
/// FS/GS bases for segment overrides.
#[derive(Clone, Copy, Debug, Default)]
pub struct DecodeCtx {
    pub regs: kvm_regs,
    pub fs_base: u64,
    pub gs_base: u64,
}

fn reg_val(regs: &kvm_regs, n: u8) -> u64 {
    let mut r = *regs;
    *reg_mut(&mut r, n)
}

/// Decodes `0F AE /0../3` with a memory operand in 64-bit mode and computes
/// its linear address (ModRM, SIB, disp8/disp32, RIP-relative, FS/GS
/// overrides). Address-size overrides and other forms return `None`.
pub fn decode_mem(bytes: &[u8], ctx: &DecodeCtx) -> Option<Fallback> {
    let mut i = 0;
    let mut seg_base = 0u64;
    while let Some(&b) = bytes.get(i) {
        match b {
            0x64 => seg_base = ctx.fs_base,
            0x65 => seg_base = ctx.gs_base,
            0x2e | 0x3e | 0x26 | 0x36 => {}
            // Operand-size, rep and address-size prefixes change the meaning.
            0x66 | 0xf2 | 0xf3 | 0x67 | 0xf0 => return None,
            _ => break,
        }
        i += 1;
    }
    let mut rex = 0u8;
    if let Some(&b) = bytes.get(i) {
        if b & 0xf0 == 0x40 {
            rex = b;
            i += 1;
        }
    }
    if bytes.get(i..i + 2)? != [0x0f, 0xae] {
        return None;
    }
    i += 2;
    let modrm = *bytes.get(i)?;
    i += 1;
    let md = modrm >> 6;
    if md == 3 {
        return None;
    }
    let op = match (modrm >> 3) & 7 {
        0 => FpuMemOp::Fxsave,
        1 => FpuMemOp::Fxrstor,
        2 => FpuMemOp::Ldmxcsr,
        3 => FpuMemOp::Stmxcsr,
        _ => return None,
    };
    let rm = modrm & 7;
    let mut ea: u64;
    let mut rip_relative = false;
    if rm == 4 {
        let sib = *bytes.get(i)?;
        i += 1;
        let scale = sib >> 6;
        let index = ((sib >> 3) & 7) | ((rex & 2) << 2);
        let base = (sib & 7) | ((rex & 1) << 3);
        ea = if index == 4 {
            0
        } else {
            reg_val(&ctx.regs, index) << scale
        };
        if sib & 7 == 5 && md == 0 {
            let d = i32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?);
            i += 4;
            ea = ea.wrapping_add(d as i64 as u64);
        } else {
            ea = ea.wrapping_add(reg_val(&ctx.regs, base));
        }
    } else if rm == 5 && md == 0 {
        rip_relative = true;
        let d = i32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?);
        i += 4;
        ea = d as i64 as u64;
    } else {
        ea = reg_val(&ctx.regs, rm | ((rex & 1) << 3));
    }
    match md {
        1 => {
            let d = *bytes.get(i)? as i8;
            i += 1;
            ea = ea.wrapping_add(d as i64 as u64);
        }
        2 => {
            let d = i32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?);
            i += 4;
            ea = ea.wrapping_add(d as i64 as u64);
        }
        _ => {}
    }
    if rip_relative {
        ea = ea.wrapping_add(ctx.regs.rip).wrapping_add(i as u64);
    }
    Some(Fallback::FpuMem {
        op,
        addr: ea.wrapping_add(seg_base),
        len: i as u8,
    })
}

/// Writes `data` at linear address `va` through the guest page tables.
/// Returns false if any byte is unmapped or outside memory (nothing is
/// written in that case).
pub fn write_virt(mem: &GuestMemoryMmap, ps: &PagingState, va: u64, data: &[u8]) -> bool {
    let mut chunks = Vec::new();
    let mut done = 0;
    while done < data.len() {
        let cur = va.wrapping_add(done as u64);
        let Ok(gpa) = translate(mem, ps, cur) else {
            return false;
        };
        let n = ((0x1000 - (cur & 0xfff)) as usize).min(data.len() - done);
        chunks.push((gpa, done, n));
        done += n;
    }
    chunks.iter().all(|&(gpa, off, n)| {
        mem.write_slice(&data[off..off + n], GuestAddress(gpa))
            .is_ok()
    })
}

/// The 512-byte FXSAVE image of an FPU state (64-bit layout when `rex_w`).
pub fn fxsave_image(f: &kvm_bindings::kvm_fpu) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..2].copy_from_slice(&f.fcw.to_le_bytes());
    b[2..4].copy_from_slice(&f.fsw.to_le_bytes());
    b[4] = f.ftwx;
    b[6..8].copy_from_slice(&f.last_opcode.to_le_bytes());
    b[8..16].copy_from_slice(&f.last_ip.to_le_bytes());
    b[16..24].copy_from_slice(&f.last_dp.to_le_bytes());
    b[24..28].copy_from_slice(&f.mxcsr.to_le_bytes());
    b[28..32].copy_from_slice(&0xffffu32.to_le_bytes()); // MXCSR_MASK
    for (i, r) in f.fpr.iter().enumerate() {
        b[32 + i * 16..48 + i * 16].copy_from_slice(r);
    }
    for (i, r) in f.xmm.iter().enumerate() {
        b[160 + i * 16..176 + i * 16].copy_from_slice(r);
    }
    b
}

/// FPU state from a 512-byte FXSAVE image.
pub fn fxrstor_image(b: &[u8; 512], f: &mut kvm_bindings::kvm_fpu) {
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |o: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(x)
    };
    f.fcw = u16_at(0);
    f.fsw = u16_at(2);
    f.ftwx = b[4];
    f.last_opcode = u16_at(6);
    f.last_ip = u64_at(8);
    f.last_dp = u64_at(16);
    f.mxcsr = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
    for (i, r) in f.fpr.iter_mut().enumerate() {
        r.copy_from_slice(&b[32 + i * 16..48 + i * 16]);
    }
    for (i, r) in f.xmm.iter_mut().enumerate() {
        r.copy_from_slice(&b[160 + i * 16..176 + i * 16]);
    }
}

fn decode_popcnt(bytes: &[u8]) -> Option<Fallback> {
    let mut i = 0;
    let mut opsize16 = false;
    let mut rep = false;
    // Legacy prefixes (66 and F3 in either order).
    while let Some(&b) = bytes.get(i) {
        match b {
            0x66 => opsize16 = true,
            0xf3 => rep = true,
            _ => break,
        }
        i += 1;
    }
    if !rep {
        return None;
    }
    let mut rex = 0u8;
    if let Some(&b) = bytes.get(i) {
        if b & 0xf0 == 0x40 {
            rex = b;
            i += 1;
        }
    }
    if bytes.get(i..i + 2)? != [0x0f, 0xb8] {
        return None;
    }
    let modrm = *bytes.get(i + 2)?;
    if modrm >> 6 != 3 {
        return None; // memory operand: not handled
    }
    let dst = ((modrm >> 3) & 7) | ((rex & 4) << 1);
    let src = (modrm & 7) | ((rex & 1) << 3);
    let size = if rex & 8 != 0 {
        8
    } else if opsize16 {
        2
    } else {
        4
    };
    Some(Fallback::Popcnt {
        dst,
        src,
        size,
        len: (i + 3) as u8,
    })
}

fn reg_mut(regs: &mut kvm_regs, n: u8) -> &mut u64 {
    match n & 15 {
        0 => &mut regs.rax,
        1 => &mut regs.rcx,
        2 => &mut regs.rdx,
        3 => &mut regs.rbx,
        4 => &mut regs.rsp,
        5 => &mut regs.rbp,
        6 => &mut regs.rsi,
        7 => &mut regs.rdi,
        8 => &mut regs.r8,
        9 => &mut regs.r9,
        10 => &mut regs.r10,
        11 => &mut regs.r11,
        12 => &mut regs.r12,
        13 => &mut regs.r13,
        14 => &mut regs.r14,
        _ => &mut regs.r15,
    }
}

const RFLAGS_CF: u64 = 1;
const RFLAGS_PF: u64 = 1 << 2;
const RFLAGS_AF: u64 = 1 << 4;
const RFLAGS_ZF: u64 = 1 << 6;
const RFLAGS_SF: u64 = 1 << 7;
const RFLAGS_OF: u64 = 1 << 11;

/// Applies `f` to the registers: result, flags and RIP.
pub fn apply(f: Fallback, regs: &mut kvm_regs) {
    match f {
        Fallback::Clac => regs.rflags &= !RFLAGS_AC,
        Fallback::Stac => regs.rflags |= RFLAGS_AC,
        Fallback::Breakpoint | Fallback::Fwait | Fallback::FpuMem { .. } => {}
        Fallback::Popcnt { dst, src, size, .. } => {
            let mask = match size {
                2 => 0xffff,
                4 => 0xffff_ffff,
                _ => u64::MAX,
            };
            let v = *reg_mut(regs, src) & mask;
            let count = u64::from(v.count_ones());
            let d = reg_mut(regs, dst);
            *d = match size {
                2 => (*d & !0xffff) | count,
                _ => count, // 32-bit results zero-extend
            };
            regs.rflags &= !(RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF);
            if v == 0 {
                regs.rflags |= RFLAGS_ZF;
            }
        }
    }
    regs.rip = regs.rip.wrapping_add(f.length());
}

/// Decodes the handled instructions; `None` for everything else.
pub fn decode(bytes: &[u8]) -> Option<Fallback> {
    match bytes {
        [0xcc, ..] => Some(Fallback::Breakpoint),
        [0x9b, ..] => Some(Fallback::Fwait),
        [0x0f, 0x01, 0xca, ..] => Some(Fallback::Clac),
        [0x0f, 0x01, 0xcb, ..] => Some(Fallback::Stac),
        _ => decode_popcnt(bytes),
    }
}

/// RFLAGS.AC.
pub const RFLAGS_AC: u64 = 1 << 18;

/// "0f c7 0e …" for the report.
pub fn hex_bytes(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    #[test]
    fn decoder_table() {
        assert_eq!(decode(&[0xcc, 0x90]), Some(Fallback::Breakpoint));
        assert_eq!(decode(&[0x0f, 0x01, 0xca]), Some(Fallback::Clac));
        assert_eq!(decode(&[0x0f, 0x01, 0xcb, 0x00]), Some(Fallback::Stac));
        assert_eq!(decode(&[0x0f, 0xc7, 0x0e]), None); // cmpxchg16b/8b
        assert_eq!(decode(&[0x0f, 0x01]), None);
        assert_eq!(decode(&[]), None);
        let mut r = kvm_regs {
            rip: 0x1000,
            rflags: 0x40202,
            ..Default::default()
        };
        apply(Fallback::Clac, &mut r);
        assert_eq!((r.rip, r.rflags), (0x1003, 0x202));
        apply(Fallback::Stac, &mut r);
        assert_eq!((r.rip, r.rflags), (0x1006, 0x40202));
        apply(Fallback::Breakpoint, &mut r);
        assert_eq!((r.rip, r.rflags), (0x1007, 0x40202));
        assert_eq!(decode(&[0x9b, 0x65]), Some(Fallback::Fwait));
        apply(Fallback::Fwait, &mut r);
        assert_eq!(r.rip, 0x1008);
        assert_eq!(Fallback::Clac.length(), 3);
        assert_eq!(Fallback::Breakpoint.length(), 1);
        assert_eq!(hex_bytes(&[0x0f, 0xc7, 0x0e]), "0f c7 0e");
    }

    #[test]
    fn popcnt_register_forms() {
        // popcnt rax, rdi (what Linux's __arch_hweight64 patches in).
        let f = decode(&[0xf3, 0x48, 0x0f, 0xb8, 0xc7, 0x41]).unwrap();
        assert_eq!(
            f,
            Fallback::Popcnt {
                dst: 0,
                src: 7,
                size: 8,
                len: 5
            }
        );
        let mut r = kvm_regs {
            rdi: 0xf0f0_0000_0000_0003,
            rax: 0xdead,
            rip: 0x10,
            rflags: 0x2 | RFLAGS_ZF | RFLAGS_CF,
            ..Default::default()
        };
        apply(f, &mut r);
        assert_eq!((r.rax, r.rip, r.rflags), (10, 0x15, 0x2));
        // popcnt eax, edi: 32-bit source, zero-extended result, ZF on zero.
        let f = decode(&[0xf3, 0x0f, 0xb8, 0xc7]).unwrap();
        assert_eq!(
            f,
            Fallback::Popcnt {
                dst: 0,
                src: 7,
                size: 4,
                len: 4
            }
        );
        let mut r = kvm_regs {
            rdi: 0xffff_ffff_0000_0000,
            rax: u64::MAX,
            ..Default::default()
        };
        apply(f, &mut r);
        assert_eq!(r.rax, 0);
        assert_ne!(r.rflags & RFLAGS_ZF, 0);
        // popcnt r9w, r10w (66 F3 REX.RB): 16-bit keeps the upper bits.
        let f = decode(&[0x66, 0xf3, 0x45, 0x0f, 0xb8, 0xca]).unwrap();
        assert_eq!(
            f,
            Fallback::Popcnt {
                dst: 9,
                src: 10,
                size: 2,
                len: 6
            }
        );
        let mut r = kvm_regs {
            r10: 0x1_0007,
            r9: 0xaaaa_0000,
            ..Default::default()
        };
        apply(f, &mut r);
        assert_eq!(r.r9, 0xaaaa_0003);
        // Memory operand and missing F3 are not handled.
        assert_eq!(decode(&[0xf3, 0x48, 0x0f, 0xb8, 0x07]), None);
        assert_eq!(decode(&[0x48, 0x0f, 0xb8, 0xc7]), None);
        assert_eq!(decode(&[0xf3, 0x48, 0x0f]), None);
    }

    #[test]
    fn fpu_memory_forms() {
        let ctx = DecodeCtx {
            regs: kvm_regs {
                rsp: 0xffff_c900_0001_3e00,
                rip: 0xffff_ffff_8100_0000,
                rax: 0x1000,
                rbx: 0x20,
                r12: 0x5000,
                ..Default::default()
            },
            fs_base: 0,
            gs_base: 0xffff_8880_1f00_0000,
        };
        // ldmxcsr [rsp+4] (what kernel_fpu_begin runs).
        let f = decode_mem(&[0x0f, 0xae, 0x54, 0x24, 0x04, 0x83], &ctx).unwrap();
        assert_eq!(
            f,
            Fallback::FpuMem {
                op: FpuMemOp::Ldmxcsr,
                addr: 0xffff_c900_0001_3e04,
                len: 5
            }
        );
        // fxsave64 [r12] (REX.WB).
        let f = decode_mem(&[0x49, 0x0f, 0xae, 0x04, 0x24], &ctx).unwrap();
        assert_eq!(
            f,
            Fallback::FpuMem {
                op: FpuMemOp::Fxsave,
                addr: 0x5000,
                len: 5
            }
        );
        // fxrstor64 [rax+rbx*4+0x100] (disp32).
        let f = decode_mem(
            &[0x48, 0x0f, 0xae, 0x8c, 0x98, 0x00, 0x01, 0x00, 0x00],
            &ctx,
        )
        .unwrap();
        assert_eq!(
            f,
            Fallback::FpuMem {
                op: FpuMemOp::Fxrstor,
                addr: 0x1180,
                len: 9
            }
        );
        // stmxcsr gs:[rip+0x10] (RIP-relative, relative to the next instruction).
        let f = decode_mem(&[0x65, 0x0f, 0xae, 0x1d, 0x10, 0, 0, 0], &ctx).unwrap();
        assert_eq!(
            f,
            Fallback::FpuMem {
                op: FpuMemOp::Stmxcsr,
                addr: 0xffff_ffff_8100_0018u64.wrapping_add(0xffff_8880_1f00_0000),
                len: 8
            }
        );
        // Register forms, other /r values and address-size overrides are not ours.
        assert_eq!(decode_mem(&[0x0f, 0xae, 0xe8], &ctx), None); // lfence
        assert_eq!(decode_mem(&[0x0f, 0xae, 0x38], &ctx), None); // clflush
        assert_eq!(decode_mem(&[0x67, 0x0f, 0xae, 0x10], &ctx), None);
        assert_eq!(decode_mem(&[0x0f, 0xae], &ctx), None);
    }

    #[test]
    fn fxsave_image_round_trip_and_virtual_writes() {
        let mut f = kvm_bindings::kvm_fpu {
            fcw: 0x37f,
            fsw: 0x1234,
            ftwx: 0x81,
            mxcsr: 0x1fa0,
            last_ip: 0xdead_beef,
            ..Default::default()
        };
        f.xmm[15] = [7; 16];
        f.fpr[0][9] = 0x40;
        let img = fxsave_image(&f);
        assert_eq!(&img[24..28], &0x1fa0u32.to_le_bytes());
        let mut back = kvm_bindings::kvm_fpu::default();
        fxrstor_image(&img, &mut back);
        assert_eq!(fxsave_image(&back), img);

        // A 512-byte write that crosses into an unmapped page writes nothing.
        let m = mem();
        let pml4 = 0x10_0000u64;
        let w = |a: u64, v: u64| m.write_obj(v, GuestAddress(a)).unwrap();
        w(pml4, 0x10_1000 | 3);
        w(0x10_1000, 0x10_2000 | 3);
        w(0x10_2000, 0x10_3000 | 3);
        w(0x10_3000, 0x20_0000 | 3); // page 0 -> 0x200000; page 1 unmapped
        let ps = PagingState {
            cr0: CR0_PG | 1,
            cr3: pml4,
            cr4: CR4_PAE,
            efer: EFER_LMA,
        };
        assert!(!write_virt(&m, &ps, 0xf00, &img));
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x20_0f00)).unwrap(), 0);
        assert!(write_virt(&m, &ps, 0x800, &img));
        let mut rd = [0u8; 512];
        assert_eq!(fetch(&m, &ps, 0x800, &mut rd), 512);
        assert_eq!(rd, img);
    }

    #[test]
    fn no_paging_is_identity() {
        let m = mem();
        let ps = PagingState::default();
        assert_eq!(translate(&m, &ps, 0x12345), Ok(0x12345));
    }

    #[test]
    fn four_level_walk_with_all_page_sizes() {
        let m = mem();
        // Kernel-style mapping of 0xffffffff81000000 → 0x200000 via 2 MiB page,
        // 0xffff888000000000 → 0 via 1 GiB page, 0x400000 → 0x345000 via 4 KiB page.
        let pml4 = 0x10_0000u64;
        let pdpt_hi = 0x10_1000u64;
        let pd_hi = 0x10_2000u64;
        let pdpt_lo = 0x10_3000u64;
        let pd_lo = 0x10_4000u64;
        let pt_lo = 0x10_5000u64;
        let pdpt_dm = 0x10_6000u64;
        let w = |a: u64, v: u64| m.write_obj(v, GuestAddress(a)).unwrap();
        let va_k = 0xffff_ffff_8100_0123u64;
        w(pml4 + ((va_k >> 39) & 0x1ff) * 8, pdpt_hi | 3);
        w(pdpt_hi + ((va_k >> 30) & 0x1ff) * 8, pd_hi | 3);
        w(pd_hi + ((va_k >> 21) & 0x1ff) * 8, 0x20_0000 | 0x83);
        let va_dm = 0xffff_8880_0000_4567u64;
        w(pml4 + ((va_dm >> 39) & 0x1ff) * 8, pdpt_dm | 3);
        w(pdpt_dm + ((va_dm >> 30) & 0x1ff) * 8, 0x83);
        let va_4k = 0x40_0abcu64;
        w(pml4, pdpt_lo | 3);
        w(pdpt_lo, pd_lo | 3);
        w(pd_lo + 2 * 8, pt_lo | 3);
        w(pt_lo, 0x34_5000 | 3);
        let ps = PagingState {
            cr0: CR0_PG | 1,
            cr3: pml4,
            cr4: CR4_PAE,
            efer: EFER_LMA | (1 << 8),
        };
        assert_eq!(translate(&m, &ps, va_k), Ok(0x20_0123));
        assert_eq!(translate(&m, &ps, va_dm), Ok(0x4567));
        assert_eq!(translate(&m, &ps, va_4k), Ok(0x34_5abc));
        assert_eq!(
            translate(&m, &ps, 0x40_1000),
            Err(WalkError::NotPresent(0x40_1000, 1))
        );
        assert!(matches!(
            translate(&m, &ps, 0x7f00_0000_0000),
            Err(WalkError::NotPresent(_, 4))
        ));

        // An instruction that straddles two 4 KiB pages mapped to
        // non-adjacent frames is fetched from both.
        w(pt_lo + 8, 0x35_0000 | 3);
        m.write_slice(&[0x0f, 0x01], GuestAddress(0x34_5ffe))
            .unwrap();
        m.write_slice(&[0xca], GuestAddress(0x35_0000)).unwrap();
        let mut buf = [0u8; 3];
        assert_eq!(fetch(&m, &ps, 0x40_0ffe, &mut buf), 3);
        assert_eq!(decode(&buf), Some(Fallback::Clac));
        // Stops at an unmapped page.
        let mut buf = [0u8; 15];
        assert_eq!(fetch(&m, &ps, 0x40_1ffc, &mut buf), 4);
    }

    #[test]
    fn entry_outside_memory_is_reported() {
        let m = mem();
        let ps = PagingState {
            cr0: CR0_PG,
            cr3: 0x4000_0000,
            cr4: CR4_PAE,
            efer: EFER_LMA,
        };
        assert_eq!(
            translate(&m, &ps, 0x1000),
            Err(WalkError::OutsideMemory(0x4000_0000))
        );
    }

    #[test]
    fn legacy_32bit_paging() {
        let m = mem();
        let pd = 0x20_0000u64;
        let pt = 0x20_1000u64;
        m.write_obj(0x40_0083u32, GuestAddress(pd + 4 * 4)).unwrap(); // 4 MiB page at 0x1000000 -> 0x400000
        m.write_obj((pt as u32) | 3, GuestAddress(pd)).unwrap();
        m.write_obj(0x9_9003u32, GuestAddress(pt + 5 * 4)).unwrap();
        let ps = PagingState {
            cr0: CR0_PG | 1,
            cr3: pd,
            cr4: CR4_PSE,
            efer: 0,
        };
        assert_eq!(translate(&m, &ps, 0x100_0010), Ok(0x40_0010));
        assert_eq!(translate(&m, &ps, 0x5123), Ok(0x9_9123));
    }
}
