//! Port-I/O and MMIO buses: address ranges mapped to devices. vCPU threads
//! look up the device for each exit and call it with the offset into its
//! range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::devices::BusDevice;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {0:#x}+{1:#x} overlaps an existing device")]
    Overlap(u64, u64),
    #[error("bus range {0:#x}+{1:#x} is empty or wraps")]
    BadRange(u64, u64),
}

/// A device shared between the bus and whoever else drives it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Default, Clone)]
pub struct Bus {
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base + len)` to `dev`.
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange(base, len))?;
        if let Some((b, (l, _))) = self.ranges.range(..end).next_back() {
            if b + l > base {
                return Err(BusError::Overlap(base, len));
            }
        }
        self.ranges.insert(base, (len, dev));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (base, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        if addr - base < *len {
            Some((addr - base, dev))
        } else {
            None
        }
    }

    /// Reads from the device at `addr`; returns false (and fills 0xff, as an
    /// unclaimed bus reads) when nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                // A poisoned lock means a device panicked on another vCPU;
                // keep serving the bus with the device's state as it is.
                let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
                d.read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes to the device at `addr`; false when nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
                d.write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(Vec<u8>);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.0[offset as usize + i];
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        }
    }

    #[test]
    fn routes_by_range_with_offsets() {
        let mut bus = Bus::new();
        let a: SharedDevice = Arc::new(Mutex::new(Reg(vec![0; 8])));
        let b: SharedDevice = Arc::new(Mutex::new(Reg(vec![0; 4])));
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        bus.insert(0x600, 2, b).unwrap();
        assert_eq!(
            bus.insert(0x3fc, 2, a.clone()),
            Err(BusError::Overlap(0x3fc, 2))
        );
        assert_eq!(
            bus.insert(0x3f0, 9, a.clone()),
            Err(BusError::Overlap(0x3f0, 9))
        );
        assert_eq!(
            bus.insert(0x10, 0, a.clone()),
            Err(BusError::BadRange(0x10, 0))
        );
        bus.insert(0x3f0, 8, a).unwrap();
        assert!(bus.write(0x3fb, &[7]));
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fb, &mut d));
        assert_eq!(d, [7]);
        // 0x3f0 maps the same device: offset 3 there is the byte written above.
        assert!(bus.read(0x3f3, &mut d));
        assert_eq!(d, [7]);
        assert!(bus.read(0x3f4, &mut d));
        assert_eq!(d, [0]);
        assert!(!bus.read(0x400, &mut d));
        assert_eq!(d, [0xff]);
        assert!(!bus.write(0x602, &[1]));
        assert!(bus.write(0x601, &[1]));
    }
}
