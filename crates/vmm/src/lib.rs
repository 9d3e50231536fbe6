//! `vmm`: the Bulkhead virtual machine monitor — one process per VM on KVM.
//! Guest memory, vCPUs, firmware-less boot (PVH / Linux boot protocol), ACPI,
//! legacy devices, virtio-mmio devices, control socket, snapshots, jail.
//! See `docs/vmm-design.md` for the machine model.

pub mod api;
pub mod bus;
pub mod config;
pub mod control;
pub mod devices;
pub mod jail;
pub mod layout;
pub mod snapshot;
pub mod testkernel;
pub mod vcpu;
pub mod vm;
pub mod x86;
