//! virtio-rng (entropy) check: asks for 64 bytes and checks they are not all equal.

use crate::ctx::Ctx;
use crate::dma;
use crate::fmt::Line;
use crate::virtio::{self, Error, Seg};
use core::fmt::Write;

const WANT: usize = 64;

/// Runs the check; writes the report detail into `d`.
pub fn check(ctx: &Ctx<'_>, d: &mut Line) -> Result<(), Error> {
    let mut dev = virtio::find(ctx.acpi.as_ref(), virtio::ID_ENTROPY, "virtio-rng")?;
    dev.init(0)?;
    let mut q = dev.setup_queue(0, 4)?;
    dev.driver_ok();
    let buf = dma::alloc(WANT, 64).ok_or(Error::Device("out of DMA memory"))?;
    let mut got = [0u8; WANT];
    let mut have = 0;
    let mut requests = 0;
    // A device may return fewer bytes than asked; ask again (bounded).
    while have < WANT && requests < 16 {
        requests += 1;
        let part = buf.slice(0, WANT - have);
        let (_, len) = dev.transact(&mut q, &[Seg::write(&part)], 0, "entropy")?;
        let len = (len as usize).min(part.len);
        have += part.read(0, &mut got[have..have + len]);
    }
    dev.reset();
    let _ = write!(
        d,
        "base={:#x} bytes={have} requests={requests} head=",
        dev.base
    );
    d.push_hex(&got[..8]);
    if have < WANT {
        return Err(Error::Device(
            "device returned fewer than 64 bytes in 16 requests",
        ));
    }
    if got.iter().all(|&b| b == got[0]) {
        return Err(Error::Device("all 64 bytes are equal"));
    }
    Ok(())
}
