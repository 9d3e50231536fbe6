//! VM instances: the bulkhead-vmm configuration a VM's monitor runs.

use std::path::Path;

use monitor::Workload;

use crate::instances::Daemon;
use crate::store::Row;
use crate::ApiError;

pub fn prepare(_d: &Daemon, row: &Row, _run_dir: &Path) -> Result<Workload, ApiError> {
    Err(ApiError::bad(format!(
        "VM {}: VMs are not wired yet",
        row.name
    )))
}
