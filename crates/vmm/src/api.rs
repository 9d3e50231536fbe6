//! The control socket: newline-delimited JSON over a Unix socket, one
//! request per line, one response per line, one client at a time. The
//! protocol's types are [`vmm_proto::Request`] and [`vmm_proto::Response`]
//! (see that crate for the wire spelling); this module answers them.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;
use vmm_proto::{
    Describe, DeviceInfo, ErrorKind, Request, Response, ShutdownDone, SnapshotDone, VmState,
};
use vmm_sys_util::eventfd::EventFd;

use crate::control::{ExitReason, VmControl};
use crate::devices::legacy::SerialDevice;
use crate::devices::virtio::MmioTransport;
use crate::snapshot::{self, DeviceSnapshot, SerialSnapshot, VmSnapshot};

/// What request handlers can reach.
pub struct ApiContext {
    /// The VM's identifier (the jail's id), if it has one.
    pub id: Option<String>,
    pub control: Arc<VmControl>,
    pub vcpus: u32,
    pub mem_size: u64,
    pub devices: Vec<DeviceInfo>,
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// irqfd of the ACPI Generic Event Device (power button).
    pub power_button: EventFd,
    pub jailed: bool,
    /// The monitor's pid, uid and gid once jailed (read before the threads'
    /// seccomp filters, for `describe`).
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The host's KVM is kvm_pvm (emulation fallbacks active).
    pub pvm: bool,
    pub vm: Arc<VmFd>,
    pub mem: GuestMemoryMmap,
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The console backend as `describe` reports it (`stdout`, `pty:/dev/pts/N`, …).
    pub serial_desc: String,
    /// The console's host path (PTY, file or socket).
    pub serial_path: Option<PathBuf>,
    /// `/proc/self/pagemap`, opened before the jail, so that snapshots skip
    /// untouched guest memory; `None` if it could not be opened.
    pub pagemap: Option<crate::snapshot::PageMap>,
    /// Where snapshots may go (canonical path); required when jailed.
    pub snapshot_dir: Option<PathBuf>,
}

/// Longest request line we read.
const MAX_LINE: usize = 64 << 10;

/// Accepts clients one at a time until the process exits.
pub fn serve(listener: UnixListener, ctx: &ApiContext) {
    for conn in listener.incoming() {
        if ctx.control.should_stop() {
            return;
        }
        match conn {
            Ok(s) => handle_client(s, ctx),
            Err(_) => continue,
        }
    }
}

fn handle_client(stream: UnixStream, ctx: &ApiContext) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let bad = |msg: &str| Response::error(ErrorKind::BadRequest, msg).to_line();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE as u64).read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if !line.ends_with('\n') && line.len() >= MAX_LINE => {
                let _ = writeln!(out, "{}", bad("request line is longer than 64 KiB"));
                return;
            }
            Ok(_) => {}
            Err(_) => {
                let _ = writeln!(out, "{}", bad("request is not valid UTF-8"));
                return;
            }
        }
        if line.trim().is_empty() {
            continue;
        }
        ctx.control.api_request(true);
        let resp = handle_line(&line, ctx);
        let written = writeln!(out, "{}", resp.to_line()).and_then(|_| out.flush());
        ctx.control.api_request(false);
        if written.is_err() {
            return;
        }
    }
}

/// Parses and answers one request line.
pub fn handle_line(line: &str, ctx: &ApiContext) -> Response {
    match Request::from_line(line) {
        Ok(req) => handle(&req, ctx),
        Err(e) => Response::Error(e),
    }
}

/// Answers one request.
pub fn handle(req: &Request, ctx: &ApiContext) -> Response {
    let c = &ctx.control;
    let stopped = || Response::error(ErrorKind::Stopped, "the VM has stopped");
    match req {
        Request::Describe => Response::Describe(describe(ctx)),
        Request::Pause => {
            if c.should_stop() {
                return stopped();
            }
            for t in &ctx.transports {
                t.lock().unwrap_or_else(|e| e.into_inner()).pause();
            }
            if c.pause() {
                Response::state(VmState::Paused)
            } else {
                Response::error(ErrorKind::Stopped, "the VM stopped while pausing")
            }
        }
        Request::Resume => {
            if c.should_stop() {
                return stopped();
            }
            for t in &ctx.transports {
                t.lock().unwrap_or_else(|e| e.into_inner()).resume();
            }
            c.resume();
            Response::state(VmState::Running)
        }
        Request::Stop => {
            c.request_exit(ExitReason::Stopped);
            Response::state(VmState::Stopped)
        }
        Request::Shutdown { timeout_secs } => {
            let timeout = *timeout_secs;
            if c.is_paused() {
                return Response::error(
                    ErrorKind::Paused,
                    "the VM is paused; resume it before a graceful shutdown",
                );
            }
            if ctx.power_button.write(1).is_err() {
                return Response::error(
                    ErrorKind::Failed,
                    "cannot raise the power-button interrupt",
                );
            }
            let start = Instant::now();
            let limit = Duration::from_secs(timeout);
            while !c.should_stop() && start.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(20));
            }
            if c.should_stop() {
                Response::Shutdown(ShutdownDone {
                    state: VmState::Stopped,
                    graceful: true,
                    note: None,
                })
            } else {
                c.request_exit(ExitReason::Stopped);
                Response::Shutdown(ShutdownDone {
                    state: VmState::Stopped,
                    graceful: false,
                    note: Some(format!(
                        "guest did not power off within {timeout} s; stopped"
                    )),
                })
            }
        }
        Request::Snapshot { dir } => {
            if !c.is_paused() || c.should_stop() {
                return Response::error(
                    ErrorKind::NotPaused,
                    "snapshot needs a paused VM: send pause first",
                );
            }
            if let Err(e) = check_snapshot_dir(dir, ctx) {
                return Response::error(ErrorKind::Forbidden, e);
            }
            match take_snapshot(dir, ctx) {
                Ok(written) => Response::Snapshot(SnapshotDone {
                    dir: dir.clone(),
                    memory_bytes_written: written,
                }),
                Err(e) => Response::error(ErrorKind::Failed, format!("snapshot failed: {e:#}")),
            }
        }
    }
}

fn describe(ctx: &ApiContext) -> Describe {
    Describe {
        id: ctx.id.clone(),
        state: state(ctx),
        vcpus: ctx.vcpus,
        memory: ctx.mem_size,
        devices: ctx.devices.clone(),
        serial: ctx.serial_desc.clone(),
        serial_path: ctx.serial_path.clone(),
        jailed: ctx.jailed,
        pid: ctx.pid,
        uid: ctx.uid,
        gid: ctx.gid,
        kvm_pvm: ctx.pvm,
        emulation_fallbacks: crate::x86::emulate::FALLBACK_NAMES
            .iter()
            .zip(ctx.control.fallback_counts())
            .map(|(n, v)| (n.to_string(), v))
            .collect(),
    }
}

/// In the jail only `--snapshot-dir` is writable: the target must be inside it.
fn check_snapshot_dir(dir: &Path, ctx: &ApiContext) -> Result<(), String> {
    if !dir.is_absolute() {
        return Err(format!(
            "snapshot dir {} must be an absolute path",
            dir.display()
        ));
    }
    if dir
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(format!(
            "snapshot dir {} must not contain ..",
            dir.display()
        ));
    }
    match &ctx.snapshot_dir {
        Some(base) if dir.starts_with(base) => Ok(()),
        Some(base) => Err(format!(
            "snapshot dir {} is outside --snapshot-dir {}",
            dir.display(),
            base.display()
        )),
        None if ctx.jailed => {
            Err("snapshots of a jailed VM need --snapshot-dir at start".to_string())
        }
        None => Ok(()),
    }
}

/// Writes the snapshot; returns the bytes of guest memory written.
fn take_snapshot(dir: &Path, ctx: &ApiContext) -> anyhow::Result<u64> {
    let vcpus = ctx.control.states().map_err(anyhow::Error::msg)?;
    let (irqchip, clock) = snapshot::save_vm(&ctx.vm)?;
    let serial = {
        let s = ctx.serial.lock().unwrap_or_else(|e| e.into_inner());
        SerialSnapshot::from(&s.serial.state())
    };
    let devices = ctx
        .devices
        .iter()
        .zip(ctx.transports.iter())
        .map(|(d, t)| DeviceSnapshot {
            kind: d.kind.name().to_string(),
            state: t.lock().unwrap_or_else(|e| e.into_inner()).snapshot(),
        })
        .collect();
    let snap = VmSnapshot {
        version: snapshot::VERSION,
        mem_size: ctx.mem_size,
        vcpus,
        irqchip,
        clock,
        serial,
        devices,
    };
    snapshot::write(dir, &ctx.mem, &snap, ctx.pagemap.as_ref())
}

fn state(ctx: &ApiContext) -> VmState {
    if ctx.control.should_stop() {
        VmState::Stopped
    } else if ctx.control.is_paused() {
        VmState::Paused
    } else {
        VmState::Running
    }
}
