//! `zone`: turns an OCI runtime bundle (config.json + root file system) into an
//! isolated partition — namespaces, pivot_root, mounts, devices, capabilities,
//! rlimits, seccomp, cgroups v1/v2, hooks — and manages its lifecycle and state.
//!
//! The `bulkhead-runc` binary is a thin command line over this library.
//!
//! Warnings that do not stop an operation (an unknown capability, a failing
//! poststart hook) are `tracing` events; the library never prints. A caller
//! that wants them on stderr installs a subscriber (bulkhead-runc does).

pub mod cgroups;
pub mod container;
pub mod error;
pub mod hardening;
pub mod hooks;
pub mod mounts;
pub mod overrides;
pub mod process;
pub mod resources;
pub mod seccomp;
pub mod signal;
pub mod spec;
pub mod state;
pub mod sync;

pub use error::{Result, ZoneError};
