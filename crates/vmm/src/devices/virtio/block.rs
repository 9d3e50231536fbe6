//! virtio-blk (type 2) over a raw image (a regular file or a block device):
//! IN/OUT with pread/pwrite, FLUSH with fdatasync, GET_ID; read-only images
//! refuse writes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use super::worker::{self, Backend, Chain, Ctx, CHAIN_BUDGET};
use super::{
    read_config_bytes, Activation, Error, VirtioDevice, WorkerHandle, TYPE_BLOCK,
    VIRTIO_F_VERSION_1,
};

pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];
/// Data segments per request we accept (queue size minus header and status).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest data transfer per request.
const MAX_TRANSFER: u64 = 16 << 20;

// Feature bits (virtio 1.2 §5.2.3).
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
pub const VIRTIO_BLK_F_RO: u32 = 5;
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;

// Request types and status values.
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
pub const VIRTIO_BLK_ID_BYTES: usize = 20;
const HEADER_LEN: u64 = 16;

/// The block device.
pub struct Block {
    file: Arc<File>,
    read_only: bool,
    capacity: u64,
    serial: [u8; VIRTIO_BLK_ID_BYTES],
    config: Vec<u8>,
}

/// 64-bit FNV-1a: a stable (toolchain-independent) hash for the disk serial;
/// hand-rolled because it is four lines and needs no dependency.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// GET_ID answer: "bh-" and 16 hex digits of the image path's hash, NUL-padded.
fn serial_for(path: &Path) -> [u8; VIRTIO_BLK_ID_BYTES] {
    let canon = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let text = format!("bh-{:016x}", fnv1a(canon.as_os_str().as_encoded_bytes()));
    let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
    let n = text.len().min(VIRTIO_BLK_ID_BYTES);
    id[..n].copy_from_slice(&text.as_bytes()[..n]);
    id
}

/// Size in bytes of the block device open as `file` (BLKGETSIZE64).
fn block_device_size(file: &File) -> io::Result<u64> {
    // _IOR(0x12, 114, size_t) from <linux/fs.h>; the libc crate has no constant.
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut bytes: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid
    // for the duration of the call; the fd is a live block device.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut bytes) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(bytes)
}

impl Block {
    /// Open the raw image at `path`, a regular file or a block device;
    /// capacity is its size in whole sectors. A block device is opened with
    /// `O_EXCL`, so one that is mounted (or held by another exclusive opener)
    /// is refused instead of being written under a file system's feet.
    pub fn new(path: impl AsRef<Path>, read_only: bool) -> Result<Block, Error> {
        let path = path.as_ref();
        let open_err = |source: io::Error| Error::OpenDisk {
            path: path.display().to_string(),
            source,
        };
        let kind = std::fs::metadata(path).map_err(open_err)?.file_type();
        let is_blockdev = kind.is_block_device();
        if !kind.is_file() && !is_blockdev {
            return Err(open_err(io::Error::other(
                "neither a regular file nor a block device",
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(if is_blockdev { libc::O_EXCL } else { 0 })
            .open(path)
            .map_err(open_err)?;
        // Checked again on the open file: the path may have been swapped.
        let meta = file.metadata().map_err(open_err)?;
        let bytes = if meta.file_type().is_block_device() {
            block_device_size(&file).map_err(open_err)?
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(open_err(io::Error::other(
                "neither a regular file nor a block device",
            )));
        };
        let capacity = bytes / SECTOR_SIZE;
        // struct virtio_blk_config up to blk_size (offset 20), rest zero.
        let mut config = vec![0u8; 64];
        config[0..8].copy_from_slice(&capacity.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        Ok(Block {
            file: Arc::new(file),
            read_only,
            capacity,
            serial: serial_for(path),
            config,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The 20-byte GET_ID answer.
    pub fn serial(&self) -> [u8; VIRTIO_BLK_ID_BYTES] {
        self.serial
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// `preadv`/`pwritev` of the whole of `iov` at `offset`, resuming after short
/// transfers and EINTR, at most `IOV_MAX` pieces a call. `Err(bytes done)` on
/// an error or end of file. std has no positional vectored I/O, hence libc.
fn vectored_io(
    file: &File,
    iov: &mut [libc::iovec],
    offset: u64,
    dir: Direction,
) -> Result<(), u64> {
    const IOV_MAX: usize = 1024;
    let mut done = 0u64;
    let mut start = 0usize;
    while start < iov.len() {
        let end = (start + IOV_MAX).min(iov.len());
        let batch = &iov[start..end];
        let Ok(off) = libc::off_t::try_from(offset + done) else {
            return Err(done);
        };
        // SAFETY: every iovec points into guest memory that stays mapped while
        // the device runs (`Chain::iovecs`), the count matches the slice, and
        // the kernel checks the ranges itself.
        let n = unsafe {
            match dir {
                Direction::Read => {
                    libc::preadv(file.as_raw_fd(), batch.as_ptr(), batch.len() as i32, off)
                }
                Direction::Write => {
                    libc::pwritev(file.as_raw_fd(), batch.as_ptr(), batch.len() as i32, off)
                }
            }
        };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(done);
        }
        if n == 0 {
            return Err(done);
        }
        let mut n = n as usize;
        done += n as u64;
        // Drop the pieces done; trim a partly done one.
        while n > 0 && start < iov.len() {
            let piece = &mut iov[start];
            if n >= piece.iov_len {
                n -= piece.iov_len;
                start += 1;
            } else {
                // SAFETY: stays inside the same piece of guest memory.
                piece.iov_base = unsafe { piece.iov_base.cast::<u8>().add(n) }.cast();
                piece.iov_len -= n;
                n = 0;
            }
        }
        while start < iov.len() && iov[start].iov_len == 0 {
            start += 1;
        }
    }
    Ok(())
}

/// Worker state of an activated Block.
pub struct BlockBackend {
    file: Arc<File>,
    read_only: bool,
    capacity: u64,
    serial: [u8; VIRTIO_BLK_ID_BYTES],
}

impl BlockBackend {
    pub fn new(file: Arc<File>, read_only: bool, serial: [u8; VIRTIO_BLK_ID_BYTES]) -> Self {
        let capacity = file.metadata().map(|m| m.len() / SECTOR_SIZE).unwrap_or(0);
        BlockBackend {
            file,
            read_only,
            capacity,
            serial,
        }
    }

    /// Whether `len` bytes at `sector` are inside the disk.
    fn in_range(&self, sector: u64, len: u64) -> bool {
        sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|start| start.checked_add(len))
            .is_some_and(|end| end <= self.capacity * SECTOR_SIZE)
    }

    /// Execute one request; returns (status, bytes written into the
    /// device-writable data part before the status byte).
    fn execute(&mut self, ctx: &Ctx, chain: &Chain, data_in: u64) -> (u8, u64) {
        let mut hdr = [0u8; HEADER_LEN as usize];
        if chain.read_at(&ctx.mem, 0, &mut hdr) != hdr.len() {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&hdr[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        match kind {
            VIRTIO_BLK_T_IN => {
                let len = data_in;
                if len & (SECTOR_SIZE - 1) != 0 || len > MAX_TRANSFER || !self.in_range(sector, len)
                {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                // Straight into guest memory: no bounce buffer, no copy.
                let Some(mut iov) = chain.iovecs(&ctx.mem, true, 0, len) else {
                    return (VIRTIO_BLK_S_IOERR, 0);
                };
                match vectored_io(&self.file, &mut iov, sector * SECTOR_SIZE, Direction::Read) {
                    Ok(()) => (VIRTIO_BLK_S_OK, len),
                    Err(done) => (VIRTIO_BLK_S_IOERR, done),
                }
            }
            VIRTIO_BLK_T_OUT => {
                let len = chain.readable_len().saturating_sub(HEADER_LEN);
                if self.read_only
                    || len & (SECTOR_SIZE - 1) != 0
                    || len > MAX_TRANSFER
                    || !self.in_range(sector, len)
                {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let Some(mut iov) = chain.iovecs(&ctx.mem, false, HEADER_LEN, len) else {
                    return (VIRTIO_BLK_S_IOERR, 0);
                };
                match vectored_io(&self.file, &mut iov, sector * SECTOR_SIZE, Direction::Write) {
                    Ok(()) => (VIRTIO_BLK_S_OK, 0),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            VIRTIO_BLK_T_FLUSH => {
                if self.read_only {
                    return (VIRTIO_BLK_S_OK, 0);
                }
                match self.file.sync_data() {
                    Ok(()) => (VIRTIO_BLK_S_OK, 0),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            VIRTIO_BLK_T_GET_ID => {
                let n = (data_in as usize).min(VIRTIO_BLK_ID_BYTES);
                let w = chain.write_at(&ctx.mem, 0, &self.serial[..n]);
                (VIRTIO_BLK_S_OK, w as u64)
            }
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }

    fn handle(&mut self, ctx: &mut Ctx, q: usize, chain: Chain) {
        let writable = chain.writable_len();
        if !chain.valid || writable == 0 {
            // Nowhere to put the status byte: return the chain untouched.
            ctx.complete(q, chain.head, 0);
            return;
        }
        let data_in = writable - 1;
        let (status, data_len) = self.execute(ctx, &chain, data_in);
        let written = chain.write_at(&ctx.mem, data_in, &[status]);
        let used = data_len + written as u64;
        ctx.complete(q, chain.head, u32::try_from(used).unwrap_or(u32::MAX));
    }
}

impl Backend for BlockBackend {
    fn queue_event(&mut self, ctx: &mut Ctx, q: usize) {
        for _ in 0..CHAIN_BUDGET {
            let Some(chain) = ctx.pop(q) else {
                return;
            };
            self.handle(ctx, q, chain);
        }
        ctx.requeue(q);
    }

    fn snapshot(&self) -> Value {
        json!({"capacity": self.capacity, "read_only": self.read_only})
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE);
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, act: Activation) -> Result<WorkerHandle, Error> {
        let mut backend = BlockBackend::new(self.file.clone(), self.read_only, self.serial);
        backend.capacity = self.capacity;
        worker::spawn("virtio-blk", backend, act)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    /// An anonymous file of `len` bytes, byte i = i * 7 mod 251.
    fn scratch_file(len: usize) -> File {
        let mut f = super::super::testing::memfd(0);
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        f.write_all(&data).unwrap();
        f
    }

    #[test]
    fn vectored_io_spans_more_pieces_than_one_call_takes() {
        // 1500 one-byte pieces, out of order in memory: more than IOV_MAX, so
        // two calls, and every byte must land where its piece points.
        let f = scratch_file(4096);
        let mut buf = vec![0u8; 1500];
        let mut iov: Vec<libc::iovec> = (0..1500)
            .rev()
            .map(|i| libc::iovec {
                iov_base: buf[i..].as_mut_ptr().cast(),
                iov_len: 1,
            })
            .collect();
        vectored_io(&f, &mut iov, 100, Direction::Read).unwrap();
        for (k, i) in (0..1500).rev().enumerate() {
            assert_eq!(buf[i], ((100 + k) * 7 % 251) as u8, "byte {k}");
        }
        // And back out, at another offset.
        let mut iov: Vec<libc::iovec> = vec![libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        vectored_io(&f, &mut iov, 2000, Direction::Write).unwrap();
        let mut g = f.try_clone().unwrap();
        g.seek(std::io::SeekFrom::Start(2000)).unwrap();
        let mut back = vec![0u8; 1500];
        g.read_exact(&mut back).unwrap();
        assert_eq!(back, buf);
    }

    #[test]
    fn vectored_io_reports_end_of_file_with_bytes_done() {
        let f = scratch_file(1000);
        let mut buf = vec![0u8; 600];
        let mut iov = vec![libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        assert_eq!(vectored_io(&f, &mut iov, 700, Direction::Read), Err(300));
    }
}
