//! A blocking client of a monitor's socket. Every connect, send and receive has a
//! timeout, so a hung monitor costs its caller at most that long.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::proto::{to_line, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("monitor socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("monitor did not answer within {0:?}")]
    Timeout(Duration),
    #[error("monitor closed the connection")]
    Closed,
    #[error("monitor: {0}")]
    Io(std::io::Error),
    #[error("monitor sent a malformed reply: {0}")]
    Malformed(String),
    #[error("{0}")]
    Refused(String),
}

/// One connection to a monitor.
pub struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Client {
    pub fn connect(sock: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(sock).map_err(|source| ClientError::Connect {
            path: sock.display().to_string(),
            source,
        })?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|_| stream.set_write_timeout(Some(timeout)))
            .map_err(ClientError::Io)?;
        Ok(Client {
            stream,
            buf: Vec::new(),
            timeout,
        })
    }

    /// Sends a request with `fds` attached.
    pub fn send(&mut self, req: &Request, fds: &[RawFd]) -> Result<(), ClientError> {
        let line = to_line(req);
        let iov = [std::io::IoSlice::new(&line)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        let mut sent = sendmsg::<()>(
            self.stream.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| self.io_err(e.into()))?;
        while sent < line.len() {
            let n = nix::sys::socket::send(
                self.stream.as_raw_fd(),
                &line[sent..],
                MsgFlags::MSG_NOSIGNAL,
            )
            .map_err(|e| self.io_err(e.into()))?;
            sent += n;
        }
        Ok(())
    }

    fn io_err(&self, e: std::io::Error) -> ClientError {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                ClientError::Timeout(self.timeout)
            }
            _ => ClientError::Io(e),
        }
    }

    /// Receives the next response and any fds attached to it.
    pub fn recv(&mut self) -> Result<(Response, Vec<OwnedFd>), ClientError> {
        let mut fds = Vec::new();
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let resp: Response = serde_json::from_slice(&line[..line.len() - 1])
                    .map_err(|e| ClientError::Malformed(e.to_string()))?;
                return Ok((resp, fds));
            }
            let mut data = [0u8; 4096];
            let mut cmsg_space = nix::cmsg_space!([RawFd; 4]);
            let (n, got) = {
                let mut iov = [IoSliceMut::new(&mut data)];
                let msg = recvmsg::<()>(
                    self.stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg_space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(|e| self.io_err(e.into()))?;
                let mut got = Vec::new();
                for c in msg.cmsgs().map_err(|e| self.io_err(e.into()))? {
                    if let ControlMessageOwned::ScmRights(v) = c {
                        got.extend(v);
                    }
                }
                (msg.bytes, got)
            };
            for fd in got {
                // SAFETY: the kernel just installed this descriptor for us; we own it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.buf.extend_from_slice(&data[..n]);
        }
    }

    /// One request, one response; an `Error` response becomes `ClientError::Refused`.
    pub fn call(sock: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
        let mut c = Client::connect(sock, timeout)?;
        c.send(req, &[])?;
        match c.recv()?.0 {
            Response::Error { message } => Err(ClientError::Refused(message)),
            r => Ok(r),
        }
    }

    /// Sets the timeout of later receives (None: wait forever, for streams).
    pub fn set_read_timeout(&mut self, t: Option<Duration>) -> Result<(), ClientError> {
        self.stream.set_read_timeout(t).map_err(ClientError::Io)
    }

    /// The connection and the bytes already read past the last response.
    pub fn into_parts(self) -> (UnixStream, Vec<u8>) {
        (self.stream, self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_silent_monitor_times_out_and_answers_round_trip() {
        let dir = std::env::temp_dir().join(format!("bh-mon-client-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let sock = dir.join("m.sock");
        let _ = std::fs::remove_file(&sock);
        let l = UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            // First client: read its request and never answer.
            let (silent, _) = l.accept().unwrap();
            // Second client: answer.
            let (s, _) = l.accept().unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert_eq!(line, "{\"op\":\"usage\"}\n");
            (&s).write_all(b"{\"reply\":\"error\",\"message\":\"no\"}\n")
                .unwrap();
            drop(silent);
        });
        let e = Client::call(&sock, &Request::Status, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, ClientError::Timeout(_)), "{e}");
        let e = Client::call(&sock, &Request::Usage, Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.to_string(), "no");
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
