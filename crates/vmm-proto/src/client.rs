//! A small blocking client of the control socket. Every connect, write and
//! read is bounded by the client's timeout (plus the request's own
//! `timeout_secs` for `shutdown`), so a hung or stopped monitor never blocks
//! the caller for longer.

use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::protocol::{
    ApiError, Describe, Request, Response, ShutdownDone, SnapshotDone, StateChanged,
};

/// Longest response line accepted (a describe is well under 4 KiB).
const MAX_RESPONSE: usize = 1 << 20;

/// Why a call did not produce a response.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to the control socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("connecting to the control socket {path} timed out after {timeout:?}")]
    ConnectTimeout { path: PathBuf, timeout: Duration },
    #[error("cannot encode {op} as JSON: {source}")]
    Encode {
        op: &'static str,
        source: serde_json::Error,
    },
    #[error("the monitor did not answer {op} within {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
    #[error("{op}: {source}")]
    Io { op: &'static str, source: io::Error },
    #[error("the monitor closed the control connection without answering {op}")]
    Closed { op: &'static str },
    #[error("the monitor's answer to {op} is not a response ({source}): {line}")]
    Protocol {
        op: &'static str,
        line: String,
        source: serde_json::Error,
    },
    #[error("the monitor answered {op} with an unexpected response: {line}")]
    Unexpected { op: &'static str, line: String },
    /// The monitor answered with an error.
    #[error("{op}: {source}")]
    Api { op: &'static str, source: ApiError },
}

/// One connection to a monitor's control socket.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    timeout: Duration,
    /// Bytes read past the last response line.
    pending: Vec<u8>,
}

impl Client {
    /// Connects to the control socket at `path`; `timeout` bounds the
    /// connect and, later, each call. Fails at once when nothing listens
    /// there (see [`Client::connect_retry`] to wait for a starting monitor).
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Client, ClientError> {
        let path = path.as_ref();
        let stream = connect_bounded(path, Instant::now() + timeout).map_err(|e| {
            if e.kind() == io::ErrorKind::TimedOut {
                ClientError::ConnectTimeout {
                    path: path.to_path_buf(),
                    timeout,
                }
            } else {
                ClientError::Connect {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        })?;
        Ok(Client {
            stream,
            timeout,
            pending: Vec::new(),
        })
    }

    /// Like [`Client::connect`], but while the socket does not exist yet or
    /// refuses connections (a monitor still starting), tries again until
    /// `timeout` has passed.
    pub fn connect_retry(path: impl AsRef<Path>, timeout: Duration) -> Result<Client, ClientError> {
        let path = path.as_ref();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match Client::connect(path, left) {
                Err(ClientError::Connect { source, .. })
                    if matches!(
                        source.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10).min(left));
                }
                Ok(mut c) => {
                    c.timeout = timeout;
                    return Ok(c);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The bound on each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends `req` and reads its response. A response that reports a failure
    /// is returned as [`Response::Error`]; the typed helpers
    /// ([`Client::describe`], …) turn it into [`ClientError::Api`].
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let op = req.op();
        // `shutdown` answers only once the guest powered off or the request's
        // own timeout passed.
        let timeout = match req {
            Request::Shutdown { timeout_secs } => {
                self.timeout + Duration::from_secs((*timeout_secs).min(24 * 3600))
            }
            _ => self.timeout,
        };
        let deadline = Instant::now() + timeout;
        let mut line = req
            .to_line()
            .map_err(|source| ClientError::Encode { op, source })?;
        line.push('\n');
        self.write_all(line.as_bytes(), deadline, op, timeout)?;
        let text = self.read_line(deadline, op, timeout)?;
        Response::from_line(&text).map_err(|source| ClientError::Protocol {
            op,
            line: text.clone(),
            source,
        })
    }

    fn io_err(op: &'static str, timeout: Duration, e: io::Error) -> ClientError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ClientError::Timeout { op, timeout }
            }
            _ => ClientError::Io { op, source: e },
        }
    }

    fn write_all(
        &mut self,
        mut buf: &[u8],
        deadline: Instant,
        op: &'static str,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        while !buf.is_empty() {
            let left = remaining(deadline).ok_or(ClientError::Timeout { op, timeout })?;
            self.stream
                .set_write_timeout(Some(left))
                .map_err(|e| Self::io_err(op, timeout, e))?;
            match self.stream.write(buf) {
                Ok(0) => return Err(ClientError::Closed { op }),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Self::io_err(op, timeout, e)),
            }
        }
        Ok(())
    }

    fn read_line(
        &mut self,
        deadline: Instant,
        op: &'static str,
        timeout: Duration,
    ) -> Result<String, ClientError> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let rest = self.pending.split_off(i + 1);
                let line = std::mem::replace(&mut self.pending, rest);
                return Ok(String::from_utf8_lossy(&line).trim().to_string());
            }
            if self.pending.len() > MAX_RESPONSE {
                return Err(ClientError::Unexpected {
                    op,
                    line: format!("(more than {MAX_RESPONSE} bytes without a newline)"),
                });
            }
            let left = remaining(deadline).ok_or(ClientError::Timeout { op, timeout })?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| Self::io_err(op, timeout, e))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ClientError::Closed { op }),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Self::io_err(op, timeout, e)),
            }
        }
    }

    fn checked(&mut self, req: &Request) -> Result<Response, ClientError> {
        let op = req.op();
        self.call(req)?
            .into_result()
            .map_err(|source| ClientError::Api { op, source })
    }

    fn unexpected(op: &'static str, r: &Response) -> ClientError {
        ClientError::Unexpected {
            op,
            line: r.to_line(),
        }
    }

    /// `describe`.
    pub fn describe(&mut self) -> Result<Describe, ClientError> {
        match self.checked(&Request::Describe)? {
            Response::Describe(d) => Ok(d),
            r => Err(Self::unexpected("describe", &r)),
        }
    }

    fn state_call(&mut self, req: Request) -> Result<StateChanged, ClientError> {
        let op = req.op();
        match self.checked(&req)? {
            Response::State(s) => Ok(s),
            r => Err(Self::unexpected(op, &r)),
        }
    }

    /// `pause`: returns once every vCPU is parked.
    pub fn pause(&mut self) -> Result<StateChanged, ClientError> {
        self.state_call(Request::Pause)
    }

    /// `resume`.
    pub fn resume(&mut self) -> Result<StateChanged, ClientError> {
        self.state_call(Request::Resume)
    }

    /// `stop`: hard stop, the monitor exits 0.
    pub fn stop(&mut self) -> Result<StateChanged, ClientError> {
        self.state_call(Request::Stop)
    }

    /// `shutdown`: ACPI power button, then a hard stop after `timeout_secs`.
    pub fn shutdown(&mut self, timeout_secs: u64) -> Result<ShutdownDone, ClientError> {
        match self.checked(&Request::Shutdown { timeout_secs })? {
            Response::Shutdown(s) => Ok(s),
            r => Err(Self::unexpected("shutdown", &r)),
        }
    }

    /// `snapshot` of a paused VM into `dir`.
    pub fn snapshot(&mut self, dir: impl Into<PathBuf>) -> Result<SnapshotDone, ClientError> {
        match self.checked(&Request::Snapshot { dir: dir.into() })? {
            Response::Snapshot(s) => Ok(s),
            r => Err(Self::unexpected("snapshot", &r)),
        }
    }
}

fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    // A zero timeout means "block forever" to set_read_timeout: never pass it.
    (left > Duration::ZERO).then_some(left)
}

/// A non-blocking `connect(2)`: on a Unix socket it only waits when the
/// listener's backlog is full (`EAGAIN`), which is retried until `deadline`.
fn connect_bounded(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a usable Unix socket path (empty, NUL, or longer than 107 bytes)",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    loop {
        // SAFETY: `addr` is an initialised sockaddr_un and `len` covers the
        // family and the NUL-terminated path inside it.
        let rc =
            unsafe { libc::connect(fd, std::ptr::addr_of!(addr).cast::<libc::sockaddr>(), len) };
        if rc == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "backlog full"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => return Err(e),
        }
    }
    let stream = UnixStream::from(owned);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorKind, VmState};
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    fn sock(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-proto-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    /// A tiny monitor: answers every request line with `answer(request)`.
    fn serve(
        listener: UnixListener,
        answer: fn(Request) -> Response,
    ) -> std::thread::JoinHandle<Vec<Request>> {
        std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            let mut out = s.try_clone().expect("clone");
            let mut seen = Vec::new();
            for line in BufReader::new(s).lines() {
                let Ok(line) = line else { break };
                let resp = match Request::from_line(&line) {
                    Ok(r) => {
                        seen.push(r.clone());
                        answer(r)
                    }
                    Err(e) => Response::Error(e),
                };
                if writeln!(out, "{}", resp.to_line()).is_err() {
                    break;
                }
            }
            seen
        })
    }

    #[test]
    fn round_trip_against_a_server() {
        let path = sock("rt");
        let listener = UnixListener::bind(&path).unwrap();
        let server = serve(listener, |r| match r {
            Request::Describe => Response::Describe(Describe {
                id: None,
                state: VmState::Running,
                vcpus: 3,
                memory: 64 << 20,
                devices: vec![],
                serial: "none".into(),
                serial_path: None,
                jailed: false,
                pid: 1,
                uid: 0,
                gid: 0,
                kvm_pvm: false,
                emulation_fallbacks: Default::default(),
            }),
            Request::Pause => Response::state(VmState::Paused),
            Request::Snapshot { .. } => Response::error(ErrorKind::NotPaused, "pause first"),
            Request::Shutdown { .. } => Response::Shutdown(ShutdownDone {
                state: VmState::Stopped,
                graceful: true,
                note: None,
            }),
            _ => Response::state(VmState::Stopped),
        });
        let mut c = Client::connect(&path, Duration::from_secs(5)).expect("connect");
        let d = c.describe().expect("describe");
        assert_eq!(
            (d.vcpus, d.memory, d.state),
            (3, 64 << 20, VmState::Running)
        );
        assert_eq!(c.pause().unwrap().state, VmState::Paused);
        match c.snapshot("/s") {
            Err(ClientError::Api {
                op: "snapshot",
                source,
            }) => {
                assert_eq!(source.kind, ErrorKind::NotPaused);
                assert_eq!(source.error, "pause first");
            }
            other => panic!("{other:?}"),
        }
        // `call` hands back error responses as values.
        assert_eq!(
            c.call(&Request::Snapshot { dir: "/s".into() }).unwrap(),
            Response::error(ErrorKind::NotPaused, "pause first")
        );
        assert!(c.shutdown(1).unwrap().graceful);
        assert_eq!(c.stop().unwrap().state, VmState::Stopped);
        drop(c);
        let seen = server.join().unwrap();
        assert_eq!(
            seen,
            vec![
                Request::Describe,
                Request::Pause,
                Request::Snapshot { dir: "/s".into() },
                Request::Snapshot { dir: "/s".into() },
                Request::Shutdown { timeout_secs: 1 },
                Request::Stop
            ]
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_silent_monitor_times_out() {
        let path = sock("silent");
        let listener = UnixListener::bind(&path).unwrap();
        // Accepts and reads, never answers.
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 256];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        });
        let timeout = Duration::from_millis(300);
        let mut c = Client::connect(&path, timeout).expect("connect");
        let start = Instant::now();
        match c.call(&Request::Describe) {
            Err(ClientError::Timeout { op: "describe", .. }) => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
        let took = start.elapsed();
        assert!(took >= timeout && took < Duration::from_secs(5), "{took:?}");
        drop(c);
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn connect_errors_are_immediate_or_bounded() {
        let missing = sock("missing");
        let start = Instant::now();
        assert!(matches!(
            Client::connect(&missing, Duration::from_secs(5)),
            Err(ClientError::Connect { .. })
        ));
        assert!(matches!(
            Client::connect_retry(&missing, Duration::from_millis(200)),
            Err(ClientError::Connect { .. })
        ));
        assert!(start.elapsed() < Duration::from_secs(3));
        let long = PathBuf::from(format!("/{}", "x".repeat(200)));
        assert!(Client::connect(long, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_closed_connection_is_reported() {
        let path = sock("closed");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            let mut line = String::new();
            let _ = BufReader::new(s).read_line(&mut line);
        });
        let mut c = Client::connect(&path, Duration::from_secs(5)).expect("connect");
        let r = c.call(&Request::Describe);
        assert!(
            matches!(r, Err(ClientError::Closed { op: "describe" })),
            "{r:?}"
        );
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }
}
