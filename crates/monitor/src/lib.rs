//! `monitor`: the typed protocol between `bulkheadd` and the per-instance monitor
//! (`bulkhead-monitor`), the monitor's start-up configuration and on-disk records, and a
//! blocking client with a timeout on every call.
//!
//! Process model (see docs/platform.md): the multi-threaded daemon never calls the zone
//! library's create/exec itself. For each running instance it starts one monitor
//! (double-forked, a session of its own, outliving the daemon). The monitor is single
//! threaded: it creates and starts the zone (or runs bulkhead-vmm), holds the console,
//! appends it to the instance's log, answers the daemon on a Unix socket and, when the
//! instance ends, writes the exit status to `exit.json` before it exits itself.
//!
//! Wire format: one JSON [`Request`] per connection, newline-terminated, optionally with
//! file descriptors attached (SCM_RIGHTS); the monitor answers with newline-terminated
//! JSON [`Response`]s. `Watch`, `Exec` and `Console` keep the connection open.

pub mod client;
pub mod proto;

pub use client::{Client, ClientError};
pub use proto::*;
