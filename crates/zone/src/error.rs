//! Error type of the zone library: every failure a user can hit is one precise
//! line naming the object (file, syscall, container id) and the cause.

use std::path::Path;

/// Errors returned by the zone library.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// A container with this id is already registered.
    #[error("container \"{0}\" already exists")]
    Exists(String),
    /// No container with this id.
    #[error("container \"{0}\" does not exist")]
    NotExist(String),
    /// config.json is malformed or semantically invalid.
    #[error("{0}")]
    Spec(String),
    /// The container is in a state that does not allow the operation.
    #[error("{0}")]
    State(String),
    /// An I/O error on a named path or object.
    #[error("{what}: {}", io_msg(source))]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// A syscall failed.
    #[error("{what}: {errno}")]
    Sys {
        what: String,
        errno: nix::errno::Errno,
    },
    /// Cgroup management failed.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    /// Seccomp profile compilation or loading failed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// An exec override that cannot be applied.
    #[error(transparent)]
    Override(#[from] crate::overrides::OverrideError),
    /// Any other precise message (e.g. an error reported by the zone's init).
    #[error("{0}")]
    Msg(String),
}

/// An I/O error's text without the " (os error N)" suffix.
pub fn io_msg(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Result alias for the zone library.
pub type Result<T> = std::result::Result<T, ZoneError>;

impl ZoneError {
    /// An I/O error about `path` while doing `op`.
    pub fn io(op: &str, path: &Path, source: std::io::Error) -> Self {
        ZoneError::Io {
            what: format!("{op} {}", path.display()),
            source,
        }
    }

    /// A syscall failure described by `what`.
    pub fn sys(what: impl Into<String>, errno: nix::errno::Errno) -> Self {
        ZoneError::Sys {
            what: what.into(),
            errno,
        }
    }
}

/// Attach a description to a nix result.
pub trait SysContext<T> {
    /// Turn an `Errno` into a `ZoneError::Sys` described by `f()`.
    fn ctx<S: Into<String>, F: FnOnce() -> S>(self, f: F) -> Result<T>;
}

impl<T> SysContext<T> for std::result::Result<T, nix::errno::Errno> {
    fn ctx<S: Into<String>, F: FnOnce() -> S>(self, f: F) -> Result<T> {
        self.map_err(|e| ZoneError::sys(f(), e))
    }
}
