//! JSON bodies of the REST API. Every field the daemon sends is listed here; the CLI
//! deserializes the same structs, so a change of shape is a compile error on both sides.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What kind of partition an instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InstanceKind {
    /// OS-level isolation (namespaces, cgroups) run by the zone library.
    #[default]
    Zone,
    /// A hardware virtual machine run by bulkhead-vmm.
    Vm,
}

impl std::fmt::Display for InstanceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InstanceKind::Zone => "zone",
            InstanceKind::Vm => "vm",
        })
    }
}

/// Where a zone's root file system comes from (until images exist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Source {
    /// A directory on the host used as the zone's root.
    Rootfs { path: String },
    /// An OCI bundle (config.json + root): its process, mounts and settings are the base
    /// that the instance's configuration keys are applied over.
    Bundle { path: String },
    /// No root file system (VMs: the kernel and disks come from `vm.*` keys).
    None,
}

/// The status of an instance as the daemon knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Stopped,
    Starting,
    Running,
    Frozen,
    Stopping,
    /// The monitor cannot be reached (it is alive but does not answer in time).
    Unknown,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Stopped => "stopped",
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Frozen => "frozen",
            Status::Stopping => "stopping",
            Status::Unknown => "unknown",
        })
    }
}

/// `POST /1.0/instances`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancesPost {
    pub name: String,
    #[serde(default)]
    pub kind: InstanceKind,
    pub source: Source,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub description: String,
    /// Start the instance once it is created.
    #[serde(default)]
    pub start: bool,
}

/// `GET /1.0/instances/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub name: String,
    pub kind: InstanceKind,
    pub source: Source,
    pub config: BTreeMap<String, String>,
    pub description: String,
    pub status: Status,
    /// RFC 3339.
    pub created_at: String,
    /// Host pid of the zone's init or of the VM's monitor while running.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pid: Option<i32>,
    /// How the last run ended (exit code, or 128 + signal), when it has ended.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_exit: Option<i32>,
}

/// `PUT /1.0/instances/{name}` (replaces config and description) and `PATCH` (merges:
/// keys present are set, keys with a `null` value are removed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InstancePut {
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub description: String,
}

/// `PATCH /1.0/instances/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InstancePatch {
    #[serde(default)]
    pub config: BTreeMap<String, Option<String>>,
    #[serde(default)]
    pub description: Option<String>,
}

/// `POST /1.0/instances/{name}`: rename.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceRename {
    pub name: String,
}

/// A state change requested with `PUT /1.0/instances/{name}/state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Start,
    Stop,
    Restart,
    Freeze,
    Unfreeze,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
            Action::Freeze => "freeze",
            Action::Unfreeze => "unfreeze",
        })
    }
}

/// `PUT /1.0/instances/{name}/state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatePut {
    pub action: Action,
    /// Seconds a graceful stop waits before killing (default 30; 0 kills at once).
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Stop: kill at once without the graceful step.
    #[serde(default)]
    pub force: bool,
}

/// `GET /1.0/instances/{name}/state`: the live figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct InstanceState {
    pub status: Option<Status>,
    pub pid: Option<i32>,
    pub last_exit: Option<i32>,
    /// CPU time used, nanoseconds.
    pub cpu_usage_ns: u64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub processes: u64,
    pub processes_limit: Option<u64>,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    /// Limits this host could not enforce (missing controllers), key → reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unenforced: BTreeMap<String, String>,
}

/// The first message on an exec stream (`POST /1.0/instances/{name}/exec`, upgraded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecPost {
    pub command: Vec<String>,
    /// Extra variables, `KEY=VALUE`, over the instance's `environment.*`.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// `uid[:gid]` inside the instance.
    #[serde(default)]
    pub user: Option<String>,
    /// Allocate a terminal.
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub cols: u16,
    #[serde(default)]
    pub rows: u16,
}

/// `POST /1.0/instances/{name}/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotPost {
    pub name: String,
}

/// A snapshot of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub name: String,
    pub created_at: String,
    /// Whether the instance was running when the snapshot was taken.
    pub stateful: bool,
}

/// Status of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationStatus {
    Running,
    Success,
    Failure,
    Cancelled,
}

impl std::fmt::Display for OperationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OperationStatus::Running => "running",
            OperationStatus::Success => "success",
            OperationStatus::Failure => "failure",
            OperationStatus::Cancelled => "cancelled",
        })
    }
}

/// Long work (create, start, stop, snapshots): `202 Accepted` with this body; wait for it
/// with `GET /1.0/operations/{id}/wait`, cancel it with `DELETE /1.0/operations/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    pub description: String,
    pub status: OperationStatus,
    /// The instances it acts on.
    pub resources: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub err: Option<String>,
    pub may_cancel: bool,
}

/// One message of `GET /1.0/events` (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `lifecycle` or `operation`.
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: String,
    /// `instance-created`, `instance-started`, `instance-stopped`, … for lifecycle
    /// events; the operation's status for operation events.
    pub action: String,
    /// The instance or operation it is about.
    pub source: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub detail: BTreeMap<String, String>,
}

/// Every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// The HTTP status, repeated for clients that lose it.
    pub code: u16,
}

/// `GET /1.0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub version: String,
    pub api_version: String,
    pub cgroup: String,
    pub kvm: bool,
    pub instances: usize,
}

/// Exec and console streams, after the HTTP upgrade, carry frames both ways:
/// one byte of [`FrameKind`], a big-endian u32 length, then the payload.
pub mod frame {
    /// What a frame carries.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(u8)]
    pub enum FrameKind {
        /// Client → server: input bytes.
        Stdin = 0,
        /// Server → client: output bytes (a terminal's output arrives here).
        Stdout = 1,
        Stderr = 2,
        /// Server → client: the exit code as a big-endian i32; the last frame.
        Exit = 3,
        /// Client → server: terminal size, cols then rows, big-endian u16 each.
        Resize = 4,
        /// Client → server: end of input.
        StdinEof = 5,
        /// Server → client: an error message (UTF-8); the last frame.
        Error = 6,
    }

    impl FrameKind {
        pub fn from_u8(b: u8) -> Option<FrameKind> {
            Some(match b {
                0 => FrameKind::Stdin,
                1 => FrameKind::Stdout,
                2 => FrameKind::Stderr,
                3 => FrameKind::Exit,
                4 => FrameKind::Resize,
                5 => FrameKind::StdinEof,
                6 => FrameKind::Error,
                _ => return None,
            })
        }
    }

    /// The largest payload a peer may send in one frame.
    pub const MAX_PAYLOAD: usize = 1 << 20;

    /// The 5-byte header of a frame.
    pub fn header(kind: FrameKind, len: usize) -> [u8; 5] {
        let l = (len as u32).to_be_bytes();
        [kind as u8, l[0], l[1], l[2], l[3]]
    }

    /// A whole frame.
    pub fn encode(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(5 + payload.len());
        v.extend_from_slice(&header(kind, payload.len()));
        v.extend_from_slice(payload);
        v
    }

    /// Splits complete frames off the front of `buf`; `Err` on an unknown kind or an
    /// oversized frame (a hostile or broken peer).
    pub fn decode(buf: &mut Vec<u8>) -> Result<Option<(FrameKind, Vec<u8>)>, String> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let kind =
            FrameKind::from_u8(buf[0]).ok_or_else(|| format!("unknown frame kind {}", buf[0]))?;
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(format!("frame of {len} bytes is larger than {MAX_PAYLOAD}"));
        }
        if buf.len() < 5 + len {
            return Ok(None);
        }
        let payload = buf[5..5 + len].to_vec();
        buf.drain(..5 + len);
        Ok(Some((kind, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_refuse_garbage() {
        let mut buf = frame::encode(frame::FrameKind::Stdout, b"hello");
        buf.extend(frame::encode(frame::FrameKind::Exit, &7i32.to_be_bytes()));
        let (k, p) = frame::decode(&mut buf).unwrap().unwrap();
        assert_eq!((k, p.as_slice()), (frame::FrameKind::Stdout, &b"hello"[..]));
        let (k, p) = frame::decode(&mut buf).unwrap().unwrap();
        assert_eq!(k, frame::FrameKind::Exit);
        assert_eq!(i32::from_be_bytes(p.try_into().unwrap()), 7);
        assert!(frame::decode(&mut buf).unwrap().is_none());
        let mut partial = frame::encode(frame::FrameKind::Stdin, b"abc");
        partial.pop();
        assert!(frame::decode(&mut partial).unwrap().is_none());
        let mut bad = vec![99, 0, 0, 0, 0];
        assert!(frame::decode(&mut bad).is_err());
        let mut huge = vec![1, 0xff, 0xff, 0xff, 0xff];
        assert!(frame::decode(&mut huge).is_err());
    }

    #[test]
    fn create_body_refuses_unknown_fields_and_defaults_to_zone() {
        let ok: InstancesPost =
            serde_json::from_str(r#"{"name":"web","source":{"type":"rootfs","path":"/srv/web"}}"#)
                .unwrap();
        assert_eq!(ok.kind, InstanceKind::Zone);
        assert!(!ok.start);
        let bad = serde_json::from_str::<InstancesPost>(
            r#"{"name":"web","source":{"type":"none"},"colour":"red"}"#,
        );
        assert!(bad.unwrap_err().to_string().contains("colour"));
    }
}
