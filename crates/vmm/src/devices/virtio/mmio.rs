//! The virtio-mmio (version 2) transport: the register file of one device
//! slot (virtio 1.2 §4.2.2), the device status state machine, feature
//! negotiation, queue configuration with validation, activation on
//! DRIVER_OK, reset, pause/resume and snapshot/restore.
//!
//! Any protocol violation by the driver sets DEVICE_NEEDS_RESET and stops the
//! device until the driver writes 0 to Status; nothing here panics on guest
//! input.

use serde_json::{json, Value};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{
    Activation, Error, Interrupt, VirtioDevice, WorkerHandle, RING_FEATURES, VIRTIO_F_VERSION_1,
};
use crate::devices::BusDevice;

pub const MMIO_MAGIC: u32 = 0x7472_6976;
pub const MMIO_VERSION: u32 = 2;
/// "BLKH", little-endian.
pub const VENDOR_ID: u32 = 0x484b_4c42;

// Register offsets.
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;
/// Size of the MMIO slot.
pub const MMIO_SIZE: u64 = 0x1000;

// Device status bits (virtio 1.2 §2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

/// Driver-visible configuration of one queue, before activation.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct QueueRegs {
    max: u16,
    size: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
    #[serde(default)]
    next_avail: u16,
    #[serde(default)]
    next_used: u16,
}

fn set_low(v: &mut u64, low: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(low);
}

fn set_high(v: &mut u64, high: u32) {
    *v = (*v & 0xffff_ffff) | (u64::from(high) << 32);
}

/// One virtio-mmio device slot.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    queue_evts: Vec<EventFd>,
    interrupt: Interrupt,
    /// Status bits set by the driver (NEEDS_RESET lives in `interrupt`).
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueRegs>,
    config_generation: u32,
    worker: Option<WorkerHandle>,
    /// Device-specific state to hand to the next activation (restore).
    restored_device: Value,
    /// Paused by the monitor: a worker started meanwhile starts paused.
    paused: bool,
}

impl MmioTransport {
    /// Wrap `device`; creates one notification EventFd per queue and the
    /// interrupt EventFd.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap) -> Result<Self, Error> {
        let queues: Vec<QueueRegs> = device
            .queue_max_sizes()
            .iter()
            .map(|&max| QueueRegs {
                max,
                size: max,
                ..Default::default()
            })
            .collect();
        let queue_evts = queues
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            queue_evts,
            interrupt: Interrupt::new()?,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            config_generation: 0,
            worker: None,
            restored_device: Value::Null,
            paused: false,
        })
    }

    /// One EventFd per queue, to be registered as ioeventfds on
    /// `base + 0x50` with datamatch = queue index.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The EventFd to register as an irqfd on the slot's GSI.
    pub fn interrupt_event(&self) -> &EventFd {
        self.interrupt.event()
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// Whether the device is activated (DRIVER_OK and worker running).
    pub fn is_activated(&self) -> bool {
        self.worker.is_some()
    }

    /// Why the device set DEVICE_NEEDS_RESET, if it did.
    pub fn device_error(&self) -> Option<String> {
        if self.interrupt.needs_reset() {
            self.interrupt.reason()
        } else {
            None
        }
    }

    /// Current Status register value.
    pub fn status(&self) -> u32 {
        let mut s = self.status;
        if self.interrupt.needs_reset() {
            s |= STATUS_NEEDS_RESET;
        }
        s
    }

    /// Stop queue processing; returns when the worker is idle.
    pub fn pause(&mut self) {
        self.paused = true;
        if let Some(w) = &self.worker {
            w.pause();
        }
    }

    pub fn resume(&mut self) {
        self.paused = false;
        if let Some(w) = &self.worker {
            w.resume();
        }
    }

    fn violation(&mut self, reason: &str) {
        self.interrupt.set_needs_reset(reason);
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = QueueRegs {
                max: q.max,
                size: q.max,
                ..Default::default()
            };
        }
        self.interrupt.clear();
        self.restored_device = Value::Null;
        // Drop stale notifications so a new activation starts clean.
        for e in &self.queue_evts {
            let _ = e.read();
        }
    }

    /// What the driver may accept: the device's features and the ring's.
    fn offered_features(&self) -> u64 {
        self.device.features() | RING_FEATURES
    }

    fn broken(&self) -> bool {
        self.interrupt.needs_reset() || self.status & STATUS_FAILED != 0
    }

    /// Build a validated `Queue` from the driver's configuration.
    fn build_queue(&self, regs: &QueueRegs) -> Result<Queue, String> {
        let mut q = Queue::new(regs.max).map_err(|e| format!("bad queue maximum: {e}"))?;
        q.try_set_size(regs.size).map_err(|_| {
            format!(
                "queue size {} is not a power of two ≤ {}",
                regs.size, regs.max
            )
        })?;
        q.try_set_desc_table_address(vm_memory::GuestAddress(regs.desc))
            .map_err(|_| format!("descriptor table {:#x} is not 16-byte aligned", regs.desc))?;
        q.try_set_avail_ring_address(vm_memory::GuestAddress(regs.driver))
            .map_err(|_| format!("driver area {:#x} is not 2-byte aligned", regs.driver))?;
        q.try_set_used_ring_address(vm_memory::GuestAddress(regs.device))
            .map_err(|_| format!("device area {:#x} is not 4-byte aligned", regs.device))?;
        if regs.driver == 0 {
            // virtio-queue treats a driver area at 0 as "not configured".
            return Err("driver area at guest address 0 is not supported".to_string());
        }
        q.set_ready(true);
        if !q.is_valid(&self.mem) {
            return Err("queue rings are not inside guest memory".to_string());
        }
        q.set_next_avail(regs.next_avail);
        q.set_next_used(regs.next_used);
        Ok(q)
    }

    fn activate(&mut self) -> Result<(), String> {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, regs) in self.queues.iter().enumerate() {
            if !regs.ready {
                return Err(format!("queue {i} is not ready at DRIVER_OK"));
            }
            queues.push(
                self.build_queue(regs)
                    .map_err(|e| format!("queue {i}: {e}"))?,
            );
        }
        let queue_evts = self
            .queue_evts
            .iter()
            .map(|e| e.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot duplicate queue eventfd: {e}"))?;
        let act = Activation {
            mem: self.mem.clone(),
            queues,
            queue_evts,
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
            restored: std::mem::take(&mut self.restored_device),
        };
        let worker = self.device.activate(act).map_err(|e| e.to_string())?;
        if self.paused {
            // DRIVER_OK raced with a pause of the VM: keep the new worker idle.
            worker.pause();
        }
        self.worker = Some(worker);
        Ok(())
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        if self.broken() {
            return;
        }
        if v & STATUS_FAILED != 0 {
            // The driver gave up on the device.
            self.status |= STATUS_FAILED;
            if let Some(w) = self.worker.take() {
                w.stop();
            }
            return;
        }
        let v = v & (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        if v & self.status != self.status {
            self.violation("driver cleared device status bits without a reset");
            return;
        }
        let new = v & !self.status;
        let has = |bit: u32, s: u32| s & bit != 0;
        if has(STATUS_DRIVER, new) && !has(STATUS_ACKNOWLEDGE, v) {
            self.violation("DRIVER set before ACKNOWLEDGE");
            return;
        }
        if has(STATUS_FEATURES_OK, new) {
            if !has(STATUS_DRIVER, v) {
                self.violation("FEATURES_OK set before DRIVER");
                return;
            }
            let offered = self.offered_features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & (1u64 << VIRTIO_F_VERSION_1) != 0;
            // On refusal FEATURES_OK stays clear; the driver reads it back.
            self.status |= v & !(STATUS_FEATURES_OK | STATUS_DRIVER_OK);
            if !ok {
                return;
            }
            self.status |= STATUS_FEATURES_OK;
        } else {
            self.status |= v & !STATUS_DRIVER_OK;
        }
        if has(STATUS_DRIVER_OK, new) {
            if !has(STATUS_FEATURES_OK, self.status) {
                self.violation("DRIVER_OK set before FEATURES_OK");
                return;
            }
            match self.activate() {
                Ok(()) => self.status |= STATUS_DRIVER_OK,
                Err(e) => self.violation(&e),
            }
        }
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK.
    fn queue_config_allowed(&mut self) -> bool {
        if self.broken() {
            return false;
        }
        if self.status & STATUS_FEATURES_OK == 0 || self.status & STATUS_DRIVER_OK != 0 {
            self.violation("queue configured outside FEATURES_OK..DRIVER_OK");
            return false;
        }
        true
    }

    fn selected_queue(&mut self) -> Option<&mut QueueRegs> {
        let sel = self.queue_sel as usize;
        self.queues.get_mut(sel)
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) {
        if self.queue_sel as usize >= self.queues.len() {
            // No such queue: QueueNumMax reads 0, writes are ignored.
            return;
        }
        if offset == REG_QUEUE_READY && v == 0 && self.status & STATUS_DRIVER_OK == 0 {
            if let Some(q) = self.selected_queue() {
                q.ready = false;
            }
            return;
        }
        if !self.queue_config_allowed() {
            return;
        }
        let Some(q) = self.selected_queue() else {
            return;
        };
        if q.ready && offset != REG_QUEUE_READY {
            self.violation("queue configuration changed while the queue is ready");
            return;
        }
        match offset {
            REG_QUEUE_NUM => {
                let max = q.max;
                if v == 0 || v > u32::from(max) || !v.is_power_of_two() {
                    self.violation(&format!(
                        "queue size {v} is not a power of two between 1 and {max}"
                    ));
                    return;
                }
                q.size = v as u16;
            }
            REG_QUEUE_READY => {
                if v != 1 {
                    self.violation(&format!("invalid QueueReady value {v}"));
                    return;
                }
                let regs = q.clone();
                match self.build_queue(&regs) {
                    Ok(_) => {
                        if let Some(q) = self.selected_queue() {
                            q.ready = true;
                        }
                    }
                    Err(e) => {
                        let sel = self.queue_sel;
                        self.violation(&format!("queue {sel}: {e}"));
                    }
                }
            }
            REG_QUEUE_DESC_LOW => set_low(&mut q.desc, v),
            REG_QUEUE_DESC_HIGH => set_high(&mut q.desc, v),
            REG_QUEUE_DRIVER_LOW => set_low(&mut q.driver, v),
            REG_QUEUE_DRIVER_HIGH => set_high(&mut q.driver, v),
            REG_QUEUE_DEVICE_LOW => set_low(&mut q.device, v),
            REG_QUEUE_DEVICE_HIGH => set_high(&mut q.device, v),
            _ => {}
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let sel_queue = self.queues.get(self.queue_sel as usize);
        match offset {
            REG_MAGIC => MMIO_MAGIC,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => sel_queue.map(|q| u32::from(q.max)).unwrap_or(0),
            REG_QUEUE_READY => sel_queue.map(|q| u32::from(q.ready)).unwrap_or(0),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status(),
            // No shared memory regions: length reads as "does not exist".
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES => {
                if self.status & STATUS_FEATURES_OK != 0 || self.broken() {
                    // Features are frozen after FEATURES_OK.
                    return;
                }
                match self.driver_features_sel {
                    0 => set_low(&mut self.driver_features, v),
                    1 => set_high(&mut self.driver_features, v),
                    // Bits the device never offers: refused at FEATURES_OK.
                    _ if v != 0 => self.driver_features |= 1 << 63,
                    _ => {}
                }
            }
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM
            | REG_QUEUE_READY
            | REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, v),
            REG_QUEUE_NOTIFY => {
                if let Some(e) = self.queue_evts.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.write_status(v),
            _ => {}
        }
    }

    /// Capture transport, queue and device state. Pause first for a
    /// consistent picture.
    pub fn snapshot(&self) -> Value {
        let mut queues = self.queues.clone();
        let mut device = Value::Null;
        if let Some(w) = &self.worker {
            let s = w.snapshot();
            if let Some(qs) = s.get("queues").and_then(Value::as_array) {
                for (regs, q) in queues.iter_mut().zip(qs) {
                    let get = |k: &str| q.get(k).and_then(Value::as_u64).unwrap_or(0) as u16;
                    regs.next_avail = get("next_avail");
                    regs.next_used = get("next_used");
                }
            }
            device = s.get("device").cloned().unwrap_or(Value::Null);
        }
        json!({
            "device_type": self.device.device_type(),
            "status": self.status,
            "needs_reset": self.interrupt.needs_reset(),
            "device_features_sel": self.device_features_sel,
            "driver_features_sel": self.driver_features_sel,
            "driver_features": self.driver_features,
            "queue_sel": self.queue_sel,
            "interrupt_status": self.interrupt.status(),
            "config_generation": self.config_generation,
            "queues": queues,
            "device": device,
        })
    }

    /// Re-apply a snapshot taken with `snapshot` to this (fresh) transport;
    /// re-activates the device if the snapshot had DRIVER_OK.
    pub fn restore(&mut self, v: &Value) -> Result<(), Error> {
        let bad = |m: &str| Error::Snapshot(m.to_string());
        let u64f = |k: &str| v.get(k).and_then(Value::as_u64).ok_or_else(|| bad(k));
        let u32f = |k: &str| u64f(k).and_then(|x| u32::try_from(x).map_err(|_| bad(k)));
        if u32f("device_type")? != self.device.device_type() {
            return Err(bad("device type differs"));
        }
        let queues: Vec<QueueRegs> =
            serde_json::from_value(v.get("queues").cloned().ok_or_else(|| bad("queues"))?)
                .map_err(|e| Error::Snapshot(format!("queues: {e}")))?;
        if queues.len() != self.queues.len()
            || queues.iter().zip(&self.queues).any(|(a, b)| a.max != b.max)
        {
            return Err(bad("queue layout differs"));
        }
        self.reset();
        self.status = u32f("status")?;
        self.device_features_sel = u32f("device_features_sel")?;
        self.driver_features_sel = u32f("driver_features_sel")?;
        self.driver_features = u64f("driver_features")?;
        self.queue_sel = u32f("queue_sel")?;
        self.config_generation = u32f("config_generation")?;
        self.queues = queues;
        self.restored_device = v.get("device").cloned().unwrap_or(Value::Null);
        let int_status = u32f("interrupt_status")?;
        if v.get("needs_reset").and_then(Value::as_bool) == Some(true) {
            self.interrupt
                .set_needs_reset("restored in DEVICE_NEEDS_RESET state");
            return Ok(());
        }
        if self.status & STATUS_DRIVER_OK != 0 {
            self.activate().map_err(Error::Snapshot)?;
        }
        if int_status != 0 {
            // Re-deliver the interrupt the guest had not acknowledged.
            self.interrupt.raise(int_status);
        }
        Ok(())
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() == 4 && offset & 3 == 0 {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        } else {
            // Registers are 32 bits wide; other accesses read as zero.
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            if !self.broken() {
                self.device.write_config(offset - CONFIG_SPACE, data);
            }
            return;
        }
        if let (Ok(bytes), true) = (<[u8; 4]>::try_from(data), offset & 3 == 0) {
            self.write_reg(offset, u32::from_le_bytes(bytes));
        }
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }
}
