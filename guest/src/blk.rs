//! virtio-blk check: reads sector 0 of the first (or `blk.index`-th) block device and
//! reports its first bytes and FNV-1a checksum; with `blk.write=<text>` writes the text
//! (zero padded) to sector 1, flushes, reads it back and compares.

use crate::ctx::Ctx;
use crate::dma::{self, Buf};
use crate::fmt::{fnv1a32, Line};
use crate::virtio::{self, Device, Error, Queue, Seg, F_EVENT_IDX, F_INDIRECT_DESC};
use core::fmt::Write;

const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const S_OK: u8 = 0;
const SECTOR: usize = 512;

struct Blk {
    dev: Device,
    q: Queue,
    hdr: Buf,
    data: Buf,
    status: Buf,
}

impl Blk {
    fn request(
        &mut self,
        ty: u32,
        sector: u64,
        with_data: bool,
        what: &'static str,
    ) -> Result<(), Error> {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.hdr.write(0, &h);
        self.status.write(0, &[0xff]);
        let hdr = Seg::read(&self.hdr);
        let st = Seg::write(&self.status);
        let data = if ty == T_IN {
            Seg::write(&self.data)
        } else {
            Seg::read(&self.data)
        };
        let segs_data = [hdr, data, st];
        let segs_nodata = [hdr, st];
        let segs: &[Seg] = if with_data { &segs_data } else { &segs_nodata };
        self.dev.transact(&mut self.q, segs, 0, what)?;
        let mut s = [0xffu8];
        self.status.read(0, &mut s);
        match s[0] {
            S_OK => Ok(()),
            1 => Err(Error::Device("request failed: VIRTIO_BLK_S_IOERR")),
            2 => Err(Error::Device("request failed: VIRTIO_BLK_S_UNSUPP")),
            _ => Err(Error::Device(
                "request failed: device did not write the status byte",
            )),
        }
    }
}

/// Runs the check; writes the report detail into `d`.
pub fn check(ctx: &Ctx<'_>, d: &mut Line) -> Result<(), Error> {
    let index = ctx.cmdline.get_u64("blk.index").unwrap_or(0);
    let index = usize::try_from(index).unwrap_or(usize::MAX);
    let mut dev = virtio::find_nth(
        ctx.acpi.as_ref(),
        virtio::ID_BLOCK,
        index,
        "virtio-blk (blk.index)",
    )?;
    let ring = virtio::wanted_ring_features(ctx, "blk.ring");
    let features = dev.init(F_RO | F_FLUSH | ring)?;
    let capacity = dev.config_u64(0);
    let mut q = dev.setup_queue(0, 8)?;
    Device::use_ring_features(features, &mut [&mut q])?;
    dev.driver_ok();
    let (hdr, data, status) = match (
        dma::alloc(16, 16),
        dma::alloc(SECTOR, SECTOR),
        dma::alloc(1, 1),
    ) {
        (Some(h), Some(b), Some(s)) => (h, b, s),
        _ => return Err(Error::Device("out of DMA memory")),
    };
    let mut blk = Blk {
        dev,
        q,
        hdr,
        data,
        status,
    };
    let _ = write!(
        d,
        "base={:#x} sectors={capacity} ro={} indirect={} event_idx={}",
        blk.dev.base,
        u8::from(features & F_RO != 0),
        u8::from(features & F_INDIRECT_DESC != 0),
        u8::from(features & F_EVENT_IDX != 0)
    );
    if capacity == 0 {
        return Err(Error::Device("capacity is 0 sectors"));
    }

    blk.data.zero();
    blk.request(T_IN, 0, true, "sector 0 read")?;
    let mut s0 = [0u8; SECTOR];
    blk.data.read(0, &mut s0);
    d.push_printable(b" head=");
    d.push_printable(&s0[..16]);
    let _ = write!(d, " fnv={:08x}", fnv1a32(&s0));

    if features & F_RO == 0 && ctx.cmdline.get("blk.expect_ro").is_some() {
        return Err(Error::Device(
            "blk.expect_ro given but the device is writable (no VIRTIO_BLK_F_RO)",
        ));
    }
    if let Some(text) = ctx.cmdline.get("blk.write") {
        if features & F_RO != 0 {
            if ctx.cmdline.get("blk.expect_ro").is_none() {
                return Err(Error::Device("blk.write given but the device is read-only"));
            }
            // The monitor must refuse a write to a read-only disk.
            blk.data.write(0, &[0xa5; SECTOR]);
            return match blk.request(T_OUT, 1, true, "sector 1 write (read-only disk)") {
                Err(Error::Device(_)) => {
                    d.push_printable(b" write=refused");
                    Ok(())
                }
                Err(e) => Err(e),
                Ok(()) => Err(Error::Device("device accepted a write to a read-only disk")),
            };
        }
        if capacity < 2 {
            return Err(Error::Device("blk.write needs at least 2 sectors"));
        }
        let mut s1 = [0u8; SECTOR];
        let n = text.len().min(SECTOR);
        s1[..n].copy_from_slice(&text[..n]);
        blk.data.write(0, &s1);
        blk.request(T_OUT, 1, true, "sector 1 write")?;
        d.push_printable(b" write=ok");
        if features & F_FLUSH != 0 {
            blk.request(T_FLUSH, 0, false, "flush")?;
            d.push_printable(b" flush=ok");
        } else {
            d.push_printable(b" flush=unsupported");
        }
        blk.data.zero();
        blk.request(T_IN, 1, true, "sector 1 read-back")?;
        let mut back = [0u8; SECTOR];
        blk.data.read(0, &mut back);
        if back != s1 {
            return Err(Error::Device(
                "sector 1 read back differs from what was written",
            ));
        }
        d.push_printable(b" readback=ok");
    }
    blk.dev.reset();
    Ok(())
}

/// Requests kept in flight by `blkread`, at most.
const READ_DEPTH_MAX: usize = 8;

/// The `blkread` check: reads the disk sequentially with `blkread.depth` requests of
/// `blkread.kib` KiB in flight (default 4 × 32 KiB) for up to `blkread.mib` MiB (default
/// the whole disk, at most 256 MiB) and reports the throughput, measured with the TSC
/// from the first notification to the last completion. The data itself is not looked
/// at (sector 0 is checked by `blk`); every status byte is.
pub fn read_throughput(ctx: &Ctx<'_>, d: &mut Line) -> Result<(), Error> {
    let mut dev = virtio::find_nth(ctx.acpi.as_ref(), virtio::ID_BLOCK, 0, "virtio-blk")?;
    let features = dev.init(F_INDIRECT_DESC | F_EVENT_IDX)?;
    let capacity = dev.config_u64(0);
    let mut q = dev.setup_queue(0, 32)?;
    Device::use_ring_features(features, &mut [&mut q])?;
    dev.driver_ok();
    let kib = ctx
        .cmdline
        .get_u64("blkread.kib")
        .unwrap_or(32)
        .clamp(1, 64);
    let depth = ctx
        .cmdline
        .get_u64("blkread.depth")
        .unwrap_or(4)
        .clamp(1, READ_DEPTH_MAX as u64) as usize;
    let want_mib = ctx.cmdline.get_u64("blkread.mib").unwrap_or(256).min(256);
    let req_sectors = kib * 2;
    let total_sectors = (capacity.min(want_mib << 11) / req_sectors) * req_sectors;
    if total_sectors == 0 {
        return Err(Error::Device("disk smaller than one request"));
    }
    let oom = Error::Device("out of DMA memory");
    let mut slots = [(
        dma::Buf { addr: 0, len: 0 },
        dma::Buf { addr: 0, len: 0 },
        dma::Buf { addr: 0, len: 0 },
    ); READ_DEPTH_MAX];
    for s in slots.iter_mut().take(depth) {
        *s = (
            dma::alloc(16, 16).ok_or(oom)?,
            dma::alloc(kib as usize * 1024, 512).ok_or(oom)?,
            dma::alloc(1, 1).ok_or(oom)?,
        );
    }
    let submit = |q: &mut Queue, dev: &Device, slot: usize, sector: u64| -> Result<(), Error> {
        let (hdr, data, status) = slots[slot];
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&T_IN.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        hdr.write(0, &h);
        status.write(0, &[0xff]);
        let old = q.avail_idx();
        q.push(
            &[Seg::read(&hdr), Seg::write(&data), Seg::write(&status)],
            slot as u64,
        )?;
        dev.kick(q, old);
        Ok(())
    };
    let t0 = crate::time::now_us();
    let mut next = 0u64;
    let mut in_flight = 0usize;
    for slot in 0..depth {
        if next < total_sectors {
            submit(&mut q, &dev, slot, next)?;
            next += req_sectors;
            in_flight += 1;
        }
    }
    let mut requests = 0u64;
    while in_flight > 0 {
        let (slot, _) = virtio::wait(&mut q, virtio::REQUEST_TIMEOUT_MS, "a read to complete")?;
        let slot = (slot as usize).min(depth - 1);
        let mut st = [0xffu8];
        slots[slot].2.read(0, &mut st);
        if st[0] != S_OK {
            return Err(Error::Device("a read failed (status byte not OK)"));
        }
        requests += 1;
        in_flight -= 1;
        if next < total_sectors {
            submit(&mut q, &dev, slot, next)?;
            next += req_sectors;
            in_flight += 1;
        }
    }
    let us = crate::time::now_us().saturating_sub(t0).max(1);
    let bytes = total_sectors * 512;
    let _ = write!(
        d,
        "bytes={bytes} us={us} mib_s={} requests={requests} kib={kib} depth={depth} indirect={} event_idx={} kicks_saved={}",
        bytes * 1_000_000 / us / (1 << 20),
        u8::from(features & F_INDIRECT_DESC != 0),
        u8::from(features & F_EVENT_IDX != 0),
        q.kicks_saved
    );
    dev.reset();
    Ok(())
}
