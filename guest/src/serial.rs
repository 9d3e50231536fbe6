//! COM1 16550 UART at port 0x3F8, polled output only. Every port access is a VM exit,
//! so the transmitter status is checked once per 16-byte FIFO load, not once per byte.

use crate::arch::{inb, outb};

const COM1: u16 = 0x3f8;
const THR: u16 = 0;
const IER: u16 = 1;
const FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const LSR_THRE: u8 = 1 << 5;
const FIFO_LEN: usize = 16;
/// How many times to look at LSR before writing anyway (a UART that never reports an
/// empty transmitter must not hang the guest).
const THRE_SPINS: u32 = 100_000;

/// Programs 115200 8N1, FIFOs on, interrupts off.
pub fn init() {
    outb(COM1 + IER, 0x00);
    outb(COM1 + LCR, 0x80); // DLAB: divisor latch follows
    outb(COM1 + THR, 0x01); // divisor low: 115200 baud
    outb(COM1 + IER, 0x00); // divisor high
    outb(COM1 + LCR, 0x03); // 8N1, DLAB off
    outb(COM1 + FCR, 0x07); // FIFO on, both cleared
    outb(COM1 + MCR, 0x03); // DTR, RTS
}

/// Writes bytes, waiting for an empty transmit FIFO before each 16-byte chunk.
pub fn write(bytes: &[u8]) {
    for chunk in bytes.chunks(FIFO_LEN) {
        let mut spins = 0;
        while inb(COM1 + LSR) & LSR_THRE == 0 && spins < THRE_SPINS {
            spins += 1;
            core::hint::spin_loop();
        }
        for &b in chunk {
            outb(COM1 + THR, b);
        }
    }
}
