//! `api`: the types of Bulkhead's REST API, shared by `bulkheadd` (which serves them) and
//! the `bulkhead` CLI (which sends and reads them). Owns the JSON shapes of instances,
//! state changes, operations, events and errors; instance-name rules; the table of
//! configuration keys with their validation (one place, used by the daemon and for the
//! generated docs page); and the route table the OpenAPI document is generated from.

pub mod config;
pub mod names;
pub mod openapi;
pub mod types;

pub use config::{ConfigError, KeyDef, KEYS};
pub use names::validate_name;
pub use types::*;

/// Path of the daemon's socket unless `--socket`/`BULKHEAD_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/bulkhead/bulkhead.sock";
/// API version prefix of every resource.
pub const API_PREFIX: &str = "/1.0";
