//! Control groups: one interface over cgroup v1 (one directory per controller
//! hierarchy) and cgroup v2 (one unified directory). Owns path resolution,
//! creation, resource limits, process membership, freezing, statistics and
//! removal of a zone's cgroup.
//!
//! Contract used by the rest of the crate (keep these signatures stable):
//! ```text
//! let cg = Cgroup::resolve(spec_cgroups_path /* Option<&Path> */, container_id)?; // no I/O side effects
//! cg.create()?;                       // mkdir in every hierarchy / unified dir
//! cg.apply(&resources)?;              // write limits (oci_spec LinuxResources)
//! cg.add_process(pid)?;               // move a pid in
//! cg.freeze()?; cg.thaw()?; cg.is_frozen()?;
//! cg.pids()?;                         // all pids inside (recursive)
//! cg.stats()?;                        // Stats, serialisable like runc's `events --stats`
//! cg.destroy()?;                      // remove the directories (after the processes are gone)
//! let saved: CgroupState = cg.state(); let cg = Cgroup::from_state(&saved); // persisted in state.json
//! ```
//!
//! Layout detection reads `/proc/self/mountinfo`: a host whose controllers
//! live in cgroup v1 hierarchies (pure v1, or "hybrid" with an empty cgroup2
//! mount beside them) gets the v1 manager; a host with only cgroup2 gets the
//! v2 manager.

mod devices_bpf;
mod mountinfo;
mod stats;
mod util;
mod v1;
mod v2;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use mountinfo::cgroup2_mount;
pub use stats::{
    BlkioEntry, BlkioStats, CpuStats, CpuUsage, HugetlbStats, MemoryEntry, MemoryStats, PidsStats,
    Stats, Throttling,
};
pub use v1::V1Dir;
pub use v2::V2Dir;

/// Environment variable naming the parent below which relative cgroup paths
/// are placed (absolute from each hierarchy's root, or relative to the
/// caller's own cgroup).
pub const PARENT_ENV: &str = "BULKHEAD_CGROUP_PARENT";

/// Which cgroup manager drives a zone's cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Errors from cgroup operations. Each message names the file and value involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("writing {value} to {}: {}", path.display(), util::os_msg(source))]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("reading {}: {}", path.display(), util::os_msg(source))]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating cgroup directory {}: {}", path.display(), util::os_msg(source))]
    Mkdir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("removing cgroup directory {}: {}", path.display(), util::os_msg(source))]
    Rmdir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {}: {reason}: {content:?}", path.display())]
    Parse {
        path: PathBuf,
        content: String,
        reason: String,
    },
    #[error("cgroup controller {controller} is not available on this host, but linux.resources.{field} asks for it")]
    ControllerMissing { controller: String, field: String },
    #[error("systemd cgroup paths are not supported; use a cgroupfs path: {0}")]
    SystemdPath(String),
    #[error("invalid cgroups path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("invalid linux.resources.{field} {value}: {reason}")]
    InvalidResource {
        field: String,
        value: String,
        reason: String,
    },
    #[error("no cgroup file system found in /proc/self/mountinfo")]
    NoCgroupFs,
    #[error("{0}")]
    Unsupported(String),
    #[error("cgroup {} did not reach the frozen state (still {state})", path.display())]
    FreezeTimeout { path: PathBuf, state: String },
    #[error("device eBPF program for {}: {op}: {}", path.display(), util::os_msg(source))]
    Bpf {
        path: PathBuf,
        op: String,
        source: std::io::Error,
    },
}

/// Persistable description of a zone's cgroup (stored in state.json).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupState {
    pub version: CgroupVersion,
    /// v1: one entry per mounted hierarchy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub v1: Vec<V1Dir>,
    /// v2: the unified directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v2: Option<V2Dir>,
}

#[derive(Clone, Debug)]
enum Manager {
    V1(v1::V1),
    V2(v2::V2),
}

/// A zone's cgroup (v1: one directory per hierarchy, v2: one directory).
#[derive(Clone, Debug)]
pub struct Cgroup {
    manager: Manager,
}

/// Checks a spec path: rejects systemd `slice:prefix:name` syntax and `..`.
/// Returns whether it is absolute and its normal components.
fn check_path(p: &Path) -> Result<(bool, PathBuf), CgroupError> {
    let s = p.to_string_lossy();
    if !s.starts_with('/') && !s.contains('/') && s.split(':').count() == 3 {
        return Err(CgroupError::SystemdPath(s.into_owned()));
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                return Err(CgroupError::InvalidPath {
                    path: s.into_owned(),
                    reason: "\"..\" components are not allowed".into(),
                })
            }
            Component::Prefix(_) => {
                return Err(CgroupError::InvalidPath {
                    path: s.into_owned(),
                    reason: "not a Unix path".into(),
                })
            }
        }
    }
    Ok((p.is_absolute(), out))
}

/// Where, relative to one hierarchy's root, a zone's cgroup lives.
/// `own` is the caller's cgroup in that hierarchy (relative to the root).
pub(crate) fn relative_to_root(
    spec: Option<&Path>,
    id: &str,
    own: &Path,
    parent_env: Option<&str>,
) -> Result<PathBuf, CgroupError> {
    let (abs, rel) = match spec {
        Some(p) => check_path(p)?,
        None => check_path(Path::new(id))?,
    };
    if rel.as_os_str().is_empty() && !abs {
        return Err(CgroupError::InvalidPath {
            path: id.to_string(),
            reason: "empty cgroup name".into(),
        });
    }
    let base = match parent_env.filter(|s| !s.is_empty()) {
        Some(env) => {
            let (env_abs, env_rel) = check_path(Path::new(env))?;
            if env_abs {
                env_rel
            } else {
                own.join(env_rel)
            }
        }
        None => own.to_path_buf(),
    };
    let full = if abs { rel } else { base.join(rel) };
    if full.as_os_str().is_empty() {
        return Err(CgroupError::InvalidPath {
            path: spec.map_or_else(|| id.to_string(), |p| p.display().to_string()),
            reason: "it names the root of the cgroup hierarchy".into(),
        });
    }
    Ok(full)
}

impl Cgroup {
    /// Works out the cgroup directories for a zone without touching them.
    /// `cgroups_path` is the spec's `linux.cgroupsPath`; `None` means `<id>`
    /// relative to the parent (see [`PARENT_ENV`]).
    pub fn resolve(cgroups_path: Option<&Path>, id: &str) -> Result<Cgroup, CgroupError> {
        let layout = mountinfo::Layout::detect()?;
        let parent = std::env::var(PARENT_ENV).ok();
        let manager = match layout {
            mountinfo::Layout::V1(hier) => {
                Manager::V1(v1::V1::resolve(&hier, cgroups_path, id, parent.as_deref())?)
            }
            mountinfo::Layout::V2 { mount, own } => Manager::V2(v2::V2::new(
                &mount,
                &relative_to_root(cgroups_path, id, &own, parent.as_deref())?,
            )),
        };
        Ok(Cgroup { manager })
    }

    /// A v2 manager on an explicit cgroup2 mount point (e.g. the empty
    /// `/sys/fs/cgroup/unified` of a hybrid host). Path rules are those of
    /// [`Cgroup::resolve`], with the caller's own cgroup taken from the `0::`
    /// line of `/proc/self/cgroup`.
    pub fn resolve_v2_at(
        mount: &Path,
        cgroups_path: Option<&Path>,
        id: &str,
    ) -> Result<Cgroup, CgroupError> {
        let own = mountinfo::own_cgroup_v2()?;
        let parent = std::env::var(PARENT_ENV).ok();
        let rel = relative_to_root(cgroups_path, id, &own, parent.as_deref())?;
        Ok(Cgroup {
            manager: Manager::V2(v2::V2::new(mount, &rel)),
        })
    }

    /// Creates the directories (every mounted v1 hierarchy, or the unified
    /// directory with the available controllers enabled in its ancestors).
    pub fn create(&self) -> Result<(), CgroupError> {
        match &self.manager {
            Manager::V1(m) => m.create(),
            Manager::V2(m) => m.create(),
        }
    }

    /// Writes the resource limits of the spec.
    pub fn apply(&self, r: &oci_spec::runtime::LinuxResources) -> Result<(), CgroupError> {
        match &self.manager {
            Manager::V1(m) => m.apply(r),
            Manager::V2(m) => m.apply(r),
        }
    }

    /// Moves a process (all its threads) into the cgroup.
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        if pid <= 0 {
            return Err(CgroupError::Unsupported(format!(
                "cannot add pid {pid} to a cgroup: not a process id"
            )));
        }
        match &self.manager {
            Manager::V1(m) => m.add_process(pid),
            Manager::V2(m) => m.add_process(pid),
        }
    }

    /// Freezes every process inside; returns once the kernel reports frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        match &self.manager {
            Manager::V1(m) => m.freeze(),
            Manager::V2(m) => m.freeze(),
        }
    }

    pub fn thaw(&self) -> Result<(), CgroupError> {
        match &self.manager {
            Manager::V1(m) => m.thaw(),
            Manager::V2(m) => m.thaw(),
        }
    }

    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        match &self.manager {
            Manager::V1(m) => m.is_frozen(),
            Manager::V2(m) => m.is_frozen(),
        }
    }

    /// All processes in the cgroup and its descendants, sorted.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut v = match &self.manager {
            Manager::V1(m) => m.pids()?,
            Manager::V2(m) => m.pids()?,
        };
        v.sort_unstable();
        v.dedup();
        Ok(v)
    }

    pub fn stats(&self) -> Result<Stats, CgroupError> {
        match &self.manager {
            Manager::V1(m) => m.stats(),
            Manager::V2(m) => m.stats(),
        }
    }

    /// How many processes the kernel's OOM killer killed in this cgroup.
    pub fn oom_kill_count(&self) -> Result<u64, CgroupError> {
        match &self.manager {
            Manager::V1(m) => m.oom_kill_count(),
            Manager::V2(m) => m.oom_kill_count(),
        }
    }

    /// Removes the directories (children first). Missing directories are fine.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        match &self.manager {
            Manager::V1(m) => m.destroy(),
            Manager::V2(m) => m.destroy(),
        }
    }

    pub fn state(&self) -> CgroupState {
        match &self.manager {
            Manager::V1(m) => CgroupState {
                version: CgroupVersion::V1,
                v1: m.dirs.clone(),
                v2: None,
            },
            Manager::V2(m) => CgroupState {
                version: CgroupVersion::V2,
                v1: Vec::new(),
                v2: Some(m.dir.clone()),
            },
        }
    }

    pub fn from_state(s: &CgroupState) -> Cgroup {
        let manager = match (s.version, &s.v2) {
            (CgroupVersion::V2, Some(d)) => Manager::V2(v2::V2 { dir: d.clone() }),
            (CgroupVersion::V2, None) => Manager::V2(v2::V2 {
                // A v2 state without a directory cannot come from `state()`;
                // an empty path makes every operation fail with a clear error.
                dir: V2Dir {
                    mount: PathBuf::new(),
                    path: PathBuf::new(),
                },
            }),
            (CgroupVersion::V1, _) => Manager::V1(v1::V1 { dirs: s.v1.clone() }),
        };
        Cgroup { manager }
    }

    /// (host directory of this cgroup, hierarchy directory name) for each
    /// hierarchy, e.g. `("/sys/fs/cgroup/cpu,cpuacct/zones/a", "cpu,cpuacct")`;
    /// the name is `""` for v2.
    pub fn mount_sources(&self) -> Vec<(PathBuf, String)> {
        match &self.manager {
            Manager::V1(m) => m
                .dirs
                .iter()
                .map(|d| (d.path.clone(), d.name.clone()))
                .collect(),
            Manager::V2(m) => vec![(m.dir.path.clone(), String::new())],
        }
    }

    pub fn version(&self) -> CgroupVersion {
        match &self.manager {
            Manager::V1(_) => CgroupVersion::V1,
            Manager::V2(_) => CgroupVersion::V2,
        }
    }
}
