//! Device access control on cgroup v2: turns the OCI device rules into a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program and attaches it to the zone's
//! cgroup with `BPF_CGROUP_DEVICE`.
//!
//! Hand-rolled on purpose: the program is a short straight-line list of
//! compares, and the crates that could assemble/load it (aya, libbpf-rs)
//! pull in a BPF toolchain or libbpf, which is far more than the dozen
//! instructions and three bpf(2) commands needed here.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::CgroupError;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

// Kernel values in struct bpf_cgroup_dev_ctx.access_type.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
const ACC_ALL: i32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// One eBPF instruction (struct bpf_insn).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    // The dst_reg:4/src_reg:4 bitfield order follows the byte order.
    #[cfg(target_endian = "little")]
    let regs = (src << 4) | (dst & 0x0f);
    #[cfg(target_endian = "big")]
    let regs = (dst << 4) | (src & 0x0f);
    Insn {
        code,
        regs,
        off,
        imm,
    }
}

// Opcodes used (class | op | source).
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const AND_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const RSH_K: u8 = 0x77; // BPF_ALU64 | BPF_RSH | BPF_K
const MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const MOV_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// Marker for "jump to the next rule"; patched once the block length is known.
const NEXT: i16 = i16::MIN;

fn rule_err(value: impl ToString, reason: &str) -> CgroupError {
    CgroupError::InvalidResource {
        field: "devices[]".into(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Assembles the program. Registers: r2 = device type, r3 = requested
/// access bits, r4 = major, r5 = minor. Rules are checked last to first, the
/// first match decides (so a later rule overrides an earlier one, as with
/// the v1 controller); nothing matching means deny.
pub(crate) fn assemble(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Insn>, CgroupError> {
    let mut prog = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        let typ = match r.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => None,
            LinuxDeviceType::B => Some(DEV_BLOCK),
            LinuxDeviceType::C | LinuxDeviceType::U => Some(DEV_CHAR),
            // FIFOs are not devices; the device hook never sees them.
            LinuxDeviceType::P => continue,
        };
        let num = |v: Option<i64>| -> Result<Option<i32>, CgroupError> {
            match v {
                None | Some(-1) => Ok(None),
                Some(n) => i32::try_from(n)
                    .ok()
                    .filter(|n| *n >= 0)
                    .map(Some)
                    .ok_or_else(|| rule_err(n, "device number out of range")),
            }
        };
        let major = num(r.major())?;
        let minor = num(r.minor())?;
        let access_text = r.access().clone().unwrap_or_default();
        let mut access = 0;
        for c in access_text.chars() {
            access |= match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                _ => return Err(rule_err(&access_text, "access may only contain r, w, m")),
            };
        }
        if access == 0 {
            access = ACC_ALL;
        }
        let mut block = Vec::new();
        if let Some(t) = typ {
            block.push(insn(JNE_K, 2, 0, NEXT, t));
        }
        if access != ACC_ALL {
            block.push(insn(MOV_X, 0, 3, 0, 0));
            if r.allow() {
                // Allow only if every requested bit is allowed.
                block.push(insn(AND_K, 0, 0, 0, !access & ACC_ALL));
                block.push(insn(JNE_K, 0, 0, NEXT, 0));
            } else {
                // Deny if any requested bit is denied.
                block.push(insn(AND_K, 0, 0, 0, access));
                block.push(insn(JEQ_K, 0, 0, NEXT, 0));
            }
        }
        if let Some(m) = major {
            block.push(insn(JNE_K, 4, 0, NEXT, m));
        }
        if let Some(m) = minor {
            block.push(insn(JNE_K, 5, 0, NEXT, m));
        }
        let unconditional = block.is_empty();
        block.push(insn(MOV_K, 0, 0, 0, i32::from(r.allow())));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let n = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.off == NEXT {
                // Jump offsets count from the next instruction.
                ins.off = (n - i - 1) as i16;
            }
        }
        prog.extend(block);
        if unconditional {
            // Anything after it would be unreachable, which the verifier rejects.
            return Ok(prog);
        }
    }
    prog.push(insn(MOV_K, 0, 0, 0, 0));
    prog.push(insn(EXIT, 0, 0, 0, 0));
    Ok(prog)
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] prefix of union
    // bpf_attr for `cmd`; its size is passed so the kernel reads no further.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` was just returned by bpf(2) as a new descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn load(prog: &[Insn]) -> Result<OwnedFd, (String, std::io::Error)> {
    let license = b"Apache-2.0\0";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    attr.prog_name[..8].copy_from_slice(b"bulkhead");
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            // Load again with the verifier log to say why.
            let mut log = vec![0u8; 64 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            if let Ok(fd) = bpf(BPF_PROG_LOAD, &mut attr) {
                return Ok(owned(fd));
            }
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            Err((format!("BPF_PROG_LOAD (verifier: {last})"), e))
        }
    }
}

/// Replaces the zone's device program with one built from `rules`.
pub(crate) fn apply(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), CgroupError> {
    let prog = assemble(rules)?;
    let err = |op: &str, source| CgroupError::Bpf {
        path: dir.to_path_buf(),
        op: op.to_string(),
        source,
    };
    let cg = File::open(dir).map_err(|e| err("opening the cgroup directory", e))?;
    let cg_fd = cg.as_raw_fd() as u32;

    // Programs attached before (an earlier apply): detached after the new
    // one is in place, so the zone is never without a filter.
    let mut ids = [0u32; 64];
    let mut q = QueryAttr {
        target_fd: cg_fd,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut q).map_err(|e| err("BPF_PROG_QUERY", e))?;
    let old_count = (q.prog_cnt as usize).min(ids.len());
    let mut old = Vec::new();
    for id in &ids[..old_count] {
        let mut g = GetFdAttr {
            prog_id: *id,
            ..Default::default()
        };
        old.push(owned(
            bpf(BPF_PROG_GET_FD_BY_ID, &mut g).map_err(|e| err("BPF_PROG_GET_FD_BY_ID", e))?,
        ));
    }

    let fd = load(&prog).map_err(|(op, e)| err(&op, e))?;
    let mut a = AttachAttr {
        target_fd: cg_fd,
        attach_bpf_fd: fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut a).map_err(|e| err("BPF_PROG_ATTACH", e))?;
    for o in old {
        let mut d = AttachAttr {
            target_fd: cg_fd,
            attach_bpf_fd: o.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        bpf(BPF_PROG_DETACH, &mut d).map_err(|e| err("BPF_PROG_DETACH", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    #[test]
    fn jumps_land_on_next_rule_and_unconditional_rule_ends_program() {
        let rules = vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()
                .expect("rule"),
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(1i64)
                .minor(3i64)
                .access("rw")
                .build()
                .expect("rule"),
        ];
        let p = assemble(&rules).expect("assemble");
        // prologue 6; rule "c 1:3 rw" = jne type, mov, and, jne, jne maj, jne min, mov, exit = 8;
        // deny-all rule = mov, exit; nothing after it.
        assert_eq!(p.len(), 6 + 8 + 2);
        for (i, ins) in p[6..14].iter().enumerate() {
            if ins.code == JNE_K || ins.code == JEQ_K {
                assert_eq!(
                    i as i16 + 1 + ins.off,
                    8,
                    "jump at {i} must land on next block"
                );
            }
        }
        assert_eq!(p[14], insn(MOV_K, 0, 0, 0, 0));
        assert_eq!(p[15].code, EXIT);
    }
}
