//! Seccomp: compiles the OCI spec's `linux.seccomp` profile to a classic BPF
//! program (via libseccomp) and loads it; provides the default profile that
//! `bulkhead-runc spec` writes.
//!
//! Compiling happens in the runtime before fork (it allocates); `load` is a
//! single seccomp(2) call safe to make in the child just before execve.
//! Setting `no_new_privs` is the caller's job.

use std::io::{Read, Seek, SeekFrom};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};

/// The kernel's limit on classic BPF program length (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;

/// A compiled classic-BPF seccomp program, ready for `load` after fork.
#[derive(Clone)]
pub struct BpfProgram {
    insns: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

impl BpfProgram {
    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// SECCOMP_FILTER_FLAG_* bits passed to seccomp(2).
    pub fn flags(&self) -> libc::c_ulong {
        self.flags
    }
}

impl BpfProgram {
    /// The program as bytes: flags (u64 LE), then each instruction as code (u16 LE),
    /// jt, jf (u8) and k (u32 LE).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + 8 * self.insns.len());
        v.extend_from_slice(&self.flags.to_le_bytes());
        for i in &self.insns {
            v.extend_from_slice(&i.code.to_le_bytes());
            v.push(i.jt);
            v.push(i.jf);
            v.extend_from_slice(&i.k.to_le_bytes());
        }
        v
    }

    /// The inverse of [`BpfProgram::to_bytes`]; None when malformed.
    pub fn from_bytes(b: &[u8]) -> Option<BpfProgram> {
        if b.len() < 16 || !(b.len() - 8).is_multiple_of(8) || (b.len() - 8) / 8 > MAX_INSNS {
            return None;
        }
        let flags = libc::c_ulong::from_le_bytes(b[..8].try_into().ok()?);
        let insns = b[8..]
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_le_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Some(BpfProgram { insns, flags })
    }
}

/// Name of the compiled-profile cache directory in a state root.
pub const CACHE_DIR: &str = ".seccomp-cache";

/// [`compile`], reusing an earlier compilation of the same profile from `cache_dir` (in
/// the runtime's state root, written by root only) and storing new ones there. libseccomp's
/// compilation is most of the cost of an `exec` and a large part of a `create`, and zones
/// made by one tool share a profile. An entry holds the profile's JSON and the program; it
/// is used only when the stored JSON equals this profile's byte for byte, so a hash
/// collision can never hand a zone another zone's filter.
pub fn compile_cached(
    s: &LinuxSeccomp,
    cache_dir: &std::path::Path,
) -> Result<BpfProgram, SeccompError> {
    use std::hash::{Hash, Hasher};
    let json = match serde_json::to_vec(s) {
        Ok(j) => j,
        Err(_) => return compile(s),
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    json.hash(&mut h);
    let path = cache_dir.join(format!("{:016x}.bpf", h.finish()));
    if let Ok(entry) = std::fs::read(&path) {
        if entry.len() > 4 {
            let n = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]) as usize;
            if entry.len() > 4 + n && entry[4..4 + n] == json[..] {
                if let Some(p) = BpfProgram::from_bytes(&entry[4 + n..]) {
                    return Ok(p);
                }
            }
        }
    }
    let p = compile(s)?;
    let mut entry = (json.len() as u32).to_le_bytes().to_vec();
    entry.extend_from_slice(&json);
    entry.extend_from_slice(&p.to_bytes());
    let stored = std::fs::create_dir_all(cache_dir)
        .map_err(|e| e.to_string())
        .and_then(|_| crate::state::write_atomic(&path, &entry).map_err(|e| e.to_string()));
    if let Err(e) = stored {
        tracing::debug!("seccomp cache {}: {e}", path.display());
    }
    Ok(p)
}

impl std::fmt::Debug for BpfProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpfProgram")
            .field("instructions", &self.insns.len())
            .field("flags", &self.flags)
            .finish()
    }
}

/// Errors from compiling or loading a seccomp profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: SCMP_ACT_NOTIFY is not supported ({0})")]
    Notify(String),
    #[error("seccomp: {context}: {message}")]
    Libseccomp { context: String, message: String },
    #[error("seccomp: syscall {syscall}: argument index {index} is out of range (0..5)")]
    ArgIndex { syscall: String, index: usize },
    #[error(
        "seccomp: the profile compiles to {0} BPF instructions; the kernel accepts at most 4096"
    )]
    TooLong(usize),
    #[error("seccomp: exporting the BPF program: {0}")]
    Export(std::io::Error),
    #[error("seccomp: loading the filter: {}", nix::errno::Errno::from_raw(*errno).desc())]
    Load { errno: i32 },
    #[error("seccomp: SECCOMP_FILTER_FLAG_TSYNC failed: thread {tid} cannot be synchronised")]
    Tsync { tid: i64 },
}

fn lib_err(
    context: impl Into<String>,
) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let context = context.into();
    move |e| SeccompError::Libseccomp {
        context,
        message: e.to_string(),
    }
}

fn action(
    a: LinuxSeccompAction,
    errno_ret: Option<u32>,
    what: &str,
) -> Result<ScmpAction, SeccompError> {
    let errno = errno_ret.unwrap_or(libc::EPERM as u32);
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno as i32),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno as u16),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => return Err(SeccompError::Notify(what.to_string())),
    })
}

fn arch(a: Arch) -> Option<ScmpArch> {
    Some(match a {
        Arch::ScmpArchNative => return None,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    })
}

fn condition(name: &str, a: &LinuxSeccompArg) -> Result<ScmpArgCompare, SeccompError> {
    if a.index() > 5 {
        return Err(SeccompError::ArgIndex {
            syscall: name.to_string(),
            index: a.index(),
        });
    }
    let idx = a.index() as u32;
    let op = match a.op() {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            // OCI: value is the mask, valueTwo the value compared after masking;
            // a missing valueTwo is 0, as in runc and libseccomp-golang (Docker's
            // default profile writes `{"value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}`).
            let datum = a.value_two().unwrap_or(0);
            return Ok(ScmpArgCompare::new(
                idx,
                ScmpCompareOp::MaskedEqual(a.value()),
                datum,
            ));
        }
    };
    Ok(ScmpArgCompare::new(idx, op, a.value()))
}

fn add_syscall_rules(
    ctx: &mut ScmpFilterContext,
    i: usize,
    sc: &LinuxSyscall,
    default: ScmpAction,
) -> Result<(), SeccompError> {
    let first = sc.names().first().cloned().unwrap_or_default();
    let act = action(
        sc.action(),
        sc.errno_ret(),
        &format!("syscalls[{i}] ({first})"),
    )?;
    if act == default {
        // libseccomp refuses rules that repeat the default; they change nothing.
        return Ok(());
    }
    let args = sc.args().clone().unwrap_or_default();
    let conds = args
        .iter()
        .map(|a| condition(&first, a))
        .collect::<Result<Vec<_>, _>>()?;
    // libseccomp refuses two comparisons of the same argument in one rule;
    // then every condition becomes a rule of its own (as runc does).
    let shared_index = args
        .iter()
        .enumerate()
        .any(|(k, a)| args[..k].iter().any(|b| b.index() == a.index()));
    for name in sc.names() {
        let Ok(sys) = ScmpSyscall::from_name(name) else {
            // Unknown on this architecture: skipped, like runc.
            continue;
        };
        let ctx_text = || format!("adding rule for syscall {name} (syscalls[{i}])");
        if conds.is_empty() {
            ctx.add_rule(act, sys).map_err(lib_err(ctx_text()))?;
        } else if shared_index {
            for c in &conds {
                ctx.add_rule_conditional(act, sys, std::slice::from_ref(c))
                    .map_err(lib_err(ctx_text()))?;
            }
        } else {
            ctx.add_rule_conditional(act, sys, &conds)
                .map_err(lib_err(ctx_text()))?;
        }
    }
    Ok(())
}

/// Compiles a profile to BPF. Runs before fork: it allocates.
pub fn compile(s: &LinuxSeccomp) -> Result<BpfProgram, SeccompError> {
    let default = action(s.default_action(), s.default_errno_ret(), "defaultAction")?;
    let mut ctx = ScmpFilterContext::new(default).map_err(lib_err("creating the filter"))?;
    for a in s.architectures().iter().flatten() {
        let Some(sa) = arch(*a) else { continue };
        let present = ctx
            .is_arch_present(sa)
            .map_err(lib_err(format!("architecture {a}")))?;
        if !present {
            ctx.add_arch(sa)
                .map_err(lib_err(format!("adding architecture {a}")))?;
        }
    }
    let mut flags: libc::c_ulong = 0;
    for f in s.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            // Only meaningful with a user-notification listener, which is
            // not supported; the kernel would refuse it without one.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
        };
    }
    // libseccomp >= 2.5 can sort the syscall checks into a binary tree,
    // which makes long allow-lists cheaper per syscall. Older versions
    // refuse the attribute; the filter is then linear, and still correct.
    let _ = ctx.set_ctl_optimize(2);
    for (i, sc) in s.syscalls().iter().flatten().enumerate() {
        add_syscall_rules(&mut ctx, i, sc, default)?;
    }
    let insns = export(&ctx)?;
    if insns.len() > MAX_INSNS {
        return Err(SeccompError::TooLong(insns.len()));
    }
    Ok(BpfProgram { insns, flags })
}

/// Exports the filter through a memfd (libseccomp 2.5 has no in-memory export).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<libc::sock_filter>, SeccompError> {
    let fd =
        nix::sys::memfd::memfd_create(c"bulkhead-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| SeccompError::Export(std::io::Error::from(e)))?;
    let mut file = std::fs::File::from(fd);
    ctx.export_bpf(&file)
        .map_err(lib_err("exporting the BPF program"))?;
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(SeccompError::Export)?;
    const SZ: usize = std::mem::size_of::<libc::sock_filter>();
    if bytes.len() % SZ != 0 {
        return Err(SeccompError::Export(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} bytes is not a whole number of BPF instructions",
                bytes.len()
            ),
        )));
    }
    Ok(bytes
        .chunks_exact(SZ)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// Installs the filter on the calling thread (all threads with TSYNC).
/// Does not allocate: safe between fork and execve. The caller must have set
/// `no_new_privs` or hold CAP_SYS_ADMIN.
pub fn load(p: &BpfProgram) -> Result<(), SeccompError> {
    let prog = libc::sock_fprog {
        len: p.insns.len() as libc::c_ushort,
        filter: p.insns.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `p.insns`, which outlives the call; the
    // kernel copies the program and keeps no pointer to it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
            p.flags,
            &prog as *const libc::sock_fprog,
        )
    };
    match rc {
        0 => Ok(()),
        tid if tid > 0 => Err(SeccompError::Tsync { tid }),
        _ => Err(SeccompError::Load {
            errno: nix::errno::Errno::last_raw(),
        }),
    }
}

pub fn supported_actions() -> Vec<String> {
    [
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_LOG",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_TRAP",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub fn supported_operators() -> Vec<String> {
    [
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_LE",
        "SCMP_CMP_LT",
        "SCMP_CMP_MASKED_EQ",
        "SCMP_CMP_NE",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub fn supported_archs() -> Vec<String> {
    // Those libseccomp 2.5 (Debian 12) knows.
    [
        "SCMP_ARCH_AARCH64",
        "SCMP_ARCH_ARM",
        "SCMP_ARCH_MIPS",
        "SCMP_ARCH_MIPS64",
        "SCMP_ARCH_MIPS64N32",
        "SCMP_ARCH_MIPSEL",
        "SCMP_ARCH_MIPSEL64",
        "SCMP_ARCH_MIPSEL64N32",
        "SCMP_ARCH_PARISC",
        "SCMP_ARCH_PARISC64",
        "SCMP_ARCH_PPC",
        "SCMP_ARCH_PPC64",
        "SCMP_ARCH_PPC64LE",
        "SCMP_ARCH_RISCV64",
        "SCMP_ARCH_S390",
        "SCMP_ARCH_S390X",
        "SCMP_ARCH_X32",
        "SCMP_ARCH_X86",
        "SCMP_ARCH_X86_64",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Syscalls the default profile allows unconditionally: what libc, shells,
/// busybox, language runtimes and servers use. Left out (so they fail with
/// EPERM): module loading, kexec, bpf, perf_event_open, mount and the new
/// mount API, pivot_root, namespaces (unshare/setns), swap, reboot, clock
/// setting, kernel keyrings, userfaultfd, io_uring, raw I/O ports, quotactl,
/// syslog, acct, handle-based open, lookup_dcookie, vm86, uselib.
#[rustfmt::skip]
const DEFAULT_ALLOWED: &[&str] = &[
    // process lifecycle and identity
    "arch_prctl", "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "vfork",
    "wait4", "waitid", "waitpid", "getpid", "getppid", "gettid", "getpgid", "getpgrp", "getsid",
    "setpgid", "setsid", "getuid", "getuid32", "geteuid", "geteuid32", "getgid", "getgid32",
    "getegid", "getegid32", "getresuid", "getresuid32", "getresgid", "getresgid32", "getgroups",
    "getgroups32", "setuid", "setuid32", "setgid", "setgid32", "setreuid", "setreuid32",
    "setregid", "setregid32", "setresuid", "setresuid32", "setresgid", "setresgid32", "setgroups",
    "setgroups32", "setfsuid", "setfsuid32", "setfsgid", "setfsgid32", "prctl", "seccomp",
    "set_tid_address", "set_robust_list", "get_robust_list", "rseq", "set_thread_area",
    "get_thread_area", "restart_syscall", "uname", "sysinfo", "times", "getrusage", "getrlimit",
    "ugetrlimit", "setrlimit", "prlimit64", "getpriority", "setpriority", "umask", "chroot",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open", "pidfd_getfd",
    "pidfd_send_signal", "process_mrelease", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "membarrier", "ioprio_get", "ioprio_set",
    // scheduling
    "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getattr", "sched_setattr",
    "sched_getparam", "sched_setparam", "sched_getscheduler", "sched_setscheduler",
    "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "getcpu",
    // signals
    "kill", "tkill", "tgkill", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
    "rt_sigqueueinfo", "rt_tgsigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "sigaction", "sigaltstack", "signal", "signalfd", "signalfd4",
    "sigpending", "sigprocmask", "sigreturn", "sigsuspend", "pause",
    // memory
    "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync",
    "mlock", "mlock2", "mlockall", "munlock", "munlockall", "memfd_create", "memfd_secret",
    "remap_file_pages", "pkey_alloc", "pkey_free", "pkey_mprotect", "get_mempolicy",
    "set_mempolicy", "mbind", "map_shadow_stack", "cachestat",
    // files and directories
    "access", "faccessat", "faccessat2", "open", "openat", "openat2", "creat", "close",
    "close_range", "read", "readv", "pread64", "preadv", "preadv2", "write", "writev", "pwrite64",
    "pwritev", "pwritev2", "lseek", "_llseek", "dup", "dup2", "dup3", "fcntl", "fcntl64", "flock",
    "fsync", "fdatasync", "sync", "syncfs", "sync_file_range", "arm_sync_file_range",
    "sync_file_range2", "fadvise64", "fadvise64_64", "arm_fadvise64_64", "fallocate", "readahead",
    "truncate", "truncate64", "ftruncate", "ftruncate64", "stat", "stat64", "lstat", "lstat64",
    "fstat", "fstat64", "fstatat64", "newfstatat", "statx", "statfs", "statfs64", "fstatfs",
    "fstatfs64", "getdents", "getdents64", "getcwd", "chdir", "fchdir", "mkdir", "mkdirat",
    "rmdir", "rename", "renameat", "renameat2", "link", "linkat", "unlink", "unlinkat", "symlink",
    "symlinkat", "readlink", "readlinkat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown",
    "chown32", "fchown", "fchown32", "fchownat", "lchown", "lchown32", "mknod", "mknodat",
    "utime", "utimes", "utimensat", "utimensat_time64", "futimesat", "getxattr", "lgetxattr",
    "fgetxattr", "setxattr", "lsetxattr", "fsetxattr", "listxattr", "llistxattr", "flistxattr",
    "removexattr", "lremovexattr", "fremovexattr", "copy_file_range", "sendfile", "sendfile64",
    "splice", "tee", "vmsplice", "ioctl", "inotify_init", "inotify_init1", "inotify_add_watch",
    "inotify_rm_watch", "fanotify_mark", "pipe", "pipe2", "name_to_handle_at",
    // polling, events, timers
    "select", "_newselect", "pselect6", "pselect6_time64", "poll", "ppoll", "ppoll_time64",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_wait", "epoll_wait_old",
    "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "futex", "futex_time64", "futex_waitv",
    "futex_wake", "futex_wait", "futex_requeue", "nanosleep", "clock_nanosleep",
    "clock_nanosleep_time64", "clock_gettime", "clock_gettime64", "clock_getres",
    "clock_getres_time64", "gettimeofday", "time", "alarm", "getitimer", "setitimer",
    "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64",
    "timer_settime", "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
    "timerfd_settime", "timerfd_settime64", "adjtimex", "clock_adjtime", "clock_adjtime64",
    // asynchronous I/O
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64",
    // System V and POSIX IPC
    "ipc", "msgctl", "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget", "mq_open", "mq_unlink",
    "mq_getsetattr", "mq_notify", "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend",
    "mq_timedsend_time64",
    // sockets
    "socket", "socketpair", "socketcall", "bind", "listen", "accept", "accept4", "connect",
    "getsockname", "getpeername", "getsockopt", "setsockopt", "send", "sendto", "sendmsg",
    "sendmmsg", "recv", "recvfrom", "recvmsg", "recvmmsg", "recvmmsg_time64", "shutdown",
    // architecture specific helpers
    "breakpoint", "cacheflush", "set_tls", "riscv_flush_icache", "s390_pci_mmio_read",
    "s390_pci_mmio_write", "s390_runtime_instr", "sync_file_range2",
    // randomness
    "getrandom",
];

/// personality(2) values that are safe: Linux, 32-bit Linux, UNAME26 and
/// the query value 0xffffffff.
const SAFE_PERSONALITIES: &[u64] = &[0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// clone(2) flags creating namespaces: NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
/// NEWUSER, NEWPID, NEWNET.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

fn default_archs() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        Vec::new()
    }
}

fn syscall_rule(
    names: &[&str],
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    args: Vec<LinuxSeccompArg>,
) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(action);
    s.set_errno_ret(errno_ret);
    s.set_args((!args.is_empty()).then_some(args));
    s
}

fn arg(
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
) -> LinuxSeccompArg {
    let mut b = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    if let Some(v) = value_two {
        b = b.value_two(v);
    }
    // Every field has a default, so building cannot fail.
    b.build().expect("LinuxSeccompArg from constants")
}

/// The default profile: deny with EPERM, allow a list of ordinary syscalls;
/// `personality` only with safe values, `clone` only without namespace
/// flags, `clone3` answers ENOSYS so libc falls back to the checked `clone`.
pub fn default_profile() -> LinuxSeccomp {
    let allow = LinuxSeccompAction::ScmpActAllow;
    let mut rules = vec![syscall_rule(DEFAULT_ALLOWED, allow, None, Vec::new())];
    for p in SAFE_PERSONALITIES {
        rules.push(syscall_rule(
            &["personality"],
            allow,
            None,
            vec![arg(0, *p, None, LinuxSeccompOperator::ScmpCmpEq)],
        ));
    }
    // The flags are clone's first argument everywhere but s390, where the
    // stack comes first.
    let flags_index = if cfg!(target_arch = "s390x") { 1 } else { 0 };
    rules.push(syscall_rule(
        &["clone"],
        allow,
        None,
        vec![arg(
            flags_index,
            CLONE_NAMESPACE_FLAGS,
            Some(0),
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        )],
    ));
    rules.push(syscall_rule(
        &["clone3"],
        LinuxSeccompAction::ScmpActErrno,
        Some(libc::ENOSYS as u32),
        Vec::new(),
    ));
    let mut s = LinuxSeccomp::default();
    s.set_default_action(LinuxSeccompAction::ScmpActErrno);
    s.set_default_errno_ret(Some(libc::EPERM as u32));
    let archs = default_archs();
    s.set_architectures((!archs.is_empty()).then_some(archs));
    s.set_syscalls(Some(rules));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::testutil::{errno, fork_gated};
    use nix::sys::signal::Signal;
    use nix::sys::wait::WaitStatus;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).expect("profile json")
    }

    #[test]
    fn compiled_programs_round_trip_through_the_cache() {
        let prof = default_profile();
        let compiled = compile(&prof).unwrap();
        let back = BpfProgram::from_bytes(&compiled.to_bytes()).unwrap();
        assert_eq!(back.to_bytes(), compiled.to_bytes());
        assert_eq!(back.flags(), compiled.flags());
        assert!(BpfProgram::from_bytes(&[1, 2, 3]).is_none());
        assert!(BpfProgram::from_bytes(&compiled.to_bytes()[..20]).is_none());
        let dir = std::env::temp_dir().join(format!("bh-seccomp-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = compile_cached(&prof, &dir).unwrap();
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(entries.len(), 1, "the first compilation is cached");
        let second = compile_cached(&prof, &dir).unwrap();
        assert_eq!(first.to_bytes(), second.to_bytes());
        // Another profile gets its own entry, never the first one's program.
        let other = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        let o = compile_cached(&other, &dir).unwrap();
        assert_ne!(o.to_bytes(), first.to_bytes());
        assert_eq!(o.to_bytes(), compile(&other).unwrap().to_bytes());
        // A damaged entry is ignored and replaced.
        std::fs::write(&entries[0], b"garbage").unwrap();
        assert_eq!(
            compile_cached(&prof, &dir).unwrap().to_bytes(),
            first.to_bytes()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Runs `body` in a child under `prog` (no_new_privs set first) and
    /// returns how it ended.
    fn run_under(prog: &BpfProgram, body: impl FnOnce() -> i32) -> WaitStatus {
        let p = prog.clone();
        let mut child = fork_gated(move || {
            // SAFETY: prctl with constant arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return 201;
            }
            if load(&p).is_err() {
                return 202;
            }
            body()
        });
        child.release();
        child.wait()
    }

    fn exit_code(st: WaitStatus) -> i32 {
        match st {
            WaitStatus::Exited(_, c) => c,
            other => panic!("child did not exit normally: {other:?}"),
        }
    }

    #[test]
    fn errno_action_with_custom_errno() {
        let prog = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["getcwd"],"action":"SCMP_ACT_ERRNO","errnoRet":77},
                {"names":["getppid"],"action":"SCMP_ACT_ERRNO"}]}"#,
        ))
        .expect("compile");
        assert!(!prog.is_empty());
        let st = run_under(&prog, || {
            let mut buf = [0u8; 256];
            // SAFETY: raw syscalls into a live buffer.
            unsafe {
                if libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) != -1 {
                    return 1;
                }
                let e = errno();
                if libc::syscall(libc::SYS_getppid) != -1 || errno() != libc::EPERM {
                    return 2;
                }
                e
            }
        });
        assert_eq!(exit_code(st), 77, "getcwd must fail with errnoRet 77");
    }

    #[test]
    fn argument_condition_selects_calls() {
        // mkdir fails with EPERM only when mode == 0o700.
        let prog = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1,
                 "args":[{"index":1,"value":448,"op":"SCMP_CMP_EQ"}]}]}"#,
        ))
        .expect("compile");
        let st = run_under(&prog, || {
            let p = c"/nonexistent-bulkhead-dir/x";
            // SAFETY: raw mkdir syscalls on a NUL-terminated path.
            unsafe {
                let r1 = libc::syscall(libc::SYS_mkdir, p.as_ptr(), 0o700);
                let e1 = errno();
                let r2 = libc::syscall(libc::SYS_mkdir, p.as_ptr(), 0o755);
                let e2 = errno();
                match (r1, e1, r2, e2) {
                    (-1, libc::EPERM, -1, libc::ENOENT) => 0,
                    (_, libc::ENOENT, _, _) => 1,
                    _ => 2,
                }
            }
        });
        assert_eq!(
            exit_code(st),
            0,
            "1: condition did not match 0o700; 2: other"
        );
    }

    #[test]
    fn kill_actions_kill() {
        for action in [
            "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_KILL",
            "SCMP_ACT_KILL_THREAD",
        ] {
            let prog = compile(&profile(&format!(
                r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{{"names":["getppid"],"action":"{action}"}}]}}"#
            )))
            .expect("compile");
            let st = run_under(&prog, || {
                // SAFETY: a raw syscall without arguments.
                unsafe { libc::syscall(libc::SYS_getppid) };
                0
            });
            assert!(
                matches!(st, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
                "{action}: {st:?}"
            );
        }
    }

    #[test]
    fn trap_log_trace_and_tsync() {
        let prog = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_TSYNC"],"syscalls":[
                {"names":["getppid"],"action":"SCMP_ACT_LOG"},
                {"names":["getpgrp"],"action":"SCMP_ACT_TRACE"},
                {"names":["getsid"],"action":"SCMP_ACT_TRAP"}]}"#,
        ))
        .expect("compile");
        assert_eq!(prog.flags(), libc::SECCOMP_FILTER_FLAG_TSYNC);
        let st = run_under(&prog, || {
            // SAFETY: raw syscalls without pointer arguments.
            unsafe {
                // LOG: allowed (and logged).
                if libc::syscall(libc::SYS_getppid) <= 0 {
                    return 1;
                }
                // TRACE with no tracer attached: fails with ENOSYS.
                if libc::syscall(libc::SYS_getpgrp) != -1 || errno() != libc::ENOSYS {
                    return 2;
                }
                // TRAP: SIGSYS, which kills us by default.
                libc::syscall(libc::SYS_getsid, 0);
            }
            3
        });
        assert!(
            matches!(st, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
            "exit 1: LOG blocked, 2: TRACE did not give ENOSYS, 3: TRAP did not signal: {st:?}"
        );
    }

    #[test]
    fn masked_eq_and_multiple_conditions() {
        // dup3 is refused when newfd == 100 AND (flags & O_CLOEXEC) == O_CLOEXEC
        // (two indices: one rule, AND). umask is refused for 0o22 OR 0o77
        // (same index twice: split into two rules).
        let cloexec = libc::O_CLOEXEC as u64;
        let prog = compile(&profile(&format!(
            r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {{"names":["dup3"],"action":"SCMP_ACT_ERRNO","errnoRet":13,"args":[
                    {{"index":1,"value":100,"op":"SCMP_CMP_EQ"}},
                    {{"index":2,"value":{cloexec},"valueTwo":{cloexec},"op":"SCMP_CMP_MASKED_EQ"}}]}},
                {{"names":["umask"],"action":"SCMP_ACT_ERRNO","errnoRet":1,"args":[
                    {{"index":0,"value":18,"op":"SCMP_CMP_EQ"}},
                    {{"index":0,"value":63,"op":"SCMP_CMP_EQ"}}]}}]}}"#
        )))
        .expect("compile (libseccomp would refuse the umask rule unsplit)");
        let st = run_under(&prog, || {
            let mut bad = 0;
            // SAFETY: raw syscalls on descriptors we own in the child.
            unsafe {
                if libc::syscall(libc::SYS_dup3, 0, 100, libc::O_CLOEXEC) != -1
                    || errno() != libc::EACCES
                {
                    bad |= 1;
                }
                if libc::syscall(libc::SYS_dup3, 0, 101, libc::O_CLOEXEC) != 101 {
                    bad |= 2;
                }
                if libc::syscall(libc::SYS_dup3, 0, 100, 0) != 100 {
                    bad |= 4;
                }
                if libc::syscall(libc::SYS_umask, 0o22) != -1 || errno() != libc::EPERM {
                    bad |= 8;
                }
                if libc::syscall(libc::SYS_umask, 0o77) != -1 || errno() != libc::EPERM {
                    bad |= 16;
                }
                if libc::syscall(libc::SYS_umask, 0o11) == -1 {
                    bad |= 32;
                }
            }
            bad
        });
        assert_eq!(exit_code(st), 0, "failed checks bitmask");
    }

    #[test]
    fn profile_errors_are_precise() {
        let e = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        ))
        .expect_err("notify");
        assert!(
            e.to_string().contains("SCMP_ACT_NOTIFY is not supported"),
            "{e}"
        );
        let e = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO",
                "args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        ))
        .expect_err("index");
        assert!(
            e.to_string().contains("syscall read: argument index 6"),
            "{e}"
        );
        // Unknown names are skipped; rules equal to the default are skipped.
        let p = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],
                "flags":["SECCOMP_FILTER_FLAG_LOG"],
                "syscalls":[{"names":["no_such_syscall_bulkhead","read"],"action":"SCMP_ACT_ALLOW"},
                            {"names":["write"],"action":"SCMP_ACT_ERRNO"}]}"#,
        ))
        .expect("unknown names skipped");
        assert_eq!(p.flags(), libc::SECCOMP_FILTER_FLAG_LOG);
    }

    #[test]
    fn default_profile_compiles_and_runs_busybox() {
        let busybox = std::path::Path::new("/bin/busybox");
        if !busybox.exists() {
            println!("SKIPPED: /bin/busybox not installed (apt-get install busybox-static)");
            return;
        }
        let prof = default_profile();
        // The profile round-trips through config.json.
        let json = serde_json::to_string(&prof).expect("serialise");
        let back: LinuxSeccomp = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, prof);
        let prog = compile(&prof).expect("default profile compiles");
        println!("default profile: {} BPF instructions", prog.len());
        let cases: &[&[&std::ffi::CStr]] = &[
            &[c"/bin/busybox", c"true"],
            &[c"/bin/busybox", c"ls", c"-la", c"/", c"/proc/self/"],
            &[
                c"/bin/busybox",
                c"sh",
                c"-c",
                c"x=$(busybox echo hi); [ \"$x\" = hi ] && busybox cat /proc/self/status >/dev/null && busybox date >/dev/null && busybox ps >/dev/null",
            ],
        ];
        for argv in cases {
            let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
            ptrs.push(std::ptr::null());
            let env = [c"PATH=/bin:/usr/bin".as_ptr(), std::ptr::null()];
            let st = run_under(&prog, || {
                // SAFETY: stdout to /dev/null, then execve with
                // NUL-terminated arrays built before fork.
                unsafe {
                    let fd = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                    if fd >= 0 {
                        libc::dup2(fd, 1);
                    }
                    libc::execve(ptrs[0], ptrs.as_ptr(), env.as_ptr());
                }
                203
            });
            assert_eq!(exit_code(st), 0, "{argv:?} under the default profile");
        }
        // What the profile denies, even to root.
        let st = run_under(&prog, || {
            let mut bad = 0;
            // SAFETY: raw syscalls that the filter must refuse.
            unsafe {
                if libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNS) != -1
                    || errno() != libc::EPERM
                {
                    bad |= 1;
                }
                let r = libc::syscall(
                    libc::SYS_clone,
                    (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
                    0,
                    0,
                    0,
                    0,
                );
                if r == 0 {
                    libc::_exit(0);
                }
                if r != -1 || errno() != libc::EPERM {
                    bad |= 2;
                }
                if libc::syscall(libc::SYS_personality, 0x0040000) != -1 || errno() != libc::EPERM {
                    bad |= 4;
                }
                if libc::syscall(libc::SYS_personality, 0xffff_ffffu32) == -1 {
                    bad |= 8;
                }
                if libc::syscall(libc::SYS_bpf, 0, 0, 0) != -1 || errno() != libc::EPERM {
                    bad |= 16;
                }
                if libc::syscall(libc::SYS_clone3, 0, 0) != -1 || errno() != libc::ENOSYS {
                    bad |= 32;
                }
                // A plain fork (clone without namespace flags) works.
                let pid = libc::fork();
                if pid == 0 {
                    libc::_exit(0);
                }
                if pid < 0 {
                    bad |= 64;
                } else {
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
            }
            bad
        });
        assert_eq!(exit_code(st), 0, "failed checks bitmask");
    }

    #[test]
    fn supported_lists_are_consistent() {
        assert!(supported_actions().contains(&"SCMP_ACT_ERRNO".to_string()));
        assert!(!supported_actions().contains(&"SCMP_ACT_NOTIFY".to_string()));
        assert_eq!(supported_operators().len(), 7);
        assert!(supported_archs().contains(&"SCMP_ARCH_X86_64".to_string()));
    }
}
