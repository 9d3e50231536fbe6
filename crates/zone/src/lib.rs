//! `zone`: turns an OCI runtime bundle (config.json + root file system) into an
//! isolated partition — namespaces, pivot_root, mounts, devices, capabilities,
//! rlimits, seccomp, cgroups v1/v2, hooks — and manages its lifecycle and state.
//!
//! The `bulkhead-runc` binary is a thin command line over this library.

pub mod cgroups;
pub mod container;
pub mod error;
pub mod hardening;
pub mod hooks;
pub mod mounts;
pub mod process;
pub mod seccomp;
pub mod signal;
pub mod spec;
pub mod state;
pub mod sync;

pub use error::{Result, ZoneError};

/// A warning that does not stop the operation (unknown capability, failing
/// poststart hook…), on stderr where runc prints its warnings.
pub(crate) fn warn(msg: &str) {
    eprintln!("bulkhead-runc: warning: {msg}");
}
