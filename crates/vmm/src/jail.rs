//! The monitor's jail: after the VM is fully set up, the `bulkhead-vmm`
//! process confines itself (inside its own process, unlike a separate
//! jailer binary) so that a guest that takes over a device emulator finds
//! little to attack.
//!
//! [`enter`] gives the process a private mount namespace whose root is a
//! fresh, read-only tmpfs holding only the paths the monitor still needs
//! (bind-mounted at their original absolute paths, so the monitor's path
//! strings keep working), new network/IPC/UTS namespaces, no capabilities in
//! any set, `no_new_privs`, and optionally an unprivileged uid/gid.
//! [`apply_thread_filter`] installs a per-thread seccomp allow-list built with
//! `seccompiler`; a violation kills the whole process with `SIGSYS`.
//!
//! # Contract with the caller (the order matters)
//! 1. Open everything first: `/dev/kvm`, the VM and vCPU fds, guest memory,
//!    disk images, TAP fds, serial output, listening sockets (control socket,
//!    vsock `uds`). Nothing opened by path after this point is reachable unless
//!    it lies under a `keep_paths` entry (e.g. vsock's `<uds>_<port>`
//!    listeners → keep the directory of `uds`; snapshot targets → keep the
//!    snapshot directory).
//! 2. Call [`enter`] while the process is still **single-threaded**: mount
//!    namespaces, capability sets and the bounding set are per thread, so a
//!    thread that already exists would stay outside the jail. Helper threads
//!    started earlier must have been joined; `enter` gives joined threads a
//!    moment to leave the thread group and refuses to run with more than one
//!    thread after that.
//! 3. Spawn the vCPU and API threads; each calls [`apply_thread_filter`] with
//!    its kind as its first action; the main (VMM) thread calls it with
//!    [`ThreadKind::Vmm`] once its threads are spawned. Threads started later
//!    (virtio device workers, started by the vCPU thread that activates the
//!    device) inherit their creator's filter, which is why the vCPU
//!    allow-list includes the device backends' I/O.
//!
//! # Network namespace
//! The jail unshares the network namespace. This is safe because it happens
//! after every network-related fd is open: a TAP fd stays attached to the
//! interface in the namespace it was opened in, and AF_UNIX sockets with a
//! path name are found through the file system (the bind-mounted paths), not
//! through the network namespace. After `enter` the monitor cannot open a
//! new TCP/UDP socket that reaches the host's networks.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_dirty_log, kvm_fpu, kvm_guest_debug,
    kvm_ioeventfd, kvm_irq_level, kvm_irq_routing, kvm_irqchip, kvm_irqfd, kvm_lapic_state,
    kvm_mp_state, kvm_msi, kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs,
    kvm_userspace_memory_region, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{chdir, pivot_root, setgroups, setresgid, setresuid, Gid, Uid};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use thiserror::Error;

/// What the jail keeps, where it lives and whom the monitor runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailConfig {
    /// Host directory (e.g. `/run/bulkhead/jail`), created if missing and
    /// shared by all monitors. Each monitor mounts a private tmpfs on it in
    /// its own mount namespace and builds its root at `<id>/root` there, so
    /// the host directory stays empty and nothing is left behind.
    pub chroot_base: PathBuf,
    /// The VM's identifier: 1–64 characters of `[A-Za-z0-9_-]`.
    pub id: String,
    /// User to run as after entering the jail; 0 keeps root (without any
    /// capability).
    pub uid: u32,
    /// Group to run as after entering the jail; 0 keeps group root.
    pub gid: u32,
    /// Absolute host paths (files, sockets, directories) to bind-mount into
    /// the jail at the same path. Writable unless the host path is not.
    pub keep_paths: Vec<PathBuf>,
}

/// Why the jail could not be entered or a seccomp filter not installed.
#[derive(Debug, Error)]
pub enum JailError {
    #[error("jail id {0:?} is invalid: use 1-64 characters of A-Z a-z 0-9 _ -")]
    InvalidId(String),
    #[error("jail path {0} must be absolute and must not contain `..`")]
    InvalidPath(PathBuf),
    #[error("jail keep path {path}: {source}")]
    KeepPath { path: PathBuf, source: io::Error },
    #[error(
        "jail keep path {0} lies under the jail's base directory; keep paths must be outside it"
    )]
    KeepUnderBase(PathBuf),
    #[error("cannot enter the jail: the process still has {0} threads; join every other thread before jail::enter")]
    MultiThreaded(usize),
    #[error("cannot enter the jail: reading /proc/self/status: {0}")]
    ProcStatus(io::Error),
    #[error("cannot enter the jail: {what}: {source}")]
    Sys { what: String, source: nix::Error },
    #[error("cannot enter the jail: {what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("cannot drop capabilities: {0}")]
    Caps(String),
    #[error("cannot build the {kind:?} seccomp filter: {source}")]
    SeccompBuild {
        kind: ThreadKind,
        source: seccompiler::BackendError,
    },
    #[error("cannot install the {kind:?} seccomp filter: {source}")]
    SeccompInstall {
        kind: ThreadKind,
        source: seccompiler::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Sys { what, source }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Io { what, source }
}

/// Checks that `id` is usable as a single path component.
fn validate_id(id: &str) -> Result<(), JailError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(JailError::InvalidId(id.to_string()))
    }
}

/// Accepts only absolute paths without `..`, so that a path inside the jail
/// (`root` + path) cannot climb out of the jail's root.
fn validate_abs(path: &Path) -> Result<(), JailError> {
    let ok = path.is_absolute() && !path.components().any(|c| c == Component::ParentDir);
    if ok {
        Ok(())
    } else {
        Err(JailError::InvalidPath(path.to_path_buf()))
    }
}

/// Number of threads of this process, from `/proc/self/status`.
fn thread_count() -> Result<usize, JailError> {
    let status = fs::read_to_string("/proc/self/status").map_err(JailError::ProcStatus)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            JailError::ProcStatus(io::Error::new(
                io::ErrorKind::InvalidData,
                "no Threads: line",
            ))
        })
}

/// How long [`enter`] waits for threads that were joined to leave the thread
/// group. `pthread_join` returns once the kernel has cleared the thread's tid
/// (in `exit_mm`); the thread still shares the file-system context (which
/// `unshare(CLONE_NEWNS)` refuses) until `exit_fs`, and is counted in
/// `Threads:` until `exit_notify`, microseconds later. A thread that is still
/// running is never waited out: the bound turns it into an error.
const THREAD_EXIT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Returns once the process is down to one thread, or fails with the count
/// seen after [`THREAD_EXIT_GRACE`].
fn wait_single_threaded() -> Result<(), JailError> {
    let deadline = std::time::Instant::now() + THREAD_EXIT_GRACE;
    loop {
        let threads = thread_count()?;
        if threads == 1 {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(JailError::MultiThreaded(threads));
        }
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
}

/// Device nodes bound into the jail when the host has them: harmless, and
/// some libraries open them lazily.
const JAIL_DEVICES: &[&str] = &["/dev/null", "/dev/urandom"];

/// Path of `abs` (absolute, validated) below `root`.
fn under(root: &Path, abs: &Path) -> PathBuf {
    let rel: PathBuf = abs
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    root.join(rel)
}

/// Bind-mounts host path `src` at the same absolute path inside `root`.
fn bind_into(root: &Path, src: &Path) -> Result<(), JailError> {
    let keep = |source| JailError::KeepPath {
        path: src.to_path_buf(),
        source,
    };
    let meta = fs::metadata(src).map_err(keep)?;
    // Resolve symlinks on the host side; the mount point keeps the name the
    // monitor was given.
    let real = fs::canonicalize(src).map_err(keep)?;
    let target = under(root, src);
    if meta.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&target)
            .map_err(keep)?;
    } else {
        if let Some(parent) = target.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(keep)?;
        }
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&target)
            .map_err(keep)?;
    }
    mount(
        Some(&real),
        &target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(format!(
        "bind-mounting {} at {}",
        real.display(),
        target.display()
    )))
}

/// Highest capability number the running kernel knows.
fn last_cap() -> u32 {
    fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// Confines the calling (single-threaded) process; see the module docs for
/// what it does and the order the caller must follow. On error the process
/// may be half-jailed and must exit.
pub fn enter(cfg: &JailConfig) -> Result<(), JailError> {
    validate_id(&cfg.id)?;
    validate_abs(&cfg.chroot_base)?;
    for p in &cfg.keep_paths {
        validate_abs(p)?;
        // The jail hides `chroot_base` under a private tmpfs before binding.
        if p.starts_with(&cfg.chroot_base) {
            return Err(JailError::KeepUnderBase(p.clone()));
        }
    }
    wait_single_threaded()?;
    // Read what we need from the host's /proc before it disappears.
    let cap_last = last_cap();

    // Only `chroot_base` itself is created on the host (once, shared by all
    // monitors). Everything below it lives on a tmpfs mounted in our
    // private mount namespace, so nothing is left behind when we exit.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&cfg.chroot_base)
        .map_err(io_err(format!("creating {}", cfg.chroot_base.display())))?;

    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(sys("unshare(mount, net, ipc, uts namespaces)"))?;
    // Nothing we mount from now on may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("making / recursively private"))?;
    mount(
        Some("tmpfs"),
        &cfg.chroot_base,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k,nr_inodes=64"),
    )
    .map_err(sys(format!(
        "mounting a private tmpfs on {}",
        cfg.chroot_base.display()
    )))?;
    let root = cfg.chroot_base.join(&cfg.id).join("root");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&root)
        .map_err(io_err(format!("creating {}", root.display())))?;

    // The root itself: no device nodes, no set-uid, nothing executable. The
    // bind mounts below keep their source's flags (so /dev/null works).
    let root_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        &root,
        Some("tmpfs"),
        root_flags,
        Some("mode=755,size=1m,nr_inodes=4096"),
    )
    .map_err(sys(format!("mounting a tmpfs on {}", root.display())))?;

    for dev in JAIL_DEVICES {
        if Path::new(dev).exists() {
            bind_into(&root, Path::new(dev))?;
        }
    }
    for p in &cfg.keep_paths {
        bind_into(&root, p)?;
    }

    // Swap roots: stack the old root under the new one, then detach it.
    chdir(&root).map_err(sys(format!("chdir {}", root.display())))?;
    pivot_root(".", ".").map_err(sys(format!("pivot_root into {}", root.display())))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching the old root"))?;
    chdir("/").map_err(sys("chdir /"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | root_flags,
        None::<&str>,
    )
    .map_err(sys("remounting the jail root read-only"))?;

    drop_privileges(cfg.uid, cfg.gid, cap_last)
}

/// no_new_privs, empty bounding and ambient sets, then the new ids, then
/// empty effective/permitted/inheritable sets (in this order: each step needs
/// a capability the next one removes).
fn drop_privileges(uid: u32, gid: u32, cap_last: u32) -> Result<(), JailError> {
    nix::sys::prctl::set_no_new_privs().map_err(sys("setting no_new_privs"))?;
    for cap in 0..=cap_last {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and touches no memory.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            // EINVAL: the kernel does not know this capability; nothing to drop.
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(JailError::Caps(format!(
                    "dropping capability {cap} from the bounding set: {err}"
                )));
            }
        }
    }
    caps::clear(None, caps::CapSet::Ambient)
        .map_err(|e| JailError::Caps(format!("clearing the ambient set: {e}")))?;
    if gid != 0 {
        let g = Gid::from_raw(gid);
        setgroups(&[g]).map_err(sys(format!("setgroups([{gid}])")))?;
        setresgid(g, g, g).map_err(sys(format!("setresgid({gid})")))?;
    }
    if uid != 0 {
        let u = Uid::from_raw(uid);
        setresuid(u, u, u).map_err(sys(format!("setresuid({uid})")))?;
    }
    for set in [
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        caps::clear(None, set)
            .map_err(|e| JailError::Caps(format!("clearing the {set:?} set: {e}")))?;
    }
    Ok(())
}

mod filters;

pub use filters::*;

#[cfg(test)]
mod tests {
    //! Each jail/seccomp check runs in a forked child (the jail and the
    //! filters are irreversible); the child reports over a pipe and the
    //! parent asserts on the report and on how the child ended.
    use super::*;
    use nix::sys::signal::Signal;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// Writes `msg` to `fd` with a raw write (safe after fork and under any filter).
    fn report(fd: &OwnedFd, msg: &str) {
        // SAFETY: writes from a valid buffer of the given length to an fd we own.
        unsafe { libc::write(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
    }

    /// Runs `child` in a forked process; returns what it reported and how it ended.
    /// `child` returns the exit code; it reports through the given fd.
    fn in_child(child: impl FnOnce(&OwnedFd) -> i32) -> (String, WaitStatus) {
        let (rd, wr) = nix::unistd::pipe().expect("pipe");
        // SAFETY: the child only runs `child` and then `_exit`s; glibc keeps
        // malloc usable after fork, and the child touches no other lock.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                drop(rd);
                let code = child(&wr);
                // SAFETY: ends the child without running the parent's atexit handlers.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                drop(wr);
                let mut out = String::new();
                fs::File::from(rd)
                    .read_to_string(&mut out)
                    .expect("read child report");
                let status = waitpid(child, None).expect("waitpid");
                (out, status)
            }
        }
    }

    fn scratch_dir() -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bh-jail-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    /// The five capability sets and NoNewPrivs/Uid/Gid from a status text.
    fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or("<missing>")
    }

    #[test]
    fn jailed_process_sees_only_kept_paths_and_has_no_privileges() {
        if !is_root() {
            println!("SKIPPED: jail test needs root");
            return;
        }
        let base = scratch_dir();
        let keep = base.join("keep");
        fs::create_dir_all(&keep).expect("keep dir");
        fs::write(keep.join("disk.img"), b"sector-zero").expect("keep file");
        // The unprivileged uid must be able to walk into the kept directory.
        for d in [&base, &keep] {
            fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod");
        }
        // A kept socket file (like vsock's `<uds>_<port>`): connecting to it
        // from inside the jail must reach this listener.
        let sock = base.join("outside.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind socket");
        fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod socket");
        let cfg = JailConfig {
            chroot_base: base.join("jail"),
            id: "vm-1".into(),
            uid: 65534,
            gid: 65534,
            keep_paths: vec![keep.clone(), sock.clone()],
        };
        let (out, status) = in_child(|w| {
            // Opened before the jail: /proc is not inside it.
            let mut st = match fs::File::open("/proc/self/status") {
                Ok(f) => f,
                Err(e) => {
                    report(w, &format!("open status: {e}"));
                    return 2;
                }
            };
            if let Err(e) = enter(&cfg) {
                report(w, &format!("enter: {e}"));
                return 3;
            }
            let mut s = String::new();
            let _ = st.seek(SeekFrom::Start(0));
            let _ = st.read_to_string(&mut s);
            let mut lines = vec![];
            for key in [
                "CapInh:",
                "CapPrm:",
                "CapEff:",
                "CapBnd:",
                "CapAmb:",
                "NoNewPrivs:",
                "Uid:",
                "Gid:",
            ] {
                lines.push(format!("{key} {}", status_field(&s, key)));
            }
            lines.push(format!(
                "passwd: {}",
                match fs::metadata("/etc/passwd") {
                    Ok(_) => "reachable".to_string(),
                    Err(e) => format!("{:?}", e.kind()),
                }
            ));
            lines.push(format!(
                "kept: {}",
                fs::read_to_string(keep.join("disk.img")).unwrap_or_else(|e| e.to_string())
            ));
            lines.push(format!(
                "root writable: {}",
                fs::write("/new-file", b"x").is_ok()
            ));
            lines.push(format!(
                "socket: {}",
                std::os::unix::net::UnixStream::connect(&sock)
                    .and_then(|mut c| io::Write::write_all(&mut c, b"from-jail"))
                    .is_ok()
            ));
            lines.push(format!(
                "devnull: {}",
                fs::OpenOptions::new().write(true).open("/dev/null").is_ok()
            ));
            report(w, &lines.join("\n"));
            0
        });
        listener.set_nonblocking(true).expect("nonblocking");
        let mut from_jail = String::new();
        if let Ok((mut c, _)) = listener.accept() {
            let _ = c.set_nonblocking(false);
            let _ = c.read_to_string(&mut from_jail);
        }
        let leftovers: Vec<_> = fs::read_dir(base.join("jail"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        let _ = fs::remove_dir_all(&base);
        assert_eq!(
            status,
            WaitStatus::Exited(status.pid().expect("pid"), 0),
            "{out}"
        );
        assert!(leftovers.is_empty(), "jail left {leftovers:?} on the host");
        assert!(out.contains("socket: true"), "{out}");
        assert_eq!(from_jail, "from-jail");
        for key in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert!(
                out.contains(&format!("{key} 0000000000000000")),
                "{key} not empty:\n{out}"
            );
        }
        assert!(out.contains("NoNewPrivs: 1"), "{out}");
        assert!(out.contains("Uid: 65534\t65534\t65534\t65534"), "{out}");
        assert!(out.contains("Gid: 65534\t65534\t65534\t65534"), "{out}");
        assert!(out.contains("passwd: NotFound"), "{out}");
        assert!(out.contains("kept: sector-zero"), "{out}");
        assert!(out.contains("root writable: false"), "{out}");
        assert!(out.contains("devnull: true"), "{out}");
    }

    #[test]
    fn missing_keep_path_is_named() {
        if !is_root() {
            println!("SKIPPED: jail test needs root");
            return;
        }
        let base = scratch_dir();
        let missing = base.join("no-such-socket");
        let cfg = JailConfig {
            chroot_base: base.join("jail"),
            id: "vm-2".into(),
            uid: 0,
            gid: 0,
            keep_paths: vec![missing.clone()],
        };
        let (out, _) = in_child(|w| match enter(&cfg) {
            Ok(()) => {
                report(w, "entered");
                0
            }
            Err(e) => {
                report(w, &e.to_string());
                1
            }
        });
        let _ = fs::remove_dir_all(&base);
        assert!(
            out.contains(&missing.display().to_string()) && out.contains("No such file"),
            "{out}"
        );
    }

    #[test]
    fn bad_config_and_threads_are_refused_before_any_change() {
        let cfg = |id: &str, keep: &str| JailConfig {
            chroot_base: PathBuf::from("/nonexistent-base"),
            id: id.into(),
            uid: 0,
            gid: 0,
            keep_paths: vec![PathBuf::from(keep)],
        };
        assert!(matches!(
            enter(&cfg("../escape", "/tmp")),
            Err(JailError::InvalidId(_))
        ));
        assert!(matches!(
            enter(&cfg("", "/tmp")),
            Err(JailError::InvalidId(_))
        ));
        assert!(matches!(
            enter(&cfg("vm", "relative/path")),
            Err(JailError::InvalidPath(_))
        ));
        assert!(matches!(
            enter(&cfg("vm", "/tmp/../etc")),
            Err(JailError::InvalidPath(_))
        ));
        assert!(matches!(
            enter(&cfg("vm", "/nonexistent-base/x")),
            Err(JailError::KeepUnderBase(_))
        ));
        // The test harness runs this test on a thread of its own, so the
        // process has at least two threads.
        let e = enter(&cfg("vm", "/tmp")).expect_err("must refuse");
        assert!(matches!(e, JailError::MultiThreaded(n) if n >= 2), "{e}");
        assert!(e.to_string().contains("join every other thread"));
    }

    fn killed_by_sigsys(status: WaitStatus) -> bool {
        matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _))
    }

    #[test]
    fn every_filter_compiles() {
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Api] {
            let prog = build_filter(kind).expect("filter builds");
            assert!(!prog.is_empty());
        }
        assert!(!vcpu_ioctls().is_empty());
        assert!(!control_ioctls().contains(&nr::KVM_RUN()));
        // Known constant from <linux/kvm.h>: _IO(0xAE, 0x80).
        assert_eq!(nr::KVM_RUN(), 0xAE80);
    }

    #[test]
    fn vcpu_filter_allows_kvm_run_and_kills_on_socket() {
        let (out, status) = in_child(|w| {
            if let Err(e) = apply_thread_filter(ThreadKind::Vcpu) {
                report(w, &format!("apply: {e}"));
                return 2;
            }
            // Allowed: write, and ioctl(KVM_RUN) (on a pipe it fails with ENOTTY,
            // which proves the filter let it through to the kernel).
            // SAFETY: ioctl with a request that takes no argument.
            let rc = unsafe { libc::ioctl(w.as_raw_fd(), nr::KVM_RUN() as _, 0) };
            let errno = io::Error::last_os_error().raw_os_error();
            report(w, &format!("kvm_run rc={rc} errno={errno:?}\n"));
            // Forbidden: a new INET socket.
            // SAFETY: plain syscall with constant arguments.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
            report(w, "survived socket");
            0
        });
        assert!(
            out.contains(&format!("kvm_run rc=-1 errno=Some({})", libc::ENOTTY)),
            "{out}"
        );
        assert!(!out.contains("survived"), "{out}");
        assert!(killed_by_sigsys(status), "{status:?} {out}");
    }

    #[test]
    fn vcpu_filter_kills_on_unlisted_ioctl() {
        let (out, status) = in_child(|w| {
            if let Err(e) = apply_thread_filter(ThreadKind::Vcpu) {
                report(w, &format!("apply: {e}"));
                return 2;
            }
            report(w, "filtered\n");
            // KVM_CREATE_VM (_IO(0xAE, 0x01)) is not a vCPU's business.
            // SAFETY: ioctl with a request that takes an integer argument.
            unsafe { libc::ioctl(w.as_raw_fd(), 0xAE01 as _, 0) };
            report(w, "survived ioctl");
            0
        });
        assert!(
            out.contains("filtered") && !out.contains("survived"),
            "{status:?} {out}"
        );
        assert!(killed_by_sigsys(status), "{status:?} {out}");
    }

    #[test]
    fn vcpu_filter_denies_open_and_kills_on_mkdir() {
        let (out, status) = in_child(|w| {
            if let Err(e) = apply_thread_filter(ThreadKind::Vcpu) {
                report(w, &format!("apply: {e}"));
                return 2;
            }
            let open = fs::File::open("/etc/hostname").map_err(|e| e.raw_os_error());
            report(w, &format!("open: {:?}\n", open.map(|_| ())));
            let _ = fs::create_dir("/nonexistent-bulkhead-jail-test");
            report(w, "survived mkdir");
            0
        });
        assert!(
            out.contains(&format!("open: Err(Some({}))", libc::EACCES)),
            "{status:?} {out}"
        );
        assert!(!out.contains("survived"), "{out}");
        assert!(killed_by_sigsys(status), "{status:?} {out}");
    }

    #[test]
    fn filters_allow_threads_and_unix_sockets_but_not_fork() {
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Api] {
            let (out, status) = in_child(|w| {
                if let Err(e) = apply_thread_filter(kind) {
                    report(w, &format!("apply: {e}"));
                    return 2;
                }
                // A thread (clone3 → ENOSYS → clone with thread flags), as a
                // vCPU starting a device worker does.
                let t = std::thread::Builder::new()
                    .name("worker".into())
                    .stack_size(64 * 1024)
                    .spawn(|| 7)
                    .map(|h| h.join());
                report(w, &format!("thread: {:?}\n", t.map(|r| r.ok())));
                // SAFETY: plain syscall with constant arguments.
                let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
                report(w, &format!("unix socket ok: {}\n", fd >= 0));
                // A new process is forbidden.
                // SAFETY: the child (if the filter let it exist) exits at once.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // SAFETY: immediate exit of the forked child.
                    unsafe { libc::_exit(0) };
                }
                report(w, "survived fork");
                0
            });
            assert!(out.contains("thread: Ok(Some(7))"), "{kind:?}: {out}");
            assert!(out.contains("unix socket ok: true"), "{kind:?}: {out}");
            assert!(!out.contains("survived"), "{kind:?}: {out}");
            assert!(killed_by_sigsys(status), "{kind:?}: {status:?} {out}");
        }
    }

    #[test]
    fn signals_only_within_the_process() {
        let (out, status) = in_child(|w| {
            if let Err(e) = apply_thread_filter(ThreadKind::Vmm) {
                report(w, &format!("apply: {e}"));
                return 2;
            }
            // SAFETY: signal 0 only checks that the target exists.
            let own = unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    libc::syscall(libc::SYS_gettid),
                    0,
                )
            };
            report(w, &format!("own tgkill: {own}\n"));
            // SAFETY: as above, aimed at init: the filter must kill us first.
            unsafe { libc::syscall(libc::SYS_tgkill, 1, 1, 0) };
            report(w, "survived tgkill");
            0
        });
        assert!(out.contains("own tgkill: 0"), "{out}");
        assert!(!out.contains("survived"), "{out}");
        assert!(killed_by_sigsys(status), "{status:?} {out}");
    }

    #[test]
    fn filters_forbid_executable_memory() {
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Api] {
            let (out, status) = in_child(|w| {
                if let Err(e) = apply_thread_filter(kind) {
                    report(w, &format!("apply: {e}"));
                    return 2;
                }
                // SAFETY: anonymous mapping request, result unused.
                let rw = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                report(w, &format!("rw mapped: {}\n", rw != libc::MAP_FAILED));
                // SAFETY: as above, with PROT_EXEC (which must kill us).
                unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_EXEC,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                report(w, "survived exec mapping");
                0
            });
            assert!(out.contains("rw mapped: true"), "{kind:?}: {out}");
            assert!(!out.contains("survived"), "{kind:?}: {out}");
            assert!(killed_by_sigsys(status), "{kind:?}: {status:?} {out}");
        }
    }
}
