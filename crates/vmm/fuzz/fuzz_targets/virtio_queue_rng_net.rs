//! Fuzz the entropy and network devices' queue handling: arbitrary chains in
//! arbitrary guest memory; for net, frames from the "network" side (a
//! SOCK_SEQPACKET pair standing in for the TAP) of input-chosen sizes.
#![no_main]

use std::io::Write;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::net::NetBackend;
use vmm::devices::virtio::rng::RngBackend;
use vmm::devices::virtio::{Backend, BACKEND_TOKEN_BASE};
use vmm_sys_util::epoll::EventSet;

#[path = "common.rs"]
mod common;
use common::*;

const MEM: usize = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let which = inp.u8();
    let size = 1u16 << (inp.u8() % 9);
    let na = inp.u16();
    let nu = inp.u16();
    let frames: Vec<usize> = (0..(inp.u8() % 8))
        .map(|_| usize::from(inp.u16()))
        .collect();
    let mem = memory(MEM, inp.rest());
    if which & 1 == 0 {
        let Some(q) = queue(&mem, 256, size, (0, 0x1000, 0x2000), (na, nu)) else {
            return;
        };
        let mut ctx = ctx(mem, vec![q], which & 2 != 0);
        let mut rng = RngBackend::new();
        rng.queue_event(&mut ctx, 0);
        ctx.flush_interrupts();
    } else {
        let (Some(rx), Some(tx)) = (
            queue(&mem, 256, size, (0, 0x1000, 0x2000), (na, nu)),
            queue(&mem, 256, size, (0x4000, 0x5000, 0x6000), (nu, na)),
        ) else {
            return;
        };
        let (tap, mut wire) = seqpacket_pair();
        let mut ctx = ctx(mem, vec![rx, tx], which & 2 != 0);
        let mut net = NetBackend::new(Arc::new(tap));
        net.start(&mut ctx).expect("start");
        for len in frames {
            let _ = wire.write(&vec![0x5a; len % 70000]);
        }
        net.queue_event(&mut ctx, 1);
        net.fd_event(&mut ctx, BACKEND_TOKEN_BASE, EventSet::IN);
        net.queue_event(&mut ctx, 0);
        ctx.flush_interrupts();
    }
});
