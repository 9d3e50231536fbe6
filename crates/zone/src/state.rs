//! Persistent container state under `<root>/<id>/`: `state.json` written
//! atomically, the exec fifo, and the status derived at read time from the
//! init's /proc entry (with start-time check against pid reuse), the fifo and
//! the cgroup freezer.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroups::{Cgroup, CgroupState};
use crate::error::{Result, ZoneError};

/// Default state root, overridable with `--root`.
pub const DEFAULT_ROOT: &str = "/run/bulkhead-runc";
/// Name of the state file inside a container's directory.
pub const STATE_FILE: &str = "state.json";
/// Name of the exec fifo inside a container's directory.
pub const EXEC_FIFO: &str = "exec.fifo";

/// Lifecycle status of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Stopped,
    Paused,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Paused => "paused",
        })
    }
}

/// What is kept in state.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    /// Host pid of the zone's init.
    pub pid: i32,
    /// Start time of the init (field 22 of /proc/<pid>/stat).
    pub pid_start: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339 creation time.
    pub created: String,
    pub owner: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    pub cgroup: CgroupState,
    /// The configuration the zone was created from (hooks, namespaces, process).
    pub config: oci_spec::runtime::Spec,
    /// Exit status of the init, if known.
    #[serde(default)]
    pub exit_status: Option<i32>,
}

/// runc-shaped output of `state` and `list --format json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateView {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(skip_serializing_if = "HashMap::is_empty", default)]
    pub annotations: HashMap<String, String>,
    pub owner: String,
}

/// Where a container's files live.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub dir: PathBuf,
}

impl StateDir {
    /// `<root>/<id>`; rejects ids that are not a single path component.
    pub fn new(root: &Path, id: &str) -> Result<Self> {
        validate_id(id)?;
        Ok(StateDir { dir: root.join(id) })
    }
    pub fn state_file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
    pub fn fifo(&self) -> PathBuf {
        self.dir.join(EXEC_FIFO)
    }
}

/// Container ids: non-empty, no '/', not "." or "..", printable.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ZoneError::Msg(format!(
            "invalid container id {id:?}: use letters, digits, '_', '+', '-' and '.'"
        )))
    }
}

/// Write `data` to `path` atomically: temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(ZoneError::io("write", path, e));
    }
    Ok(())
}

impl State {
    /// Save to `<dir>/state.json`.
    pub fn save(&self, sd: &StateDir) -> Result<()> {
        let data = serde_json::to_vec(self)
            .map_err(|e| ZoneError::Msg(format!("serialize state: {e}")))?;
        write_atomic(&sd.state_file(), &data)
    }

    /// Load `<root>/<id>/state.json`; a missing container is `does not exist`.
    pub fn load(root: &Path, id: &str) -> Result<(State, StateDir)> {
        let sd = StateDir::new(root, id)?;
        let path = sd.state_file();
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ZoneError::NotExist(id.to_string()))
            }
            Err(e) => return Err(ZoneError::io("read", &path, e)),
        };
        let st: State = serde_json::from_slice(&data)
            .map_err(|e| ZoneError::Msg(format!("{}: corrupt state: {e}", path.display())))?;
        Ok((st, sd))
    }

    /// Whether the init process recorded here is still the same live process.
    pub fn init_alive(&self) -> bool {
        self.pid > 0
            && matches!(proc_stat(self.pid), Some((state, start)) if state != 'Z' && state != 'X' && start == self.pid_start)
    }

    /// Status derived from the system right now.
    pub fn status(&self, sd: &StateDir) -> Status {
        if !self.init_alive() {
            return Status::Stopped;
        }
        if sd.fifo().exists() {
            return Status::Created;
        }
        if Cgroup::from_state(&self.cgroup)
            .is_frozen()
            .unwrap_or(false)
        {
            return Status::Paused;
        }
        Status::Running
    }

    /// The runc-shaped view printed by `state`/`list`.
    pub fn view(&self, sd: &StateDir) -> StateView {
        let status = self.status(sd);
        StateView {
            oci_version: self.config.version().clone(),
            id: self.id.clone(),
            pid: if status == Status::Stopped {
                0
            } else {
                self.pid
            },
            status,
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: self.created.clone(),
            annotations: self.annotations.clone(),
            owner: self.owner.clone(),
        }
    }

    /// OCI state JSON (runtime-spec "state") as given to hooks on stdin.
    pub fn oci_state(&self, status: Status) -> String {
        oci_state_json(&self.config, &self.id, status, self.pid, &self.bundle)
    }
}

/// OCI runtime-spec state document.
pub fn oci_state_json(
    spec: &oci_spec::runtime::Spec,
    id: &str,
    status: Status,
    pid: i32,
    bundle: &Path,
) -> String {
    let mut v = serde_json::json!({
        "ociVersion": spec.version(),
        "id": id,
        "status": status,
        "bundle": bundle,
        "annotations": spec.annotations().clone().unwrap_or_default(),
    });
    if status != Status::Stopped && pid > 0 {
        v["pid"] = serde_json::json!(pid);
    }
    v.to_string()
}

/// (state letter, start time in clock ticks) from /proc/<pid>/stat.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s)
}

/// Parse the fields after the command name (which may contain spaces and ')').
pub fn parse_stat(s: &str) -> Option<(char, u64)> {
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    // After ')' field 3 is the state; field 22 is starttime: 22 - 3 = 19 more.
    let start = f.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Current time as RFC 3339 UTC with nanoseconds, like runc's `created`.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// Format seconds since the epoch (UTC) as RFC 3339.
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86400);
    let sod = secs.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant's public-domain algorithm, re-derived).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Name of the owner of uid (falls back to the number).
pub fn owner_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_handles_odd_names() {
        let line = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 50 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 98765)));
        let me = proc_stat(std::process::id() as i32).unwrap();
        assert!("RSD".contains(me.0), "{me:?}");
        assert!(me.1 > 0);
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951782400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1795561362, 0), "2026-11-24T23:02:42.000000000Z");
    }

    #[test]
    fn ids() {
        assert!(validate_id("abc-1_2.x+y").is_ok());
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn atomic_write_and_state_round_trip() {
        let dir = std::env::temp_dir().join(format!("bh-state-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sd = StateDir {
            dir: dir.join("c1"),
        };
        std::fs::create_dir_all(&sd.dir).unwrap();
        let cg = Cgroup::resolve(None, "c1").unwrap();
        let spec: oci_spec::runtime::Spec = crate::spec::parse(
            r#"{"ociVersion":"1.2.0","root":{"path":"rootfs"},"process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
        )
        .unwrap();
        let st = State {
            id: "c1".into(),
            pid: std::process::id() as i32,
            pid_start: proc_stat(std::process::id() as i32).unwrap().1,
            bundle: dir.clone(),
            rootfs: dir.join("rootfs"),
            created: now_rfc3339(),
            owner: "root".into(),
            annotations: HashMap::new(),
            cgroup: cg.state(),
            config: spec,
            exit_status: Some(3),
        };
        st.save(&sd).unwrap();
        let (back, _) = State::load(&dir, "c1").unwrap();
        assert_eq!(back.id, "c1");
        assert_eq!(back.pid_start, st.pid_start);
        assert_eq!(back.exit_status, Some(3));
        assert!(back.init_alive());
        assert_eq!(back.status(&sd), Status::Running);
        // A wrong start time means the pid was reused: stopped.
        let mut reused = back.clone();
        reused.pid_start += 1;
        assert_eq!(reused.status(&sd), Status::Stopped);
        // The exec fifo marks "created".
        nix::unistd::mkfifo(&sd.fifo(), nix::sys::stat::Mode::from_bits_truncate(0o622)).unwrap();
        assert_eq!(back.status(&sd), Status::Created);
        // No temp files are left behind.
        let names: Vec<_> = std::fs::read_dir(&sd.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        assert!(matches!(
            State::load(&dir, "nope"),
            Err(ZoneError::NotExist(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
