//! Legacy platform devices on the port-I/O bus: the 16550 UART (COM1, using
//! `vm-superio`), the i8042 reset line, and the ACPI sleep-control,
//! sleep-status and reset registers the FADT points at.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::control::{ExitReason, VmControl};
use crate::devices::BusDevice;
use crate::layout;

/// Raises an interrupt by writing an irqfd-registered eventfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where guest serial output goes.
pub enum SerialOut {
    Stdout(io::Stdout),
    File(File),
    /// The currently connected client of the serial socket, if any. Output
    /// while nobody is connected is dropped.
    Socket(Arc<Mutex<Option<UnixStream>>>),
    /// The master side of a pseudo-terminal (non-blocking). The monitor
    /// holds the slave open too, so output waits in the terminal's buffer
    /// for a reader; once that is full, further output is dropped rather
    /// than stalling the vCPU.
    Pty(Arc<File>),
    Sink,
}

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SerialOut::Stdout(s) => s.write(buf),
            SerialOut::File(f) => f.write(buf),
            SerialOut::Socket(c) => {
                let mut g = c.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(s) = g.as_mut() {
                    if s.write_all(buf).is_err() {
                        // The client went away; keep the guest running.
                        *g = None;
                    }
                }
                Ok(buf.len())
            }
            SerialOut::Pty(m) => {
                let _ = (&**m).write(buf);
                Ok(buf.len())
            }
            SerialOut::Sink => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            SerialOut::Stdout(s) => s.flush(),
            SerialOut::File(f) => f.flush(),
            _ => Ok(()),
        }
    }
}

/// Signals (through an eventfd the event loop watches) that the guest read
/// the UART's last received byte, so more host input can go in.
pub struct InputDrained(Arc<EventFd>);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.0.write(1);
    }
}

/// Host input held back while the UART's 64-byte FIFO is full, at most.
pub const SERIAL_INPUT_BACKLOG: usize = 64 << 10;

/// COM1.
pub struct SerialDevice {
    pub serial: Serial<IrqTrigger, InputDrained, SerialOut>,
    /// Host input waiting for room in the FIFO (a paste longer than 64 bytes).
    backlog: VecDeque<u8>,
    drained: Arc<EventFd>,
}

impl SerialDevice {
    pub fn new(irq: EventFd, out: SerialOut) -> io::Result<Self> {
        let drained = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        Ok(SerialDevice {
            serial: Serial::with_events(IrqTrigger(irq), InputDrained(drained.clone()), out),
            backlog: VecDeque::new(),
            drained,
        })
    }

    /// COM1 with register state from a snapshot.
    pub fn from_state(
        irq: EventFd,
        out: SerialOut,
        state: &vm_superio::serial::SerialState,
    ) -> Result<Self, String> {
        let drained = Arc::new(
            EventFd::new(libc::EFD_NONBLOCK).map_err(|e| format!("cannot create eventfd: {e}"))?,
        );
        Serial::from_state(state, IrqTrigger(irq), InputDrained(drained.clone()), out)
            .map(|serial| SerialDevice {
                serial,
                backlog: VecDeque::new(),
                drained,
            })
            .map_err(|e| format!("serial state in snapshot: {e:?}"))
    }

    /// Queues host input for the guest: what fits goes into the FIFO now, the
    /// rest waits (up to [`SERIAL_INPUT_BACKLOG`] bytes; beyond that input is
    /// dropped, as a real UART overruns) until the guest has read the FIFO
    /// empty ([`SerialDevice::input_drained`]). Returns how many bytes were
    /// accepted.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes
            .len()
            .min(SERIAL_INPUT_BACKLOG.saturating_sub(self.backlog.len()));
        self.backlog.extend(&bytes[..n]);
        self.pump();
        n
    }

    /// The eventfd that becomes readable when the guest emptied the FIFO.
    pub fn drained_fd(&self) -> RawFd {
        self.drained.as_raw_fd()
    }

    /// Call when [`SerialDevice::drained_fd`] is readable: moves waiting
    /// input into the FIFO.
    pub fn input_drained(&mut self) {
        let _ = self.drained.read();
        self.pump();
    }

    /// Bytes waiting for room in the FIFO.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    fn pump(&mut self) {
        let room = self.serial.fifo_capacity().min(self.backlog.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.backlog.iter().take(room).copied().collect();
        if let Ok(n) = self.serial.enqueue_raw_bytes(&chunk) {
            self.backlog.drain(..n);
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset >= 8 {
            data.fill(0xff);
            return;
        }
        data[0] = self.serial.read(offset as u8);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= 8 {
            return;
        }
        // Output errors (a full disk, a closed stdout) must not stop the guest.
        let _ = self.serial.write(offset as u8, data[0]);
        if offset == 0 {
            let _ = self.serial.writer_mut().flush();
        }
    }
}

/// i8042 keyboard controller stub: only the CPU reset command (0xFE to the
/// command port) does anything.
pub struct I8042 {
    control: Arc<VmControl>,
}

impl I8042 {
    pub fn new(control: Arc<VmControl>) -> Self {
        I8042 { control }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty.
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        // Registered at 0x60 with length 5: offset 4 is the command port 0x64.
        if offset == u64::from(layout::I8042_CMD - layout::I8042_DATA)
            && data.first() == Some(&0xfe)
        {
            self.control
                .request_exit(ExitReason::Reset("i8042 reset command".into()));
        }
    }
}

/// SLP_EN in the sleep control register.
const SLP_EN: u8 = 1 << 5;

/// What a write to the sleep control register means.
pub fn sleep_control_action(value: u8) -> Option<ExitReason> {
    let slp_typ = (value >> 2) & 0x7;
    if value & SLP_EN != 0 && slp_typ == layout::S5_SLP_TYP {
        Some(ExitReason::PowerOff)
    } else {
        None
    }
}

/// ACPI sleep control (0x600) and status (0x601) registers.
pub struct AcpiSleep {
    control: Arc<VmControl>,
}

impl AcpiSleep {
    pub fn new(control: Arc<VmControl>) -> Self {
        AcpiSleep { control }
    }
}

impl BusDevice for AcpiSleep {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            if let Some(r) = data.first().and_then(|v| sleep_control_action(*v)) {
                self.control.request_exit(r);
            }
        }
    }
}

/// ACPI reset register (0xCF9).
pub struct AcpiReset {
    control: Arc<VmControl>,
}

impl AcpiReset {
    pub fn new(control: Arc<VmControl>) -> Self {
        AcpiReset { control }
    }
}

impl BusDevice for AcpiReset {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        // 0x06 (the FADT RESET_VALUE) or any value with the reset bit (bit 2).
        if data.first().is_some_and(|v| v & 0x4 != 0) {
            self.control
                .request_exit(ExitReason::Reset("ACPI reset register".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_register_decoding() {
        assert_eq!(
            sleep_control_action(SLP_EN | (5 << 2)),
            Some(ExitReason::PowerOff)
        );
        assert_eq!(sleep_control_action(5 << 2), None);
        assert_eq!(sleep_control_action(SLP_EN | (3 << 2)), None);
    }

    #[test]
    fn power_devices_stop_the_vm() {
        let c = Arc::new(VmControl::new(1).unwrap());
        let mut s = AcpiSleep::new(c.clone());
        s.write(1, &[SLP_EN | (5 << 2)]);
        assert!(!c.should_stop());
        s.write(0, &[SLP_EN | (5 << 2)]);
        assert_eq!(c.exit_reason(), Some(ExitReason::PowerOff));

        let c = Arc::new(VmControl::new(1).unwrap());
        let mut k = I8042::new(c.clone());
        k.write(0, &[0xfe]);
        assert!(!c.should_stop());
        k.write(4, &[0xfe]);
        assert!(matches!(c.exit_reason(), Some(ExitReason::Reset(_))));

        let c = Arc::new(VmControl::new(1).unwrap());
        let mut r = AcpiReset::new(c.clone());
        r.write(0, &[0x02]);
        assert!(!c.should_stop());
        r.write(0, &[0x06]);
        assert!(matches!(c.exit_reason(), Some(ExitReason::Reset(_))));
    }

    #[test]
    fn serial_output_and_interrupt() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let path = std::env::temp_dir().join(format!("bulkhead-serial-{}", std::process::id()));
        let f = File::create(&path).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), SerialOut::File(f)).unwrap();
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"hi\n");
        let _ = std::fs::remove_file(&path);
        // Enable the received-data interrupt (IER bit 0), then feed input.
        dev.write(1, &[1]);
        assert_eq!(dev.enqueue_input(b"ab"), 2);
        assert!(irq.read().unwrap() >= 1);
        let mut d = [0u8];
        dev.read(0, &mut d);
        assert_eq!(d, [b'a']);
    }

    #[test]
    fn serial_input_longer_than_the_fifo_waits_for_the_guest() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq, SerialOut::Sink).unwrap();
        let paste: Vec<u8> = (0..200u32).map(|i| b'a' + (i % 26) as u8).collect();
        assert_eq!(dev.enqueue_input(&paste), 200);
        assert_eq!(dev.backlog(), 200 - 64);
        // The guest reads until LSR says no data; each time the FIFO runs dry
        // the event loop is told and refills it.
        let mut got = Vec::new();
        let drained = {
            let fd = dev.drained_fd();
            move || {
                let mut v = 0u64;
                // SAFETY: reads 8 bytes from the device's own non-blocking eventfd.
                unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) == 8 }
            }
        };
        loop {
            let mut lsr = [0u8];
            dev.read(5, &mut lsr);
            if lsr[0] & 1 == 0 {
                if dev.backlog() == 0 {
                    break;
                }
                assert!(drained(), "no drained event with input waiting");
                dev.input_drained();
                continue;
            }
            let mut b = [0u8];
            dev.read(0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, paste);
        // Beyond the backlog limit input is dropped, and said so.
        let big = vec![b'x'; SERIAL_INPUT_BACKLOG + 100];
        assert_eq!(dev.enqueue_input(&big), SERIAL_INPUT_BACKLOG);
    }
}
