//! Fuzz the virtio-mmio register file: a sequence of reads and writes of
//! any width at any offset of the slot (registers and config space), with
//! an optional correct driver handshake in between so queue notifications
//! and activation (a real worker thread) happen too.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::testing::{driver_init, TestQueue};
use vmm::devices::virtio::{Block, MmioTransport, Rng, VirtioDevice};
use vmm::devices::BusDevice;

#[path = "common.rs"]
mod common;
use common::*;

const MEM: usize = 256 * 1024;

fn disk_path() -> &'static std::path::Path {
    static P: OnceLock<std::path::PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("vmm-fuzz-mmio-{}.img", std::process::id()));
        std::fs::write(&p, vec![0u8; 64 * 1024]).expect("disk image");
        p
    })
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let kind = inp.u8();
    let image_len = usize::from(inp.u16() % 0x8000);
    let image = inp.bytes(image_len);
    let mem = memory(MEM, image);
    let dev: Box<dyn VirtioDevice> = if kind & 1 == 0 {
        Box::new(Rng::new())
    } else {
        match Block::new(disk_path(), kind & 2 != 0) {
            Ok(b) => Box::new(b),
            Err(_) => return,
        }
    };
    let nq = dev.queue_max_sizes().len();
    let mut t = MmioTransport::new(dev, mem.clone()).expect("transport");
    let mut ops = 0;
    while !inp.is_empty() && ops < 256 {
        ops += 1;
        let op = inp.u8();
        let width = [1usize, 2, 4, 8][usize::from(op >> 1) & 3];
        let offset = u64::from(inp.u16()) % 0x1000;
        if op >= 0xf0 {
            // A correct driver brings the device up with rings at 0x1000...
            let queues: Vec<TestQueue> = (0..nq)
                .map(|i| TestQueue::new(&mem, 0x1000 + 0x4000 * i as u64, 16))
                .collect();
            driver_init(&mut t, u64::from(inp.u32()), &queues);
        } else if op & 1 == 0 {
            let mut buf = [0u8; 8];
            t.read(offset, &mut buf[..width]);
        } else {
            let v = inp.u64().to_le_bytes();
            t.write(offset, &v[..width]);
        }
    }
    let _ = t.snapshot();
    drop(t);
});
