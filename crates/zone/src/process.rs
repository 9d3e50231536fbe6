//! Settings of the zone's processes applied inside the zone just before
//! execve: rlimits, oom score, user and groups, capabilities (one capset with
//! PR_SET_KEEPCAPS across the uid change), no_new_privs, cwd with the
//! CVE-2024-21626 reachability check, executable lookup in the zone's PATH.
//! Also small process helpers (pidfd, poll, signals) used by the lifecycle.

use std::ffi::CString;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use oci_spec::runtime::{LinuxCapabilities, PosixRlimit, PosixRlimitType, User};

use crate::error::{Result, SysContext, ZoneError};

/// Default PATH when the process environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// pidfd_open(2).
pub fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; result checked.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(ZoneError::sys(format!("pidfd_open {pid}"), Errno::last()));
    }
    // SAFETY: a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// Wait until `fd` is readable (or the timeout passes); true when readable.
pub fn poll_readable(fd: &impl AsFd, timeout: Option<Duration>) -> Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let t = match timeout {
        None => PollTimeout::NONE,
        Some(d) => PollTimeout::try_from(d.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX),
    };
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, t) {
            Ok(n) => return Ok(n > 0),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(ZoneError::sys("poll", e)),
        }
    }
}

/// Block until process `pid` (not necessarily our child) has exited.
pub fn wait_gone(pid: i32) {
    if let Ok(fd) = pidfd_open(pid) {
        let _ = poll_readable(&fd, None);
    }
}

/// kill(2) with a raw signal number.
pub fn kill(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: kill with integer arguments.
    if unsafe { libc::kill(pid, sig) } < 0 {
        return Err(ZoneError::sys(
            format!("kill {pid} with signal {sig}"),
            Errno::last(),
        ));
    }
    Ok(())
}

fn rlimit_resource(t: PosixRlimitType) -> (libc::__rlimit_resource_t, &'static str) {
    use PosixRlimitType as T;
    match t {
        T::RlimitCpu => (libc::RLIMIT_CPU, "RLIMIT_CPU"),
        T::RlimitFsize => (libc::RLIMIT_FSIZE, "RLIMIT_FSIZE"),
        T::RlimitData => (libc::RLIMIT_DATA, "RLIMIT_DATA"),
        T::RlimitStack => (libc::RLIMIT_STACK, "RLIMIT_STACK"),
        T::RlimitCore => (libc::RLIMIT_CORE, "RLIMIT_CORE"),
        T::RlimitRss => (libc::RLIMIT_RSS, "RLIMIT_RSS"),
        T::RlimitNproc => (libc::RLIMIT_NPROC, "RLIMIT_NPROC"),
        T::RlimitNofile => (libc::RLIMIT_NOFILE, "RLIMIT_NOFILE"),
        T::RlimitMemlock => (libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK"),
        T::RlimitAs => (libc::RLIMIT_AS, "RLIMIT_AS"),
        T::RlimitLocks => (libc::RLIMIT_LOCKS, "RLIMIT_LOCKS"),
        T::RlimitSigpending => (libc::RLIMIT_SIGPENDING, "RLIMIT_SIGPENDING"),
        T::RlimitMsgqueue => (libc::RLIMIT_MSGQUEUE, "RLIMIT_MSGQUEUE"),
        T::RlimitNice => (libc::RLIMIT_NICE, "RLIMIT_NICE"),
        T::RlimitRtprio => (libc::RLIMIT_RTPRIO, "RLIMIT_RTPRIO"),
        T::RlimitRttime => (libc::RLIMIT_RTTIME, "RLIMIT_RTTIME"),
    }
}

/// Apply rlimits; raising a hard limit above the current one gets a precise message.
pub fn set_rlimits(limits: &[PosixRlimit]) -> Result<()> {
    for l in limits {
        let (res, name) = rlimit_resource(l.typ());
        let rl = libc::rlimit {
            rlim_cur: l.soft(),
            rlim_max: l.hard(),
        };
        // SAFETY: setrlimit with a valid pointer to a local struct.
        if unsafe { libc::setrlimit(res, &rl) } < 0 {
            let e = Errno::last();
            if e == Errno::EPERM {
                return Err(ZoneError::Msg(format!(
                    "setrlimit {name} (soft {}, hard {}): operation not permitted — cannot raise the hard limit above the current one",
                    l.soft(),
                    l.hard()
                )));
            }
            return Err(ZoneError::sys(
                format!("setrlimit {name} (soft {}, hard {})", l.soft(), l.hard()),
                e,
            ));
        }
    }
    Ok(())
}

/// Write /proc/self/oom_score_adj.
pub fn set_oom_score_adj(v: i32) -> Result<()> {
    std::fs::write("/proc/self/oom_score_adj", v.to_string())
        .map_err(|e| ZoneError::io("write", Path::new("/proc/self/oom_score_adj"), e))
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Bit mask of a set of OCI capabilities (unknown to this kernel: skipped, as runc warns and skips).
pub fn cap_mask(set: Option<&oci_spec::runtime::Capabilities>) -> u64 {
    let last = last_cap();
    let mut m = 0u64;
    for c in set.into_iter().flatten() {
        if let Ok(k) = format!("CAP_{c}").parse::<caps::Capability>() {
            let i = k.index() as u32;
            if i <= last && i < 64 {
                m |= 1 << i;
            }
        }
    }
    m
}

/// Drop everything not in the bounding set (needs CAP_SETPCAP: call before the uid change).
pub fn drop_bounding(c: Option<&LinuxCapabilities>) -> Result<()> {
    let Some(c) = c else { return Ok(()) };
    let keep = cap_mask(c.bounding().as_ref());
    for i in 0..=last_cap().min(63) {
        if keep & (1 << i) == 0 {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, i as libc::c_ulong, 0, 0, 0) } < 0 {
                let e = Errno::last();
                if e != Errno::EINVAL {
                    return Err(ZoneError::sys(
                        format!("drop capability {i} from the bounding set"),
                        e,
                    ));
                }
            }
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Set effective/permitted/inheritable in one capset(2), then raise ambient.
/// Hand-rolled because the `caps` crate sets one set per call, and a partial
/// order of three calls can fail where one atomic capset succeeds.
pub fn set_caps(c: Option<&LinuxCapabilities>) -> Result<()> {
    let Some(c) = c else { return Ok(()) };
    let eff = cap_mask(c.effective().as_ref());
    let perm = cap_mask(c.permitted().as_ref());
    let inh = cap_mask(c.inheritable().as_ref());
    let mut hdr = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [
        CapData {
            effective: eff as u32,
            permitted: perm as u32,
            inheritable: inh as u32,
        },
        CapData {
            effective: (eff >> 32) as u32,
            permitted: (perm >> 32) as u32,
            inheritable: (inh >> 32) as u32,
        },
    ];
    // SAFETY: capset with a v3 header and two data elements, as the ABI requires.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) } < 0 {
        return Err(ZoneError::sys(
            "capset (effective/permitted/inheritable)",
            Errno::last(),
        ));
    }
    let amb = cap_mask(c.ambient().as_ref());
    for i in 0..64u32 {
        if amb & (1 << i) != 0 {
            // Like runc: an ambient capability that cannot be raised is skipped.
            // SAFETY: prctl with integer arguments.
            unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    i as libc::c_ulong,
                    0,
                    0,
                )
            };
        }
    }
    Ok(())
}

/// Switch to the process user, keeping capabilities across the change.
pub fn set_user(u: &User) -> Result<()> {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let gids: Vec<nix::unistd::Gid> = u
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    let deny = std::fs::read_to_string("/proc/self/setgroups")
        .map(|s| s.trim() == "deny")
        .unwrap_or(false);
    if !deny {
        nix::unistd::setgroups(&gids).ctx(|| {
            format!(
                "setgroups {:?}",
                u.additional_gids().clone().unwrap_or_default()
            )
        })?;
    } else if !gids.is_empty() {
        return Err(ZoneError::Msg(
            "additionalGids: setgroups is denied in this user namespace".into(),
        ));
    }
    let g = nix::unistd::Gid::from_raw(u.gid());
    nix::unistd::setresgid(g, g, g).ctx(|| format!("setresgid {}", u.gid()))?;
    let uid = nix::unistd::Uid::from_raw(u.uid());
    nix::unistd::setresuid(uid, uid, uid).ctx(|| format!("setresuid {}", u.uid()))?;
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        u.umask().unwrap_or(0o022),
    ));
    Ok(())
}

/// prctl(PR_SET_DUMPABLE): a non-dumpable process cannot be ptraced and its
/// /proc/<pid> files (fd, environ, mem) are closed to the zone; execve of a
/// readable binary makes it dumpable again.
pub fn set_dumpable(on: bool) -> Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, libc::c_ulong::from(on), 0, 0, 0) } < 0 {
        return Err(ZoneError::sys("prctl(PR_SET_DUMPABLE)", Errno::last()));
    }
    Ok(())
}

/// prctl(PR_SET_NO_NEW_PRIVS).
pub fn set_no_new_privs() -> Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(ZoneError::sys("prctl(PR_SET_NO_NEW_PRIVS)", Errno::last()));
    }
    Ok(())
}

/// chdir into the process cwd and verify the result is reachable from the
/// root (CVE-2024-21626: a leaked host directory fd would give "(unreachable)").
pub fn enter_cwd(cwd: &Path) -> Result<()> {
    nix::unistd::chdir(cwd).ctx(|| format!("chdir to cwd {:?} set in config.json", cwd))?;
    check_cwd_reachable()
}

/// getcwd must succeed and return an absolute path inside our root.
pub fn check_cwd_reachable() -> Result<()> {
    match nix::unistd::getcwd() {
        Ok(p) if p.is_absolute() => Ok(()),
        Ok(p) => Err(ZoneError::Msg(format!(
            "current working directory {:?} is outside the zone",
            p
        ))),
        Err(Errno::ENOENT) => Err(ZoneError::Msg(
            "current working directory is outside the zone (unreachable)".into(),
        )),
        Err(e) => Err(ZoneError::sys("getcwd", e)),
    }
}

/// True when `p` resolved inside our root `/` (openat2 RESOLVE_IN_ROOT, no magic
/// links such as `/proc/self/fd/N`) is the same file execve would run: a path
/// through a descriptor of the host (CVE-2024-21626) or a magic link is refused.
fn same_file_in_root(p: &Path) -> bool {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return false;
    };
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        match nix::unistd::getcwd() {
            Ok(c) => c.join(p),
            Err(_) => return false,
        }
    };
    let rel = abs.strip_prefix("/").unwrap_or(&abs);
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let Ok(fd) = openat2(root.as_fd(), rel, how) else {
        return false;
    };
    let (Ok(a), Ok(b)) = (nix::sys::stat::fstat(&fd), std::fs::metadata(p)) else {
        return false;
    };
    a.st_ino == b.ino() && a.st_dev == b.dev()
}

/// Find args[0] like execvp: as given when it contains '/', else in PATH.
pub fn lookup_exec(arg0: &str, env: &[String]) -> Result<PathBuf> {
    let is_exec = |p: &Path| {
        nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
            && std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false)
            && same_file_in_root(p)
    };
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        return if is_exec(&p) {
            Ok(p)
        } else {
            Err(ZoneError::Msg(format!(
                "exec: {arg0:?}: no such executable file"
            )))
        };
    }
    let path = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':') {
        let d = if dir.is_empty() { "." } else { dir };
        let p = Path::new(d).join(arg0);
        if is_exec(&p) {
            return Ok(p);
        }
    }
    Err(ZoneError::Msg(format!(
        "exec: {arg0:?}: executable file not found in $PATH"
    )))
}

/// Strings to C strings (config strings never contain NUL after JSON parsing,
/// but a "\u0000" escape is possible: reject it precisely).
pub fn cstrings(v: &[String], what: &str) -> Result<Vec<CString>> {
    v.iter()
        .map(|s| {
            CString::new(s.as_bytes())
                .map_err(|_| ZoneError::Msg(format!("{what}: {s:?} contains a NUL byte")))
        })
        .collect()
}

/// execve(2); returns only on failure.
pub fn exec(path: &Path, args: &[String], env: &[String]) -> ZoneError {
    let p = match crate::mounts::cpath(path) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let a = match cstrings(args, "process.args") {
        Ok(a) => a,
        Err(e) => return e,
    };
    let e = match cstrings(env, "process.env") {
        Ok(e) => e,
        Err(err) => return err,
    };
    match nix::unistd::execve(&p, &a, &e) {
        Err(err) => ZoneError::sys(format!("exec {}", path.display()), err),
        Ok(never) => match never {},
    }
}

/// Add HOME from the zone's /etc/passwd (or "/") when the env has none.
pub fn ensure_home(env: &mut Vec<String>, uid: u32) {
    if env.iter().any(|kv| kv.starts_with("HOME=")) {
        return;
    }
    let home = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
            })
        })
        .unwrap_or_else(|| "/".into());
    env.push(format!("HOME={home}"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::Capability;

    #[test]
    fn cap_masks() {
        let set: oci_spec::runtime::Capabilities = [
            Capability::Kill,
            Capability::NetBindService,
            Capability::AuditWrite,
        ]
        .into_iter()
        .collect();
        assert_eq!(cap_mask(Some(&set)), (1 << 5) | (1 << 10) | (1 << 29));
        assert_eq!(cap_mask(None), 0);
    }

    #[test]
    fn exec_lookup() {
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert_eq!(lookup_exec("sh", &env).unwrap(), PathBuf::from("/bin/sh"));
        assert_eq!(
            lookup_exec("/bin/sh", &env).unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(
            lookup_exec("no-such-cmd-xyz", &env)
                .unwrap_err()
                .to_string(),
            "exec: \"no-such-cmd-xyz\": executable file not found in $PATH"
        );
    }

    #[test]
    fn rlimit_hard_raise_message() {
        // In a forked child so the test process keeps its limits.
        let l: PosixRlimit = serde_json::from_value(
            serde_json::json!({"type": "RLIMIT_NOFILE", "soft": 128, "hard": 128}),
        )
        .unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        // SAFETY: the child only calls setrlimit/write/_exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let mut cur = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: valid pointer.
                unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) };
                let low = libc::rlimit {
                    rlim_cur: 64,
                    rlim_max: 64,
                };
                // SAFETY: valid pointer.
                unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) };
                // Drop CAP_SYS_RESOURCE so raising the hard limit fails even as root.
                // SAFETY: prctl with integer args.
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, 24, 0, 0, 0) };
                let mut hdr = CapHeader {
                    version: 0x2008_0522,
                    pid: 0,
                };
                let data = [CapData::default(); 2];
                // SAFETY: v3 capset clearing every set.
                unsafe {
                    libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr())
                };
                let msg = set_rlimits(&[l])
                    .map(|_| "ok".to_string())
                    .unwrap_or_else(|e| e.to_string());
                let _ = nix::unistd::write(&w, msg.as_bytes());
                // SAFETY: leave the forked test child without running destructors.
                unsafe { libc::_exit(0) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(w);
                let mut buf = vec![0u8; 512];
                let n = nix::unistd::read(&r, &mut buf).unwrap();
                nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&buf[..n]),
                    "setrlimit RLIMIT_NOFILE (soft 128, hard 128): operation not permitted — cannot raise the hard limit above the current one"
                );
            }
        }
    }
}
