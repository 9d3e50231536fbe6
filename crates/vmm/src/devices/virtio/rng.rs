//! virtio-rng (entropy device, type 4): one request queue whose
//! device-writable buffers are filled from getrandom(2).

use std::io;

use super::worker::{self, Backend, Ctx, CHAIN_BUDGET};
use super::{Activation, Error, VirtioDevice, WorkerHandle, TYPE_RNG, VIRTIO_F_VERSION_1};

const QUEUE_SIZES: &[u16] = &[256];
/// Bytes handed out per request at most (the driver asks for little).
const MAX_REQUEST: usize = 64 * 1024;

/// The entropy device.
pub struct Rng {
    _priv: (),
}

impl Rng {
    pub fn new() -> Self {
        Rng { _priv: () }
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// Worker state of an activated Rng.
pub struct RngBackend {
    buf: Vec<u8>,
}

impl RngBackend {
    pub fn new() -> Self {
        RngBackend { buf: Vec::new() }
    }
}

impl Default for RngBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for RngBackend {
    fn queue_event(&mut self, ctx: &mut Ctx, q: usize) {
        for _ in 0..CHAIN_BUDGET {
            let Some(chain) = ctx.pop(q) else {
                return;
            };
            let mut written = 0u32;
            if chain.valid {
                let want = chain.writable_len().min(MAX_REQUEST as u64) as usize;
                self.buf.resize(want, 0);
                if getrandom(&mut self.buf).is_ok() {
                    written = chain.write_at(&ctx.mem, 0, &self.buf) as u32;
                }
            }
            ctx.complete(q, chain.head, written);
        }
        ctx.requeue(q);
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, act: Activation) -> Result<WorkerHandle, Error> {
        worker::spawn("virtio-rng", RngBackend::new(), act)
    }
}
