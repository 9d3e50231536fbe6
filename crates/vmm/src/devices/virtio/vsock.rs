//! virtio-vsock (type 19) with a Unix-socket backend compatible with
//! Firecracker's: host clients connect to `uds_path` and send
//! `CONNECT <port>\n`; the device opens a stream to that guest port and
//! answers `OK <local_port>\n` once the guest accepts. Guest connections to
//! the host (CID 2) port P go to the Unix socket `<uds_path>_P`.
//!
//! Streams use the virtio-vsock credit protocol (buf_alloc / fwd_cnt). The
//! guest is untrusted: bad lengths, unknown operations, credit overruns and
//! packets for unknown connections are answered with RST.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmm_sys_util::epoll::EventSet;

use super::worker::{self, Backend, Chain, Ctx, BACKEND_TOKEN_BASE, CHAIN_BUDGET};
use super::{
    read_config_bytes, Activation, Error, VirtioDevice, WorkerHandle, TYPE_VSOCK,
    VIRTIO_F_VERSION_1,
};

pub const VSOCK_HOST_CID: u64 = 2;
pub const HDR_LEN: usize = 44;
pub const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
pub const EVENT_TRANSPORT_RESET: u32 = 0;

const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
const EVENT_QUEUE: usize = 2;
const QUEUE_SIZES: &[u16] = &[256, 256, 256];
/// Receive buffer we advertise per connection (guest → host bytes in flight).
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Largest payload accepted from / sent to the guest in one packet.
pub const MAX_PAYLOAD: usize = 64 * 1024;
const MAX_CONNS: usize = 1024;
/// Control packets waiting for rx buffers, at most.
const MAX_PENDING_CTRL: usize = 4096;
/// Longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 64;
/// A host client has this long after connecting to send `CONNECT <port>\n`;
/// then it is disconnected.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The guest has this long to accept a host-initiated connection (RESPONSE),
/// and to answer our SHUTDOWN with RST; then the connection is reset and the
/// host client sees end-of-file (without `OK` when it was never accepted).
pub const GUEST_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// First port used for host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
const LISTENER_TOKEN: u64 = BACKEND_TOKEN_BASE;

/// `struct virtio_vsock_hdr` (little-endian, packed, 44 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    pub fn parse(b: &[u8; HDR_LEN]) -> Hdr {
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(x)
        };
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// The vsock device.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: Arc<UnixListener>,
}

impl Vsock {
    /// Listen on `uds_path` for host clients; the guest gets `guest_cid`.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Vsock, Error> {
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(Error::VsockCid(guest_cid));
        }
        let err = |source: io::Error| Error::VsockListen {
            path: uds_path.display().to_string(),
            source,
        };
        let listener = UnixListener::bind(&uds_path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(Vsock {
            guest_cid,
            uds_path,
            listener: Arc::new(listener),
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE
    /// (at most [`GUEST_REPLY_TIMEOUT`]).
    Connecting,
    Established,
    /// We told the guest the host side is gone; waiting for its RST (at
    /// most [`GUEST_REPLY_TIMEOUT`]).
    Closing,
}

/// (host port, guest port)
type Key = (u32, u32);

struct Conn {
    stream: UnixStream,
    token: u64,
    state: State,
    /// Guest → host bytes accepted but not yet written to the stream.
    to_host: Vec<u8>,
    /// Bytes written to the host stream (what we report as fwd_cnt).
    fwd_cnt: u32,
    /// fwd_cnt last reported to the guest.
    fwd_cnt_sent: u32,
    /// Host → guest bytes sent, and the guest's credit view.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The stream may have data to read (edge-triggered epoll).
    readable: bool,
    in_ready: bool,
    /// The guest will not send more: shut the stream's write side once
    /// `to_host` drains.
    guest_shut_send: bool,
    guest_shut_rcv: bool,
    credit_requested: bool,
    /// When a `Connecting` or `Closing` connection is reset if the guest has
    /// not answered.
    deadline: Option<Instant>,
}

impl Conn {
    fn new(stream: UnixStream, token: u64, state: State, peer: &Hdr) -> Conn {
        let deadline = (state != State::Established).then(|| Instant::now() + GUEST_REPLY_TIMEOUT);
        Conn {
            deadline,
            stream,
            token,
            state,
            to_host: Vec::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            tx_cnt: 0,
            peer_buf_alloc: peer.buf_alloc,
            peer_fwd_cnt: peer.fwd_cnt,
            readable: true,
            in_ready: false,
            guest_shut_send: false,
            guest_shut_rcv: false,
            credit_requested: false,
        }
    }

    /// The host side is gone: wait (bounded) for the guest's RST.
    fn start_closing(&mut self) {
        self.state = State::Closing;
        self.readable = false;
        self.deadline = Some(Instant::now() + GUEST_REPLY_TIMEOUT);
    }

    /// Bytes we may send to the guest now.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Write buffered guest data to the stream; false on a hard error.
    fn flush(&mut self) -> bool {
        while !self.to_host.is_empty() {
            match self.stream.write(&self.to_host) {
                Ok(0) => return false,
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if self.to_host.is_empty() && self.guest_shut_send {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        true
    }
}

/// A host client that connected and has not finished `CONNECT <port>\n`.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    /// Disconnected when the line is not complete by then.
    deadline: Instant,
}

/// Worker state of an activated Vsock.
pub struct VsockBackend {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: Arc<UnixListener>,
    handshakes: HashMap<u64, Handshake>,
    conns: HashMap<Key, Conn>,
    tokens: HashMap<u64, Key>,
    next_token: u64,
    next_local_port: u32,
    /// Packets without payload waiting for rx buffers.
    ctrl: VecDeque<Hdr>,
    /// Connections that may have host data to send to the guest.
    ready: VecDeque<Key>,
    buf: Vec<u8>,
    /// Send VIRTIO_VSOCK_EVENT_TRANSPORT_RESET when an event buffer arrives.
    reset_event_pending: bool,
}

impl VsockBackend {
    pub fn new(guest_cid: u64, uds_path: PathBuf, listener: Arc<UnixListener>) -> Self {
        VsockBackend {
            guest_cid,
            uds_path,
            listener,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            tokens: HashMap::new(),
            next_token: LISTENER_TOKEN + 1,
            next_local_port: FIRST_LOCAL_PORT,
            ctrl: VecDeque::new(),
            ready: VecDeque::new(),
            buf: vec![0u8; HDR_LEN + MAX_PAYLOAD],
            reset_event_pending: false,
        }
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn hdr_to_guest(&self, key: Key, op: u16, flags: u32) -> Hdr {
        Hdr {
            src_cid: VSOCK_HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            len: 0,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: 0,
        }
    }

    fn queue_ctrl(&mut self, h: Hdr) {
        if self.ctrl.len() < MAX_PENDING_CTRL {
            self.ctrl.push_back(h);
        }
    }

    /// Forget a connection and tell the guest with RST.
    fn reset_conn(&mut self, ctx: &Ctx, key: Key) {
        self.drop_conn(ctx, key);
        let h = self.hdr_to_guest(key, OP_RST, 0);
        self.queue_ctrl(h);
    }

    fn drop_conn(&mut self, ctx: &Ctx, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            ctx.remove_fd(&c.stream);
            self.tokens.remove(&c.token);
        }
    }

    /// Tell the guest about freed receive space once a quarter of the
    /// window was forwarded since the last report. A guest that used the
    /// whole window is always told (unreported = whole window), so it
    /// cannot stall; smaller amounts ride on RW packets' fwd_cnt.
    fn credit_update_if_due(&mut self, key: Key) {
        let due = self
            .conns
            .get(&key)
            .is_some_and(|c| c.fwd_cnt.wrapping_sub(c.fwd_cnt_sent) >= CONN_BUF_ALLOC / 4);
        if due {
            if let Some(c) = self.conns.get_mut(&key) {
                // Counted as reported now so one update is queued, not many.
                c.fwd_cnt_sent = c.fwd_cnt;
            }
            let h = self.hdr_to_guest(key, OP_CREDIT_UPDATE, 0);
            self.queue_ctrl(h);
        }
    }

    fn mark_ready(&mut self, key: Key) {
        if let Some(c) = self.conns.get_mut(&key) {
            if c.readable && !c.in_ready {
                c.in_ready = true;
                self.ready.push_back(key);
            }
        }
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = if p >= u32::MAX - 1 {
                FIRST_LOCAL_PORT
            } else {
                p + 1
            };
            if !self.conns.keys().any(|k| k.0 == p) {
                return p;
            }
        }
    }

    /// Put one packet (header + payload) in an rx chain.
    fn write_packet(ctx: &mut Ctx, chain: &Chain, pkt: &[u8]) {
        let n = chain.write_at(&ctx.mem, 0, pkt);
        ctx.complete(RX_QUEUE, chain.head, n as u32);
    }

    /// Pop an rx chain that can hold at least a header; unusable chains are
    /// returned empty.
    fn pop_rx(ctx: &mut Ctx) -> Option<Chain> {
        loop {
            let chain = ctx.pop(RX_QUEUE)?;
            if chain.valid && chain.writable_len() >= HDR_LEN as u64 {
                return Some(chain);
            }
            ctx.complete(RX_QUEUE, chain.head, 0);
        }
    }

    fn deliver_ctrl(&mut self, ctx: &mut Ctx) -> bool {
        while let Some(mut h) = self.ctrl.front().copied() {
            let Some(chain) = Self::pop_rx(ctx) else {
                return false;
            };
            self.ctrl.pop_front();
            if let Some(c) = self.conns.get_mut(&(h.src_port, h.dst_port)) {
                h.fwd_cnt = c.fwd_cnt;
                c.fwd_cnt_sent = c.fwd_cnt;
            }
            Self::write_packet(ctx, &chain, &h.bytes());
        }
        true
    }

    /// Move queued control packets and host stream data into rx buffers.
    fn process_rx(&mut self, ctx: &mut Ctx) {
        if !self.deliver_ctrl(ctx) {
            return;
        }
        let mut budget = CHAIN_BUDGET;
        while budget > 0 {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.in_ready = false;
            if c.state != State::Established || !c.readable || c.guest_shut_rcv {
                continue;
            }
            let credit = c.peer_credit() as usize;
            if credit == 0 {
                match peek(&c.stream) {
                    Peek::Data => {
                        if !c.credit_requested {
                            c.credit_requested = true;
                            let h = self.hdr_to_guest(key, OP_CREDIT_REQUEST, 0);
                            self.queue_ctrl(h);
                        }
                    }
                    Peek::Empty => c.readable = false,
                    Peek::Eof => {
                        // Closing needs no credit.
                        c.start_closing();
                        let h = self.hdr_to_guest(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
                        self.queue_ctrl(h);
                    }
                    Peek::Error => self.reset_conn(ctx, key),
                }
                continue;
            }
            let Some(chain) = Self::pop_rx(ctx) else {
                c.in_ready = true;
                self.ready.push_front(key);
                return;
            };
            budget -= 1;
            let room = (chain.writable_len() as usize - HDR_LEN).min(MAX_PAYLOAD);
            let max = credit.min(room);
            let data = &mut self.buf[HDR_LEN..HDR_LEN + max];
            let res = if max == 0 {
                Err(io::Error::from(io::ErrorKind::WouldBlock))
            } else {
                c.stream.read(data)
            };
            match res {
                Ok(0) => {
                    // Host closed: tell the guest, wait for its RST.
                    ctx.undo_pop(RX_QUEUE);
                    c.start_closing();
                    let h = self.hdr_to_guest(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
                    self.queue_ctrl(h);
                }
                Ok(n) => {
                    c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                    c.fwd_cnt_sent = c.fwd_cnt;
                    let fwd = c.fwd_cnt;
                    let mut h = self.hdr_to_guest(key, OP_RW, 0);
                    h.len = n as u32;
                    h.fwd_cnt = fwd;
                    self.buf[..HDR_LEN].copy_from_slice(&h.bytes());
                    Self::write_packet(ctx, &chain, &self.buf[..HDR_LEN + n]);
                    self.mark_ready(key);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ctx.undo_pop(RX_QUEUE);
                    c.readable = false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    ctx.undo_pop(RX_QUEUE);
                    self.mark_ready(key);
                }
                Err(_) => {
                    ctx.undo_pop(RX_QUEUE);
                    self.reset_conn(ctx, key);
                }
            }
            if !self.deliver_ctrl(ctx) {
                return;
            }
        }
        if budget == 0 {
            ctx.requeue(RX_QUEUE);
        }
        self.deliver_ctrl(ctx);
    }

    fn process_event_queue(&mut self, ctx: &mut Ctx) {
        if !self.reset_event_pending {
            return;
        }
        if let Some(chain) = ctx.pop(EVENT_QUEUE) {
            let n = chain.write_at(&ctx.mem, 0, &EVENT_TRANSPORT_RESET.to_le_bytes());
            ctx.complete(EVENT_QUEUE, chain.head, n as u32);
            self.reset_event_pending = false;
        }
    }

    fn process_tx(&mut self, ctx: &mut Ctx) {
        for _ in 0..CHAIN_BUDGET {
            let Some(chain) = ctx.pop(TX_QUEUE) else {
                self.process_rx(ctx);
                return;
            };
            let mut hb = [0u8; HDR_LEN];
            if chain.valid && chain.read_at(&ctx.mem, 0, &mut hb) == HDR_LEN {
                let h = Hdr::parse(&hb);
                let avail = chain.readable_len() - HDR_LEN as u64;
                let len = h.len as usize;
                if len > MAX_PAYLOAD || len as u64 > avail {
                    self.bad_packet(ctx, &h);
                } else {
                    let mut payload = std::mem::take(&mut self.buf);
                    let got = chain.read_at(&ctx.mem, HDR_LEN as u64, &mut payload[..len]);
                    if got == len {
                        self.guest_packet(ctx, &h, &payload[..len]);
                    } else {
                        self.bad_packet(ctx, &h);
                    }
                    self.buf = payload;
                }
            }
            ctx.complete(TX_QUEUE, chain.head, 0);
        }
        ctx.requeue(TX_QUEUE);
        self.process_rx(ctx);
    }

    /// Answer a malformed packet with RST (and drop its connection).
    fn bad_packet(&mut self, ctx: &Ctx, h: &Hdr) {
        if h.op == OP_RST || h.src_cid != self.guest_cid {
            return;
        }
        self.reset_conn(ctx, (h.dst_port, h.src_port));
    }

    /// Handle one packet from the guest.
    pub fn guest_packet(&mut self, ctx: &mut Ctx, h: &Hdr, payload: &[u8]) {
        if h.src_cid != self.guest_cid || h.dst_cid != VSOCK_HOST_CID {
            // Not addressed to us or spoofed source: drop silently.
            return;
        }
        let key: Key = (h.dst_port, h.src_port);
        if h.kind != TYPE_STREAM {
            self.bad_packet(ctx, h);
            return;
        }
        if h.op == OP_REQUEST {
            self.guest_connect(ctx, h, key);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            self.bad_packet(ctx, h);
            return;
        };
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        if c.peer_credit() > 0 {
            c.credit_requested = false;
        }
        match h.op {
            OP_RESPONSE if c.state == State::Connecting => {
                c.state = State::Established;
                c.deadline = None;
                let ok = format!("OK {}\n", key.0);
                // A fresh socket's buffer always takes these few bytes.
                if c.stream.write_all(ok.as_bytes()).is_err() {
                    self.reset_conn(ctx, key);
                    return;
                }
            }
            OP_RST => {
                self.drop_conn(ctx, key);
                return;
            }
            OP_SHUTDOWN => {
                c.guest_shut_send |= h.flags & SHUTDOWN_SEND != 0;
                c.guest_shut_rcv |= h.flags & SHUTDOWN_RCV != 0;
                if c.guest_shut_send && c.guest_shut_rcv {
                    let _ = c.flush();
                    self.reset_conn(ctx, key);
                    return;
                }
                if !c.flush() {
                    self.reset_conn(ctx, key);
                    return;
                }
            }
            OP_RW if c.state == State::Established && !c.guest_shut_send => {
                if c.to_host.len() + payload.len() > CONN_BUF_ALLOC as usize {
                    // The guest ignored our credit.
                    self.reset_conn(ctx, key);
                    return;
                }
                c.to_host.extend_from_slice(payload);
                if !c.flush() {
                    self.reset_conn(ctx, key);
                    return;
                }
                self.credit_update_if_due(key);
            }
            OP_RW if c.state == State::Closing => {
                // Host side is gone; the guest has not seen our SHUTDOWN yet.
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                let h = self.hdr_to_guest(key, OP_CREDIT_UPDATE, 0);
                self.queue_ctrl(h);
            }
            _ => {
                self.reset_conn(ctx, key);
                return;
            }
        }
        self.mark_ready(key);
    }

    /// Guest REQUEST to host port `h.dst_port`: connect to `<uds>_<port>`.
    fn guest_connect(&mut self, ctx: &mut Ctx, h: &Hdr, key: Key) {
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNS {
            self.reset_conn_reply(key);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", h.dst_port));
        let stream = match connect_nonblocking(path.as_bytes()) {
            Ok(s) => s,
            Err(_) => {
                self.reset_conn_reply(key);
                return;
            }
        };
        let token = self.token();
        if ctx.add_fd(&stream, conn_events(), token).is_err() {
            self.reset_conn_reply(key);
            return;
        }
        self.conns
            .insert(key, Conn::new(stream, token, State::Established, h));
        self.tokens.insert(token, key);
        let r = self.hdr_to_guest(key, OP_RESPONSE, 0);
        self.queue_ctrl(r);
        self.mark_ready(key);
    }

    /// RST for a connection that does not exist (nothing to drop).
    fn reset_conn_reply(&mut self, key: Key) {
        let h = self.hdr_to_guest(key, OP_RST, 0);
        self.queue_ctrl(h);
    }

    fn accept(&mut self, ctx: &mut Ctx) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.handshakes.len() + self.conns.len() >= MAX_CONNS
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue;
                    }
                    let token = self.token();
                    if ctx.add_fd(&stream, EventSet::IN, token).is_ok() {
                        self.handshakes.insert(
                            token,
                            Handshake {
                                stream,
                                line: Vec::new(),
                                deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                            },
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Read the `CONNECT <port>\n` line byte by byte (so that data the
    /// client sends after it stays in the socket for the guest).
    fn handshake(&mut self, ctx: &mut Ctx, token: u64) {
        let Some(hs) = self.handshakes.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match hs.stream.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) if byte[0] == b'\n' => break parse_connect(&hs.line).ok_or(()),
                Ok(_) if hs.line.len() < MAX_CONNECT_LINE => hs.line.push(byte[0]),
                Ok(_) => break Err(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Err(()),
            }
        };
        let Some(hs) = self.handshakes.remove(&token) else {
            return;
        };
        let Ok(port) = port else {
            ctx.remove_fd(&hs.stream);
            return;
        };
        let local = self.alloc_local_port();
        let key = (local, port);
        if ctx.modify_fd(&hs.stream, conn_events(), token).is_err() {
            ctx.remove_fd(&hs.stream);
            return;
        }
        let conn = Conn::new(hs.stream, token, State::Connecting, &Hdr::default());
        self.conns.insert(key, conn);
        self.tokens.insert(token, key);
        let h = self.hdr_to_guest(key, OP_REQUEST, 0);
        self.queue_ctrl(h);
        self.process_rx(ctx);
    }

    fn conn_event(&mut self, ctx: &mut Ctx, key: Key, events: EventSet) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if events.intersects(EventSet::OUT) {
            if !c.flush() {
                self.reset_conn(ctx, key);
                self.process_rx(ctx);
                return;
            }
            // The stream drained: the guest may be waiting for credit.
            self.credit_update_if_due(key);
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if events
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            c.readable = true;
            if c.state == State::Connecting
                && events.intersects(EventSet::HANG_UP | EventSet::ERROR)
            {
                // Client went away before the guest answered.
                self.reset_conn(ctx, key);
            } else {
                self.mark_ready(key);
            }
        }
        self.process_rx(ctx);
    }
}

/// Connect to a Unix socket without blocking: a host service whose accept
/// backlog is full fails the connection (EAGAIN) instead of stalling the
/// worker. std has no non-blocking connect for Unix sockets, hence libc.
fn connect_nonblocking(path: &[u8]) -> io::Result<UnixStream> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if path.len() >= addr.sun_path.len() || path.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &s) in addr.sun_path.iter_mut().zip(path) {
        *d = s as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; returns a new fd or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just created and nobody else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid, NUL-terminated sockaddr_un of the given size.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

enum Peek {
    Data,
    Empty,
    Eof,
    Error,
}

/// Whether the host stream has data, is at EOF, or is empty — without
/// consuming anything (used when the guest gave no credit).
fn peek(stream: &UnixStream) -> Peek {
    let mut b = [0u8; 1];
    // SAFETY: recv into a valid 1-byte buffer on a socket fd we own;
    // MSG_PEEK leaves the data in the socket.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Peek::Eof,
        n if n > 0 => Peek::Data,
        _ => match io::Error::last_os_error().kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Peek::Empty,
            _ => Peek::Error,
        },
    }
}

fn conn_events() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

/// `CONNECT <port>` (without the newline) → port.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let s = s.strip_suffix('\r').unwrap_or(s);
    let port = s.strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

impl Backend for VsockBackend {
    fn start(&mut self, ctx: &mut Ctx) -> io::Result<()> {
        ctx.add_fd(&*self.listener, EventSet::IN, LISTENER_TOKEN)?;
        // After a restore the event buffers are already posted.
        self.process_event_queue(ctx);
        ctx.flush_interrupts();
        Ok(())
    }

    fn queue_event(&mut self, ctx: &mut Ctx, q: usize) {
        match q {
            RX_QUEUE => self.process_rx(ctx),
            TX_QUEUE => self.process_tx(ctx),
            EVENT_QUEUE => self.process_event_queue(ctx),
            _ => {}
        }
    }

    fn fd_event(&mut self, ctx: &mut Ctx, token: u64, events: EventSet) {
        if token == LISTENER_TOKEN {
            self.accept(ctx);
        } else if self.handshakes.contains_key(&token) {
            self.handshake(ctx, token);
        } else if let Some(&key) = self.tokens.get(&token) {
            self.conn_event(ctx, key, events);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let handshakes = self.handshakes.values().map(|h| h.deadline);
        let conns = self.conns.values().filter_map(|c| c.deadline);
        handshakes.chain(conns).min()
    }

    /// Disconnect host clients that did not finish `CONNECT`, and reset
    /// connections the guest did not answer in time.
    fn timer(&mut self, ctx: &mut Ctx, now: Instant) {
        let late: Vec<u64> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(&t, _)| t)
            .collect();
        for token in late {
            if let Some(hs) = self.handshakes.remove(&token) {
                ctx.remove_fd(&hs.stream);
            }
        }
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(&k, _)| k)
            .collect();
        for key in late {
            self.reset_conn(ctx, key);
        }
        self.process_rx(ctx);
    }

    fn snapshot(&self) -> Value {
        // Host connections cannot survive a snapshot: on restore the guest
        // gets a transport reset event and reconnects.
        json!({"guest_cid": self.guest_cid, "connections": self.conns.len()})
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, act: Activation) -> Result<WorkerHandle, Error> {
        let mut backend =
            VsockBackend::new(self.guest_cid, self.uds_path.clone(), self.listener.clone());
        backend.reset_event_pending = !act.restored.is_null();
        worker::spawn("virtio-vsock", backend, act)
    }
}
