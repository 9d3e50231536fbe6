//! Messages, start-up configuration and files of a monitor.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the monitor runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Workload {
    /// A zone from an OCI bundle through the zone library.
    Zone {
        /// The zone library's state root (`--root` of bulkhead-runc).
        state_root: PathBuf,
        /// The zone's id in that root.
        id: String,
        bundle: PathBuf,
    },
    /// A VM: the monitor runs `vmm` with `--config config` and keeps its exit status.
    Vm {
        vmm: PathBuf,
        /// A serialized `vmm_proto::VmConfig`.
        config: PathBuf,
        /// The VM's control socket (as in the config).
        control: PathBuf,
        /// The VM's serial socket (as in the config); the monitor is its client.
        serial: PathBuf,
    },
}

/// The file the daemon writes and the monitor reads at start (`bulkhead-monitor CONFIG`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// The instance's name (for messages).
    pub name: String,
    /// The monitor's runtime directory: its socket, pid file and exit record live here.
    pub run_dir: PathBuf,
    /// The console log (appended to; rotated to `.1` past `log_max` bytes).
    pub log: PathBuf,
    pub log_max: u64,
    pub workload: Workload,
}

impl MonitorConfig {
    pub fn socket(&self) -> PathBuf {
        socket_path(&self.run_dir)
    }
}

/// The monitor's socket in `run_dir`.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("monitor.sock")
}

/// The exit record in `run_dir`, written atomically when the instance ends.
pub fn exit_path(run_dir: &Path) -> PathBuf {
    run_dir.join("exit.json")
}

/// The monitor's pid file in `run_dir`.
pub fn pid_path(run_dir: &Path) -> PathBuf {
    run_dir.join("monitor.pid")
}

/// Environment variable naming the fd on which the monitor reports start-up: one line,
/// `ok <pid>` or `error <message>`, then EOF.
pub const READY_FD_ENV: &str = "BULKHEAD_MONITOR_READY_FD";

/// How the instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit code, or 128 + signal number.
    pub code: i32,
    /// Unix time (seconds) of the exit.
    pub at: i64,
}

/// The state a monitor reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Frozen,
    Stopping,
    Exited,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub state: RunState,
    /// The zone's init or the VM's bulkhead-vmm.
    pub pid: i32,
    pub monitor_pid: i32,
    pub exit: Option<ExitRecord>,
}

/// Resource limits to change on a running zone (None: leave as is).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceUpdate {
    pub memory_limit: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpus: Option<String>,
    pub pids_limit: Option<i64>,
    /// (major, minor, bytes per second); 0 removes a limit.
    pub read_bps: Option<(i64, i64, u64)>,
    pub write_bps: Option<(i64, i64, u64)>,
}

impl ResourceUpdate {
    /// The OCI resources that apply this update (unset fields are left out).
    pub fn to_oci(&self) -> Result<oci_spec::runtime::LinuxResources, oci_spec::OciSpecError> {
        use oci_spec::runtime::*;
        let mut r = LinuxResourcesBuilder::default();
        if let Some(m) = self.memory_limit {
            r = r.memory(LinuxMemoryBuilder::default().limit(m).build()?);
        }
        if self.cpu_quota.is_some() || self.cpus.is_some() {
            let mut c = LinuxCpuBuilder::default();
            if let Some(q) = self.cpu_quota {
                c = c.quota(q).period(self.cpu_period.unwrap_or(100_000));
            }
            if let Some(s) = &self.cpus {
                c = c.cpus(s.clone());
            }
            r = r.cpu(c.build()?);
        }
        if let Some(p) = self.pids_limit {
            r = r.pids(LinuxPidsBuilder::default().limit(p).build()?);
        }
        if self.read_bps.is_some() || self.write_bps.is_some() {
            let dev = |(major, minor, rate): (i64, i64, u64)| {
                LinuxThrottleDeviceBuilder::default()
                    .major(major)
                    .minor(minor)
                    .rate(rate)
                    .build()
            };
            let mut b = LinuxBlockIoBuilder::default();
            if let Some(x) = self.read_bps {
                b = b.throttle_read_bps_device(vec![dev(x)?]);
            }
            if let Some(x) = self.write_bps {
                b = b.throttle_write_bps_device(vec![dev(x)?]);
            }
            r = r.block_io(b.build()?);
        }
        r.build()
    }
}

/// Sets the window size of a terminal (master or slave side).
pub fn set_winsize(fd: std::os::fd::RawFd, cols: u16, rows: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid pointer; a bad fd only makes the call fail.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// A process to run inside a zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    pub args: Vec<String>,
    /// Variables over the zone's own environment (the same name: this value wins).
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub tty: bool,
    pub cols: u16,
    pub rows: u16,
}

/// Resource use of the instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    pub memory_limit: Option<u64>,
    pub pids: u64,
    pub pids_limit: Option<u64>,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    /// Keep the connection: a `Status` line now and on every change, until exit.
    Watch,
    /// Graceful stop: `signal` to the zone's init (VM: the ACPI power button), SIGKILL
    /// after `timeout_s`; `force` kills at once. Answered at once; watch for the exit.
    Stop {
        signal: i32,
        timeout_s: u64,
        force: bool,
    },
    Freeze,
    Unfreeze,
    /// Run a process; non-terminal: stdin, stdout, stderr attached as three fds.
    /// Answered with `ExecStarted` (a terminal's master attached) then `ExecExited`.
    Exec(ExecSpec),
    Update(ResourceUpdate),
    Usage,
    /// Resize the terminal of the exec whose pid is given (0: the console).
    Resize {
        pid: i32,
        cols: u16,
        rows: u16,
    },
    /// Answered `Ok`; then the connection carries raw console bytes both ways.
    Console,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    Ok,
    Error { message: String },
    Status(StatusInfo),
    ExecStarted { pid: i32 },
    ExecExited { code: i32 },
    Usage(Usage),
}

/// One JSON line.
pub fn to_line<T: Serialize>(v: &T) -> Vec<u8> {
    let mut b = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    b.push(b'\n');
    b
}

/// Unix time now, seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Reads the exit record a monitor left, if any.
pub fn read_exit(run_dir: &Path) -> Option<ExitRecord> {
    let text = std::fs::read(exit_path(run_dir)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The index beside a console log (`<log>.idx`): 16-byte entries, each the log offset
/// (u64 LE) at which output of a new second (i64 LE Unix time) begins. It lets
/// `logs --since` start at the right place without timestamps in the log itself.
pub fn log_index_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".idx");
    PathBuf::from(p)
}

/// One index entry.
pub fn log_index_entry(offset: u64, at: i64) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[..8].copy_from_slice(&offset.to_le_bytes());
    e[8..].copy_from_slice(&at.to_le_bytes());
    e
}

/// The log offset of the first output at or after Unix time `since` (the log's length
/// when nothing is that recent).
pub fn log_offset_since(log: &Path, since: i64) -> u64 {
    let len = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let idx = std::fs::read(log_index_path(log)).unwrap_or_default();
    for e in idx.chunks_exact(16) {
        let mut o = [0u8; 8];
        let mut t = [0u8; 8];
        o.copy_from_slice(&e[..8]);
        t.copy_from_slice(&e[8..]);
        if i64::from_le_bytes(t) >= since {
            return u64::from_le_bytes(o).min(len);
        }
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_index_finds_the_first_chunk_since() {
        let dir = std::env::temp_dir().join(format!("bh-logidx-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let log = dir.join("console.log");
        std::fs::write(&log, b"aaaabbbbcccc").unwrap();
        let mut idx = Vec::new();
        idx.extend(log_index_entry(0, 100));
        idx.extend(log_index_entry(4, 200));
        idx.extend(log_index_entry(8, 300));
        std::fs::write(log_index_path(&log), idx).unwrap();
        assert_eq!(log_offset_since(&log, 50), 0);
        assert_eq!(log_offset_since(&log, 200), 4);
        assert_eq!(log_offset_since(&log, 250), 8);
        assert_eq!(log_offset_since(&log, 301), 12);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn wire_spelling() {
        let r = Request::Stop {
            signal: 15,
            timeout_s: 3,
            force: false,
        };
        let line = String::from_utf8(to_line(&r)).unwrap();
        assert_eq!(
            line,
            "{\"op\":\"stop\",\"signal\":15,\"timeout_s\":3,\"force\":false}\n"
        );
        let back: Request = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(back, r);
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
        let s = Response::ExecExited { code: 3 };
        assert_eq!(
            String::from_utf8(to_line(&s)).unwrap(),
            "{\"reply\":\"exec_exited\",\"code\":3}\n"
        );
    }
}
