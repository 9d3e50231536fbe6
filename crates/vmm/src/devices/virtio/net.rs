//! virtio-net (type 1) over a TAP device opened with IFF_VNET_HDR: frames on
//! the TAP carry the same 12-byte `virtio_net_hdr_v1` the guest uses, so rx
//! and tx copy whole buffers. No offloads are offered, so headers carry no
//! checksum/GSO work in either direction.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use serde_json::{json, Value};
use vmm_sys_util::epoll::EventSet;

use super::worker::{self, Backend, Ctx, BACKEND_TOKEN_BASE, CHAIN_BUDGET};
use super::{
    read_config_bytes, Activation, Error, VirtioDevice, WorkerHandle, TYPE_NET, VIRTIO_F_VERSION_1,
};

pub const VIRTIO_NET_F_MAC: u32 = 5;
/// Size of `virtio_net_hdr_v1` (with `num_buffers`), also the TAP's vnet
/// header size.
pub const NET_HDR_LEN: usize = 12;
/// Largest frame (without header) we move: no GSO, so MTU-sized frames, but
/// leave room for jumbo MTUs set on the TAP.
const MAX_FRAME: usize = 65535;
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
const QUEUE_SIZES: &[u16] = &[256, 256];
const TAP_TOKEN: u64 = BACKEND_TOKEN_BASE;

/// `struct ifreq` as TUNSETIFF uses it: name, then a short of flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Open the existing TAP interface `name` with a 12-byte vnet header.
///
/// TUNSETIFF would create a missing interface (given CAP_NET_ADMIN), leaving the
/// guest on an unconfigured link that vanishes with the monitor; a typo in the
/// name must be an error instead. The interface is looked up in the calling
/// thread's network namespace (not through /sys, which may belong to another).
fn open_tap(name: &str) -> Result<File, Error> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(Error::TapName(name.to_string()));
    }
    let cname = std::ffi::CString::new(name).map_err(|_| Error::TapName(name.to_string()))?;
    // SAFETY: if_nametoindex reads the NUL-terminated string, which outlives the call.
    if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
        return Err(Error::NoSuchTap(name.to_string()));
    }
    let err = |source: io::Error| Error::OpenTap {
        name: name.to_string(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(err)?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is a valid,
    // properly sized instance that outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
    if rc < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    let hdr_len: libc::c_int = NET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ as _, &hdr_len) };
    if rc < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(file)
}

/// The network device.
pub struct Net {
    tap: Arc<File>,
    tap_name: String,
    mac: Option<[u8; 6]>,
}

impl Net {
    /// Attach to the existing TAP `tap_name`. With `mac`
    /// the device offers VIRTIO_NET_F_MAC; without, the guest picks one.
    pub fn new(tap_name: &str, mac: Option<[u8; 6]>) -> Result<Net, Error> {
        Ok(Net {
            tap: Arc::new(open_tap(tap_name)?),
            tap_name: tap_name.to_string(),
            mac,
        })
    }

    pub fn tap_name(&self) -> &str {
        &self.tap_name
    }
}

/// Worker state of an activated Net.
pub struct NetBackend {
    tap: Arc<File>,
    /// A frame read from the TAP (with header) waiting for an rx buffer.
    pending: Option<usize>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    /// Whether the TAP is in the epoll set with EPOLLIN.
    tap_armed: bool,
    rx_frames: u64,
    tx_frames: u64,
    dropped: u64,
}

impl NetBackend {
    pub fn new(tap: Arc<File>) -> Self {
        NetBackend {
            tap,
            pending: None,
            rx_buf: vec![0u8; NET_HDR_LEN + MAX_FRAME],
            tx_buf: vec![0u8; NET_HDR_LEN + MAX_FRAME],
            tap_armed: true,
            rx_frames: 0,
            tx_frames: 0,
            dropped: 0,
        }
    }

    fn arm_tap(&mut self, ctx: &Ctx, on: bool) {
        if self.tap_armed != on {
            let ev = if on { EventSet::IN } else { EventSet::empty() };
            if ctx.modify_fd(&*self.tap, ev, TAP_TOKEN).is_ok() {
                self.tap_armed = on;
            }
        }
    }

    /// Move frames from the TAP into the guest's rx buffers until either
    /// runs out. With no rx buffers, the TAP is taken out of the epoll set
    /// until the driver adds buffers (notifies the rx queue).
    fn rx(&mut self, ctx: &mut Ctx) {
        for _ in 0..CHAIN_BUDGET {
            let len = match self.pending {
                Some(n) => n,
                None => match (&*self.tap).read(&mut self.rx_buf) {
                    Ok(n) if n >= NET_HDR_LEN => n,
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        // EAGAIN (drained) or a TAP error: wait for EPOLLIN.
                        self.arm_tap(ctx, true);
                        return;
                    }
                },
            };
            self.pending = Some(len);
            let Some(chain) = ctx.pop(RX_QUEUE) else {
                self.arm_tap(ctx, false);
                return;
            };
            self.pending = None;
            if !chain.valid || chain.writable_len() < len as u64 {
                // Buffer unusable or too small for this frame: drop the frame.
                self.dropped += 1;
                ctx.complete(RX_QUEUE, chain.head, 0);
                continue;
            }
            let frame = &mut self.rx_buf[..len];
            // No VIRTIO_NET_F_MRG_RXBUF: one buffer per packet.
            frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            let n = chain.write_at(&ctx.mem, 0, frame);
            self.rx_frames += 1;
            ctx.complete(RX_QUEUE, chain.head, n as u32);
        }
        // Budget spent: come back after other work.
        ctx.requeue(RX_QUEUE);
    }

    fn tx(&mut self, ctx: &mut Ctx) {
        for _ in 0..CHAIN_BUDGET {
            let Some(chain) = ctx.pop(TX_QUEUE) else {
                return;
            };
            let len = chain.readable_len();
            if chain.valid && len >= NET_HDR_LEN as u64 && len <= self.tx_buf.len() as u64 {
                let buf = &mut self.tx_buf[..len as usize];
                if chain.read_at(&ctx.mem, 0, buf) == buf.len() {
                    // No offloads negotiated: whatever the guest put in the
                    // header, the TAP gets a plain one.
                    buf[..NET_HDR_LEN].fill(0);
                    // A TAP write takes the whole frame or fails.
                    match (&*self.tap).write(buf) {
                        Ok(n) if n == buf.len() => self.tx_frames += 1,
                        Ok(_) => self.dropped += 1,
                        // A full TAP queue drops the frame, as a NIC would.
                        Err(_) => self.dropped += 1,
                    }
                }
            } else {
                self.dropped += 1;
            }
            ctx.complete(TX_QUEUE, chain.head, 0);
        }
        ctx.requeue(TX_QUEUE);
    }
}

impl Backend for NetBackend {
    fn start(&mut self, ctx: &mut Ctx) -> io::Result<()> {
        ctx.add_fd(&*self.tap, EventSet::IN, TAP_TOKEN)?;
        self.tap_armed = true;
        Ok(())
    }

    fn queue_event(&mut self, ctx: &mut Ctx, q: usize) {
        match q {
            RX_QUEUE => self.rx(ctx),
            TX_QUEUE => self.tx(ctx),
            _ => {}
        }
    }

    fn fd_event(&mut self, ctx: &mut Ctx, token: u64, _events: EventSet) {
        if token == TAP_TOKEN {
            self.rx(ctx);
        }
    }

    fn snapshot(&self) -> Value {
        json!({"rx_frames": self.rx_frames, "tx_frames": self.tx_frames, "dropped": self.dropped})
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let mut f = 1u64 << VIRTIO_F_VERSION_1;
        if self.mac.is_some() {
            f |= 1 << VIRTIO_NET_F_MAC;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac[6], then fields we do not offer.
        let mut config = [0u8; 8];
        if let Some(mac) = self.mac {
            config[..6].copy_from_slice(&mac);
        }
        read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, act: Activation) -> Result<WorkerHandle, Error> {
        worker::spawn("virtio-net", NetBackend::new(self.tap.clone()), act)
    }
}
