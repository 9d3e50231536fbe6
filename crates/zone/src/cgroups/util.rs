//! Small file helpers shared by the v1 and v2 managers: reading and writing
//! cgroup control files with errors that name file and value, recursive
//! listing of processes, and removal of a cgroup subtree.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::CgroupError;

/// An OS error's text without Rust's " (os error N)" suffix.
pub(crate) fn os_msg(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    }
}

/// Writes `value` with a single write(2), as cgroup files require.
pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    let err = |source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(err)?;
    f.write_all(value.as_bytes()).map_err(err)
}

pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a file, returning `None` if it does not exist.
pub(crate) fn read_opt(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(crate) fn parse_err(path: &Path, content: &str, reason: &str) -> CgroupError {
    CgroupError::Parse {
        path: path.to_path_buf(),
        content: content.trim().to_string(),
        reason: reason.to_string(),
    }
}

/// Parses a single unsigned number; "max" reads as `u64::MAX`.
pub(crate) fn parse_u64(path: &Path, s: &str) -> Result<u64, CgroupError> {
    let t = s.trim();
    if t == "max" {
        return Ok(u64::MAX);
    }
    t.parse::<u64>()
        .map_err(|_| parse_err(path, s, "expected an unsigned number"))
}

/// Reads a single-number file; `None` if it does not exist.
pub(crate) fn read_u64_opt(path: &Path) -> Result<Option<u64>, CgroupError> {
    match read_opt(path)? {
        Some(s) => parse_u64(path, &s).map(Some),
        None => Ok(None),
    }
}

/// Parses "key value" lines (memory.stat, cpu.stat, memory.events...).
pub(crate) fn parse_flat_keyed(path: &Path, s: &str) -> Result<BTreeMap<String, u64>, CgroupError> {
    let mut m = BTreeMap::new();
    for line in s.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.split_whitespace();
        match (it.next(), it.next()) {
            (Some(k), Some(v)) => {
                m.insert(k.to_string(), parse_u64(path, v)?);
            }
            _ => return Err(parse_err(path, line, "expected \"key value\"")),
        }
    }
    Ok(m)
}

/// Reads a flat-keyed file; an empty map if it does not exist.
pub(crate) fn read_flat_keyed(path: &Path) -> Result<BTreeMap<String, u64>, CgroupError> {
    match read_opt(path)? {
        Some(s) => parse_flat_keyed(path, &s),
        None => Ok(BTreeMap::new()),
    }
}

/// Pids listed in `cgroup.procs` of `dir` and all its descendants.
pub(crate) fn procs_recursive(dir: &Path, out: &mut Vec<i32>) -> Result<(), CgroupError> {
    let procs = dir.join("cgroup.procs");
    let text = match read_opt(&procs)? {
        Some(t) => t,
        // The directory disappeared while walking (or never existed).
        None => return Ok(()),
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        out.push(
            line.trim()
                .parse::<i32>()
                .map_err(|_| parse_err(&procs, line, "expected a pid"))?,
        );
    }
    for child in subdirs(dir)? {
        procs_recursive(&child, out)?;
    }
    Ok(())
}

/// `read_dir`, with a missing directory read as `None`.
pub(crate) fn read_dir_if_exists(dir: &Path) -> Result<Option<std::fs::ReadDir>, CgroupError> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(Some(rd)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Child cgroup directories of `dir` (empty if `dir` is missing).
pub(crate) fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let Some(rd) = read_dir_if_exists(dir)? else {
        return Ok(Vec::new());
    };
    let mut v = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|source| CgroupError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            v.push(ent.path());
        }
    }
    Ok(v)
}

/// Removes `dir` and its descendant cgroups, deepest first. A cgroup whose
/// last process has just exited can report EBUSY for a short while, so each
/// rmdir is retried for up to about two seconds. A missing directory is fine.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    for child in subdirs(dir)? {
        remove_tree(&child)?;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut pause = Duration::from_millis(5);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(source) => {
                return Err(CgroupError::Rmdir {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// mkdir -p, naming the directory that failed.
pub(crate) fn mkdir_all(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(|source| CgroupError::Mkdir {
        path: dir.to_path_buf(),
        source,
    })
}

/// Polls `check` until it returns `Some`, for at most `limit`.
pub(crate) fn wait_for<T>(
    limit: Duration,
    mut check: impl FnMut() -> Result<Option<T>, CgroupError>,
) -> Result<Option<T>, CgroupError> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = check()? {
            return Ok(Some(v));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
