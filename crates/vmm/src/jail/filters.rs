//! The jail's per-thread seccomp allow-lists (built with `seccompiler`): which system
//! calls and ioctls each kind of monitor thread may make.

use super::*;

/// The three kinds of monitor threads; each gets its own allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: event loop, virtio device backends, serial output,
    /// vCPU kicks, shutdown.
    Vmm,
    /// A vCPU thread: `KVM_RUN` and the exits it handles (port/MMIO devices),
    /// and the device workers it starts. No opening files, no VM-wide ioctls.
    Vcpu,
    /// The control-socket thread: pause/resume/snapshot/shutdown requests.
    Api,
}

/// KVM and terminal ioctl request numbers, computed from the kernel ABI
/// structs in `kvm_bindings` (the numbers in `kvm_ioctls` are private).
pub(super) mod nr {
    #![allow(non_snake_case)]
    use super::*;
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

    const KVMIO: u32 = 0xAE;
    const TUNTAP: u32 = 0x54;

    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
    ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
    ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
    ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
    ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
    ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
    ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
    ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_cpuid2);
    ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
    ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
    ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
    ioctl_io_nr!(KVM_NMI, KVMIO, 0x9a);
    ioctl_iow_nr!(KVM_SET_GUEST_DEBUG, KVMIO, 0x9b, kvm_guest_debug);
    ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
    ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
    ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
    ioctl_iow_nr!(KVM_SET_DEBUGREGS, KVMIO, 0xa2, kvm_debugregs);
    ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
    ioctl_ior_nr!(KVM_GET_XSAVE2, KVMIO, 0xcf, kvm_xsave);
    ioctl_iow_nr!(KVM_SET_XSAVE, KVMIO, 0xa5, kvm_xsave);
    ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
    ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_xcrs);
    ioctl_io_nr!(KVM_KVMCLOCK_CTRL, KVMIO, 0xad);
    ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
    // VM fd.
    ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_irq_level);
    ioctl_iowr_nr!(KVM_IRQ_LINE_STATUS, KVMIO, 0x67, kvm_irq_level);
    ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
    // Sic: the kernel declares KVM_SET_IRQCHIP with _IOR.
    ioctl_ior_nr!(KVM_SET_IRQCHIP, KVMIO, 0x63, kvm_irqchip);
    ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
    ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
    ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
    ioctl_iow_nr!(KVM_SET_CLOCK, KVMIO, 0x7b, kvm_clock_data);
    ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
    ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
    ioctl_iow_nr!(KVM_SET_PIT2, KVMIO, 0xa0, kvm_pit_state2);
    ioctl_iow_nr!(KVM_SIGNAL_MSI, KVMIO, 0xa5, kvm_msi);
    ioctl_iow_nr!(
        KVM_SET_USER_MEMORY_REGION,
        KVMIO,
        0x46,
        kvm_userspace_memory_region
    );
    ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);
    // TAP fds (offloads / header size may be renegotiated when the guest
    // driver (re)negotiates features).
    ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 0xd0, std::os::raw::c_uint);
    ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 0xd8, std::os::raw::c_int);
}

/// Ioctls of a vCPU thread (and of the device worker threads it starts):
/// `KVM_RUN`, its own state (pause/snapshot are served by each vCPU thread on
/// request), interrupt injection from the port devices it emulates, TAP
/// offload renegotiation, terminal queries.
pub(super) fn vcpu_ioctls() -> Vec<u64> {
    [
        nr::KVM_RUN(),
        nr::KVM_GET_REGS(),
        nr::KVM_SET_REGS(),
        nr::KVM_GET_SREGS(),
        nr::KVM_SET_SREGS(),
        nr::KVM_GET_MSRS(),
        nr::KVM_SET_MSRS(),
        nr::KVM_GET_FPU(),
        nr::KVM_SET_FPU(),
        nr::KVM_GET_LAPIC(),
        nr::KVM_SET_LAPIC(),
        nr::KVM_GET_CPUID2(),
        nr::KVM_SET_CPUID2(),
        nr::KVM_GET_MP_STATE(),
        nr::KVM_SET_MP_STATE(),
        nr::KVM_NMI(),
        nr::KVM_GET_VCPU_EVENTS(),
        nr::KVM_SET_VCPU_EVENTS(),
        nr::KVM_GET_DEBUGREGS(),
        nr::KVM_SET_DEBUGREGS(),
        nr::KVM_GET_XSAVE(),
        nr::KVM_GET_XSAVE2(),
        nr::KVM_SET_XSAVE(),
        nr::KVM_GET_XCRS(),
        nr::KVM_SET_XCRS(),
        nr::KVM_KVMCLOCK_CTRL(),
        nr::KVM_GET_TSC_KHZ(),
        nr::KVM_IRQ_LINE(),
        nr::KVM_IRQ_LINE_STATUS(),
        nr::KVM_SIGNAL_MSI(),
        nr::TUNSETOFFLOAD(),
        nr::TUNSETVNETHDRSZ(),
        libc::TCGETS,
        libc::TIOCGWINSZ,
        libc::FIONBIO,
    ]
    .to_vec()
}

/// Ioctls of the VMM and API threads: everything a vCPU may do except
/// `KVM_RUN`, plus VM-wide state (snapshot may run on either thread) and
/// interrupt plumbing. Never `KVM_CREATE_*`.
pub(super) fn control_ioctls() -> Vec<u64> {
    let mut v: Vec<u64> = vcpu_ioctls()
        .into_iter()
        .filter(|&n| n != nr::KVM_RUN())
        .collect();
    v.extend([
        nr::KVM_GET_IRQCHIP(),
        nr::KVM_SET_IRQCHIP(),
        nr::KVM_SET_GSI_ROUTING(),
        nr::KVM_IRQFD(),
        nr::KVM_IOEVENTFD(),
        nr::KVM_SET_CLOCK(),
        nr::KVM_GET_CLOCK(),
        nr::KVM_GET_PIT2(),
        nr::KVM_SET_PIT2(),
        nr::KVM_SET_USER_MEMORY_REGION(),
        nr::KVM_GET_DIRTY_LOG(),
        nr::KVM_SET_GUEST_DEBUG(),
        libc::TCSETS,
    ]);
    v.sort_unstable();
    v.dedup();
    v
}

pub(super) fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> SeccompCondition {
    // Only fails for arg > 5; every call site passes a constant below that.
    SeccompCondition::new(arg, len, op, value).expect("seccomp argument index is 0..=5")
}

pub(super) fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(conds)
}

/// Syscalls of every monitor thread: memory, locks, signals, time, I/O on
/// fds that are already open, polling, exiting.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fcntl,
    libc::SYS_futex,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getrandom,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Device backends' syscalls. Virtio device workers are started by the vCPU
/// thread that activates the device (the guest writes DRIVER_OK) and inherit
/// its filter, so every kind allows these: block I/O, TAP and Unix-socket
/// traffic (vsock connects to `<uds>_<port>`), epoll/eventfd/timerfd, and
/// thread creation.
const DEVICE_IO: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_epoll_create1,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_set_tid_address,
    libc::SYS_clone3,
    // A device backend removes its own Unix socket path (vsock `uds`) when
    // dropped, on whichever thread drops the last reference. Only kept
    // paths are writable in the jail.
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// Extra syscalls of the VMM and API threads: files of a snapshot (which
/// must lie under a kept path).
const CONTROL: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_rmdir,
    libc::SYS_getdents64,
    libc::SYS_ftruncate,
];

/// The allow-list of one thread kind, as `seccompiler` rules.
pub(super) fn rules_for(
    kind: ThreadKind,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    use SeccompCmpArgLen::{Dword, Qword};
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let control = matches!(kind, ThreadKind::Vmm | ThreadKind::Api);
    for &s in COMMON.iter().chain(DEVICE_IO) {
        map.insert(s, vec![]);
    }
    if control {
        for &s in CONTROL {
            map.insert(s, vec![]);
        }
    } else {
        // Allowed here only so that the stacked EACCES filter decides (see
        // `apply_thread_filter`).
        map.insert(libc::SYS_openat, vec![]);
    }
    let eq = |arg, value| cond(arg, Dword, SeccompCmpOp::Eq, value);

    // prctl: naming the own thread only.
    map.insert(
        libc::SYS_prctl,
        vec![rule(vec![eq(0, libc::PR_SET_NAME as u64)])?],
    );
    // Signals only to threads of this process (vCPU kicks, abort).
    map.insert(
        libc::SYS_tgkill,
        vec![rule(vec![eq(0, u64::from(std::process::id()))])?],
    );
    // Memory may be mapped and protected, never made executable.
    let no_exec = |arg| {
        cond(
            arg,
            Dword,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )
    };
    map.insert(libc::SYS_mmap, vec![rule(vec![no_exec(2)])?]);
    map.insert(libc::SYS_mprotect, vec![rule(vec![no_exec(2)])?]);
    // New sockets: Unix domain only (vsock backend, serial socket).
    map.insert(
        libc::SYS_socket,
        vec![rule(vec![eq(0, libc::AF_UNIX as u64)])?],
    );
    // clone: threads only (all of the sharing flags pthread_create passes),
    // never a new process. clone3 passes its flags in memory, which seccomp
    // cannot read: it is allowed here and turned into ENOSYS by a second
    // filter (see `apply_thread_filter`), so glibc falls back to clone.
    let thread_flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM) as u64;
    map.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            Qword,
            SeccompCmpOp::MaskedEq(thread_flags),
            thread_flags,
        )])?],
    );

    // ioctl: only the listed request numbers.
    let requests = if control {
        control_ioctls()
    } else {
        vcpu_ioctls()
    };
    let ioctl_rules = requests
        .into_iter()
        .map(|req| rule(vec![eq(1, req)]))
        .collect::<Result<Vec<_>, _>>()?;
    map.insert(libc::SYS_ioctl, ioctl_rules);
    Ok(map)
}

pub(super) fn arch() -> TargetArch {
    #[cfg(target_arch = "x86_64")]
    {
        TargetArch::x86_64
    }
    #[cfg(target_arch = "aarch64")]
    {
        TargetArch::aarch64
    }
}

/// Compiles the allow-list of `kind`: anything not on it kills the process.
pub fn build_filter(kind: ThreadKind) -> Result<BpfProgram, JailError> {
    let build = |source| JailError::SeccompBuild { kind, source };
    let filter = SeccompFilter::new(
        rules_for(kind).map_err(build)?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch(),
    )
    .map_err(build)?;
    filter.try_into().map_err(build)
}

/// A stacked filter that makes `syscalls` fail with `errno` and allows
/// everything else; the kernel applies the most restrictive verdict of all
/// installed filters, and ERRNO beats ALLOW (but not KILL).
pub(super) fn errno_filter(
    syscalls: &[i64],
    errno: i32,
) -> Result<BpfProgram, seccompiler::BackendError> {
    SeccompFilter::new(
        syscalls.iter().map(|&s| (s, vec![])).collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch(),
    )?
    .try_into()
}

/// Installs the seccomp allow-list of `kind` on the calling thread (and
/// threads it creates later). Sets `no_new_privs` on the thread first, so it
/// works with or without `CAP_SYS_ADMIN`.
///
/// Two soft denials are stacked on top of the allow-list:
/// - `clone3` → ENOSYS for every kind: its flags live in memory seccomp
///   cannot inspect; glibc then falls back to `clone`, whose flags are
///   checked (threads only).
/// - `openat` → EACCES for vCPU threads: glibc's `free` may open
///   `/proc/sys/vm/overcommit_memory` once when it trims a thread arena and
///   copes with a failure; killing the monitor there would be wrong, and a
///   vCPU thread still cannot open anything.
pub fn apply_thread_filter(kind: ThreadKind) -> Result<(), JailError> {
    let install = |source| JailError::SeccompInstall { kind, source };
    let build = |source| JailError::SeccompBuild { kind, source };
    let main = build_filter(kind)?;
    let mut soft = vec![errno_filter(&[libc::SYS_clone3], libc::ENOSYS).map_err(build)?];
    if kind == ThreadKind::Vcpu {
        soft.push(errno_filter(&[libc::SYS_openat], libc::EACCES).map_err(build)?);
    }
    nix::sys::prctl::set_no_new_privs().map_err(sys("setting no_new_privs"))?;
    for f in &soft {
        seccompiler::apply_filter(f).map_err(install)?;
    }
    seccompiler::apply_filter(&main).map_err(install)
}
