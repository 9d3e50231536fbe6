//! virtio-vsock check (stream sockets, virtio 1.2 §5.10). Reads the guest CID from the
//! device configuration; connects to host CID 2 port `vsock.port`, sends
//! `hello from guest\n`, prints the reply; listens on port `vsock.listen`, accepts the
//! host's connection, reads one line and echoes it back in upper case. A connection
//! request for the listening port is accepted whenever it arrives, so the host may
//! connect before the guest reaches that phase.

use crate::ctx::Ctx;
use crate::dma::{self, Buf};
use crate::fmt::Line;
use crate::report;
use crate::time::Deadline;
use crate::virtio::{self, Device, Error, Queue, Seg};
use core::fmt::Write;

/// Size of the packet header.
pub const HDR: usize = 44;
const RX_BUFS: usize = 8;
const RX_DATA: usize = 2048;
const BUF_ALLOC: u32 = 64 * 1024;
const HOST_CID: u64 = 2;
const TYPE_STREAM: u16 = 1;
const LOCAL_PORT: u32 = 49152;
const TIMEOUT_MS: u64 = 5000;
const ACCEPT_MS: u64 = 20000;

/// Packet operations.
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// A vsock packet header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub ty: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    /// Serializes to the little-endian wire layout.
    pub fn to_bytes(&self) -> [u8; HDR] {
        let mut b = [0u8; HDR];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.ty.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Parses the wire layout.
    pub fn from_bytes(b: &[u8; HDR]) -> Hdr {
        use crate::mem::{le16, le32, le64};
        Hdr {
            src_cid: le64(&b[0..]),
            dst_cid: le64(&b[8..]),
            src_port: le32(&b[16..]),
            dst_port: le32(&b[20..]),
            len: le32(&b[24..]),
            ty: le16(&b[28..]),
            op: le16(&b[30..]),
            flags: le32(&b[32..]),
            buf_alloc: le32(&b[36..]),
            fwd_cnt: le32(&b[40..]),
        }
    }
}

/// One stream connection.
#[derive(Default)]
struct Conn {
    active: bool,
    local: u32,
    peer: u32,
    established: bool,
    reset: bool,
    peer_shutdown: bool,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    fwd_cnt: u32,
    data: Line,
}

impl Conn {
    fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    fn line(&self) -> Option<&[u8]> {
        let b = self.data.as_bytes();
        b.iter().position(|&c| c == b'\n').map(|i| &b[..i])
    }
}

struct Vsock {
    dev: Device,
    cid: u64,
    rxq: Queue,
    txq: Queue,
    rx_hdr: [Buf; RX_BUFS],
    rx_data: [Buf; RX_BUFS],
    tx_hdr: Buf,
    tx_data: Buf,
    out: Conn,
    inn: Conn,
    listen: Option<u32>,
}

impl Vsock {
    fn send(&mut self, h: Hdr, data: &[u8]) -> Result<(), Error> {
        self.tx_hdr.write(0, &h.to_bytes());
        let n = data.len().min(self.tx_data.len);
        if n == 0 {
            self.dev.transact(
                &mut self.txq,
                &[Seg::read(&self.tx_hdr)],
                0,
                "vsock transmit",
            )?;
        } else {
            self.tx_data.write(0, &data[..n]);
            let segs = [
                Seg::read(&self.tx_hdr),
                Seg::read(&self.tx_data.slice(0, n)),
            ];
            self.dev
                .transact(&mut self.txq, &segs, 0, "vsock transmit")?;
        }
        Ok(())
    }

    fn hdr(&self, c: &Conn, op: u16, len: u32, flags: u32) -> Hdr {
        Hdr {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port: c.local,
            dst_port: c.peer,
            len,
            ty: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: c.fwd_cnt,
        }
    }

    fn conn(&mut self, inbound: bool) -> &mut Conn {
        if inbound {
            &mut self.inn
        } else {
            &mut self.out
        }
    }

    fn send_ctl(&mut self, inbound: bool, op: u16, flags: u32) -> Result<(), Error> {
        let c = if inbound { &self.inn } else { &self.out };
        let h = self.hdr(c, op, 0, flags);
        self.send(h, &[])
    }

    /// Sends `data` on a connection, waiting for credit if the peer has none.
    fn write(&mut self, inbound: bool, data: &[u8]) -> Result<(), Error> {
        let len = data.len() as u32;
        if self.conn(inbound).credit() < len {
            self.send_ctl(inbound, op::CREDIT_REQUEST, 0)?;
            let got = self.poll(TIMEOUT_MS, |v| {
                let c = if inbound { &v.inn } else { &v.out };
                c.credit() >= len || c.reset
            })?;
            if !got || self.conn(inbound).reset {
                return Err(Error::Device("peer gives no credit to send"));
            }
        }
        let c = if inbound { &self.inn } else { &self.out };
        let h = self.hdr(c, op::RW, len, 0);
        self.send(h, data)?;
        let c = self.conn(inbound);
        c.tx_cnt = c.tx_cnt.wrapping_add(len);
        Ok(())
    }

    /// Handles one received packet.
    fn dispatch(&mut self, h: Hdr, data: &[u8]) -> Result<(), Error> {
        if h.dst_cid != self.cid || h.ty != TYPE_STREAM {
            return Ok(());
        }
        let inbound =
            if self.out.active && h.src_port == self.out.peer && h.dst_port == self.out.local {
                false
            } else if self.inn.active && h.src_port == self.inn.peer && h.dst_port == self.inn.local
            {
                true
            } else {
                if h.op == op::REQUEST && Some(h.dst_port) == self.listen && !self.inn.active {
                    self.inn = Conn {
                        active: true,
                        local: h.dst_port,
                        peer: h.src_port,
                        established: true,
                        peer_buf_alloc: h.buf_alloc,
                        peer_fwd_cnt: h.fwd_cnt,
                        ..Conn::default()
                    };
                    return self.send_ctl(true, op::RESPONSE, 0);
                }
                if h.op != op::RST {
                    // Not a connection of ours: refuse it.
                    let rst = Hdr {
                        src_cid: self.cid,
                        dst_cid: h.src_cid,
                        src_port: h.dst_port,
                        dst_port: h.src_port,
                        ty: TYPE_STREAM,
                        op: op::RST,
                        buf_alloc: BUF_ALLOC,
                        ..Hdr::default()
                    };
                    return self.send(rst, &[]);
                }
                return Ok(());
            };
        let c = self.conn(inbound);
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        match h.op {
            op::RESPONSE => c.established = true,
            op::RST => c.reset = true,
            op::SHUTDOWN => c.peer_shutdown = true,
            op::RW => {
                for &b in data {
                    c.data.push_byte(b);
                }
                c.fwd_cnt = c.fwd_cnt.wrapping_add(data.len() as u32);
            }
            op::CREDIT_REQUEST => return self.send_ctl(inbound, op::CREDIT_UPDATE, 0),
            _ => {}
        }
        Ok(())
    }

    /// Processes received packets for up to `ms` until `done` says stop.
    fn poll(&mut self, ms: u64, done: impl Fn(&Vsock) -> bool) -> Result<bool, Error> {
        let mut d = Deadline::after_ms(ms);
        let mut data = [0u8; RX_DATA];
        loop {
            if done(self) {
                return Ok(true);
            }
            if let Some((token, written)) = self.rxq.pop()? {
                let i = (token as usize).min(RX_BUFS - 1);
                let mut hb = [0u8; HDR];
                self.rx_hdr[i].read(0, &mut hb);
                let h = Hdr::from_bytes(&hb);
                let n = (h.len as usize)
                    .min((written as usize).saturating_sub(HDR))
                    .min(RX_DATA);
                self.rx_data[i].read(0, &mut data[..n]);
                let segs = [Seg::write(&self.rx_hdr[i]), Seg::write(&self.rx_data[i])];
                let old = self.rxq.avail_idx();
                self.rxq.push(&segs, i as u64)?;
                self.dev.kick(&mut self.rxq, old);
                self.dispatch(h, &data[..n])?;
                continue;
            }
            if d.expired() {
                return Ok(done(self));
            }
        }
    }
}

fn setup(ctx: &Ctx<'_>, listen: Option<u32>) -> Result<Vsock, Error> {
    let mut dev = virtio::find(ctx.acpi.as_ref(), virtio::ID_VSOCK, "virtio-vsock")?;
    let ring = virtio::wanted_ring_features(ctx, "vsock.ring");
    let features = dev.init(ring)?;
    let cid = dev.config_u64(0);
    let mut rxq = dev.setup_queue(0, 16)?;
    let mut txq = dev.setup_queue(1, 4)?;
    let mut evq = dev.setup_queue(2, 2)?;
    Device::use_ring_features(features, &mut [&mut rxq, &mut txq, &mut evq])?;
    let oom = Error::Device("out of DMA memory");
    let tx_hdr = dma::alloc(HDR, 8).ok_or(oom)?;
    let tx_data = dma::alloc(RX_DATA, 64).ok_or(oom)?;
    let ev = dma::alloc(8, 8).ok_or(oom)?;
    evq.push(&[Seg::write(&ev)], 0)?;
    let mut rx_hdr = [tx_hdr; RX_BUFS];
    let mut rx_data = [tx_data; RX_BUFS];
    for i in 0..RX_BUFS {
        rx_hdr[i] = dma::alloc(HDR, 8).ok_or(oom)?;
        rx_data[i] = dma::alloc(RX_DATA, 64).ok_or(oom)?;
        rxq.push(&[Seg::write(&rx_hdr[i]), Seg::write(&rx_data[i])], i as u64)?;
    }
    dev.driver_ok();
    dev.notify(0);
    dev.notify(2);
    Ok(Vsock {
        dev,
        cid,
        rxq,
        txq,
        rx_hdr,
        rx_data,
        tx_hdr,
        tx_data,
        out: Conn::default(),
        inn: Conn::default(),
        listen,
    })
}

/// Ends a connection politely: our SHUTDOWN, then wait for the peer's RST.
fn close(v: &mut Vsock, inbound: bool) -> Result<(), Error> {
    let c = if inbound { &v.inn } else { &v.out };
    if c.reset {
        return Ok(());
    }
    if c.peer_shutdown {
        return v.send_ctl(inbound, op::RST, 0);
    }
    v.send_ctl(inbound, op::SHUTDOWN, 3)?;
    v.poll(1000, |v| if inbound { v.inn.reset } else { v.out.reset })?;
    Ok(())
}

fn connect(v: &mut Vsock, port: u32, d: &mut Line) -> Result<(), Error> {
    v.out = Conn {
        active: true,
        local: LOCAL_PORT,
        peer: port,
        ..Conn::default()
    };
    v.send_ctl(false, op::REQUEST, 0)?;
    if !v.poll(TIMEOUT_MS, |v| v.out.established || v.out.reset)? {
        return Err(Error::Timeout(
            "the host's answer to the connection request",
        ));
    }
    if v.out.reset {
        return Err(Error::Device("host refused the connection (RST)"));
    }
    v.write(false, b"hello from guest\n")?;
    let _ = write!(d, " sent=hello.from.guest");
    // Reply: up to a newline, or whatever came before the host closed / went quiet.
    v.poll(TIMEOUT_MS, |v| {
        v.out.line().is_some() || v.out.peer_shutdown || v.out.reset
    })?;
    if v.out.data.is_empty() {
        return Err(Error::Timeout("a reply from the host"));
    }
    v.poll(200, |v| {
        v.out.line().is_some() || v.out.peer_shutdown || v.out.reset
    })?;
    let reply = v.out.line().unwrap_or(v.out.data.as_bytes());
    d.push_printable(b" reply=");
    d.push_printable(reply);
    close(v, false)
}

fn serve(v: &mut Vsock, port: u32, d: &mut Line) -> Result<(), Error> {
    let _ = write!(d, "port={port}");
    let mut l = Line::new();
    let _ = write!(l, "vsock.listen ready cid={} port={port}", v.cid);
    report::info(l.as_bytes());
    if !v.poll(ACCEPT_MS, |v| v.inn.active)? {
        return Err(Error::Timeout("a host connection to vsock.listen"));
    }
    let _ = write!(d, " peer_port={}", v.inn.peer);
    v.poll(TIMEOUT_MS, |v| {
        v.inn.line().is_some() || v.inn.peer_shutdown || v.inn.reset
    })?;
    let Some(line) = v.inn.line() else {
        return Err(Error::Timeout("a line from the host"));
    };
    let mut upper = Line::new();
    for &b in line {
        upper.push_byte(b.to_ascii_uppercase());
    }
    upper.push_byte(b'\n');
    d.push_printable(b" line=");
    d.push_printable(line);
    v.write(true, upper.as_bytes())?;
    // Give the host a moment to read and close; then close from our side.
    v.poll(2000, |v| v.inn.peer_shutdown || v.inn.reset)?;
    close(v, true)
}

/// Runs the `vsock` check (and `vsock.listen` when `vsock.listen=<port>` is given);
/// prints its own report lines.
pub fn run(ctx: &Ctx<'_>) {
    let listen = ctx
        .cmdline
        .get_u64("vsock.listen")
        .and_then(|p| u32::try_from(p).ok());
    let port = ctx
        .cmdline
        .get_u64("vsock.port")
        .and_then(|p| u32::try_from(p).ok());
    let mut d = Line::new();
    let mut v = match setup(ctx, listen) {
        Ok(v) => v,
        Err(e) => {
            let _ = write!(d, "{e}");
            report::result("vsock", false, d.as_bytes());
            return;
        }
    };
    let (indirect, event_idx) = v.rxq.ring_features();
    let _ = write!(
        d,
        "base={:#x} cid={} indirect={} event_idx={}",
        v.dev.base,
        v.cid,
        u8::from(indirect),
        u8::from(event_idx)
    );
    if let Some(port) = port {
        let _ = write!(d, " port={port}");
        let ok = match connect(&mut v, port, &mut d) {
            Ok(()) => true,
            Err(e) => {
                let _ = write!(d, " error: {e}");
                false
            }
        };
        report::result("vsock", ok && v.cid > 2, d.as_bytes());
    } else {
        report::result("vsock", v.cid > 2, d.as_bytes());
    }
    if let Some(port) = listen {
        d.clear();
        let ok = match serve(&mut v, port, &mut d) {
            Ok(()) => true,
            Err(e) => {
                let _ = write!(d, " error: {e}");
                false
            }
        };
        report::result("vsock.listen", ok, d.as_bytes());
    }
    v.dev.reset();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Hdr {
            src_cid: 3,
            dst_cid: 2,
            src_port: 49152,
            dst_port: 1234,
            len: 17,
            ty: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: 99,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(Hdr::from_bytes(&b), h);
    }

    #[test]
    fn credit_accounting() {
        let mut c = Conn {
            peer_buf_alloc: 100,
            peer_fwd_cnt: 10,
            tx_cnt: 50,
            ..Conn::default()
        };
        assert_eq!(c.credit(), 60);
        c.tx_cnt = 200;
        assert_eq!(c.credit(), 0);
        for &b in b"abc\ndef" {
            c.data.push_byte(b);
        }
        assert_eq!(c.line(), Some(&b"abc"[..]));
    }
}
