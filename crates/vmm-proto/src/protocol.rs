//! The control socket's protocol: newline-delimited JSON over a Unix stream
//! socket, one request per line, one response per line, one client at a time.
//!
//! Requests are tagged by `"op"`: `{"op":"describe"}`, `{"op":"pause"}`,
//! `{"op":"resume"}`, `{"op":"stop"}`, `{"op":"shutdown","timeout_secs":30}`,
//! `{"op":"snapshot","dir":"/abs/path"}`. Every response carries `"ok"`;
//! failures carry `"error"` (a message) and `"kind"` ([`ErrorKind`]).
//!
//! Fields a side does not know are ignored when reading (a newer supervisor
//! and an older monitor, or the reverse, still understand each other), unlike
//! [`crate::VmConfig`], which refuses them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How long `shutdown` waits for the guest when no timeout is given.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 30;

fn default_shutdown_timeout() -> u64 {
    DEFAULT_SHUTDOWN_TIMEOUT_SECS
}

/// One control request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The VM's state and shape: answered with [`Response::Describe`].
    Describe,
    /// Stops the vCPUs and device workers: [`Response::State`] `paused`
    /// once every vCPU is parked.
    Pause,
    /// [`Response::State`] `running`.
    Resume,
    /// Hard stop; the monitor exits 0 ([`Response::State`] `stopped`).
    Stop,
    /// Graceful: presses the ACPI power button (GED → `PNP0C0C`) and waits
    /// up to `timeout_secs` for the guest to power off, then stops it
    /// ([`Response::Shutdown`]). Refused while paused.
    Shutdown {
        #[serde(default = "default_shutdown_timeout")]
        timeout_secs: u64,
    },
    /// Paused VM only: writes `dir/memory` and `dir/state.json`
    /// ([`Response::Snapshot`]). `dir` is absolute, inside the monitor's
    /// `snapshot_dir` when jailed.
    Snapshot { dir: PathBuf },
}

impl Request {
    /// `shutdown` with the default timeout.
    pub fn shutdown() -> Request {
        Request::Shutdown {
            timeout_secs: DEFAULT_SHUTDOWN_TIMEOUT_SECS,
        }
    }

    /// The request's `op` spelling.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Describe => "describe",
            Request::Pause => "pause",
            Request::Resume => "resume",
            Request::Stop => "stop",
            Request::Shutdown { .. } => "shutdown",
            Request::Snapshot { .. } => "snapshot",
        }
    }

    /// One request line (JSON, without the newline). Fails only for a
    /// snapshot path that is not UTF-8, which JSON cannot carry.
    pub fn to_line(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// Parses one request line.
    pub fn from_line(line: &str) -> Result<Request, ApiError> {
        serde_json::from_str(line.trim())
            .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("invalid request: {e}")))
    }
}

/// The VM's run state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Running,
    Paused,
    Stopped,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopped => "stopped",
        })
    }
}

/// What a virtio-mmio slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Block,
    Net,
    Vsock,
    Rng,
}

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Block => "block",
            DeviceKind::Net => "net",
            DeviceKind::Vsock => "vsock",
            DeviceKind::Rng => "rng",
        }
    }
}

/// A virtio slot as `describe` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub slot: usize,
    #[serde(rename = "type")]
    pub kind: DeviceKind,
    /// Guest physical address of the slot's registers.
    pub base: u64,
    pub gsi: u32,
}

/// The `describe` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Describe {
    /// The VM's identifier (`jail.id`, or the `vmm-<pid>` a jailed monitor
    /// made up), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub state: VmState,
    pub vcpus: u32,
    /// Guest memory in bytes.
    pub memory: u64,
    pub devices: Vec<DeviceInfo>,
    /// The console backend in the `--serial` spelling, with the terminal's
    /// path for a PTY: `stdout`, `pty:/dev/pts/N`, `file:…`, `socket:…`, `none`.
    pub serial: String,
    /// The console's host path (the PTY, file or socket), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_path: Option<PathBuf>,
    pub jailed: bool,
    /// The monitor's process id (as the host sees it).
    #[serde(default)]
    pub pid: u32,
    /// The uid and gid the monitor runs as now.
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// The host's KVM is kvm_pvm (emulation fallbacks active).
    pub kvm_pvm: bool,
    /// How often each kvm_pvm emulation fallback ran, by name.
    #[serde(default)]
    pub emulation_fallbacks: BTreeMap<String, u64>,
}

/// The `shutdown` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownDone {
    pub state: VmState,
    /// The guest powered off by itself within the timeout (else it was stopped).
    pub graceful: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The `snapshot` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDone {
    pub dir: PathBuf,
    /// Bytes of guest memory written (untouched memory is left as holes).
    pub memory_bytes_written: u64,
}

/// The `pause`, `resume` and `stop` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChanged {
    pub state: VmState,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The line is not a request (bad JSON, unknown op, missing field, too long).
    BadRequest,
    /// The VM has stopped.
    Stopped,
    /// The request needs a paused VM (snapshot).
    NotPaused,
    /// The request needs a running VM (shutdown while paused).
    Paused,
    /// The snapshot directory is not allowed (relative, `..`, outside `snapshot_dir`).
    Forbidden,
    /// The monitor tried and failed (I/O, KVM).
    Failed,
    /// Anything else (also: an older monitor that sent no kind).
    #[default]
    Other,
}

/// A failed request, as the monitor reports it.
#[derive(Clone, Debug, Error, PartialEq, Eq, Serialize, Deserialize)]
#[error("{error}")]
pub struct ApiError {
    #[serde(default)]
    pub kind: ErrorKind,
    /// What went wrong, for people.
    pub error: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            error: msg.into(),
        }
    }
}

/// One control response. On the wire each is a JSON object with `"ok"`
/// plus the variant's fields (no tag: the client knows what it asked;
/// [`Response::from_line`] tells them apart by their fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    /// `{"ok":false,"kind":…,"error":…}`.
    Error(ApiError),
    Describe(Describe),
    Snapshot(SnapshotDone),
    Shutdown(ShutdownDone),
    /// pause, resume, stop.
    State(StateChanged),
}

#[derive(Serialize)]
struct WireOut<'a> {
    ok: bool,
    #[serde(flatten)]
    body: &'a Response,
}

#[derive(Deserialize)]
struct WireIn {
    ok: bool,
    #[serde(flatten)]
    body: Response,
}

impl Response {
    pub fn error(kind: ErrorKind, msg: impl Into<String>) -> Response {
        Response::Error(ApiError::new(kind, msg))
    }

    pub fn state(state: VmState) -> Response {
        Response::State(StateChanged { state })
    }

    pub fn is_ok(&self) -> bool {
        !matches!(self, Response::Error(_))
    }

    /// One response line (JSON, without the newline).
    pub fn to_line(&self) -> String {
        let wire = WireOut {
            ok: self.is_ok(),
            body: self,
        };
        serde_json::to_string(&wire).unwrap_or_else(|e| {
            // Only a non-UTF-8 path can get here.
            let err = Response::error(
                ErrorKind::Failed,
                format!("cannot encode the response: {e}"),
            );
            serde_json::to_string(&WireOut {
                ok: false,
                body: &err,
            })
            .unwrap_or_default()
        })
    }

    /// Parses one response line.
    pub fn from_line(line: &str) -> Result<Response, serde_json::Error> {
        let wire: WireIn = serde_json::from_str(line.trim())?;
        match (wire.ok, wire.body) {
            (true, Response::Error(e)) => Ok(Response::Error(e)),
            (false, Response::Error(e)) => Ok(Response::Error(e)),
            (false, _) => Ok(Response::error(
                ErrorKind::Other,
                "the monitor answered ok:false without an error message",
            )),
            (true, body) => Ok(body),
        }
    }

    /// The error, if this is one.
    pub fn into_result(self) -> Result<Response, ApiError> {
        match self {
            Response::Error(e) => Err(e),
            r => Ok(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn wire(r: &Request) -> Value {
        serde_json::from_str(&r.to_line().unwrap()).unwrap()
    }

    #[test]
    fn request_wire_spelling() {
        assert_eq!(wire(&Request::Describe), json!({"op": "describe"}));
        assert_eq!(wire(&Request::Pause), json!({"op": "pause"}));
        assert_eq!(wire(&Request::Resume), json!({"op": "resume"}));
        assert_eq!(wire(&Request::Stop), json!({"op": "stop"}));
        assert_eq!(
            wire(&Request::Shutdown { timeout_secs: 5 }),
            json!({"op": "shutdown", "timeout_secs": 5})
        );
        assert_eq!(
            wire(&Request::Snapshot { dir: "/s/1".into() }),
            json!({"op": "snapshot", "dir": "/s/1"})
        );
        for r in [
            Request::Describe,
            Request::Pause,
            Request::Resume,
            Request::Stop,
            Request::shutdown(),
            Request::Snapshot { dir: "/x".into() },
        ] {
            assert_eq!(Request::from_line(&r.to_line().unwrap()), Ok(r.clone()));
            assert_eq!(wire(&r)["op"], r.op());
        }
        // What clients wrote by hand before keeps working.
        assert_eq!(
            Request::from_line(r#"{"op":"shutdown"}"#),
            Ok(Request::Shutdown { timeout_secs: 30 })
        );
        assert_eq!(
            Request::from_line("  {\"op\":\"describe\",\"extra\":1}\n"),
            Ok(Request::Describe)
        );
    }

    #[test]
    fn bad_requests_are_typed_errors() {
        for (line, needle) in [
            (r#"{"op":"fly"}"#, "unknown variant `fly`"),
            ("not json", "invalid request"),
            (r#"{"dir":"/x"}"#, "missing field `op`"),
            (r#"{"op":"snapshot"}"#, "missing field `dir`"),
            (r#"{"op":"shutdown","timeout_secs":-1}"#, "invalid"),
        ] {
            let e = Request::from_line(line).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest, "{line}");
            assert!(e.error.contains(needle), "{line}: {e}");
        }
    }

    fn describe() -> Describe {
        Describe {
            id: Some("vm1".into()),
            state: VmState::Paused,
            vcpus: 2,
            memory: 32 << 20,
            devices: vec![DeviceInfo {
                slot: 0,
                kind: DeviceKind::Rng,
                base: 0xD000_0000,
                gsi: 5,
            }],
            serial: "pty:/dev/pts/3".into(),
            serial_path: Some("/dev/pts/3".into()),
            jailed: true,
            pid: 42,
            uid: 200000,
            gid: 200000,
            kvm_pvm: false,
            emulation_fallbacks: [("int3".to_string(), 1)].into_iter().collect(),
        }
    }

    #[test]
    fn response_wire_spelling_and_round_trip() {
        let cases = [
            (
                Response::Describe(describe()),
                json!({"ok": true, "id": "vm1", "state": "paused", "vcpus": 2, "memory": 33554432,
                       "devices": [{"slot": 0, "type": "rng", "base": 3489660928u64, "gsi": 5}],
                       "serial": "pty:/dev/pts/3", "serial_path": "/dev/pts/3", "jailed": true,
                       "pid": 42, "uid": 200000, "gid": 200000, "kvm_pvm": false,
                       "emulation_fallbacks": {"int3": 1}}),
            ),
            (
                Response::state(VmState::Running),
                json!({"ok": true, "state": "running"}),
            ),
            (
                Response::Shutdown(ShutdownDone {
                    state: VmState::Stopped,
                    graceful: true,
                    note: None,
                }),
                json!({"ok": true, "state": "stopped", "graceful": true}),
            ),
            (
                Response::Snapshot(SnapshotDone {
                    dir: "/s".into(),
                    memory_bytes_written: 4096,
                }),
                json!({"ok": true, "dir": "/s", "memory_bytes_written": 4096}),
            ),
            (
                Response::error(ErrorKind::NotPaused, "pause first"),
                json!({"ok": false, "kind": "not_paused", "error": "pause first"}),
            ),
        ];
        for (resp, want) in cases {
            let line = resp.to_line();
            assert!(!line.contains('\n'));
            let got: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(got, want);
            assert_eq!(Response::from_line(&line).unwrap(), resp);
        }
    }

    #[test]
    fn responses_of_an_older_monitor_parse() {
        // No kind on errors, no pid/uid/serial_path in describe.
        let e = Response::from_line(r#"{"ok":false,"error":"boom"}"#).unwrap();
        assert_eq!(e, Response::error(ErrorKind::Other, "boom"));
        let d = Response::from_line(
            r#"{"ok":true,"state":"running","vcpus":1,"memory":1,"devices":[],"serial":"none","jailed":false,"kvm_pvm":true,"emulation_fallbacks":{},"future":1}"#,
        )
        .unwrap();
        assert!(matches!(
            d,
            Response::Describe(Describe {
                pid: 0,
                serial_path: None,
                ..
            })
        ));
        let odd = Response::from_line(r#"{"ok":false,"state":"running"}"#).unwrap();
        assert!(!odd.is_ok());
        assert!(Response::from_line(r#"{"state":"running"}"#).is_err());
    }
}
