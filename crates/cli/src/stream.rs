//! The client side of exec and console streams: the local terminal in raw mode (when it
//! is one), stdin sent as frames, window size changes sent on SIGWINCH, output frames
//! written to stdout/stderr, and the detach key of `console` (Ctrl-a q).

use std::io::{IsTerminal, Write};
use std::os::fd::AsRawFd;

use anyhow::{bail, Result};
use api::frame::{self, FrameKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Puts the terminal on stdin into raw mode until dropped.
pub struct RawMode {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawMode {
    pub fn enter() -> RawMode {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return RawMode { saved: None };
        }
        let Ok(saved) = nix::sys::termios::tcgetattr(&stdin) else {
            return RawMode { saved: None };
        };
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        let _ = nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &raw);
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(s) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                s,
            );
        }
    }
}

/// (cols, rows) of the terminal on stdout, if it is one.
pub fn window_size() -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ with a valid pointer.
    let r = unsafe { libc::ioctl(std::io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

fn resize_frame(cols: u16, rows: u16) -> Vec<u8> {
    let mut p = cols.to_be_bytes().to_vec();
    p.extend_from_slice(&rows.to_be_bytes());
    frame::encode(FrameKind::Resize, &p)
}

/// How a stream ended.
pub enum Ending {
    Exit(i32),
    Detached,
}

/// Relays between the local terminal and the stream. `detach_key`: console mode, where
/// Ctrl-a q leaves and the stream has no exit code.
/// `read_stdin`: whether local input is sent at all.
pub async fn relay<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    detach_key: bool,
    tty: bool,
    read_stdin: bool,
) -> Result<Ending> {
    let mut stdin = tokio::io::stdin();
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut stdin_open = read_stdin;
    let mut ibuf = vec![0u8; 8192];
    let mut obuf = vec![0u8; 65536];
    let mut pending = Vec::new();
    let mut ctrl_a = false;
    if tty {
        if let Some((c, r)) = window_size() {
            io.write_all(&resize_frame(c, r)).await?;
        }
    }
    loop {
        while let Some((kind, payload)) = frame::decode(&mut pending).map_err(anyhow::Error::msg)? {
            match kind {
                FrameKind::Stdout => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&payload)?;
                    o.flush()?;
                }
                FrameKind::Stderr => {
                    let mut e = std::io::stderr().lock();
                    e.write_all(&payload)?;
                    e.flush()?;
                }
                FrameKind::Exit if payload.len() == 4 => {
                    return Ok(Ending::Exit(i32::from_be_bytes([
                        payload[0], payload[1], payload[2], payload[3],
                    ])));
                }
                FrameKind::Error => bail!("{}", String::from_utf8_lossy(&payload)),
                _ => {}
            }
        }
        tokio::select! {
            r = stdin.read(&mut ibuf), if stdin_open => {
                match r {
                    Ok(n) if n > 0 => {
                        let mut data = &ibuf[..n];
                        let mut out = Vec::with_capacity(n);
                        if detach_key {
                            // Ctrl-a q detaches; Ctrl-a Ctrl-a sends one Ctrl-a.
                            for &b in data {
                                if ctrl_a {
                                    ctrl_a = false;
                                    match b {
                                        b'q' => return Ok(Ending::Detached),
                                        1 => out.push(1),
                                        other => { out.push(1); out.push(other); }
                                    }
                                } else if b == 1 {
                                    ctrl_a = true;
                                } else {
                                    out.push(b);
                                }
                            }
                            data = &out;
                        }
                        if !data.is_empty() {
                            io.write_all(&frame::encode(FrameKind::Stdin, data)).await?;
                        }
                    }
                    _ => {
                        stdin_open = false;
                        if !detach_key {
                            io.write_all(&frame::encode(FrameKind::StdinEof, &[])).await?;
                        }
                    }
                }
            }
            r = io.read(&mut obuf) => {
                match r {
                    Ok(n) if n > 0 => pending.extend_from_slice(&obuf[..n]),
                    _ => {
                        if detach_key {
                            return Ok(Ending::Detached);
                        }
                        bail!("the connection to bulkheadd closed before the command's exit code arrived");
                    }
                }
            }
            _ = winch.recv(), if tty => {
                if let Some((c, r)) = window_size() {
                    io.write_all(&resize_frame(c, r)).await?;
                }
            }
        }
    }
}
