//! Streams between a client and an instance: exec and console (HTTP upgrade, then
//! `api::frame` frames both ways) and logs (the console log, followed on request).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use api::frame::{self, FrameKind};
use api::{ExecPost, InstanceKind};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use monitor::{Client, ExecSpec, Response as MonResp};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::http::{switching, Body};
use crate::instances::{Daemon, MONITOR_TIMEOUT};
use crate::ApiError;

type Resp = hyper::Response<Body>;

fn upgrade_requested(req: &Request<Incoming>) -> bool {
    req.headers()
        .get("upgrade")
        .is_some_and(|v| !v.as_bytes().is_empty())
}

/// The instance a stream is for: it must run, and the request must ask for an upgrade.
fn stream_target(
    d: &Daemon,
    name: &str,
    req: &Request<Incoming>,
    what: &str,
) -> Result<crate::store::Row, ApiError> {
    let row = d.row(name)?;
    if !d.is_running(name) {
        return Err(ApiError::conflict(format!(
            "instance {name:?} is not running"
        )));
    }
    if !upgrade_requested(req) {
        return Err(ApiError::bad(format!(
            "{what} needs an HTTP upgrade (Connection: upgrade, Upgrade: bulkhead-stream)"
        )));
    }
    Ok(row)
}

/// `POST /1.0/instances/{name}/exec`.
pub async fn exec(
    d: Arc<Daemon>,
    name: &str,
    mut req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    let row = stream_target(&d, name, &req, "exec")?;
    if row.kind == InstanceKind::Vm {
        return Err(ApiError::bad(format!(
            "exec in VM {name:?} needs a guest agent, which VMs do not have yet"
        )));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let sock = monitor::socket_path(&d.paths.run_dir(row.id));
    let config = row.config.clone();
    tokio::spawn(async move {
        let Ok(up) = on_upgrade.await else { return };
        let mut io = TokioIo::new(up);
        if let Err(msg) = exec_session(&mut io, sock, config).await {
            let _ = io
                .write_all(&frame::encode(FrameKind::Error, msg.as_bytes()))
                .await;
        }
        let _ = io.shutdown().await;
    });
    Ok(switching("bulkhead-stream"))
}

/// Reads the request line (JSON, newline-terminated) that opens an exec stream.
async fn read_line<R: AsyncRead + Unpin>(io: &mut R, buf: &mut Vec<u8>) -> Result<Vec<u8>, String> {
    loop {
        if let Some(p) = buf.iter().position(|&b| b == b'\n') {
            let line = buf[..p].to_vec();
            buf.drain(..=p);
            return Ok(line);
        }
        if buf.len() > 1 << 20 {
            return Err("exec request line longer than 1 MiB".into());
        }
        let mut tmp = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(30), io.read(&mut tmp))
            .await
            .map_err(|_| "no exec request within 30 s".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the client closed the stream before sending its exec request".into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn parse_user(u: &str) -> Result<(u32, Option<u32>), String> {
    let bad = || format!("user {u:?}: expected uid[:gid] as numbers");
    match u.split_once(':') {
        Some((a, b)) => Ok((
            a.parse().map_err(|_| bad())?,
            Some(b.parse().map_err(|_| bad())?),
        )),
        None => Ok((u.parse().map_err(|_| bad())?, None)),
    }
}

async fn exec_session<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    sock: std::path::PathBuf,
    config: std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    let mut buf = Vec::new();
    let line = read_line(io, &mut buf).await?;
    let post: ExecPost =
        serde_json::from_slice(&line).map_err(|e| format!("malformed exec request: {e}"))?;
    if post.command.is_empty() {
        return Err("exec: no command given".into());
    }
    let (uid, gid) = match &post.user {
        Some(u) => {
            let (a, b) = parse_user(u)?;
            (Some(a), b)
        }
        None => (None, None),
    };
    // Over the zone's own environment (the monitor merges by name, later wins).
    let env = crate::spec::overrides(&config, &post.env);
    let spec = ExecSpec {
        args: post.command.clone(),
        env,
        cwd: post.cwd.clone(),
        uid,
        gid,
        tty: post.tty,
        cols: post.cols,
        rows: post.rows,
    };
    // Pipes for a non-terminal exec: the monitor gets (stdin read, stdout write, stderr write).
    let pipes = if post.tty {
        None
    } else {
        let p =
            |_| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
        Some([p(0)?, p(1)?, p(2)?])
    };
    let (client, master) = tokio::task::spawn_blocking({
        let far: Vec<i32> = pipes
            .as_ref()
            .map(|p| vec![p[0].0.as_raw_fd(), p[1].1.as_raw_fd(), p[2].1.as_raw_fd()])
            .unwrap_or_default();
        move || -> Result<(Client, Option<OwnedFd>), String> {
            let mut c = Client::connect(&sock, MONITOR_TIMEOUT).map_err(|e| e.to_string())?;
            c.send(&monitor::Request::Exec(spec), &far)
                .map_err(|e| e.to_string())?;
            match c.recv().map_err(|e| e.to_string())? {
                (MonResp::ExecStarted { .. }, mut fds) => Ok((c, fds.pop())),
                (MonResp::Error { message }, _) => Err(message),
                (other, _) => Err(format!("unexpected monitor reply {other:?}")),
            }
        }
    })
    .await
    .map_err(|e| e.to_string())??;
    // Our copies of the far ends go now, so EOF arrives when the process closes them.
    let (stdin_w, out_r, err_r) = match pipes {
        Some([i, o, e]) => (Some(i.1), Some(o.0), Some(e.0)),
        None => (None, None, None),
    };
    let (mon, early) = client.into_parts();
    // A command that ends at once: its ExecExited may have come with ExecStarted.
    let mut exit_code: Option<i32> =
        early
            .split(|&b| b == b'\n')
            .find_map(|l| match serde_json::from_slice::<MonResp>(l) {
                Ok(MonResp::ExecExited { code }) => Some(code),
                _ => None,
            });
    mon.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mon = tokio::net::UnixStream::from_std(mon).map_err(|e| e.to_string())?;
    let mut mon_lines = tokio::io::BufReader::new(mon);

    // Output sources: (kind, reader); a terminal has one, pipes two.
    let mut out1: Option<(FrameKind, pipe::Receiver)> = None;
    let mut out2: Option<(FrameKind, pipe::Receiver)> = None;
    let mut input: Option<pipe::Sender> = None;
    let master_raw = master.as_ref().map(|m| m.as_raw_fd());
    if let Some(m) = master {
        set_nonblocking(m.as_raw_fd());
        let w = nix::unistd::dup(&m).map_err(|e| format!("dup: {e}"))?;
        out1 = Some((
            FrameKind::Stdout,
            pipe::Receiver::from_owned_fd_unchecked(m).map_err(|e| e.to_string())?,
        ));
        input = Some(pipe::Sender::from_owned_fd_unchecked(w).map_err(|e| e.to_string())?);
    }
    if let (Some(o), Some(e), Some(i)) = (out_r, err_r, stdin_w) {
        out1 = Some((
            FrameKind::Stdout,
            pipe::Receiver::from_owned_fd(o).map_err(|e| e.to_string())?,
        ));
        out2 = Some((
            FrameKind::Stderr,
            pipe::Receiver::from_owned_fd(e).map_err(|e| e.to_string())?,
        ));
        input = Some(pipe::Sender::from_owned_fd(i).map_err(|e| e.to_string())?);
    }
    let mut client_open = true;
    let mut b0 = vec![0u8; 16384];
    let mut b1 = vec![0u8; 16384];
    let mut cbuf = vec![0u8; 16384];
    let mut mon_line = String::new();
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    // Frames already read past the request line.
    let mut pending = buf;
    loop {
        while let Some((kind, payload)) = frame::decode(&mut pending)? {
            match kind {
                FrameKind::Stdin => {
                    if let Some(w) = input.as_mut() {
                        if w.write_all(&payload).await.is_err() {
                            input = None;
                        }
                    }
                }
                FrameKind::StdinEof => {
                    if master_raw.is_some() {
                        if let Some(w) = input.as_mut() {
                            let _ = w.write_all(&[4]).await; // ^D at the terminal
                        }
                    } else {
                        input = None;
                    }
                }
                FrameKind::Resize if payload.len() == 4 => {
                    if let Some(m) = master_raw {
                        monitor::set_winsize(
                            m,
                            u16::from_be_bytes([payload[0], payload[1]]),
                            u16::from_be_bytes([payload[2], payload[3]]),
                        );
                    }
                }
                _ => {}
            }
        }
        if out1.is_none() && out2.is_none() && exit_code.is_some() {
            break;
        }
        if exit_code.is_some() && drain_deadline.is_none() {
            // Background children may hold the output open: do not wait for them forever.
            drain_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
        }
        let deadline = drain_deadline
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = read_opt(&mut out1, &mut b0), if out1.is_some() => {
                match r {
                    Some((k, n)) if n > 0 => io.write_all(&frame::encode(k, &b0[..n])).await.map_err(|e| e.to_string())?,
                    _ => out1 = None,
                }
            }
            r = read_opt(&mut out2, &mut b1), if out2.is_some() => {
                match r {
                    Some((k, n)) if n > 0 => io.write_all(&frame::encode(k, &b1[..n])).await.map_err(|e| e.to_string())?,
                    _ => out2 = None,
                }
            }
            r = io.read(&mut cbuf), if client_open => {
                match r {
                    Ok(n) if n > 0 => pending.extend_from_slice(&cbuf[..n]),
                    _ => {
                        // The client went away: the process gets EOF on stdin (or a
                        // hang-up on its terminal when the master closes with us).
                        client_open = false;
                        input = None;
                    }
                }
            }
            r = tokio::io::AsyncBufReadExt::read_line(&mut mon_lines, &mut mon_line), if exit_code.is_none() => {
                match r {
                    Ok(n) if n > 0 => {
                        if let Ok(MonResp::ExecExited { code }) = serde_json::from_str(mon_line.trim()) {
                            exit_code = Some(code);
                        }
                        mon_line.clear();
                    }
                    _ => exit_code = Some(255),
                }
            }
            _ = tokio::time::sleep_until(deadline), if drain_deadline.is_some() => {
                out1 = None;
                out2 = None;
            }
        }
        if !client_open && exit_code.is_some() {
            return Ok(());
        }
    }
    let code = exit_code.unwrap_or(255);
    io.write_all(&frame::encode(FrameKind::Exit, &code.to_be_bytes()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Reads from an output if it is there: (its kind, bytes read), None on error.
async fn read_opt(
    o: &mut Option<(FrameKind, pipe::Receiver)>,
    buf: &mut [u8],
) -> Option<(FrameKind, usize)> {
    let (k, r) = o.as_mut()?;
    r.read(buf).await.ok().map(|n| (*k, n))
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl flag change on a descriptor we hold.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// `GET /1.0/instances/{name}/console`: relay until the client leaves; across a restart
/// of the instance the relay attaches to the new monitor.
pub async fn console(
    d: Arc<Daemon>,
    name: &str,
    mut req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    let row = stream_target(&d, name, &req, "console")?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let name = name.to_string();
    tokio::spawn(async move {
        let Ok(up) = on_upgrade.await else { return };
        let mut io = TokioIo::new(up);
        let mut pending = Vec::new();
        let mut cbuf = vec![0u8; 16384];
        let mut mbuf = vec![0u8; 16384];
        'attach: loop {
            // (Re)attach: wait while the instance is not running (a restart), bounded.
            let mut waited = Duration::ZERO;
            while !d.is_running(&name) {
                if waited > Duration::from_secs(60) || d.row(&name).is_err() {
                    let _ = io
                        .write_all(&frame::encode(FrameKind::Error, b"the instance stopped"))
                        .await;
                    break 'attach;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                waited += Duration::from_millis(100);
            }
            let sock = monitor::socket_path(&d.paths.run_dir(row.id));
            let Ok(mut mon) = tokio::net::UnixStream::connect(&sock).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if mon
                .write_all(&monitor::to_line(&monitor::Request::Console))
                .await
                .is_err()
            {
                continue;
            }
            // The monitor answers one line ({"reply":"ok"}); raw bytes follow.
            let mut head = Vec::new();
            let rest;
            loop {
                let mut b = [0u8; 512];
                match mon.read(&mut b).await {
                    Ok(n) if n > 0 => {
                        head.extend_from_slice(&b[..n]);
                        if let Some(p) = head.iter().position(|&x| x == b'\n') {
                            rest = head[p + 1..].to_vec();
                            head.truncate(p);
                            break;
                        }
                    }
                    _ => continue 'attach,
                }
            }
            if !matches!(serde_json::from_slice::<MonResp>(&head), Ok(MonResp::Ok)) {
                let msg = String::from_utf8_lossy(&head).to_string();
                let _ = io
                    .write_all(&frame::encode(FrameKind::Error, msg.as_bytes()))
                    .await;
                break;
            }
            if !rest.is_empty()
                && io
                    .write_all(&frame::encode(FrameKind::Stdout, &rest))
                    .await
                    .is_err()
            {
                break;
            }
            loop {
                while let Ok(Some((kind, payload))) = frame::decode(&mut pending) {
                    match kind {
                        FrameKind::Stdin if mon.write_all(&payload).await.is_err() => {
                            continue 'attach
                        }
                        FrameKind::Resize if payload.len() == 4 => {
                            let (cols, rows) = (
                                u16::from_be_bytes([payload[0], payload[1]]),
                                u16::from_be_bytes([payload[2], payload[3]]),
                            );
                            let _ = d
                                .call(row.id, monitor::Request::Resize { pid: 0, cols, rows })
                                .await;
                        }
                        _ => {}
                    }
                }
                tokio::select! {
                    r = io.read(&mut cbuf) => match r {
                        Ok(n) if n > 0 => pending.extend_from_slice(&cbuf[..n]),
                        _ => break 'attach,
                    },
                    r = mon.read(&mut mbuf) => match r {
                        Ok(n) if n > 0 => {
                            if io.write_all(&frame::encode(FrameKind::Stdout, &mbuf[..n])).await.is_err() {
                                break 'attach;
                            }
                        }
                        _ => continue 'attach,
                    },
                }
            }
        }
        let _ = io.shutdown().await;
    });
    Ok(switching("bulkhead-stream"))
}

/// `GET /1.0/instances/{name}/logs`: the console log; `follow` keeps streaming what is
/// appended; `since` (RFC 3339 or a number of seconds ago) starts at the first chunk
/// logged at or after that time, found through the monitor's log index.
pub async fn logs(
    d: Arc<Daemon>,
    name: &str,
    follow: bool,
    since: Option<String>,
) -> Result<Resp, ApiError> {
    let row = d.row(name)?;
    let path = d.paths.log(row.id);
    let start = match &since {
        None => 0,
        Some(s) => {
            let t = parse_since(s).ok_or_else(|| {
                ApiError::bad(format!(
                    "since {s:?}: expected RFC 3339 (2026-12-06T10:00:00Z) or seconds ago (300)"
                ))
            })?;
            monitor::log_offset_since(&path, t)
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut pos = start;
        let mut ino = None;
        loop {
            if let Ok(mut f) = tokio::fs::File::open(&path).await {
                use std::os::unix::fs::MetadataExt;
                let meta = f.metadata().await.ok();
                let this_ino = meta.as_ref().map(|m| m.ino());
                if ino.is_some() && this_ino != ino {
                    pos = 0; // rotated
                }
                ino = this_ino;
                let len = meta.map(|m| m.len()).unwrap_or(0);
                if len < pos {
                    pos = 0;
                }
                if len > pos {
                    use tokio::io::AsyncSeekExt;
                    if f.seek(std::io::SeekFrom::Start(pos)).await.is_ok() {
                        let mut chunk = vec![0u8; 65536];
                        while let Ok(n) = f.read(&mut chunk).await {
                            if n == 0 {
                                break;
                            }
                            pos += n as u64;
                            if tx.send(Bytes::copy_from_slice(&chunk[..n])).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            if !follow {
                return;
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Ok(crate::http::streaming("text/plain; charset=utf-8", rx))
}

fn parse_since(s: &str) -> Option<i64> {
    if let Ok(secs) = s.parse::<i64>() {
        return Some(monitor::unix_now() - secs);
    }
    parse_rfc3339(s)
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` → Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || (b[10] != b'T' && b[10] != b' ') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        n(0..4)?,
        n(5..7)?,
        n(8..10)?,
        n(11..13)?,
        n(14..16)?,
        n(17..19)?,
    );
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let off = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = if rest.starts_with('+') {
                1
            } else if rest.starts_with('-') {
                -1
            } else {
                return None;
            };
            let hh: i64 = rest.get(1..3)?.parse().ok()?;
            let mm: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (hh * 3600 + mm * 60)
        }
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + mi * 60 + se - off)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339() {
        assert_eq!(super::parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            super::parse_rfc3339("2026-12-06T03:04:22Z"),
            Some(1796526262)
        );
        assert_eq!(
            super::parse_rfc3339("2026-12-06T04:04:22+01:00"),
            Some(1796526262)
        );
        assert_eq!(
            super::parse_rfc3339("2026-12-06T03:04:22.123Z"),
            Some(1796526262)
        );
        assert_eq!(super::parse_rfc3339("yesterday"), None);
    }
}
