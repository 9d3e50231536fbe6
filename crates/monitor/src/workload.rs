//! What a monitor runs: a zone (through the zone library, in this single-threaded
//! process, as bulkhead-runc would) or a VM (a bulkhead-vmm child). Owns starting it,
//! its console, signals, freezing, resource updates, usage figures and clean-up.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use monitor::{ExecSpec, MonitorConfig, ResourceUpdate, Usage};
use zone::container::{self, CreateOpts, ExecOpts};

pub enum Workload {
    Zone(ZoneWork),
    Vm(VmWork),
}

pub struct ZoneWork {
    root: PathBuf,
    id: String,
    init: i32,
    init_pidfd: OwnedFd,
    console: Option<OwnedFd>,
}

pub struct VmWork {
    child: std::process::Child,
    pidfd: OwnedFd,
    serial: Option<UnixStream>,
    control: PathBuf,
    /// The connection of a power-button request in flight.
    pending_shutdown: Option<UnixStream>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Workload {
    pub fn start(cfg: &MonitorConfig) -> Result<Workload, String> {
        match &cfg.workload {
            monitor::Workload::Zone {
                state_root,
                id,
                bundle,
            } => {
                let opts = CreateOpts {
                    root: state_root.clone(),
                    id: id.clone(),
                    bundle: bundle.clone(),
                    keep_console: true,
                    ..Default::default()
                };
                let spawned = container::create(&opts).map_err(err)?;
                if let Err(e) = container::start(state_root, id) {
                    let _ = container::delete(state_root, id, true);
                    return Err(err(e));
                }
                let init_pidfd = zone::process::pidfd_open(spawned.pid).map_err(err)?;
                if let Some(c) = &spawned.console {
                    set_nonblocking(c.as_raw_fd());
                }
                Ok(Workload::Zone(ZoneWork {
                    root: state_root.clone(),
                    id: id.clone(),
                    init: spawned.pid,
                    init_pidfd,
                    console: spawned.console,
                }))
            }
            monitor::Workload::Vm {
                vmm,
                config,
                control,
                serial,
            } => {
                let _ = std::fs::remove_file(serial);
                let _ = std::fs::remove_file(control);
                let child = std::process::Command::new(vmm)
                    .arg("--config")
                    .arg(config)
                    .stdin(std::process::Stdio::null())
                    .spawn()
                    .map_err(|e| format!("run {}: {e}", vmm.display()))?;
                let pidfd = zone::process::pidfd_open(child.id() as i32).map_err(err)?;
                let mut w = VmWork {
                    child,
                    pidfd,
                    serial: None,
                    control: control.clone(),
                    pending_shutdown: None,
                };
                // The monitor is the serial socket's client: it logs the console and relays
                // it to attached users. Wait (bounded) for the VM to create its sockets.
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    if let Ok(Some(st)) = w.child.try_wait() {
                        return Err(format!(
                            "bulkhead-vmm exited during start ({st}); see monitor.log"
                        ));
                    }
                    if let Ok(s) = UnixStream::connect(serial) {
                        let _ = s.set_nonblocking(true);
                        w.serial = Some(s);
                        if control.exists() {
                            break;
                        }
                    }
                    if Instant::now() > deadline {
                        let _ = w.child.kill();
                        let _ = w.child.wait();
                        return Err(
                            "bulkhead-vmm did not open its serial and control sockets within 10 s"
                                .into(),
                        );
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(Workload::Vm(w))
            }
        }
    }

    pub fn pid(&self) -> i32 {
        match self {
            Workload::Zone(z) => z.init,
            Workload::Vm(v) => v.child.id() as i32,
        }
    }

    pub fn exit_fd(&self) -> RawFd {
        match self {
            Workload::Zone(z) => z.init_pidfd.as_raw_fd(),
            Workload::Vm(v) => v.pidfd.as_raw_fd(),
        }
    }

    pub fn console_fd(&self) -> Option<RawFd> {
        match self {
            Workload::Zone(z) => z.console.as_ref().map(|c| c.as_raw_fd()),
            Workload::Vm(v) => v.serial.as_ref().map(|s| s.as_raw_fd()),
        }
    }

    pub fn close_console(&mut self) {
        match self {
            Workload::Zone(z) => z.console = None,
            Workload::Vm(v) => v.serial = None,
        }
    }

    pub fn console_input(&mut self, data: &[u8]) {
        if let Some(fd) = self.console_fd() {
            let mut off = 0;
            // Bounded: a console nobody reads must not stall the monitor for long.
            let deadline = Instant::now() + Duration::from_secs(1);
            while off < data.len() && Instant::now() < deadline {
                match nix::unistd::write(
                    // SAFETY: the console fd is open and owned by the workload.
                    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
                    &data[off..],
                ) {
                    Ok(n) => off += n,
                    Err(nix::errno::Errno::EAGAIN) => std::thread::sleep(Duration::from_millis(1)),
                    Err(_) => break,
                }
            }
        }
    }

    pub fn resize_console(&self, cols: u16, rows: u16) {
        if let Workload::Zone(ZoneWork {
            console: Some(c), ..
        }) = self
        {
            monitor::set_winsize(c.as_raw_fd(), cols, rows);
        }
    }

    /// The instance ended when this returns its exit code.
    pub fn reap(&mut self) -> Option<i32> {
        match self {
            Workload::Zone(z) => Some(crate::wait_code(z.init)),
            Workload::Vm(v) => v.child.try_wait().ok().flatten().map(|st| {
                use std::os::unix::process::ExitStatusExt;
                st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
            }),
        }
    }

    pub fn graceful_stop(&mut self, signal: i32) -> Result<(), String> {
        match self {
            Workload::Zone(z) => container::kill(&z.root, &z.id, signal, false).map_err(err),
            // The ACPI power button. bulkhead-vmm answers once the guest is off; the
            // monitor does not wait for that answer (it is single-threaded): the
            // request is written and the connection kept until the VM exits, while
            // the monitor's own timer kills the VM if the guest ignores the button.
            Workload::Vm(v) => {
                let mut c = UnixStream::connect(&v.control)
                    .map_err(|e| format!("VM control socket {}: {e}", v.control.display()))?;
                let mut line = vmm_proto::Request::Shutdown { timeout_secs: 3600 }
                    .to_line()
                    .map_err(err)?;
                line.push('\n');
                let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
                std::io::Write::write_all(&mut c, line.as_bytes()).map_err(err)?;
                v.pending_shutdown = Some(c);
                Ok(())
            }
        }
    }

    pub fn kill_all(&mut self) {
        match self {
            Workload::Zone(z) => {
                let _ = container::kill(&z.root, &z.id, libc::SIGKILL, true);
                // A frozen zone cannot die until it is thawed.
                let _ = container::resume(&z.root, &z.id);
            }
            Workload::Vm(v) => {
                let _ = v.child.kill();
            }
        }
    }

    pub fn freeze(&mut self, on: bool) -> Result<(), String> {
        match self {
            Workload::Zone(z) => if on {
                container::pause(&z.root, &z.id)
            } else {
                container::resume(&z.root, &z.id)
            }
            .map_err(err),
            Workload::Vm(v) => {
                let mut c =
                    vmm_proto::Client::connect(&v.control, Duration::from_secs(5)).map_err(err)?;
                if on {
                    c.pause().map(|_| ())
                } else {
                    c.resume().map(|_| ())
                }
                .map_err(err)
            }
        }
    }

    pub fn update(&mut self, u: &ResourceUpdate) -> Result<(), String> {
        let Workload::Zone(z) = self else {
            return Err("a VM's CPUs and memory change at its next start".into());
        };
        let r = u.to_oci().map_err(err)?;
        container::update(&z.root, &z.id, &r).map_err(err)
    }

    pub fn usage(&self) -> Result<Usage, String> {
        match self {
            Workload::Zone(z) => {
                let (st, _) = container::load(&z.root, &z.id).map_err(err)?;
                let s = zone::cgroups::Cgroup::from_state(&st.cgroup)
                    .stats()
                    .map_err(err)?;
                let bytes = |op: &str| -> u64 {
                    s.blkio
                        .io_service_bytes_recursive
                        .iter()
                        .filter(|e| e.op.eq_ignore_ascii_case(op))
                        .map(|e| e.value)
                        .sum()
                };
                let (rx, tx) = net_dev(z.init);
                let limit = |v: u64| (v > 0 && v < i64::MAX as u64 / 2).then_some(v);
                Ok(Usage {
                    cpu_ns: s.cpu.usage.total,
                    memory_bytes: s.memory.usage.usage,
                    memory_limit: limit(s.memory.usage.limit),
                    pids: s.pids.current,
                    pids_limit: limit(s.pids.limit),
                    read_bytes: bytes("read"),
                    write_bytes: bytes("write"),
                    net_rx_bytes: rx,
                    net_tx_bytes: tx,
                })
            }
            Workload::Vm(v) => {
                let pid = v.child.id();
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(err)?;
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .map(|(_, r)| r.split_whitespace().collect())
                    .unwrap_or_default();
                let tick = 1_000_000_000 / clk_tck();
                let ticks = |i: usize| {
                    fields
                        .get(i)
                        .and_then(|x| x.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                // Fields after the command: utime is the 12th, stime the 13th (0-based 11, 12).
                let cpu_ns = (ticks(11) + ticks(12)) * tick;
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(err)?;
                let rss_kib = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                    .unwrap_or(0);
                let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
                let io_field = |k: &str| {
                    io.lines()
                        .find_map(|l| l.strip_prefix(k))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                };
                Ok(Usage {
                    cpu_ns,
                    memory_bytes: rss_kib * 1024,
                    pids: 1,
                    read_bytes: io_field("read_bytes:"),
                    write_bytes: io_field("write_bytes:"),
                    ..Default::default()
                })
            }
        }
    }

    /// Runs a process in the zone: (pid, pidfd, terminal master for a tty exec).
    pub fn exec(
        &mut self,
        spec: &ExecSpec,
        fds: Vec<OwnedFd>,
    ) -> Result<(i32, OwnedFd, Option<OwnedFd>), String> {
        let Workload::Zone(z) = self else {
            return Err("exec in a VM needs the guest agent, which this VM does not have".into());
        };
        if spec.args.is_empty() {
            return Err("exec: no command given".into());
        }
        if !spec.tty && fds.len() != 3 {
            return Err(format!(
                "exec without a terminal needs 3 descriptors (stdin, stdout, stderr), got {}",
                fds.len()
            ));
        }
        let mut p = container::exec_base_process(&z.root, &z.id).map_err(err)?;
        p.set_args(Some(spec.args.clone()));
        // The zone's own environment, overridden per name by the request's.
        let mut env = p.env().clone().unwrap_or_default();
        for kv in &spec.env {
            let key = kv.split('=').next().unwrap_or("");
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        p.set_env(Some(env));
        p.set_terminal(Some(spec.tty));
        if let Some(cwd) = &spec.cwd {
            p.set_cwd(PathBuf::from(cwd));
        }
        if let Some(uid) = spec.uid {
            p.user_mut().set_uid(uid);
            p.user_mut().set_gid(spec.gid.unwrap_or(uid));
        }
        if spec.tty && spec.cols > 0 && spec.rows > 0 {
            let b = oci_spec::runtime::BoxBuilder::default()
                .width(spec.cols as u32)
                .height(spec.rows as u32)
                .build()
                .map_err(err)?;
            p.set_console_size(Some(b));
        }
        let opts = ExecOpts {
            root: z.root.clone(),
            id: z.id.clone(),
            process: p,
            keep_console: spec.tty,
            stdio: (!spec.tty)
                .then(|| [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()]),
            ..Default::default()
        };
        let spawned = container::exec(&opts).map_err(err)?;
        drop(fds);
        let pidfd = zone::process::pidfd_open(spawned.pid).map_err(err)?;
        Ok((spawned.pid, pidfd, spawned.console))
    }

    /// After the instance ended: remove the zone's state and cgroups.
    pub fn cleanup(&mut self) {
        if let Workload::Zone(z) = self {
            if let Err(e) = container::delete(&z.root, &z.id, true) {
                eprintln!("bulkhead-monitor: clean-up of zone {}: {e}", z.id);
            }
        }
    }
}

/// dup2 onto a standard descriptor number (nix's dup2 wants owned targets).
pub fn raw_dup2(src: RawFd, dst: RawFd) -> std::io::Result<()> {
    // SAFETY: dup2 only replaces descriptor `dst` of this process.
    if unsafe { libc::dup2(src, dst) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Received and sent bytes of every interface but `lo` in `pid`'s network namespace.
fn net_dev(pid: i32) -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) else {
        return (0, 0);
    };
    let mut rx = 0;
    let mut tx = 0;
    for l in text.lines().skip(2) {
        let Some((name, rest)) = l.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        rx += f.first().copied().unwrap_or(0);
        tx += f.get(8).copied().unwrap_or(0);
    }
    (rx, tx)
}
