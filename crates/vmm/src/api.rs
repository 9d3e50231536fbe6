//! The control socket: JSON lines over a Unix socket, one request per line,
//! one response per line. Requests: `{"op":"describe"}`, `pause`, `resume`,
//! `shutdown` (power-button event, then a hard stop after `timeout_secs`,
//! default 30), `stop`, `snapshot` (`{"op":"snapshot","dir":…}`, paused only).
//! Responses: `{"ok":true,…}` or `{"ok":false,"error":"…"}`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use serde::Serialize;
use serde_json::{json, Value};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::control::{ExitReason, VmControl};
use crate::devices::legacy::SerialDevice;
use crate::devices::virtio::MmioTransport;
use crate::snapshot::{self, DeviceSnapshot, SerialSnapshot, VmSnapshot};

/// A virtio slot as `describe` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceInfo {
    pub slot: usize,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub base: u64,
    pub gsi: u32,
}

/// What request handlers can reach.
pub struct ApiContext {
    pub control: Arc<VmControl>,
    pub vcpus: u32,
    pub mem_size: u64,
    pub devices: Vec<DeviceInfo>,
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// irqfd of the ACPI Generic Event Device (power button).
    pub power_button: EventFd,
    pub jailed: bool,
    /// The host's KVM is kvm_pvm (emulation fallbacks active).
    pub pvm: bool,
    pub vm: Arc<VmFd>,
    pub mem: GuestMemoryMmap,
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The console backend as `describe` reports it (`stdout`, `pty:/dev/pts/N`, …).
    pub serial_desc: String,
    /// `/proc/self/pagemap`, opened before the jail, so that snapshots skip
    /// untouched guest memory; `None` if it could not be opened.
    pub pagemap: Option<crate::snapshot::PageMap>,
    /// Where snapshots may go (canonical path); required when jailed.
    pub snapshot_dir: Option<std::path::PathBuf>,
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
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE as u64).read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if !line.ends_with('\n') && line.len() >= MAX_LINE => {
                let _ = writeln!(out, "{}", error("request line is longer than 64 KiB"));
                return;
            }
            Ok(_) => {}
            Err(_) => {
                let _ = writeln!(out, "{}", error("request is not valid UTF-8"));
                return;
            }
        }
        if line.trim().is_empty() {
            continue;
        }
        ctx.control.api_request(true);
        let resp = handle_request(line.trim(), ctx);
        let written = writeln!(out, "{resp}").and_then(|_| out.flush());
        ctx.control.api_request(false);
        if written.is_err() {
            return;
        }
    }
}

fn error(msg: &str) -> Value {
    json!({"ok": false, "error": msg})
}

/// Handles one request line; pure dispatch so it can be unit-tested.
pub fn handle_request(line: &str, ctx: &ApiContext) -> Value {
    let req: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return error(&format!("request is not valid JSON: {e}")),
    };
    let Some(op) = req.get("op").and_then(Value::as_str) else {
        return error("request has no \"op\" string");
    };
    let c = &ctx.control;
    match op {
        "describe" => json!({
            "ok": true,
            "state": state(ctx),
            "vcpus": ctx.vcpus,
            "memory": ctx.mem_size,
            "devices": ctx.devices,
            "serial": ctx.serial_desc,
            "jailed": ctx.jailed,
            "kvm_pvm": ctx.pvm,
            "emulation_fallbacks": crate::x86::emulate::FALLBACK_NAMES
                .iter()
                .zip(c.fallback_counts())
                .map(|(n, v)| (n.to_string(), json!(v)))
                .collect::<serde_json::Map<String, Value>>(),
        }),
        "pause" => {
            if c.should_stop() {
                return error("the VM has stopped");
            }
            for t in &ctx.transports {
                t.lock().unwrap_or_else(|e| e.into_inner()).pause();
            }
            if c.pause() {
                json!({"ok": true, "state": "paused"})
            } else {
                error("the VM stopped while pausing")
            }
        }
        "resume" => {
            if c.should_stop() {
                return error("the VM has stopped");
            }
            for t in &ctx.transports {
                t.lock().unwrap_or_else(|e| e.into_inner()).resume();
            }
            c.resume();
            json!({"ok": true, "state": "running"})
        }
        "stop" => {
            c.request_exit(ExitReason::Stopped);
            json!({"ok": true, "state": "stopped"})
        }
        "shutdown" => {
            let timeout = req
                .get("timeout_secs")
                .and_then(Value::as_u64)
                .unwrap_or(30);
            if c.is_paused() {
                return error("the VM is paused; resume it before a graceful shutdown");
            }
            if ctx.power_button.write(1).is_err() {
                return error("cannot raise the power-button interrupt");
            }
            let start = Instant::now();
            while !c.should_stop() && start.elapsed() < Duration::from_secs(timeout) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if c.should_stop() {
                json!({"ok": true, "state": "stopped", "graceful": true})
            } else {
                c.request_exit(ExitReason::Stopped);
                json!({"ok": true, "state": "stopped", "graceful": false,
                       "note": format!("guest did not power off within {timeout} s; stopped")})
            }
        }
        "snapshot" => {
            let Some(dir) = req.get("dir").and_then(Value::as_str) else {
                return error("snapshot needs a \"dir\" string");
            };
            if !c.is_paused() || c.should_stop() {
                return error("snapshot needs a paused VM: send pause first");
            }
            if let Err(e) = check_snapshot_dir(std::path::Path::new(dir), ctx) {
                return error(&e);
            }
            match take_snapshot(std::path::Path::new(dir), ctx) {
                Ok(written) => json!({"ok": true, "dir": dir, "memory_bytes_written": written}),
                Err(e) => error(&format!("snapshot failed: {e:#}")),
            }
        }
        other => error(&format!("unknown op {other:?}")),
    }
}

/// In the jail only `--snapshot-dir` is writable: the target must be inside it.
fn check_snapshot_dir(dir: &std::path::Path, ctx: &ApiContext) -> Result<(), String> {
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
fn take_snapshot(dir: &std::path::Path, ctx: &ApiContext) -> anyhow::Result<u64> {
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
            kind: d.kind.to_string(),
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

fn state(ctx: &ApiContext) -> &'static str {
    if ctx.control.should_stop() {
        "stopped"
    } else if ctx.control.is_paused() {
        "paused"
    } else {
        "running"
    }
}
