//! Parent/child synchronisation during create and exec: a SOCK_SEQPACKET
//! socketpair carrying short text messages ("TAG payload") and, for the
//! console, one descriptor (SCM_RIGHTS). Also the runc console-socket
//! protocol: one message whose payload is the pty name, with the master fd.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};

use crate::error::{Result, SysContext, ZoneError};

const MAX_MSG: usize = 256 * 1024;

/// One end of the sync channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

/// A received message: its tag, payload and an optional descriptor.
#[derive(Debug)]
pub struct Message {
    pub tag: String,
    pub payload: String,
    pub fd: Option<OwnedFd>,
}

/// A connected pair (parent end, child end), both close-on-exec.
pub fn pair() -> Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .ctx(|| "socketpair")?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl Channel {
    /// Send `tag payload`, optionally with a descriptor.
    pub fn send(&self, tag: &str, payload: &str, fd: Option<RawFd>) -> Result<()> {
        let msg = if payload.is_empty() {
            tag.to_string()
        } else {
            format!("{tag} {payload}")
        };
        let bytes = msg.as_bytes();
        let bytes = &bytes[..bytes.len().min(MAX_MSG)];
        let iov = [IoSlice::new(bytes)];
        let fds;
        let cmsg: Vec<ControlMessage> = match fd {
            Some(f) => {
                fds = [f];
                vec![ControlMessage::ScmRights(&fds)]
            }
            None => vec![],
        };
        loop {
            match sendmsg::<UnixAddr>(
                self.fd.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(ZoneError::sys(format!("send {tag} to the other side"), e)),
            }
        }
    }

    /// Receive one message; `None` at end of stream (all peers closed).
    pub fn recv(&self) -> Result<Option<Message>> {
        let mut buf = vec![0u8; MAX_MSG];
        let mut cbuf = nix::cmsg_space!([RawFd; 1]);
        loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let r = recvmsg::<UnixAddr>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cbuf),
                MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let msg = match r {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(ZoneError::sys("receive from the other side", e)),
            };
            let mut fd = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(v) = c {
                        for raw in v {
                            // SAFETY: the kernel just installed this descriptor for us.
                            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                            if fd.is_none() {
                                fd = Some(owned);
                            }
                        }
                    }
                }
            }
            let n = msg.bytes;
            if n == 0 && fd.is_none() {
                return Ok(None);
            }
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let (tag, payload) = match text.split_once(' ') {
                Some((t, p)) => (t.to_string(), p.to_string()),
                None => (text, String::new()),
            };
            return Ok(Some(Message { tag, payload, fd }));
        }
    }

    /// Receive and require a given tag; "ERR msg" becomes an error.
    pub fn expect(&self, tag: &str) -> Result<Message> {
        match self.recv()? {
            Some(m) if m.tag == tag => Ok(m),
            Some(m) if m.tag == "ERR" => Err(ZoneError::Msg(m.payload)),
            Some(m) => Err(ZoneError::Msg(format!(
                "protocol error: expected {tag}, got {}",
                m.tag
            ))),
            None => Err(ZoneError::Msg(format!(
                "protocol error: channel closed while waiting for {tag}"
            ))),
        }
    }

    /// Receive one of several tags; "ERR msg" becomes an error.
    pub fn expect_one_of(&self, tags: &[&str]) -> Result<Message> {
        match self.recv()? {
            Some(m) if tags.contains(&m.tag.as_str()) => Ok(m),
            Some(m) if m.tag == "ERR" => Err(ZoneError::Msg(m.payload)),
            Some(m) => Err(ZoneError::Msg(format!(
                "protocol error: expected one of {tags:?}, got {}",
                m.tag
            ))),
            None => Err(ZoneError::Msg(format!(
                "protocol error: channel closed while waiting for {tags:?}"
            ))),
        }
    }

    /// Raw descriptor (to keep across fork bookkeeping).
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Send the pty master to a runc-style console socket.
pub fn send_console(socket: &Path, master: RawFd, name: &str) -> Result<()> {
    let s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| ZoneError::io("connect to console socket", socket, e))?;
    let fds = [master];
    let iov = [IoSlice::new(name.as_bytes())];
    sendmsg::<UnixAddr>(
        s.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| ZoneError::sys(format!("send the console to {}", socket.display()), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_fd_passing() {
        let (a, b) = pair().unwrap();
        a.send("PID", "42", None).unwrap();
        let m = b.recv().unwrap().unwrap();
        assert_eq!((m.tag.as_str(), m.payload.as_str()), ("PID", "42"));
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        b.send("PTY", "/dev/pts/3", Some(f.as_raw_fd())).unwrap();
        let m = a.recv().unwrap().unwrap();
        assert_eq!(m.tag, "PTY");
        assert!(m.fd.is_some());
        b.send("ERR", "mount failed: EPERM", None).unwrap();
        assert_eq!(
            a.expect("READY").unwrap_err().to_string(),
            "mount failed: EPERM"
        );
        drop(b);
        assert!(a.recv().unwrap().is_none());
    }

    #[test]
    fn console_socket_protocol() {
        let path = std::env::temp_dir().join(format!("bh-console-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        send_console(&path, f.as_raw_fd(), "/dev/pts/7").unwrap();
        let (conn, _) = l.accept().unwrap();
        let ch = Channel {
            fd: OwnedFd::from(conn),
        };
        let m = ch.recv().unwrap().unwrap();
        assert_eq!(m.tag, "/dev/pts/7");
        assert!(m.fd.is_some());
        std::fs::remove_file(&path).unwrap();
    }
}
