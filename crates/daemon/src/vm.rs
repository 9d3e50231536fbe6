//! VM instances: the typed `vmm_proto::VmConfig` a VM's monitor runs bulkhead-vmm with,
//! built from the instance's keys. Each VM's bulkhead-vmm runs jailed under a uid and gid
//! of its own (never 0), allocated from the instance's id.

use std::path::Path;

use api::config::{parse_bool, parse_disk, parse_size};
use monitor::Workload;
use vmm_proto::{DiskSpec, JailConfig, SerialSpec, VmConfig};

use crate::instances::Daemon;
use crate::store::Row;
use crate::ApiError;

/// First uid/gid of the range the VMs' jailed monitors run as (below the zones' ranges,
/// which start at 1,000,000).
pub const VM_UID_BASE: u32 = 900_000;

pub fn vm_uid(id: i64) -> u32 {
    VM_UID_BASE + (id as u32 % 100_000)
}

pub fn config(d: &Daemon, row: &Row, run_dir: &Path) -> Result<VmConfig, ApiError> {
    let c = &row.config;
    let kernel = c
        .get("vm.kernel")
        .ok_or_else(|| ApiError::bad("vm.kernel: a VM needs a guest kernel"))?;
    if !Path::new(kernel).is_file() {
        return Err(ApiError::bad(format!(
            "vm.kernel: kernel {kernel} does not exist"
        )));
    }
    let mut disks: Vec<(&String, &String)> = c
        .iter()
        .filter(|(k, _)| k.starts_with("vm.disk."))
        .collect();
    disks.sort();
    let mut specs = Vec::new();
    for (k, v) in disks {
        let (path, read_only) =
            parse_disk(v).ok_or_else(|| ApiError::bad(format!("{k}: invalid disk {v:?}")))?;
        if !Path::new(&path).exists() {
            return Err(ApiError::bad(format!("{k}: disk {path} does not exist")));
        }
        specs.push(DiskSpec {
            path: path.into(),
            read_only,
        });
    }
    let uid = vm_uid(row.id);
    let cfg = VmConfig {
        kernel: Some(kernel.into()),
        cmdline: c.get("vm.cmdline").cloned().unwrap_or_default(),
        memory_bytes: c
            .get("limits.memory")
            .and_then(|v| parse_size(v))
            .unwrap_or(128 << 20),
        vcpus: c
            .get("limits.cpu")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        serial: SerialSpec::Socket(run_dir.join("serial.sock")),
        disks: specs,
        rng: c.get("vm.rng").and_then(|v| parse_bool(v)).unwrap_or(true),
        api_socket: Some(run_dir.join("vm.sock")),
        jail: JailConfig {
            enabled: true,
            id: Some(format!("bh{}", row.id)),
            dir: d.paths.run.join("jail"),
            uid,
            gid: uid,
        },
        ..Default::default()
    };
    cfg.validate()
        .map_err(|e| ApiError::bad(format!("VM {}: {e}", row.name)))?;
    Ok(cfg)
}

pub fn prepare(d: &Daemon, row: &Row, run_dir: &Path) -> Result<Workload, ApiError> {
    if !d.paths.vmm_bin.is_file() {
        return Err(ApiError::bad(format!(
            "VM {}: the VM monitor {} is not installed",
            row.name,
            d.paths.vmm_bin.display()
        )));
    }
    if !Path::new("/dev/kvm").exists() {
        return Err(ApiError::bad(format!(
            "VM {}: this host has no /dev/kvm",
            row.name
        )));
    }
    let cfg = config(d, row, run_dir)?;
    let path = run_dir.join("vm.json");
    let text = cfg.to_json().map_err(ApiError::internal)?;
    zone::state::write_atomic(&path, text.as_bytes()).map_err(ApiError::internal)?;
    Ok(Workload::Vm {
        vmm: d.paths.vmm_bin.clone(),
        config: path,
        control: run_dir.join("vm.sock"),
        serial: run_dir.join("serial.sock"),
    })
}
