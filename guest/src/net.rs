//! virtio-net check: ARP for `net.peer`, ping it (both directions of the device proven),
//! then keep answering ARP and ICMP echo requests for `net.serve_ms` so the host can
//! ping the guest. No offloads are negotiated: frames carry a zeroed 12-byte
//! `virtio_net_hdr` and full checksums.

use crate::cmdline::parse_ipv4;
use crate::ctx::Ctx;
use crate::dma::{self, Buf};
use crate::fmt::{Ip, Line, Mac};
use crate::netproto::{self, Answer, Event, Iface, MAX_FRAME};
use crate::report;
use crate::time::{now_us, Deadline};
use crate::virtio::{self, Device, Error, Queue, Seg};
use core::fmt::Write;

const F_MAC: u64 = 1 << 5;
const HDR: usize = 12;
const RX_BUFS: usize = 8;
const BUF: usize = 2048;
const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xb1, 0x6b, 0x01];
const PING_ID: u16 = 0xb16b;
const ATTEMPTS: u16 = 3;
const ATTEMPT_MS: u64 = 1000;

struct Net {
    dev: Device,
    rxq: Queue,
    txq: Queue,
    rx: [Buf; RX_BUFS],
    tx: Buf,
    me: Iface,
    served_arp: u32,
    served_echo: u32,
    frames: u32,
}

impl Net {
    fn send(&mut self, frame: &[u8]) -> Result<(), Error> {
        let n = frame.len().min(MAX_FRAME);
        self.tx.write(0, &[0u8; HDR]);
        self.tx.write(HDR, &frame[..n]);
        let seg = Seg::read(&self.tx.slice(0, HDR + n));
        self.dev
            .transact(&mut self.txq, &[seg], 0, "transmit completion")?;
        Ok(())
    }

    /// Receives frames for up to `ms`, answering ARP/echo requests, until `want`
    /// accepts an event.
    fn poll(&mut self, ms: u64, mut want: impl FnMut(&Event) -> bool) -> Result<bool, Error> {
        let mut d = Deadline::after_ms(ms);
        let mut frame = [0u8; BUF];
        let mut out = [0u8; MAX_FRAME];
        loop {
            while let Some((token, len)) = self.rxq.pop()? {
                let i = (token as usize).min(RX_BUFS - 1);
                let len = (len as usize).min(BUF);
                self.frames += 1;
                let n = self.rx[i].read(0, &mut frame[..len]);
                let ev = if n > HDR {
                    netproto::handle(&frame[HDR..n], &self.me, &mut out)
                } else {
                    Event::Ignored
                };
                let old = self.rxq.avail_idx();
                self.rxq.push(&[Seg::write(&self.rx[i])], i as u64)?;
                // With EVENT_IDX the device asks for this only when it ran out of
                // receive buffers.
                self.dev.kick(&mut self.rxq, old);
                if let Event::Answered { len, kind } = ev {
                    self.send(&out[..len])?;
                    match kind {
                        Answer::Arp => self.served_arp += 1,
                        Answer::Echo => self.served_echo += 1,
                    }
                }
                if want(&ev) {
                    return Ok(true);
                }
            }
            if d.expired() {
                return Ok(false);
            }
        }
    }
}

fn setup(ctx: &Ctx<'_>, ip: [u8; 4]) -> Result<Net, Error> {
    let mut dev = virtio::find(ctx.acpi.as_ref(), virtio::ID_NET, "virtio-net")?;
    let ring = virtio::wanted_ring_features(ctx, "net.ring");
    let features = dev.init(F_MAC | ring)?;
    let mut mac = DEFAULT_MAC;
    if features & F_MAC != 0 {
        for (i, b) in mac.iter_mut().enumerate() {
            *b = dev.config_u8(i as u64);
        }
    }
    let mut rxq = dev.setup_queue(0, 16)?;
    let mut txq = dev.setup_queue(1, 16)?;
    Device::use_ring_features(features, &mut [&mut rxq, &mut txq])?;
    let tx = dma::alloc(BUF, 64).ok_or(Error::Device("out of DMA memory"))?;
    let mut rx = [tx; RX_BUFS];
    for (i, b) in rx.iter_mut().enumerate() {
        *b = dma::alloc(BUF, 64).ok_or(Error::Device("out of DMA memory"))?;
        rxq.push(&[Seg::write(b)], i as u64)?;
    }
    dev.driver_ok();
    dev.notify(0);
    Ok(Net {
        dev,
        rxq,
        txq,
        rx,
        tx,
        me: Iface { mac, ip },
        served_arp: 0,
        served_echo: 0,
        frames: 0,
    })
}

fn ping(net: &mut Net, peer: [u8; 4], d: &mut Line) -> Result<(), Error> {
    let _ = write!(
        d,
        "base={:#x} mac={} ip={} indirect={} event_idx={}",
        net.dev.base,
        Mac(&net.me.mac),
        Ip(&net.me.ip),
        u8::from(net.rxq.ring_features().0),
        u8::from(net.rxq.ring_features().1)
    );
    let mut frame = [0u8; MAX_FRAME];
    let mut peer_mac = None;
    for _ in 0..ATTEMPTS {
        let n = netproto::arp_request(&mut frame, &net.me, &peer);
        net.send(&frame[..n])?;
        let mut found = None;
        net.poll(ATTEMPT_MS, |ev| match ev {
            Event::ArpReply { ip, mac } if *ip == peer => {
                found = Some(*mac);
                true
            }
            _ => false,
        })?;
        if found.is_some() {
            peer_mac = found;
            break;
        }
    }
    let peer_mac = peer_mac.ok_or(Error::Timeout("an ARP reply from net.peer"))?;
    let _ = write!(d, " peer={} peer_mac={}", Ip(&peer), Mac(&peer_mac));
    for seq in 1..=ATTEMPTS {
        let n = netproto::echo_request(&mut frame, &net.me, &peer_mac, &peer, PING_ID, seq);
        let t0 = now_us();
        net.send(&frame[..n])?;
        let got = net.poll(ATTEMPT_MS, |ev| {
            matches!(ev, Event::EchoReply { from, id, seq: s } if *from == peer && *id == PING_ID && *s == seq)
        })?;
        if got {
            let _ = write!(d, " ping_seq={seq} rtt_us={}", now_us().saturating_sub(t0));
            return Ok(());
        }
    }
    Err(Error::Timeout("an ICMP echo reply from net.peer"))
}

/// Runs the `net` check (and `net.serve` if `net.serve_ms` is given); prints its own
/// report lines because the serving phase follows the ping result.
pub fn run(ctx: &Ctx<'_>) {
    let mut d = Line::new();
    let (ip, peer) = match (
        ctx.cmdline.get("net.ip").and_then(parse_ipv4),
        ctx.cmdline.get("net.peer").and_then(parse_ipv4),
    ) {
        (Some(ip), Some(peer)) => (ip, peer),
        _ => {
            report::result(
                "net",
                false,
                b"needs net.ip=<a.b.c.d> and net.peer=<a.b.c.d> on the command line",
            );
            return;
        }
    };
    let mut net = match setup(ctx, ip) {
        Ok(n) => n,
        Err(e) => {
            let _ = write!(d, "{e}");
            report::result("net", false, d.as_bytes());
            return;
        }
    };
    let ok = match ping(&mut net, peer, &mut d) {
        Ok(()) => true,
        Err(e) => {
            let _ = write!(d, " error: {e}");
            false
        }
    };
    report::result("net", ok, d.as_bytes());
    if let Some(ms) = ctx.cmdline.get_u64("net.serve_ms") {
        let (arp0, echo0) = (net.served_arp, net.served_echo);
        let r = net.poll(ms, |_| false);
        d.clear();
        let _ = write!(
            d,
            "ms={ms} arp_replies={} echo_replies={} frames={} rx_kicks_saved={}",
            net.served_arp - arp0,
            net.served_echo - echo0,
            net.frames,
            net.rxq.kicks_saved
        );
        if let Err(e) = &r {
            let _ = write!(d, " error: {e}");
        }
        report::result("net.serve", r.is_ok(), d.as_bytes());
    }
    net.dev.reset();
}
