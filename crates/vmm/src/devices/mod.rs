//! Devices the guest sees, and the buses that route its port and MMIO
//! accesses to them.

pub mod legacy;
pub mod virtio;

/// A device on the port-I/O or MMIO bus. `offset` is relative to the base the
/// device was registered at. Accesses come from vCPU threads.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}
