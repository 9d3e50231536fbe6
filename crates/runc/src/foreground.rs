//! Foreground parts of `run` and `exec`: the CLI waits for the zone's process
//! (it is a child subreaper, so the process is reparented to it), forwards
//! signals to it, relays a kept PTY to its own stdio, and exits with the
//! process's status (128+signal when killed).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use anyhow::Result;
use nix::sys::signal::{SigSet, Signal};
use zone::container::{self, Spawned};

use crate::{create_opts, CreateArgs};

const FORWARDED: [Signal; 9] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGTERM,
    Signal::SIGALRM,
    Signal::SIGCONT,
    Signal::SIGWINCH,
];

/// Block the forwarded signals here and resend them to `pid` from a thread.
fn forward_signals(pid: i32) {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || loop {
        if let Ok(sig) = set.wait() {
            // SAFETY: kill with integer arguments.
            unsafe { libc::kill(pid, sig as i32) };
        }
    });
}

struct RawTerm {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawTerm {
    fn enter() -> RawTerm {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        match tcgetattr(&stdin) {
            Ok(t) => {
                let mut raw = t.clone();
                cfmakeraw(&mut raw);
                let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
                RawTerm { saved: Some(t) }
            }
            Err(_) => RawTerm { saved: None },
        }
    }
}

impl Drop for RawTerm {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

/// Copy stdin → master and master → stdout; returns the output thread.
fn relay(master: OwnedFd) -> Option<std::thread::JoinHandle<()>> {
    // Copy our window size to the zone's terminal.
    let mut ws: libc::winsize = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ with a valid pointer.
    unsafe {
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
    let out = std::fs::File::from(master);
    let mut inp = out.try_clone().ok()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if inp.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut out = out;
    Some(std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdout = std::io::stdout();
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if stdout.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    let _ = stdout.flush();
                }
            }
        }
    }))
}

/// `run`: create, start, and (unless detached) wait, then delete.
pub fn run(root: &Path, c: &CreateArgs, detach: bool) -> Result<i32> {
    let keep = !detach && c.console_socket.is_none();
    let spawned = container::create(&create_opts(root, c, keep))?;
    if detach {
        if let Err(e) = container::start(root, &c.id) {
            let _ = container::delete(root, &c.id, true);
            return Err(e.into());
        }
        return Ok(0);
    }
    forward_signals(spawned.pid);
    let term = spawned.console.as_ref().map(|_| RawTerm::enter());
    let out = spawned.console.and_then(relay);
    if let Err(e) = container::start(root, &c.id) {
        drop(term);
        let _ = container::delete(root, &c.id, true);
        return Err(e.into());
    }
    let code = container::wait_exit(spawned.pid);
    if let Some(h) = out {
        let _ = h.join();
    }
    drop(term);
    container::cleanup_after_run(root, &c.id)?;
    Ok(code?)
}

/// Foreground `exec`: wait for the process and return its status.
pub fn wait_foreground(s: Spawned) -> Result<i32> {
    forward_signals(s.pid);
    let term = s.console.as_ref().map(|_| RawTerm::enter());
    let out = s.console.and_then(relay);
    let code = container::wait_exit(s.pid)?;
    if let Some(h) = out {
        let _ = h.join();
    }
    drop(term);
    Ok(code)
}
