//! `exec`: a new process inside a running zone (joining its namespaces and cgroup, with
//! the zone's seccomp profile), and waiting for it.

use super::*;

pub use crate::overrides::{parse_capability, ExecOverrides, ExecUser, OverrideError};

/// Options of `exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOpts {
    pub root: PathBuf,
    pub id: String,
    pub process: Process,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub preserve_fds: u32,
    /// Keep the pty master (foreground exec with --tty and no socket).
    pub keep_console: bool,
    /// Descriptors the new process gets as 0/1/2 instead of the caller's (see
    /// [`CreateOpts::stdio`]).
    pub stdio: Option<[RawFd; 3]>,
}

/// Base process for `exec` built from the zone's own process (caps, rlimits,
/// no_new_privs, env), as runc does.
pub fn exec_base_process(root: &Path, id: &str) -> Result<Process> {
    let (st, _) = State::load(root, id)?;
    Ok(st.config.process().clone().unwrap_or_default())
}

fn same_ns(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.ino() == y.ino() && x.dev() == y.dev(),
        _ => false,
    }
}

/// Run a new process inside a running zone; returns its host pid.
pub fn exec(opts: &ExecOpts) -> Result<Spawned> {
    let (st, sd) = State::load(&opts.root, &opts.id)?;
    match st.status(&sd) {
        Status::Running | Status::Created => {}
        Status::Paused => return Err(ZoneError::State("cannot exec in a paused container".into())),
        s => return Err(ZoneError::State(format!("cannot exec in a {s} container"))),
    }
    crate::spec::validate_process(&opts.process)
        .map_err(|m| ZoneError::Spec(format!("process: {m}")))?;
    let terminal = opts.process.terminal().unwrap_or(false);
    if terminal && opts.console_socket.is_none() && !opts.keep_console {
        return Err(ZoneError::Msg(
            "cannot allocate a tty if bulkhead-runc will detach without setting --console-socket"
                .into(),
        ));
    }
    let seccomp = match st
        .config
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
    {
        Some(s) => Some(crate::seccomp::compile_cached(
            s,
            &opts.root.join(crate::seccomp::CACHE_DIR),
        )?),
        None => None,
    };
    let cg = Cgroup::from_state(&st.cgroup);
    // Namespaces of the init, opened now (before we leave the host mount ns).
    let mut joins = Vec::new();
    for t in JOIN_ORDER {
        if !namespaces(&st.config).iter().any(|n| n.typ() == t) {
            continue;
        }
        let p = PathBuf::from(format!("/proc/{}/ns/{}", st.pid, ns_file(t)));
        if same_ns(&p, &PathBuf::from(format!("/proc/self/ns/{}", ns_file(t)))) {
            continue;
        }
        joins.push((t, open_ns(&p)?));
    }
    let (parent_ch, child_ch) = crate::sync::pair()?;
    set_subreaper();
    // SAFETY: single-threaded CLI.
    let mid = match unsafe { nix::unistd::fork() }.ctx(|| "fork")? {
        ForkResult::Child => {
            drop(parent_ch);
            let r = exec_stage1(
                &joins,
                &opts.process,
                opts.stdio,
                opts.preserve_fds,
                seccomp.as_ref(),
                &child_ch,
            );
            match r {
                Ok(()) => child_exit(0),
                Err(e) => child_fail(&child_ch, &e),
            }
        }
        ForkResult::Parent { child } => child.as_raw(),
    };
    drop(child_ch);
    drop(joins);
    let fail = |e: ZoneError, pid: Option<i32>| {
        if let Some(p) = pid {
            // SAFETY: kill with integer arguments.
            unsafe { libc::kill(p, libc::SIGKILL) };
            let _ = nix::sys::wait::waitpid(Pid::from_raw(p), None);
        }
        // SAFETY: as above.
        unsafe { libc::kill(mid, libc::SIGKILL) };
        let _ = nix::sys::wait::waitpid(Pid::from_raw(mid), None);
        e
    };
    let mut pid = None;
    let mut console = None;
    loop {
        let m = match parent_ch.recv() {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => return Err(fail(e, pid)),
        };
        match m.tag.as_str() {
            "PID" => {
                pid = m.payload.parse::<i32>().ok();
                let _ = nix::sys::wait::waitpid(Pid::from_raw(mid), None);
                if let Some(p) = pid {
                    if let Err(e) = cg.add_process(p) {
                        return Err(fail(e.into(), pid));
                    }
                    // If the child already failed, its ERR message follows.
                    let _ = parent_ch.send("CGOK", "", None);
                }
            }
            "PTY" => {
                if let Some(fd) = m.fd {
                    if let Some(sock) = &opts.console_socket {
                        crate::sync::send_console(sock, fd.as_raw_fd(), &m.payload)
                            .map_err(|e| fail(e, pid))?;
                    } else {
                        console = Some(fd);
                    }
                }
            }
            "ERR" => return Err(fail(ZoneError::Msg(m.payload), pid)),
            other => {
                return Err(fail(
                    ZoneError::Msg(format!("protocol error: unexpected message {other}")),
                    pid,
                ))
            }
        }
    }
    let pid =
        pid.ok_or_else(|| ZoneError::Msg("exec: the process exited before it started".into()))?;
    if let Some(pf) = &opts.pid_file {
        write_pid_file(pf, pid)?;
    }
    Ok(Spawned { pid, console })
}

fn exec_stage1(
    joins: &[(LinuxNamespaceType, OwnedFd)],
    process: &Process,
    stdio: Option<[RawFd; 3]>,
    preserve_fds: u32,
    seccomp: Option<&crate::seccomp::BpfProgram>,
    ch: &Channel,
) -> Result<()> {
    if let Some(fds) = stdio {
        crate::hardening::install_stdio(fds)?;
    }
    // CVE-2024-21626: close what the caller leaked before any path lookup.
    let mut keep: Vec<std::os::fd::RawFd> = joins.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    keep.push(ch.raw());
    crate::hardening::close_fds_except(3 + preserve_fds, &keep)?;
    // CVE-2016-9962: zone processes must not ptrace us before execve.
    crate::process::set_dumpable(false)?;
    for (t, fd) in joins {
        nix::sched::setns(fd.as_fd(), ns_flag(*t))
            .ctx(|| format!("setns into the zone's {} namespace", ns_file(*t)))?;
    }
    // SAFETY: single-threaded child.
    match unsafe { nix::unistd::fork() }.ctx(|| "fork")? {
        ForkResult::Parent { child } => {
            ch.send("PID", &child.as_raw().to_string(), None)?;
            Ok(())
        }
        ForkResult::Child => {
            let r = (|| -> Result<Never> {
                if process.terminal().unwrap_or(false) {
                    let (master, name, slave) = setup_tty(
                        Path::new("/dev/pts/ptmx"),
                        Path::new("/dev/pts"),
                        process.console_size(),
                    )?;
                    attach_tty(&slave)?;
                    ch.send("PTY", &name, Some(master.as_raw_fd()))?;
                    drop(master);
                }
                crate::process::set_rlimits(process.rlimits().as_deref().unwrap_or(&[]))?;
                let mut env = process.env().clone().unwrap_or_default();
                crate::process::ensure_home(&mut env, process.user().uid());
                let args = process.args().clone().unwrap_or_default();
                let exe = crate::process::lookup_exec(
                    args.first().map(String::as_str).unwrap_or(""),
                    &env,
                )?;
                // Only exec once the parent has moved us into the cgroup.
                ch.expect("CGOK")?;
                // The channel is close-on-exec: EOF tells the parent exec worked.
                finalize_and_exec(process, &exe, &args, &env, preserve_fds, seccomp)
            })();
            match r {
                Ok(never) => match never {},
                Err(e) => child_fail(ch, &e),
            }
        }
    }
}

/// Wait for a child (reparented to us as subreaper); exit code like a shell
/// (128+signal).
pub fn wait_exit(pid: i32) -> Result<i32> {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, c)) => return Ok(c),
            Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(ZoneError::sys(format!("wait for pid {pid}"), e)),
        }
    }
}
