//! Container lifecycle: create (two-stage fork into namespaces, like runc's
//! nsexec but in Rust) here; operations on an existing zone (start through the
//! exec fifo, kill, pause/resume, delete, list, stats and update) in `ops`;
//! exec into a running zone in `exec`. Every failure of `create` removes what
//! it made (process, cgroup, state directory).

mod exec;
mod ops;

pub use exec::*;
pub use ops::*;

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use crate::cgroups::Cgroup;
use crate::error::{Result, SysContext, ZoneError};
use crate::hooks::run_hooks;
use crate::state::{oci_state_json, State, StateDir, Status};
use crate::sync::{Channel, Message};

/// Options of `create` (and `run`).
#[derive(Debug, Clone, Default)]
pub struct CreateOpts {
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub no_pivot: bool,
    pub preserve_fds: u32,
    /// Keep the pty master (foreground `run` without a console socket).
    pub keep_console: bool,
    /// Descriptors the zone's init gets as its stdin, stdout and stderr instead of
    /// the caller's own 0/1/2 (a monitor hands it pipes or sockets). They stay the
    /// caller's: `create` duplicates them. Ignored when `process.terminal` is set.
    pub stdio: Option<[RawFd; 3]>,
}

/// Result of create/exec: the host pid and, if kept, the pty master.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub console: Option<OwnedFd>,
}

fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

fn ns_file(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// Order in which namespaces are joined: user first, mount last.
const JOIN_ORDER: [LinuxNamespaceType; 8] = [
    LinuxNamespaceType::User,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Time,
    LinuxNamespaceType::Mount,
];

fn namespaces(spec: &Spec) -> Vec<oci_spec::runtime::LinuxNamespace> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
}

fn new_user_ns(spec: &Spec) -> bool {
    namespaces(spec)
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none())
}

fn hooks_of(spec: &Spec) -> oci_spec::runtime::Hooks {
    spec.hooks().clone().unwrap_or_default()
}

#[allow(deprecated)]
fn prestart_hooks(h: &oci_spec::runtime::Hooks) -> Vec<oci_spec::runtime::Hook> {
    let mut v = h.prestart().clone().unwrap_or_default();
    v.extend(h.create_runtime().clone().unwrap_or_default());
    v
}

fn h_prestart(h: &oci_spec::runtime::Hooks) -> &[oci_spec::runtime::Hook] {
    h.prestart().as_deref().unwrap_or(&[])
}

fn h_create_runtime(h: &oci_spec::runtime::Hooks) -> &[oci_spec::runtime::Hook] {
    h.create_runtime().as_deref().unwrap_or(&[])
}

fn any_hooks(h: &oci_spec::runtime::Hooks) -> bool {
    !prestart_hooks(h).is_empty()
        || h.create_container().as_ref().is_some_and(|v| !v.is_empty())
        || h.start_container().as_ref().is_some_and(|v| !v.is_empty())
}

/// Become a child subreaper so zone processes whose intermediate parent
/// exits are reparented to us (needed to wait for them and to clean up).
pub fn set_subreaper() {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Leave a forked child without unwinding or running destructors.
fn child_exit(code: i32) -> ! {
    // SAFETY: _exit never returns and is always safe to call.
    unsafe { libc::_exit(code) }
}

/// Report an error from a forked child and exit.
fn child_fail(ch: &Channel, e: &ZoneError) -> ! {
    if ch.send("ERR", &e.to_string(), None).is_err() {
        tracing::error!("zone init: {e}");
    }
    child_exit(1)
}

fn write_id_maps(pid: i32, spec: &Spec) -> Result<()> {
    let linux = spec.linux().clone().unwrap_or_default();
    let fmt = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        m.iter()
            .flatten()
            .map(|x| format!("{} {} {}\n", x.container_id(), x.host_id(), x.size()))
            .collect::<String>()
    };
    for (file, data) in [
        ("uid_map", fmt(linux.uid_mappings())),
        ("gid_map", fmt(linux.gid_mappings())),
    ] {
        let p = PathBuf::from(format!("/proc/{pid}/{file}"));
        std::fs::write(&p, data.as_bytes()).map_err(|e| ZoneError::io("write", &p, e))?;
    }
    Ok(())
}

/// Everything the zone's init needs after fork.
struct InitCtx<'a> {
    id: &'a str,
    spec: &'a Spec,
    rootfs: &'a Path,
    /// The exec fifo, opened (O_PATH) by the parent: the init never reaches
    /// the state directory by path, which a mapped user may not traverse.
    fifo: std::os::fd::RawFd,
    no_pivot: bool,
    preserve_fds: u32,
    seccomp: Option<crate::seccomp::BpfProgram>,
    cgroup_sources: Vec<(PathBuf, String)>,
    /// Unshare the cgroup namespace once the init is in its cgroup.
    new_cgroupns: bool,
    /// Replacement stdin/stdout/stderr.
    stdio: Option<[RawFd; 3]>,
}

/// Create a zone; returns once its init waits on the exec fifo.
pub fn create(opts: &CreateOpts) -> Result<Spawned> {
    let sd = StateDir::new(&opts.root, &opts.id)?;
    if sd.dir.exists() {
        return Err(ZoneError::Exists(opts.id.clone()));
    }
    let bundle = crate::spec::load_bundle(&opts.bundle)?;
    let spec = &bundle.spec;
    let process = spec
        .process()
        .clone()
        .ok_or_else(|| ZoneError::Spec("config.json: process: missing".into()))?;
    let terminal = process.terminal().unwrap_or(false);
    if terminal && opts.console_socket.is_none() && !opts.keep_console {
        return Err(ZoneError::Msg(
            "cannot allocate a tty if bulkhead-runc will detach without setting --console-socket"
                .into(),
        ));
    }
    if !terminal && opts.console_socket.is_some() {
        return Err(ZoneError::Msg(
            "cannot use --console-socket when process.terminal is false".into(),
        ));
    }
    let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(s) => Some(crate::seccomp::compile_cached(
            s,
            &opts.root.join(crate::seccomp::CACHE_DIR),
        )?),
        None => None,
    };
    let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
    let cg = Cgroup::resolve(cgroups_path.as_deref(), &opts.id)?;

    std::fs::create_dir_all(&opts.root)
        .map_err(|e| ZoneError::io("create state root", &opts.root, e))?;
    match std::fs::create_dir(&sd.dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(ZoneError::Exists(opts.id.clone()))
        }
        Err(e) => return Err(ZoneError::io("create state directory", &sd.dir, e)),
    }
    let mut cleanup = Cleanup {
        sd: Some(sd.clone()),
        cg: None,
        pids: vec![],
    };
    let res = create_inner(opts, &bundle, seccomp, &cg, &sd, &mut cleanup);
    match res {
        Ok(s) => {
            cleanup.disarm();
            Ok(s)
        }
        Err(e) => {
            cleanup.run();
            Err(e)
        }
    }
}

/// Undo a failed create.
struct Cleanup {
    sd: Option<StateDir>,
    cg: Option<Cgroup>,
    pids: Vec<i32>,
}

impl Cleanup {
    fn disarm(&mut self) {
        self.sd = None;
        self.cg = None;
        self.pids.clear();
    }
    fn run(&mut self) {
        for &p in &self.pids {
            // SAFETY: kill with integer arguments.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        for &p in &self.pids {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(p), None);
            crate::process::wait_gone(p);
        }
        if let Some(cg) = self.cg.take() {
            // Other processes may still be leaving the cgroup: kill them too.
            if let Ok(pids) = cg.pids() {
                for p in &pids {
                    // SAFETY: as above.
                    unsafe { libc::kill(*p, libc::SIGKILL) };
                }
                for p in pids {
                    crate::process::wait_gone(p);
                }
            }
            let _ = cg.destroy();
        }
        if let Some(sd) = self.sd.take() {
            let _ = std::fs::remove_dir_all(&sd.dir);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn create_inner(
    opts: &CreateOpts,
    bundle: &crate::spec::Bundle,
    seccomp: Option<crate::seccomp::BpfProgram>,
    cg: &Cgroup,
    sd: &StateDir,
    cleanup: &mut Cleanup,
) -> Result<Spawned> {
    let spec = &bundle.spec;
    // The directories must exist before the init bind-mounts them; limits
    // are written after the fork, while the child builds the zone.
    cg.create()?;
    cleanup.cg = Some(cg.clone());
    let fifo = sd.fifo();
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o622))
        .ctx(|| format!("mkfifo {}", fifo.display()))?;
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &fifo,
        Mode::from_bits_truncate(0o622),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .ctx(|| format!("chmod {}", fifo.display()))?;
    let fifo_fd = nix::fcntl::open(&fifo, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .ctx(|| format!("open {}", fifo.display()))?;

    let ctx = InitCtx {
        id: &opts.id,
        spec,
        rootfs: &bundle.rootfs,
        fifo: fifo_fd.as_raw_fd(),
        no_pivot: opts.no_pivot,
        preserve_fds: opts.preserve_fds,
        seccomp,
        cgroup_sources: cg.mount_sources(),
        new_cgroupns: namespaces(spec)
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Cgroup && n.path().is_none()),
        stdio: opts.stdio,
    };
    let (parent_ch, child_ch) = crate::sync::pair()?;
    set_subreaper();
    // SAFETY: the CLI is single-threaded here, so the child may allocate.
    let stage1 = match unsafe { nix::unistd::fork() }.ctx(|| "fork")? {
        ForkResult::Child => {
            drop(parent_ch);
            stage1_main(&ctx, &child_ch)
        }
        ForkResult::Parent { child } => child.as_raw(),
    };
    drop(child_ch);
    cleanup.pids.push(stage1);
    if !new_user_ns(spec) {
        // Pay the first migration's RCU grace period now, while stage 1
        // creates namespaces; moving stage 2 later is then cheap. (With a
        // new user namespace stage 1 needs us for its id maps first.)
        cg.add_process(stage1)?;
    }
    if let Some(r) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
        cg.apply(&with_default_devices(r, spec))?;
    }

    let hooks = hooks_of(spec);
    let mut init_pid: Option<i32> = None;
    let mut hooks_pending = false;
    let mut console: Option<OwnedFd> = None;
    loop {
        let msg: Option<Message> = parent_ch.recv()?;
        let Some(msg) = msg else {
            return Err(ZoneError::Msg(
                "zone init exited before it was ready".into(),
            ));
        };
        match msg.tag.as_str() {
            "MAP" => {
                write_id_maps(stage1, spec)?;
                parent_ch.send("MAPPED", "", None)?;
            }
            "PID" => {
                let pid: i32 = msg.payload.parse().map_err(|_| {
                    ZoneError::Msg(format!("protocol error: bad pid {:?}", msg.payload))
                })?;
                init_pid = Some(pid);
                cleanup.pids.insert(0, pid);
                let _ = nix::sys::wait::waitpid(Pid::from_raw(stage1), None);
                cleanup.pids.retain(|p| *p != stage1);
                // Moving a task into v1 hierarchies waits for an RCU grace
                // period: done here, it overlaps with the init's mount work.
                cg.add_process(pid)?;
                // If the init already failed, its ERR message follows.
                let _ = parent_ch.send("CGOK", "", None);
            }
            "HOOKS" => hooks_pending = true,
            "PTY" => {
                let fd = msg.fd.ok_or_else(|| {
                    ZoneError::Msg("protocol error: PTY without a descriptor".into())
                })?;
                if let Some(sock) = &opts.console_socket {
                    crate::sync::send_console(sock, fd.as_raw_fd(), &msg.payload)?;
                } else {
                    console = Some(fd);
                }
            }
            "READY" => break,
            "ERR" => return Err(ZoneError::Msg(msg.payload)),
            other => {
                return Err(ZoneError::Msg(format!(
                    "protocol error: unexpected message {other}"
                )))
            }
        }
        if hooks_pending {
            if let Some(pid) = init_pid {
                hooks_pending = false;
                let st = oci_state_json(spec, &opts.id, Status::Creating, pid, &bundle.dir);
                // prestart (deprecated) hooks see the runtime environment as created,
                // as the runtime-tools suite (hooks_stdin) expects; createRuntime hooks
                // run while the zone is still "creating".
                let created = oci_state_json(spec, &opts.id, Status::Created, pid, &bundle.dir);
                run_hooks("prestart", h_prestart(&hooks), &created)?;
                run_hooks("createRuntime", h_create_runtime(&hooks), &st)?;
                parent_ch.send("HOOKSDONE", &st, None)?;
            }
        }
    }
    let pid = init_pid
        .ok_or_else(|| ZoneError::Msg("protocol error: init ready without a pid".into()))?;
    let pid_start = crate::state::proc_stat(pid)
        .map(|s| s.1)
        .ok_or_else(|| ZoneError::Msg(format!("zone init (pid {pid}) exited during create")))?;
    let state = State {
        id: opts.id.clone(),
        pid,
        pid_start,
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        created: crate::state::now_rfc3339(),
        owner: crate::state::owner_name(nix::unistd::geteuid().as_raw()),
        annotations: spec.annotations().clone().unwrap_or_default(),
        cgroup: cg.state(),
        config: spec.clone(),
        exit_status: None,
    };
    state.save(sd)?;
    if let Some(pf) = &opts.pid_file {
        write_pid_file(pf, pid)?;
    }
    Ok(Spawned { pid, console })
}

/// The device rules of the spec followed by the devices every zone gets
/// (the minimal /dev, the pty, and the spec's own `linux.devices`), as runc
/// does; later rules win, so a leading "deny all" keeps everything else out.
fn with_default_devices(
    r: &oci_spec::runtime::LinuxResources,
    spec: &Spec,
) -> oci_spec::runtime::LinuxResources {
    let mut out = r.clone();
    let Some(rules) = r.devices().clone() else {
        return out;
    };
    let mut v = rules;
    let rule = |t: &str, major: Option<i64>, minor: Option<i64>, access: &str| {
        serde_json::from_value::<oci_spec::runtime::LinuxDeviceCgroup>(serde_json::json!({
            "allow": true, "type": t, "major": major, "minor": minor, "access": access
        }))
        .ok()
    };
    let defaults = [
        rule("c", None, None, "m"),
        rule("b", None, None, "m"),
        rule("c", Some(1), Some(3), "rwm"),
        rule("c", Some(1), Some(5), "rwm"),
        rule("c", Some(1), Some(7), "rwm"),
        rule("c", Some(1), Some(8), "rwm"),
        rule("c", Some(1), Some(9), "rwm"),
        rule("c", Some(5), Some(0), "rwm"),
        rule("c", Some(5), Some(1), "rwm"),
        rule("c", Some(5), Some(2), "rwm"),
        rule("c", Some(136), None, "rwm"),
    ];
    v.extend(defaults.into_iter().flatten());
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default()
    {
        v.push(oci_spec::runtime::LinuxDeviceCgroup::from(&d));
    }
    out.set_devices(Some(v));
    out
}

/// Write a pid file atomically (conmon/containerd read it).
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| ZoneError::io("getcwd", Path::new("."), e))?
            .join(path)
    };
    crate::state::write_atomic(&abs, pid.to_string().as_bytes())
}

/// Open a namespace file to join later.
fn open_ns(p: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(p, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .ctx(|| format!("open namespace {}", p.display()))
}

fn stage1_main(ctx: &InitCtx, ch: &Channel) -> ! {
    match stage1(ctx, ch) {
        Ok(()) => child_exit(0),
        Err(e) => child_fail(ch, &e),
    }
}

fn stage1(ctx: &InitCtx, ch: &Channel) -> Result<()> {
    if let Some(fds) = ctx.stdio {
        crate::hardening::install_stdio(fds)?;
    }
    // Nothing the caller left open (beyond the preserved fds) may reach the
    // zone, not even while paths are resolved (CVE-2024-21626).
    crate::hardening::close_fds_except(3 + ctx.preserve_fds, &[ch.raw(), ctx.fifo])?;
    // CVE-2016-9962: until execve, nothing in the zone may ptrace us or open
    // our descriptors through /proc/<pid>/fd (execve makes the process
    // dumpable again).
    crate::process::set_dumpable(false)?;
    let nss = namespaces(ctx.spec);
    // Join namespaces given by path, user namespace first.
    let mut joins = Vec::new();
    for t in JOIN_ORDER {
        if let Some(n) = nss.iter().find(|n| n.typ() == t) {
            if let Some(p) = n.path() {
                joins.push((t, open_ns(p)?, p.clone()));
            }
        }
    }
    for (t, fd, p) in &joins {
        nix::sched::setns(fd.as_fd(), ns_flag(*t))
            .ctx(|| format!("setns {} ({})", p.display(), ns_file(*t)))?;
    }
    if new_user_ns(ctx.spec) {
        nix::sched::unshare(CloneFlags::CLONE_NEWUSER).ctx(|| "unshare user namespace")?;
        // The parent writes our id maps: only possible while we are dumpable.
        crate::process::set_dumpable(true)?;
        ch.send("MAP", "", None)?;
        ch.expect("MAPPED")?;
        crate::process::set_dumpable(false)?;
        nix::unistd::setresgid(
            nix::unistd::Gid::from_raw(0),
            nix::unistd::Gid::from_raw(0),
            nix::unistd::Gid::from_raw(0),
        )
        .ctx(|| "setresgid 0 in the user namespace")?;
        nix::unistd::setresuid(
            nix::unistd::Uid::from_raw(0),
            nix::unistd::Uid::from_raw(0),
            nix::unistd::Uid::from_raw(0),
        )
        .ctx(|| "setresuid 0 in the user namespace")?;
    }
    let mut flags = CloneFlags::empty();
    for n in nss.iter().filter(|n| {
        n.path().is_none()
            && n.typ() != LinuxNamespaceType::User
            && n.typ() != LinuxNamespaceType::Cgroup
    }) {
        flags |= ns_flag(n.typ());
    }
    nix::sched::unshare(flags).ctx(|| format!("unshare namespaces ({:#x})", flags.bits()))?;
    if let Some(offs) = ctx
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.time_offsets().clone())
    {
        let mut text = String::new();
        for (clock, o) in offs {
            text.push_str(&format!(
                "{clock} {} {}\n",
                o.secs().unwrap_or(0),
                o.nanosecs().unwrap_or(0)
            ));
        }
        if !text.is_empty() {
            std::fs::write("/proc/self/timens_offsets", text)
                .map_err(|e| ZoneError::io("write", Path::new("/proc/self/timens_offsets"), e))?;
        }
    }
    // SAFETY: still single-threaded.
    match unsafe { nix::unistd::fork() }.ctx(|| "fork zone init")? {
        ForkResult::Child => match init(ctx, ch) {
            Ok(never) => match never {},
            Err(e) => child_fail(ch, &e),
        },
        ForkResult::Parent { child } => {
            ch.send("PID", &child.as_raw().to_string(), None)?;
            Ok(())
        }
    }
}

/// Uninhabited: a function returning `Result<Never>` only returns on error.
enum Never {}

/// Open the pty inside the zone's devpts, make it our controlling terminal,
/// and return the master (to be sent to the console socket).
fn setup_tty(
    ptmx: &Path,
    slave_dir: &Path,
    console_size: Option<oci_spec::runtime::Box>,
) -> Result<(OwnedFd, String, PathBuf)> {
    let master = nix::fcntl::open(
        ptmx,
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("open {}", ptmx.display()))?;
    let mut n: libc::c_uint = 0;
    let mut unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK/TIOCGPTN with valid pointers on a pty master.
    unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) < 0 {
            return Err(ZoneError::sys("unlock pty", Errno::last()));
        }
        if libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) < 0 {
            return Err(ZoneError::sys("get pty number", Errno::last()));
        }
    }
    if let Some(b) = console_size {
        let ws = libc::winsize {
            ws_row: b.height() as u16,
            ws_col: b.width() as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid pointer.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    let slave_path = slave_dir.join(n.to_string());
    Ok((master, format!("/dev/pts/{n}"), slave_path))
}

/// Make `slave` the controlling terminal and stdio of this process.
fn attach_tty(slave_path: &Path) -> Result<()> {
    nix::unistd::setsid().ctx(|| "setsid")?;
    let slave = nix::fcntl::open(slave_path, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .ctx(|| format!("open {}", slave_path.display()))?;
    // SAFETY: TIOCSCTTY on a terminal descriptor we own.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(ZoneError::sys("set controlling terminal", Errno::last()));
    }
    for target in 0..3 {
        // SAFETY: dup2 onto stdio numbers.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(ZoneError::sys("dup pty onto stdio", Errno::last()));
        }
    }
    Ok(())
}

/// Bring up the loopback interface of a new network namespace, as runc does:
/// services in a zone expect 127.0.0.1 to work before any network is attached.
pub fn loopback_up() -> Result<()> {
    // SAFETY: plain socket(2); the result is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(ZoneError::sys("socket for loopback setup", Errno::last()));
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the named interface in `ifr`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(ZoneError::sys("read flags of lo", Errno::last()));
    }
    // SAFETY: after SIOCGIFFLAGS the union holds the flags member.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the name and flags from a valid `ifr`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(ZoneError::sys("bring up lo", Errno::last()));
    }
    Ok(())
}

/// The zone's init (stage 2). Never returns on success.
fn init(ctx: &InitCtx, ch: &Channel) -> Result<Never> {
    let spec = ctx.spec;
    let process = spec.process().clone().unwrap_or_default();
    let nss = namespaces(spec);
    let has_new = |t| nss.iter().any(|n| n.typ() == t && n.path().is_none());
    let userns = nss.iter().any(|n| n.typ() == LinuxNamespaceType::User);
    // A mount namespace joined by path gets the root file system too (runc
    // does the same): without it the init would look for the process in the
    // host's tree.
    let mount_ns = nss.iter().any(|n| n.typ() == LinuxNamespaceType::Mount);

    if mount_ns {
        crate::mounts::prepare_rootfs(&crate::mounts::RootfsConfig {
            spec,
            rootfs: ctx.rootfs,
            in_userns: userns,
            cgroup_sources: ctx.cgroup_sources.clone(),
        })?;
    }
    if let Some(h) = spec.hostname() {
        if !h.is_empty() {
            nix::unistd::sethostname(h).ctx(|| format!("sethostname {h:?}"))?;
        }
    }
    if let Some(d) = spec.domainname() {
        if !d.is_empty() {
            // SAFETY: setdomainname with a valid buffer and its length.
            if unsafe { libc::setdomainname(d.as_ptr() as *const libc::c_char, d.len()) } < 0 {
                return Err(ZoneError::sys(
                    format!("setdomainname {d:?}"),
                    Errno::last(),
                ));
            }
        }
    }
    if has_new(LinuxNamespaceType::Network) {
        loopback_up()?;
    }
    if process.terminal().unwrap_or(false) {
        let (master, name, slave) = setup_tty(
            &ctx.rootfs.join("dev/pts/ptmx"),
            &ctx.rootfs.join("dev/pts"),
            process.console_size(),
        )?;
        crate::mounts::mount_console(ctx.rootfs, &slave)?;
        attach_tty(&slave)?;
        ch.send("PTY", &name, Some(master.as_raw_fd()))?;
        drop(master);
    }
    // SAFETY: the fifo descriptor was opened by the parent before fork and
    // is owned by nobody else in this process.
    let fifo = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(ctx.fifo) };
    let hooks = hooks_of(spec);
    let mut state_json = String::new();
    let mut cg_ok = false;
    if any_hooks(&hooks) {
        ch.send("HOOKS", "", None)?;
        state_json = loop {
            let m = ch.expect_one_of(&["HOOKSDONE", "CGOK"])?;
            if m.tag == "CGOK" {
                cg_ok = true;
            } else {
                break m.payload;
            }
        };
        run_hooks(
            "createContainer",
            hooks.create_container().as_deref().unwrap_or(&[]),
            &state_json,
        )?;
    }
    let mut host_proc: Option<OwnedFd> = None;
    if mount_ns {
        crate::mounts::enter_root(ctx.rootfs, ctx.no_pivot)?;
        crate::mounts::apply_root_propagation(spec)?;
    } else {
        // No mount namespace: the zone shares the host's mounts, but its root is
        // still `root.path` (the runtime spec's root file system; crun and youki
        // chroot too), not the host's `/`. The root need not have procfs mounted:
        // keep the host's /proc to reopen the exec fifo through.
        host_proc = Some(
            nix::fcntl::open(
                "/proc",
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .ctx(|| "open /proc")?,
        );
        crate::mounts::enter_root_without_mount_ns(ctx.rootfs)?;
    }
    for (k, v) in spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().clone())
        .unwrap_or_default()
    {
        let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        // CVE-2025-52881: write only to the file on the zone's procfs, opened
        // inside the root without symlinks, never a redirected path.
        let mut f = crate::mounts::open_procfs_file_for_write(&p)
            .map_err(|e| ZoneError::Msg(format!("set sysctl {k}: {e}")))?;
        std::io::Write::write_all(&mut f, v.as_bytes())
            .map_err(|e| ZoneError::io(&format!("set sysctl {k}: write"), &p, e))?;
    }
    if mount_ns {
        crate::mounts::finish_rootfs(spec)?;
    }
    crate::process::set_rlimits(process.rlimits().as_deref().unwrap_or(&[]))?;
    if let Some(adj) = process.oom_score_adj() {
        crate::process::set_oom_score_adj(adj)?;
    }
    let mut env = process.env().clone().unwrap_or_default();
    crate::process::ensure_home(&mut env, process.user().uid());
    let args = process.args().clone().unwrap_or_default();
    let exe = crate::process::lookup_exec(args.first().map(String::as_str).unwrap_or(""), &env)?;
    match std::fs::metadata(process.cwd()) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ZoneError::Msg(format!(
                "process.cwd {:?} is not a directory",
                process.cwd()
            )))
        }
        Err(e) => return Err(ZoneError::io("process.cwd: stat", process.cwd(), e)),
    }
    if !cg_ok {
        ch.expect("CGOK")?;
    }
    if ctx.new_cgroupns {
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP).ctx(|| "unshare cgroup namespace")?;
    }
    ch.send("READY", "", None)?;

    // Wait for `start`: opening the fifo for writing blocks until it reads.
    let fifo_w = match &host_proc {
        Some(proc) => nix::fcntl::openat(
            proc,
            format!("self/fd/{}", fifo.as_raw_fd()).as_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        None => nix::fcntl::open(
            &crate::mounts::fd_path(&fifo),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
    };
    drop(host_proc);
    let result = (|| -> Result<Never> {
        let fifo_w = fifo_w.ctx(|| "open exec fifo")?;
        nix::unistd::write(&fifo_w, b"0").ctx(|| "write exec fifo")?;
        drop(fifo_w);
        drop(fifo);
        if !state_json.is_empty() {
            let st = with_status(&state_json, Status::Created);
            run_hooks(
                "startContainer",
                hooks.start_container().as_deref().unwrap_or(&[]),
                &st,
            )?;
        }
        finalize_and_exec(
            &process,
            &exe,
            &args,
            &env,
            ctx.preserve_fds,
            ctx.seccomp.as_ref(),
        )
    })();
    // After READY the parent is gone: report on the zone's stderr.
    let Err(e) = result;
    // Nobody is left to receive an error message: this is the zone's own
    // stderr (as with runc), written directly so it does not depend on the
    // caller having installed a tracing subscriber.
    tracing::error!(id = ctx.id, "zone init failed: {e}");
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("bulkhead-runc init ({}): {e}\n", ctx.id).as_bytes(),
    );
    child_exit(127)
}

/// Replace the "status" of an OCI state JSON.
fn with_status(json: &str, s: Status) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(mut v) => {
            v["status"] = serde_json::json!(s);
            v.to_string()
        }
        Err(_) => json.to_string(),
    }
}

/// User, capabilities, no_new_privs, cwd, fd hygiene, seccomp, execve.
fn finalize_and_exec(
    process: &Process,
    exe: &Path,
    args: &[String],
    env: &[String],
    preserve_fds: u32,
    seccomp: Option<&crate::seccomp::BpfProgram>,
) -> Result<Never> {
    let caps = process.capabilities().as_ref();
    let nnp = process.no_new_privileges().unwrap_or(false);
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it
    // while we still have it (runc does the same); otherwise load it last.
    if !nnp {
        if let Some(p) = seccomp {
            crate::seccomp::load(p)?;
        }
    }
    crate::process::drop_bounding(caps)?;
    crate::process::set_user(process.user())?;
    crate::process::set_caps(caps)?;
    if nnp {
        crate::process::set_no_new_privs()?;
    }
    crate::process::enter_cwd(process.cwd())?;
    crate::hardening::cloexec_from(3 + preserve_fds)?;
    if nnp {
        if let Some(p) = seccomp {
            crate::seccomp::load(p)?;
        }
    }
    Err(crate::process::exec(exe, args, env))
}
