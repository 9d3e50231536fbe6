//! Fuzz the block device's request path: the input picks the queue layout
//! (addresses, size, ring indices as after a restore) and is the guest
//! memory image, so descriptors, chains and request headers are all
//! attacker-chosen.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::block::BlockBackend;
use vmm::devices::virtio::testing::memfd;
use vmm::devices::virtio::Backend;

#[path = "common.rs"]
mod common;
use common::*;

const MEM: usize = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    static DISK: OnceLock<Arc<std::fs::File>> = OnceLock::new();
    let disk = DISK.get_or_init(|| Arc::new(memfd(64 * 1024))).clone();
    let mut inp = Input(data);
    let flags = inp.u8();
    let size = 1u16 << (inp.u8() % 9);
    let (desc, avail, used) = if flags & 1 == 0 {
        (0x0, 0x1000, 0x2000)
    } else {
        (
            u64::from(inp.u32()) % MEM as u64,
            u64::from(inp.u32()) % MEM as u64,
            u64::from(inp.u32()) % MEM as u64,
        )
    };
    let (na, nu) = if flags & 2 == 0 {
        (0, 0)
    } else {
        (inp.u16(), inp.u16())
    };
    let read_only = flags & 4 != 0;
    let mem = memory(MEM, inp.rest());
    let Some(q) = queue(
        &mem,
        256,
        size,
        (desc & !0xf, avail & !1, used & !3),
        (na, nu),
    ) else {
        return;
    };
    let mut ctx = ctx(mem, vec![q], flags & 8 != 0);
    let mut blk = BlockBackend::new(disk, read_only, *b"fuzz-serial-00000000");
    blk.queue_event(&mut ctx, 0);
    blk.queue_event(&mut ctx, 0);
    ctx.flush_interrupts();
});
