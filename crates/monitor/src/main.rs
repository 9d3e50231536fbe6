//! `bulkhead-monitor CONFIG`: one per running instance. Started by bulkheadd, it detaches
//! (new session, parent exits), creates and starts the zone through the zone library (or
//! runs bulkhead-vmm for a VM), reports `ok <pid>` or `error <message>` on the fd named by
//! `BULKHEAD_MONITOR_READY_FD`, then serves its socket from a single-threaded poll loop
//! until the instance ends; it then writes `exit.json`, cleans the zone up and exits.

mod workload;

use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use monitor::{
    exit_path, pid_path, to_line, unix_now, ExitRecord, MonitorConfig, Request, Response, RunState,
    StatusInfo,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use workload::Workload;

fn main() {
    let ready_fd: Option<RawFd> = std::env::var(monitor::READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok());
    let ready = ready_fd.map(|fd| {
        // SAFETY: the daemon passed this descriptor to us for exactly this use; we own it.
        unsafe { File::from_raw_fd(fd) }
    });
    match start(ready) {
        Ok(()) => std::process::exit(0),
        Err((mut ready, msg)) => {
            if let Some(r) = ready.as_mut() {
                let _ = writeln!(r, "error {msg}");
            }
            eprintln!("bulkhead-monitor: {msg}");
            std::process::exit(1);
        }
    }
}

type StartError = (Option<File>, String);

fn start(ready: Option<File>) -> Result<(), StartError> {
    // A zone process must never be able to reach a writable /proc/self/exe of ours
    // (CVE-2019-5736): re-exec from a sealed copy first, as bulkhead-runc does.
    if let Err(e) = zone::hardening::ensure_sealed_exe() {
        return Err((ready, format!("CVE-2019-5736 protection: {e}")));
    }
    // From here on the report pipe is not inherited by what we start (bulkhead-vmm), so
    // the daemon's copy sees EOF when we are gone. (Not before: the sealed re-exec above
    // must keep it.)
    if let Some(r) = &ready {
        // SAFETY: fcntl on the descriptor the daemon passed for this use.
        unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let Some(path) = std::env::args_os().nth(1) else {
        return Err((ready, "usage: bulkhead-monitor CONFIG".into()));
    };
    let cfg: MonitorConfig = match std::fs::read(&path)
        .map_err(|e| format!("read {}: {e}", Path::new(&path).display()))
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", Path::new(&path).display()))
        }) {
        Ok(c) => c,
        Err(e) => return Err((ready, e)),
    };
    // Detach: the daemon's child exits at once; the monitor lives on in its own session,
    // reparented to init (or the nearest subreaper), so the daemon can die or restart.
    // SAFETY: single-threaded here; the child only continues this program.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => std::process::exit(0),
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => return Err((ready, format!("fork: {e}"))),
    }
    let _ = nix::unistd::setsid();
    zone::container::set_subreaper();
    if let Err(e) = quiet_stdio(&cfg) {
        return Err((ready, e));
    }
    let _ = std::fs::create_dir_all(&cfg.run_dir);
    let sock = cfg.socket();
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(exit_path(&cfg.run_dir));
    let listener = match UnixListener::bind(&sock) {
        Ok(l) => l,
        Err(e) => return Err((ready, format!("bind {}: {e}", sock.display()))),
    };
    let _ = std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o600));
    let work = match Workload::start(&cfg) {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&sock);
            return Err((ready, e));
        }
    };
    let _ = zone::state::write_atomic(
        &pid_path(&cfg.run_dir),
        format!("{}\n", std::process::id()).as_bytes(),
    );
    if let Some(mut r) = ready {
        let _ = writeln!(r, "ok {}", work.pid());
    }
    Monitor::new(cfg, listener, work).run();
    Ok(())
}

/// stdin from /dev/null; stdout and stderr to `monitor.log` in the run directory, so
/// nothing of ours reaches the daemon's terminal or keeps its pipes open.
fn quiet_stdio(cfg: &MonitorConfig) -> Result<(), String> {
    let null = File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cfg.run_dir.join("monitor.log"))
        .map_err(|e| format!("open monitor.log in {}: {e}", cfg.run_dir.display()))?;
    for (src, dst) in [
        (null.as_raw_fd(), 0),
        (log.as_raw_fd(), 1),
        (log.as_raw_fd(), 2),
    ] {
        workload::raw_dup2(src, dst).map_err(|e| format!("dup2: {e}"))?;
    }
    Ok(())
}

/// What a connection is for.
enum ConnKind {
    /// Waiting for its request line.
    Request(Vec<u8>, Vec<OwnedFd>),
    Watch,
    /// Waiting for the exit of this exec'd pid.
    Exec,
    Console,
}

struct Conn {
    stream: UnixStream,
    kind: ConnKind,
}

struct Monitor {
    cfg: MonitorConfig,
    listener: UnixListener,
    work: Workload,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    /// pid of an exec → (its pidfd, the connection waiting for it).
    execs: HashMap<i32, (OwnedFd, u64)>,
    state: RunState,
    kill_at: Option<Instant>,
    log: Option<File>,
    log_size: u64,
    /// The console log's index and the second of its last entry.
    log_idx: Option<File>,
    log_idx_last: i64,
}

const TOKEN_LISTENER: u64 = u64::MAX;
const TOKEN_CONSOLE: u64 = u64::MAX - 1;
const TOKEN_WORK: u64 = u64::MAX - 2;
const EXEC_BASE: u64 = 1 << 62;

impl Monitor {
    fn new(cfg: MonitorConfig, listener: UnixListener, work: Workload) -> Monitor {
        let log = open_append(&cfg.log);
        let log_size = log
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len())
            .unwrap_or(0);
        let log_idx = open_append(&monitor::log_index_path(&cfg.log));
        Monitor {
            log_idx,
            log_idx_last: 0,
            cfg,
            listener,
            work,
            conns: HashMap::new(),
            next_id: 0,
            execs: HashMap::new(),
            state: RunState::Running,
            kill_at: None,
            log,
            log_size,
        }
    }

    fn status(&self) -> StatusInfo {
        StatusInfo {
            state: self.state,
            pid: self.work.pid(),
            monitor_pid: std::process::id() as i32,
            exit: None,
        }
    }

    fn run(mut self) {
        loop {
            let mut tokens = Vec::new();
            let mut fds: Vec<PollFd> = Vec::new();
            // The borrow of each fd lives as long as `self`, which outlives the poll call.
            let raw: Vec<(u64, RawFd)> = {
                let mut v = vec![(TOKEN_LISTENER, self.listener.as_raw_fd())];
                if let Some(c) = self.work.console_fd() {
                    v.push((TOKEN_CONSOLE, c));
                }
                v.push((TOKEN_WORK, self.work.exit_fd()));
                for (pid, (fd, _)) in &self.execs {
                    v.push((EXEC_BASE + *pid as u64, fd.as_raw_fd()));
                }
                for (id, c) in &self.conns {
                    v.push((*id, c.stream.as_raw_fd()));
                }
                v
            };
            for (t, fd) in &raw {
                tokens.push(*t);
                // SAFETY: every fd in `raw` is owned by `self` and stays open during poll.
                let b = unsafe { BorrowedFd::borrow_raw(*fd) };
                fds.push(PollFd::new(b, PollFlags::POLLIN));
            }
            let timeout = match self.kill_at {
                Some(t) => {
                    let ms = t.saturating_duration_since(Instant::now()).as_millis();
                    PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("bulkhead-monitor: poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            let ready: Vec<(u64, PollFlags)> = tokens
                .iter()
                .zip(fds.iter())
                .filter_map(|(t, f)| f.revents().filter(|r| !r.is_empty()).map(|r| (*t, r)))
                .collect();
            drop(fds);
            if let Some(t) = self.kill_at {
                if Instant::now() >= t {
                    self.kill_at = None;
                    self.work.kill_all();
                }
            }
            for (token, _flags) in ready {
                match token {
                    TOKEN_LISTENER => self.accept(),
                    TOKEN_CONSOLE => self.console_output(),
                    TOKEN_WORK => {
                        if let Some(code) = self.work.reap() {
                            self.finish(code);
                            return;
                        }
                    }
                    t if t >= EXEC_BASE => self.exec_exited((t - EXEC_BASE) as i32),
                    id => self.conn_readable(id),
                }
            }
        }
    }

    fn accept(&mut self) {
        if let Ok((stream, _)) = self.listener.accept() {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
            let id = self.next_id;
            self.next_id += 1;
            self.conns.insert(
                id,
                Conn {
                    stream,
                    kind: ConnKind::Request(Vec::new(), Vec::new()),
                },
            );
        }
    }

    fn console_output(&mut self) {
        let mut buf = [0u8; 8192];
        let Some(fd) = self.work.console_fd() else {
            return;
        };
        // SAFETY: the console fd is owned by the workload and open.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        let n = match nix::unistd::read(b, &mut buf) {
            Ok(0) | Err(_) => {
                // EIO: no process holds the terminal's other side any more.
                self.work.close_console();
                return;
            }
            Ok(n) => n,
        };
        self.append_log(&buf[..n]);
        let mut dead = Vec::new();
        for (id, c) in &self.conns {
            if matches!(c.kind, ConnKind::Console) {
                match nix::sys::socket::send(
                    c.stream.as_raw_fd(),
                    &buf[..n],
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                ) {
                    Ok(_) | Err(nix::errno::Errno::EAGAIN) => {}
                    Err(_) => dead.push(*id),
                }
            }
        }
        for id in dead {
            self.conns.remove(&id);
        }
    }

    fn append_log(&mut self, data: &[u8]) {
        if self.log_size + data.len() as u64 > self.cfg.log_max {
            let mut old = self.cfg.log.clone().into_os_string();
            old.push(".1");
            let _ = std::fs::rename(&self.cfg.log, &old);
            let idx = monitor::log_index_path(&self.cfg.log);
            let mut old_idx = idx.clone().into_os_string();
            old_idx.push(".1");
            let _ = std::fs::rename(&idx, &old_idx);
            self.log = open_append(&self.cfg.log);
            self.log_idx = open_append(&idx);
            self.log_idx_last = 0;
            self.log_size = 0;
        }
        let now = unix_now();
        if now != self.log_idx_last {
            if let Some(i) = self.log_idx.as_mut() {
                let _ = i.write_all(&monitor::log_index_entry(self.log_size, now));
            }
            self.log_idx_last = now;
        }
        if let Some(f) = self.log.as_mut() {
            if f.write_all(data).is_ok() {
                self.log_size += data.len() as u64;
            }
        }
    }

    fn reply(&mut self, id: u64, r: &Response) -> bool {
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        (&c.stream).write_all(&to_line(r)).is_ok()
    }

    fn reply_close(&mut self, id: u64, r: &Response) {
        self.reply(id, r);
        self.conns.remove(&id);
    }

    fn conn_readable(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        match &mut c.kind {
            ConnKind::Request(buf, fds) => {
                let mut data = [0u8; 4096];
                let mut cmsg = nix::cmsg_space!([RawFd; 4]);
                let mut iov = [IoSliceMut::new(&mut data)];
                let (n, got) = match recvmsg::<()>(
                    c.stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(m) => {
                        let mut got = Vec::new();
                        if let Ok(cm) = m.cmsgs() {
                            for x in cm {
                                if let ControlMessageOwned::ScmRights(v) = x {
                                    got.extend(v);
                                }
                            }
                        }
                        (m.bytes, got)
                    }
                    Err(nix::errno::Errno::EAGAIN) => return,
                    Err(_) => (0, Vec::new()),
                };
                for fd in got {
                    // SAFETY: installed for us by the kernel just now.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
                if n == 0 {
                    self.conns.remove(&id);
                    return;
                }
                buf.extend_from_slice(&data[..n]);
                if buf.len() > 1 << 20 {
                    self.conns.remove(&id);
                    return;
                }
                let Some(pos) = buf.iter().position(|&b| b == b'\n') else {
                    return;
                };
                let line = buf[..pos].to_vec();
                let rest = buf[pos + 1..].to_vec();
                let fds = std::mem::take(fds);
                match serde_json::from_slice::<Request>(&line) {
                    Ok(req) => self.handle(id, req, fds, rest),
                    Err(e) => self.reply_close(
                        id,
                        &Response::Error {
                            message: format!("malformed request: {e}"),
                        },
                    ),
                }
            }
            ConnKind::Console => {
                let mut data = [0u8; 4096];
                match nix::unistd::read(&c.stream, &mut data) {
                    Ok(0) | Err(_) => {
                        self.conns.remove(&id);
                    }
                    Ok(n) => self.work.console_input(&data[..n]),
                }
            }
            ConnKind::Watch | ConnKind::Exec => {
                // Only EOF is expected from these: the peer went away.
                let mut data = [0u8; 64];
                match nix::sys::socket::recv(
                    c.stream.as_raw_fd(),
                    &mut data,
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(0) => {
                        self.conns.remove(&id);
                    }
                    Err(nix::errno::Errno::EAGAIN) | Ok(_) => {}
                    Err(_) => {
                        self.conns.remove(&id);
                    }
                }
            }
        }
    }

    fn notify_watchers(&mut self) {
        let line = to_line(&Response::Status(self.status()));
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.kind, ConnKind::Watch))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(c) = self.conns.get(&id) {
                if (&c.stream).write_all(&line).is_err() {
                    self.conns.remove(&id);
                }
            }
        }
    }

    fn handle(&mut self, id: u64, req: Request, fds: Vec<OwnedFd>, rest: Vec<u8>) {
        match req {
            Request::Status => {
                let s = self.status();
                self.reply_close(id, &Response::Status(s));
            }
            Request::Watch => {
                let s = self.status();
                if self.reply(id, &Response::Status(s)) {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.kind = ConnKind::Watch;
                    }
                }
            }
            Request::Stop {
                signal,
                timeout_s,
                force,
            } => {
                if force || timeout_s == 0 {
                    self.work.kill_all();
                } else {
                    if let Err(e) = self.work.graceful_stop(signal) {
                        // The graceful path failed (no handler, no agent): kill now.
                        eprintln!("bulkhead-monitor: graceful stop: {e}; killing");
                        self.work.kill_all();
                    }
                    self.kill_at = Some(Instant::now() + Duration::from_secs(timeout_s));
                }
                self.state = RunState::Stopping;
                self.reply_close(id, &Response::Ok);
                self.notify_watchers();
            }
            Request::Freeze | Request::Unfreeze => {
                let freeze = matches!(req, Request::Freeze);
                match self.work.freeze(freeze) {
                    Ok(()) => {
                        self.state = if freeze {
                            RunState::Frozen
                        } else {
                            RunState::Running
                        };
                        self.reply_close(id, &Response::Ok);
                        self.notify_watchers();
                    }
                    Err(message) => self.reply_close(id, &Response::Error { message }),
                }
            }
            Request::Update(u) => {
                let r = match self.work.update(&u) {
                    Ok(()) => Response::Ok,
                    Err(message) => Response::Error { message },
                };
                self.reply_close(id, &r);
            }
            Request::Usage => {
                let r = match self.work.usage() {
                    Ok(u) => Response::Usage(u),
                    Err(message) => Response::Error { message },
                };
                self.reply_close(id, &r);
            }
            Request::Resize { pid: _, cols, rows } => {
                self.work.resize_console(cols, rows);
                self.reply_close(id, &Response::Ok);
            }
            Request::Console => {
                if self.work.console_fd().is_none() {
                    self.reply_close(
                        id,
                        &Response::Error {
                            message: "the instance has no console".into(),
                        },
                    );
                    return;
                }
                if self.reply(id, &Response::Ok) {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.kind = ConnKind::Console;
                    }
                    if !rest.is_empty() {
                        self.work.console_input(&rest);
                    }
                }
            }
            Request::Exec(spec) => match self.work.exec(&spec, fds) {
                Ok((pid, pidfd, master)) => {
                    let line = to_line(&Response::ExecStarted { pid });
                    let ok = match (&master, self.conns.get(&id)) {
                        (Some(m), Some(c)) => send_with_fd(&c.stream, &line, m.as_fd()),
                        (None, Some(c)) => (&c.stream).write_all(&line).is_ok(),
                        _ => false,
                    };
                    drop(master);
                    if ok {
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.kind = ConnKind::Exec;
                        }
                    }
                    self.execs.insert(pid, (pidfd, id));
                }
                Err(message) => self.reply_close(id, &Response::Error { message }),
            },
        }
    }

    fn exec_exited(&mut self, pid: i32) {
        let Some((_fd, conn)) = self.execs.remove(&pid) else {
            return;
        };
        let code = wait_code(pid);
        self.reply_close(conn, &Response::ExecExited { code });
    }

    /// The instance ended: record, clean up, tell watchers, exit.
    fn finish(&mut self, code: i32) {
        // Drain what the console still holds.
        for _ in 0..64 {
            let Some(fd) = self.work.console_fd() else {
                break;
            };
            // SAFETY: the console fd is open and owned by the workload.
            let b = unsafe { BorrowedFd::borrow_raw(fd) };
            let mut p = [PollFd::new(b, PollFlags::POLLIN)];
            if !matches!(poll(&mut p, PollTimeout::ZERO), Ok(n) if n > 0) {
                break;
            }
            self.console_output();
        }
        let rec = ExitRecord {
            code,
            at: unix_now(),
        };
        let _ = zone::state::write_atomic(&exit_path(&self.cfg.run_dir), &to_line(&rec));
        self.work.cleanup();
        // Execs still waiting end with the zone.
        let pending: Vec<i32> = self.execs.keys().copied().collect();
        for pid in pending {
            self.exec_exited(pid);
        }
        self.state = RunState::Exited;
        let mut s = self.status();
        s.exit = Some(rec);
        let line = to_line(&Response::Status(s));
        for c in self.conns.values() {
            if matches!(c.kind, ConnKind::Watch) {
                let _ = (&c.stream).write_all(&line);
            }
        }
        let _ = std::fs::remove_file(self.cfg.socket());
        let _ = std::fs::remove_file(pid_path(&self.cfg.run_dir));
    }
}

fn open_append(p: &Path) -> Option<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .ok()
}

/// Exit code of a reaped child: its code, or 128 + the signal that ended it.
pub fn wait_code(pid: i32) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, c)) => return c,
            Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

fn send_with_fd(s: &UnixStream, data: &[u8], fd: BorrowedFd) -> bool {
    let raw = [fd.as_raw_fd()];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
    let iov = [std::io::IoSlice::new(data)];
    matches!(
        nix::sys::socket::sendmsg::<()>(s.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None),
        Ok(n) if n == data.len()
    )
}
