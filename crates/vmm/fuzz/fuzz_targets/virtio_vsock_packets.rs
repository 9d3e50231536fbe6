//! Fuzz the vsock device's packet handling: the input is a sequence of
//! packets the guest puts on the tx queue (headers and payloads entirely
//! attacker-chosen, optionally split over descriptors or with the wrong
//! direction), interleaved with a host client doing the `CONNECT` handshake
//! and sending data, and time passing (every vsock deadline expires). Host
//! services exist on ports 1 (accepting) and 2
//! (never accepting, so its backlog fills up).
#![no_main]

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vm_memory::Bytes;
use vmm::devices::virtio::vsock::VsockBackend;
use vmm::devices::virtio::{Backend, BACKEND_TOKEN_BASE};
use vmm_sys_util::epoll::EventSet;

#[path = "common.rs"]
mod common;
use common::*;

const MEM: usize = 1 << 20;
const DATA: u64 = 0x1_0000;
const RX_BUFS: u64 = 0x8_0000;
const CID: u64 = 3;

struct Host {
    uds: PathBuf,
    listener: Arc<UnixListener>,
    _stuck: UnixListener,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vmm-fuzz-vsock-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let uds = dir.join("v.sock");
        for p in ["v.sock", "v.sock_1", "v.sock_2"] {
            let _ = std::fs::remove_file(dir.join(p));
        }
        let listener = UnixListener::bind(&uds).expect("bind uds");
        listener.set_nonblocking(true).expect("nonblocking");
        // Port 1: a service that accepts and keeps a bounded set of streams.
        let svc = UnixListener::bind(dir.join("v.sock_1")).expect("bind service");
        std::thread::spawn(move || {
            let mut keep = std::collections::VecDeque::new();
            for s in svc.incoming().flatten() {
                keep.push_back(s);
                if keep.len() > 64 {
                    keep.pop_front();
                }
            }
        });
        let stuck = UnixListener::bind(dir.join("v.sock_2")).expect("bind stuck service");
        Host {
            uds,
            listener: Arc::new(listener),
            _stuck: stuck,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let host = host();
    let mut inp = Input(data);
    let mem = memory(MEM, &[]);
    let mut rxq = RawQueue::new(0x0, 64);
    let mut txq = RawQueue::new(0x2000, 64);
    let evq = RawQueue::new(0x4000, 64);
    // Rx buffers: header descriptor + payload descriptor, like Linux.
    let first = inp.u8();
    let nrx = first % 32;
    // Bit 5: the driver negotiated EVENT_IDX.
    let event_idx = first & 32 != 0;
    for i in 0..u16::from(nrx) {
        let base = RX_BUFS + 0x4000 * u64::from(i % 32);
        rxq.desc(&mem, 2 * i, base, 44, 2 | 1, 2 * i + 1);
        rxq.desc(
            &mem,
            2 * i + 1,
            base + 64,
            u32::from(inp.u16()) % 0x3fc0,
            2,
            0,
        );
        rxq.publish(&mem, 2 * i);
    }
    let queues = vec![
        rxq.queue(&mem, 256),
        txq.queue(&mem, 256),
        evq.queue(&mem, 256),
    ];
    let mut ctx = ctx(mem.clone(), queues, event_idx);
    let mut dev = VsockBackend::new(CID, host.uds.clone(), host.listener.clone());
    dev.start(&mut ctx).expect("start");
    let mut client: Option<UnixStream> = None;
    let mut next = DATA;
    let mut desc = 0u16;
    let mut handshake_token = BACKEND_TOKEN_BASE + 1;
    while !inp.is_empty() && desc < 60 {
        match inp.u8() % 4 {
            // A guest packet: header fields from the input, then payload.
            0 | 1 => {
                let flags = inp.u8();
                let mut pkt = Vec::with_capacity(64);
                pkt.extend_from_slice(
                    &(if flags & 1 == 0 { CID } else { inp.u64() }).to_le_bytes(),
                );
                pkt.extend_from_slice(
                    &(if flags & 2 == 0 { 2u64 } else { inp.u64() }).to_le_bytes(),
                );
                pkt.extend_from_slice(&u32::from(inp.u8()).to_le_bytes()); // src_port
                pkt.extend_from_slice(&u32::from(inp.u8() % 3).to_le_bytes()); // dst_port
                let plen = usize::from(inp.u8());
                let len = if flags & 4 == 0 {
                    plen as u32
                } else {
                    inp.u32()
                };
                pkt.extend_from_slice(&len.to_le_bytes());
                pkt.extend_from_slice(
                    &(if flags & 8 == 0 { 1u16 } else { inp.u16() }).to_le_bytes(),
                );
                pkt.extend_from_slice(&u16::from(inp.u8() % 9).to_le_bytes()); // op
                pkt.extend_from_slice(&u32::from(inp.u8() & 3).to_le_bytes()); // flags
                pkt.extend_from_slice(&inp.u32().to_le_bytes()); // buf_alloc
                pkt.extend_from_slice(&inp.u32().to_le_bytes()); // fwd_cnt
                pkt.extend_from_slice(inp.bytes(plen));
                let _ = mem.write_slice(&pkt, vm_memory::GuestAddress(next));
                let wrong_dir = if flags & 0x10 != 0 { 2 } else { 0 };
                if flags & 0x20 != 0 && pkt.len() > 1 {
                    let cut = (usize::from(inp.u8()) % pkt.len()) as u32;
                    txq.desc(&mem, desc, next, cut, 1 | wrong_dir, desc + 1);
                    txq.desc(
                        &mem,
                        desc + 1,
                        next + u64::from(cut),
                        pkt.len() as u32 - cut,
                        0,
                        0,
                    );
                    txq.publish(&mem, desc);
                    desc += 2;
                } else {
                    txq.desc(&mem, desc, next, pkt.len() as u32, wrong_dir, 0);
                    txq.publish(&mem, desc);
                    desc += 1;
                }
                next += 0x200 + pkt.len() as u64;
                dev.queue_event(&mut ctx, 1);
            }
            // The host client connects and asks for a guest port.
            2 => {
                if client.is_none() {
                    if let Ok(mut c) = UnixStream::connect(&host.uds) {
                        c.set_nonblocking(true).ok();
                        let _ = c.write_all(format!("CONNECT {}\n", inp.u8()).as_bytes());
                        client = Some(c);
                        dev.fd_event(&mut ctx, BACKEND_TOKEN_BASE, EventSet::IN);
                        dev.fd_event(&mut ctx, handshake_token, EventSet::IN);
                        handshake_token += 1;
                    }
                }
            }
            // The host client sends data or hangs up.
            _ => {
                let n = usize::from(inp.u8());
                if n == 1 {
                    // Time passes: every handshake and guest-reply deadline expires.
                    let later = Instant::now() + Duration::from_secs(3600);
                    if dev.next_deadline().is_some_and(|d| d <= later) {
                        dev.timer(&mut ctx, later);
                    }
                } else if let Some(c) = client.as_mut() {
                    if n == 0 {
                        client = None;
                    } else {
                        let _ = c.write_all(inp.bytes(n));
                    }
                }
                dev.fd_event(&mut ctx, handshake_token - 1, EventSet::IN | EventSet::OUT);
            }
        }
        dev.queue_event(&mut ctx, 0);
    }
    dev.queue_event(&mut ctx, 2);
    ctx.flush_interrupts();
});
