//! `vmm-proto`: what a supervisor (bulkheadd) needs to drive `bulkhead-vmm`
//! monitors without KVM crates, argv assembly or hand-written JSON:
//!
//! - [`VmConfig`] — a VM's configuration (serde; `bulkhead-vmm --config
//!   <file.json>` reads it) with [`VmConfig::validate`];
//! - [`Request`] / [`Response`] — the control socket's protocol
//!   (newline-delimited JSON, tagged by `"op"`);
//! - [`Client`] — a blocking client of the control socket whose every call
//!   is bounded by a timeout.

pub mod client;
pub mod config;
pub mod protocol;

pub use client::{Client, ClientError};
pub use config::{
    ConfigFileError, DiskSpec, JailConfig, NetSpec, ParseError, SerialSpec, ValidationError,
    VmConfig, VsockSpec,
};
pub use protocol::{
    ApiError, Describe, DeviceInfo, DeviceKind, ErrorKind, Request, Response, ShutdownDone,
    SnapshotDone, StateChanged, VmState,
};
