//! Unit tests for the virtio transport and devices: a hand-written driver
//! (`testing`) lays out split virtqueues in real guest memory, activates the
//! device through the MMIO registers, and checks the effects on real files,
//! Unix sockets and TAP devices.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::block::*;
use super::mmio::*;
use super::testing::*;
use super::vsock::*;
use super::*;
use crate::devices::BusDevice;

const MEM_SIZE: usize = 16 << 20;
const QUEUE_BASE: u64 = 0x10000;
const BUF_BASE: u64 = 0x100000;

/// A directory under /tmp removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "bh-virtio-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A device behind a transport plus the driver-side queues.
struct Harness {
    mem: GuestMemoryMmap,
    t: MmioTransport,
    queues: Vec<TestQueue>,
}

impl Harness {
    fn new(dev: Box<dyn VirtioDevice>, queue_size: u16) -> Harness {
        let mem = guest_memory(MEM_SIZE);
        let n = dev.queue_max_sizes().len();
        let t = MmioTransport::new(dev, mem.clone()).expect("transport");
        let queues = (0..n)
            .map(|i| TestQueue::new(&mem, QUEUE_BASE + 0x10000 * i as u64, queue_size))
            .collect();
        Harness { mem, t, queues }
    }

    fn init(&mut self, features: u64) -> u32 {
        let queues = self.queues.clone();
        driver_init(&mut self.t, features, &queues)
    }

    fn notify(&mut self, q: usize) {
        // The monitor routes this through an ioeventfd; the MMIO path must
        // work too.
        wr(&mut self.t, 0x50, q as u32);
    }

    fn wait(&mut self, q: usize) -> (u32, u32) {
        self.queues[q]
            .wait_used(&self.mem, 10)
            .expect("device did not return the buffer within 10 s")
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(addr))
            .expect("read");
        v
    }

    fn write(&self, addr: u64, data: &[u8]) {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .expect("write");
    }
}

const DRIVER_OK_STATUS: u32 =
    STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

// ---------------------------------------------------------------- transport

#[test]
fn mmio_identification_registers() {
    let mut h = Harness::new(Box::new(Rng::new()), 16);
    assert_eq!(rd(&mut h.t, 0x000), 0x7472_6976);
    assert_eq!(rd(&mut h.t, 0x004), 2);
    assert_eq!(rd(&mut h.t, 0x008), TYPE_RNG);
    assert_eq!(rd(&mut h.t, 0x00c), VENDOR_ID);
    wr(&mut h.t, 0x014, 1);
    assert_eq!(rd(&mut h.t, 0x010), 1, "VERSION_1 is bit 0 of word 1");
    wr(&mut h.t, 0x014, 0);
    // Word 0: the ring features every device offers (indirect descriptors,
    // EVENT_IDX); the entropy device has none of its own.
    assert_eq!(
        rd(&mut h.t, 0x010),
        (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX)
    );
    wr(&mut h.t, 0x030, 0);
    assert_eq!(rd(&mut h.t, 0x034), 256);
    wr(&mut h.t, 0x030, 1);
    assert_eq!(rd(&mut h.t, 0x034), 0, "queue 1 does not exist");
    // A 1-byte register access reads as zero.
    let mut b = [0xffu8; 1];
    h.t.read(0, &mut b);
    assert_eq!(b, [0]);
}

#[test]
fn mmio_refuses_driver_without_version_1() {
    let mut h = Harness::new(Box::new(Rng::new()), 16);
    wr(&mut h.t, 0x70, STATUS_ACKNOWLEDGE);
    wr(&mut h.t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(&mut h.t, 0x24, 0);
    wr(&mut h.t, 0x20, 0);
    wr(&mut h.t, 0x24, 1);
    wr(&mut h.t, 0x20, 0);
    wr(
        &mut h.t,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    assert_eq!(rd(&mut h.t, 0x70) & STATUS_FEATURES_OK, 0);
    // Unoffered features are refused too.
    wr(&mut h.t, 0x70, 0);
    let s = driver_init(&mut h.t, 1 << 3, &h.queues.clone());
    assert_eq!(s & STATUS_FEATURES_OK, 0);
    // The correct set is accepted.
    let s = h.init(0);
    assert_eq!(s, DRIVER_OK_STATUS);
    assert!(h.t.is_activated());
}

fn setup_until_features_ok(t: &mut MmioTransport) {
    wr(t, 0x70, 0);
    wr(t, 0x70, STATUS_ACKNOWLEDGE);
    wr(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(t, 0x24, 1);
    wr(t, 0x20, 1);
    wr(
        t,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    assert_ne!(rd(t, 0x70) & STATUS_FEATURES_OK, 0);
}

fn assert_needs_reset(t: &mut MmioTransport, what: &str) {
    assert_ne!(
        rd(t, 0x70) & STATUS_NEEDS_RESET,
        0,
        "{what}: expected DEVICE_NEEDS_RESET"
    );
    assert!(t.device_error().is_some());
    assert!(!t.is_activated());
    // Reset recovers.
    wr(t, 0x70, 0);
    assert_eq!(rd(t, 0x70), 0);
    assert!(t.device_error().is_none());
}

#[test]
fn mmio_rejects_invalid_queue_configuration() {
    let mut h = Harness::new(Box::new(Rng::new()), 16);
    // Size not a power of two.
    setup_until_features_ok(&mut h.t);
    wr(&mut h.t, 0x30, 0);
    wr(&mut h.t, 0x38, 3);
    assert_needs_reset(&mut h.t, "queue size 3");
    // Size above the maximum.
    setup_until_features_ok(&mut h.t);
    wr(&mut h.t, 0x38, 512);
    assert_needs_reset(&mut h.t, "queue size 512");
    // Rings outside guest memory.
    setup_until_features_ok(&mut h.t);
    wr(&mut h.t, 0x38, 16);
    wr(&mut h.t, 0x80, 0);
    wr(&mut h.t, 0x84, 0x10);
    wr(&mut h.t, 0x90, 0x2000);
    wr(&mut h.t, 0xa0, 0x3000);
    wr(&mut h.t, 0x44, 1);
    assert_needs_reset(&mut h.t, "descriptor table above memory");
    // Misaligned descriptor table.
    setup_until_features_ok(&mut h.t);
    wr(&mut h.t, 0x80, 0x1008);
    wr(&mut h.t, 0x90, 0x2000);
    wr(&mut h.t, 0xa0, 0x3000);
    wr(&mut h.t, 0x44, 1);
    assert_needs_reset(&mut h.t, "misaligned descriptor table");
    // Driver area at address 0.
    setup_until_features_ok(&mut h.t);
    wr(&mut h.t, 0x80, 0x1000);
    wr(&mut h.t, 0x90, 0);
    wr(&mut h.t, 0xa0, 0x3000);
    wr(&mut h.t, 0x44, 1);
    assert_needs_reset(&mut h.t, "driver area at 0");
    // Used ring straddling the end of memory.
    setup_until_features_ok(&mut h.t);
    wr(&mut h.t, 0x80, 0x1000);
    wr(&mut h.t, 0x90, 0x2000);
    wr(&mut h.t, 0xa0, MEM_SIZE as u32 - 8);
    wr(&mut h.t, 0x44, 1);
    assert_needs_reset(&mut h.t, "used ring at end of memory");
    // DRIVER_OK with a queue that is not ready.
    setup_until_features_ok(&mut h.t);
    wr(
        &mut h.t,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    assert_needs_reset(&mut h.t, "DRIVER_OK without ready queue");
    // Queue configuration before FEATURES_OK.
    wr(&mut h.t, 0x70, STATUS_ACKNOWLEDGE);
    wr(&mut h.t, 0x38, 16);
    assert_needs_reset(&mut h.t, "queue set up before FEATURES_OK");
    // Clearing status bits without reset.
    setup_until_features_ok(&mut h.t);
    wr(&mut h.t, 0x70, STATUS_ACKNOWLEDGE);
    assert_needs_reset(&mut h.t, "cleared status bits");
    // DRIVER_OK before FEATURES_OK.
    wr(
        &mut h.t,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
    );
    assert_needs_reset(&mut h.t, "DRIVER_OK before FEATURES_OK");
    // After all that, a correct driver still gets a working device.
    assert_eq!(h.init(0), DRIVER_OK_STATUS);
}

#[test]
fn mmio_queue_notify_and_interrupt_eventfds() {
    let mut h = Harness::new(Box::new(Rng::new()), 16);
    // Before activation a QueueNotify write lands in the queue's eventfd.
    wr(&mut h.t, 0x50, 0);
    assert_eq!(h.t.queue_events()[0].read().expect("eventfd"), 1);
    // Out-of-range queue index is ignored.
    wr(&mut h.t, 0x50, 7);
    assert_eq!(h.init(0), DRIVER_OK_STATUS);
    let addr = BUF_BASE;
    h.queues[0].add_chain(&h.mem, &[(addr, 64, true)]);
    h.notify(0);
    h.wait(0);
    // The used-buffer interrupt was raised through the irqfd.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rd(&mut h.t, 0x60) & INT_USED_RING == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(rd(&mut h.t, 0x60), INT_USED_RING);
    assert!(h.t.interrupt_event().read().expect("irqfd") >= 1);
    wr(&mut h.t, 0x64, INT_USED_RING);
    assert_eq!(rd(&mut h.t, 0x60), 0);
}

#[test]
fn no_interrupt_flag_suppresses_used_interrupts() {
    let mut h = Harness::new(Box::new(Rng::new()), 16);
    assert_eq!(h.init(0), DRIVER_OK_STATUS);
    let avail = h.queues[0].avail;
    // Driver asks for quiet (VRING_AVAIL_F_NO_INTERRUPT).
    h.write(avail, &1u16.to_le_bytes());
    h.queues[0].add_chain(&h.mem, &[(BUF_BASE, 16, true)]);
    h.notify(0);
    assert_eq!(h.wait(0).1, 16);
    // pause() returns after the worker signalled (or, here, suppressed)
    // everything it completed.
    h.t.pause();
    assert_eq!(rd(&mut h.t, 0x60), 0, "interrupt despite NO_INTERRUPT");
    // Interrupts wanted again.
    h.write(avail, &0u16.to_le_bytes());
    h.queues[0].add_chain(&h.mem, &[(BUF_BASE + 0x100, 16, true)]);
    h.notify(0);
    h.t.resume();
    assert_eq!(h.wait(0).1, 16);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rd(&mut h.t, 0x60) & INT_USED_RING == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(rd(&mut h.t, 0x60), INT_USED_RING);
    assert_eq!(
        h.t.interrupt_event().read().expect("irqfd"),
        1,
        "one interrupt"
    );
}

#[test]
fn activation_while_paused_starts_a_paused_worker() {
    let mut h = Harness::new(Box::new(Rng::new()), 16);
    h.t.pause();
    assert_eq!(h.init(0), DRIVER_OK_STATUS);
    h.queues[0].add_chain(&h.mem, &[(BUF_BASE, 16, true)]);
    h.notify(0);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(h.queues[0].pop_used(&h.mem), None, "served while paused");
    h.t.resume();
    assert_eq!(h.wait(0).1, 16);
}

// --------------------------------------------------------------------- rng

#[test]
fn rng_fills_guest_buffers() {
    let mut h = Harness::new(Box::new(Rng::new()), 16);
    assert_eq!(h.init(0), DRIVER_OK_STATUS);
    // One chain split over two descriptors, another single one.
    h.queues[0].add_chain(
        &h.mem,
        &[(BUF_BASE, 100, true), (BUF_BASE + 0x1000, 28, true)],
    );
    h.queues[0].add_chain(&h.mem, &[(BUF_BASE + 0x2000, 256, true)]);
    h.notify(0);
    assert_eq!(h.wait(0), (0, 128));
    assert_eq!(h.wait(0), (2, 256));
    let a = h.read(BUF_BASE, 100);
    let b = h.read(BUF_BASE + 0x1000, 28);
    let c = h.read(BUF_BASE + 0x2000, 256);
    assert!(a.iter().any(|&x| x != 0) && b.iter().any(|&x| x != 0));
    assert_ne!(&a[..64], &c[..64], "two requests got the same bytes");
    // Bytes past the buffer are untouched.
    assert_eq!(h.read(BUF_BASE + 100, 8), vec![0u8; 8]);
    // A read-only descriptor gets nothing written.
    h.queues[0].add_chain(&h.mem, &[(BUF_BASE + 0x3000, 64, false)]);
    h.notify(0);
    assert_eq!(h.wait(0).1, 0);
    assert_eq!(h.read(BUF_BASE + 0x3000, 64), vec![0u8; 64]);
}

// ------------------------------------------------------------------- block

struct Disk {
    _dir: TempDir,
    path: PathBuf,
}

/// A 64 KiB image whose sector i is filled with byte i.
fn disk() -> Disk {
    let dir = TempDir::new("blk");
    let path = dir.0.join("disk.img");
    let mut data = vec![0u8; 64 * 1024];
    for (i, chunk) in data.chunks_mut(512).enumerate() {
        chunk.fill(i as u8);
    }
    std::fs::write(&path, &data).expect("write image");
    Disk { _dir: dir, path }
}

const HDR: u64 = BUF_BASE;
const DATA: u64 = BUF_BASE + 0x1000;
const STATUS: u64 = BUF_BASE + 0x10000;

impl Harness {
    fn blk_header(&self, kind: u32, sector: u64) {
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        self.write(HDR, &hdr);
        self.write(STATUS, &[0xff]);
    }

    /// Submit a request; `data` = (len, device-writable); returns (used len, status).
    fn blk_request(&mut self, kind: u32, sector: u64, data: Option<(u32, bool)>) -> (u32, u8) {
        self.blk_header(kind, sector);
        let mut chain = vec![(HDR, 16, false)];
        if let Some((len, w)) = data {
            chain.push((DATA, len, w));
        }
        chain.push((STATUS, 1, true));
        let head = self.queues[0].add_chain(&self.mem, &chain);
        self.notify(0);
        let (id, len) = self.wait(0);
        assert_eq!(id, u32::from(head));
        (len, self.read(STATUS, 1)[0])
    }
}

#[test]
fn blk_reads_writes_flushes() {
    let d = disk();
    let blk = Block::new(&d.path, false).expect("open");
    assert_eq!(blk.capacity(), 128);
    let mut h = Harness::new(Box::new(blk), 64);
    let f = (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX) | (1 << VIRTIO_BLK_F_BLK_SIZE);
    assert_eq!(h.init(f), DRIVER_OK_STATUS);
    // Config space: capacity, seg_max, blk_size.
    let mut cap = [0u8; 8];
    h.t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 128);
    assert_eq!(rd(&mut h.t, 0x100 + 12), SEG_MAX);
    assert_eq!(rd(&mut h.t, 0x100 + 20), 512);

    // IN: sectors 3..5.
    assert_eq!(
        h.blk_request(VIRTIO_BLK_T_IN, 3, Some((1024, true))),
        (1025, VIRTIO_BLK_S_OK)
    );
    let got = h.read(DATA, 1024);
    assert!(got[..512].iter().all(|&b| b == 3) && got[512..].iter().all(|&b| b == 4));

    // OUT: sector 10 := 0xAB, then read it back from the file.
    h.write(DATA, &[0xab; 512]);
    assert_eq!(
        h.blk_request(VIRTIO_BLK_T_OUT, 10, Some((512, false))),
        (1, VIRTIO_BLK_S_OK)
    );
    let file = std::fs::File::open(&d.path).expect("open image");
    let mut sector = [0u8; 512];
    file.read_exact_at(&mut sector, 10 * 512)
        .expect("read image");
    assert_eq!(sector, [0xab; 512]);

    // FLUSH.
    assert_eq!(
        h.blk_request(VIRTIO_BLK_T_FLUSH, 0, None),
        (1, VIRTIO_BLK_S_OK)
    );

    // Out of range: last sector + 1, and a read straddling the end.
    assert_eq!(
        h.blk_request(VIRTIO_BLK_T_IN, 128, Some((512, true))).1,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        h.blk_request(VIRTIO_BLK_T_IN, 127, Some((1024, true))).1,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        h.blk_request(VIRTIO_BLK_T_OUT, u64::MAX / 256, Some((512, false)))
            .1,
        VIRTIO_BLK_S_IOERR
    );
    // Last sector is fine.
    assert_eq!(
        h.blk_request(VIRTIO_BLK_T_IN, 127, Some((512, true))).1,
        VIRTIO_BLK_S_OK
    );
    assert!(h.read(DATA, 512).iter().all(|&b| b == 127));

    // GET_ID: 20 bytes, stable for the path.
    let (len, st) = h.blk_request(VIRTIO_BLK_T_GET_ID, 0, Some((20, true)));
    assert_eq!((len, st), (21, VIRTIO_BLK_S_OK));
    let id = h.read(DATA, 20);
    assert!(id.starts_with(b"bh-"));
    assert_eq!(
        id,
        Block::new(&d.path, true).expect("reopen").serial().to_vec()
    );

    // Unknown request type.
    assert_eq!(h.blk_request(0x77, 0, None).1, VIRTIO_BLK_S_UNSUPP);
    // Data length not a multiple of 512.
    assert_eq!(
        h.blk_request(VIRTIO_BLK_T_IN, 0, Some((100, true))).1,
        VIRTIO_BLK_S_IOERR
    );
}

#[test]
fn blk_read_only_refuses_writes() {
    let d = disk();
    let blk = Block::new(&d.path, true).expect("open");
    let mut h = Harness::new(Box::new(blk), 64);
    wr(&mut h.t, 0x14, 0);
    assert_ne!(rd(&mut h.t, 0x10) & (1 << VIRTIO_BLK_F_RO), 0, "RO offered");
    assert_eq!(h.init(1 << VIRTIO_BLK_F_RO), DRIVER_OK_STATUS);
    h.write(DATA, &[0xcd; 512]);
    assert_eq!(
        h.blk_request(VIRTIO_BLK_T_OUT, 1, Some((512, false))).1,
        VIRTIO_BLK_S_IOERR
    );
    let file = std::fs::File::open(&d.path).expect("open image");
    let mut sector = [0u8; 512];
    file.read_exact_at(&mut sector, 512).expect("read image");
    assert_eq!(sector, [1u8; 512], "read-only image was modified");
    assert_eq!(
        h.blk_request(VIRTIO_BLK_T_IN, 1, Some((512, true))).1,
        VIRTIO_BLK_S_OK
    );
}

#[test]
fn blk_open_error_names_the_file() {
    let e = Block::new("/nonexistent/bh.img", false)
        .err()
        .expect("must fail");
    assert!(
        e.to_string()
            .starts_with("cannot open disk image \"/nonexistent/bh.img\""),
        "{e}"
    );
}

/// A loop device over a file, detached on drop.
struct LoopDev(String);

impl Drop for LoopDev {
    fn drop(&mut self) {
        run("losetup", &["-d", &self.0]);
    }
}

#[test]
fn blk_on_a_block_device() {
    let d = disk();
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&d.path)
        .output();
    let dev = match out {
        Ok(o) if o.status.success() => {
            LoopDev(String::from_utf8_lossy(&o.stdout).trim().to_string())
        }
        Ok(o) => {
            println!(
                "SKIPPED: cannot attach a loop device: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            println!("SKIPPED: losetup: {e}");
            return;
        }
    };
    // Capacity comes from BLKGETSIZE64, not st_size (0 for a device node).
    let blk = Block::new(&dev.0, false).expect("open the loop device");
    assert_eq!(blk.capacity(), 128);
    // Exclusive: a second monitor cannot open the same device.
    let e = Block::new(&dev.0, true)
        .err()
        .expect("second opener refused");
    assert!(e.to_string().contains(&dev.0), "{e}");
    let mut h = Harness::new(Box::new(blk), 64);
    assert_eq!(h.init(1 << VIRTIO_BLK_F_FLUSH), DRIVER_OK_STATUS);
    assert_eq!(
        h.blk_request(VIRTIO_BLK_T_IN, 5, Some((512, true))),
        (513, VIRTIO_BLK_S_OK)
    );
    assert!(h.read(DATA, 512).iter().all(|&b| b == 5));
    h.write(DATA, &[0x5a; 512]);
    assert_eq!(
        h.blk_request(VIRTIO_BLK_T_OUT, 9, Some((512, false))).1,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(
        h.blk_request(VIRTIO_BLK_T_FLUSH, 0, None).1,
        VIRTIO_BLK_S_OK
    );
    drop(h);
    drop(dev);
    // The write went through the device into the backing file.
    let file = std::fs::File::open(&d.path).expect("open image");
    let mut sector = [0u8; 512];
    file.read_exact_at(&mut sector, 9 * 512)
        .expect("read image");
    assert_eq!(sector, [0x5a; 512]);
}

#[test]
fn blk_refuses_other_file_kinds() {
    let e = Block::new("/dev/null", false)
        .err()
        .expect("a character device");
    assert!(
        e.to_string()
            .contains("neither a regular file nor a block device"),
        "{e}"
    );
}

#[test]
fn blk_data_split_over_odd_descriptors() {
    // Linux splits requests at page boundaries, not sector ones: data in
    // pieces of 100, 412 and 1024 bytes, read and written straight into and
    // out of guest memory.
    let d = disk();
    let mut h = Harness::new(Box::new(Block::new(&d.path, false).expect("open")), 64);
    assert_eq!(h.init(0), DRIVER_OK_STATUS);
    let pieces = [(DATA, 100u32), (DATA + 0x1000, 412), (DATA + 0x3000, 1024)];
    let submit = |h: &mut Harness, kind: u32, sector: u64, write: bool| -> (u32, u8) {
        h.blk_header(kind, sector);
        let mut chain = vec![(HDR, 16, false)];
        chain.extend(pieces.iter().map(|&(a, l)| (a, l, write)));
        chain.push((STATUS, 1, true));
        let head = h.queues[0].add_chain(&h.mem, &chain);
        h.notify(0);
        let (id, len) = h.wait(0);
        assert_eq!(id, u32::from(head));
        (len, h.read(STATUS, 1)[0])
    };
    // IN of sectors 4..7: byte i of the transfer is sector 4 + i / 512's fill.
    assert_eq!(
        submit(&mut h, VIRTIO_BLK_T_IN, 4, true),
        (1537, VIRTIO_BLK_S_OK)
    );
    let got: Vec<u8> = pieces
        .iter()
        .flat_map(|&(a, l)| h.read(a, l as usize))
        .collect();
    let want: Vec<u8> = (0..1536).map(|i| (4 + i / 512) as u8).collect();
    assert_eq!(got, want);
    // OUT of the same pieces to sectors 20..23, after changing them.
    for (n, &(a, l)) in pieces.iter().enumerate() {
        h.write(a, &vec![0xc0 + n as u8; l as usize]);
    }
    assert_eq!(
        submit(&mut h, VIRTIO_BLK_T_OUT, 20, false),
        (1, VIRTIO_BLK_S_OK)
    );
    let file = std::fs::File::open(&d.path).expect("open image");
    let mut back = vec![0u8; 1536];
    file.read_exact_at(&mut back, 20 * 512).expect("read image");
    let want: Vec<u8> = pieces
        .iter()
        .enumerate()
        .flat_map(|(n, &(_, l))| vec![0xc0 + n as u8; l as usize])
        .collect();
    assert_eq!(back, want);
}

#[test]
fn blk_survives_hostile_chains() {
    let d = disk();
    let mut h = Harness::new(Box::new(Block::new(&d.path, false).expect("open")), 16);
    assert_eq!(h.init(0), DRIVER_OK_STATUS);
    let q = &mut h.queues[0];
    let mem = &h.mem;
    // 1. A descriptor loop: 0 -> 1 -> 0 -> ... (all device-readable).
    q.write_desc(mem, 0, HDR, 16, 1, 1);
    q.write_desc(mem, 1, DATA, 512, 1, 0);
    q.publish(mem, 0);
    // 2. Descriptor far outside guest memory.
    q.write_desc(mem, 2, 0xffff_ffff_0000, 16, 1, 3);
    q.write_desc(mem, 3, STATUS, 1, 2, 0);
    q.publish(mem, 2);
    // 3. Huge length that wraps the address space.
    q.write_desc(mem, 4, HDR, u32::MAX, 1, 5);
    q.write_desc(mem, 5, u64::MAX - 4, 16, 2, 0);
    q.publish(mem, 4);
    // 4. `next` out of the table, and a zero-length status descriptor.
    q.write_desc(mem, 6, HDR, 16, 1, 200);
    q.publish(mem, 6);
    q.write_desc(mem, 7, HDR, 16, 1, 8);
    q.write_desc(mem, 8, STATUS, 0, 2, 0);
    q.publish(mem, 7);
    // 5. Head index out of range.
    q.publish(mem, 999);
    // 6. Indirect descriptor pointing at garbage.
    q.write_desc(mem, 9, DATA, 0xfff0, 4, 0);
    q.publish(mem, 9);
    h.notify(0);
    // The first five chains come back unused; the bad head index breaks
    // the queue (the driver violated the spec) but nothing hangs or panics.
    for _ in 0..5 {
        let (_, len) = h.wait(0);
        assert!(len <= 1);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rd(&mut h.t, 0x70) & STATUS_NEEDS_RESET == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_ne!(rd(&mut h.t, 0x70) & STATUS_NEEDS_RESET, 0);
    assert_ne!(
        rd(&mut h.t, 0x60) & INT_CONFIG,
        0,
        "config interrupt for NEEDS_RESET"
    );
    // Reset and a fresh, correct driver works again.
    for q in h.queues.iter_mut() {
        *q = TestQueue::new(&h.mem, q.desc, q.size);
    }
    assert_eq!(h.init(0), DRIVER_OK_STATUS);
    assert_eq!(
        h.blk_request(VIRTIO_BLK_T_IN, 2, Some((512, true))).1,
        VIRTIO_BLK_S_OK
    );
    assert!(h.read(DATA, 512).iter().all(|&b| b == 2));
}

#[test]
fn blk_avail_index_jump_needs_reset() {
    let d = disk();
    let mut h = Harness::new(Box::new(Block::new(&d.path, false).expect("open")), 16);
    assert_eq!(h.init(0), DRIVER_OK_STATUS);
    // avail.idx 1000 ahead of the device on a 16-entry queue.
    h.write(h.queues[0].avail + 2, &1000u16.to_le_bytes());
    h.notify(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.t.device_error().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let e = h.t.device_error().expect("NEEDS_RESET");
    assert!(e.contains("queue 0"), "{e}");
}

#[test]
fn blk_pause_resume_and_snapshot_restore() {
    let d = disk();
    let mut h = Harness::new(Box::new(Block::new(&d.path, false).expect("open")), 16);
    assert_eq!(h.init(0), DRIVER_OK_STATUS);
    assert_eq!(
        h.blk_request(VIRTIO_BLK_T_IN, 5, Some((512, true))).1,
        VIRTIO_BLK_S_OK
    );

    // Paused: a request is not served until resume.
    h.t.pause();
    h.blk_header(VIRTIO_BLK_T_IN, 6);
    let head = h.queues[0].add_chain(
        &h.mem,
        &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    );
    h.notify(0);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(h.queues[0].pop_used(&h.mem), None, "served while paused");

    // Snapshot while paused, then move the device to a new transport.
    let snap = h.t.snapshot();
    assert_eq!(snap["queues"][0]["next_avail"], 1);
    assert_eq!(snap["queues"][0]["next_used"], 1);
    assert_eq!(snap["status"], DRIVER_OK_STATUS);
    let text = serde_json::to_string(&snap).expect("json");
    drop(h.t);

    let blk = Block::new(&d.path, false).expect("reopen");
    let mut t2 = MmioTransport::new(Box::new(blk), h.mem.clone()).expect("transport");
    // A wrong device type is refused.
    let mut rng_t = MmioTransport::new(Box::new(Rng::new()), h.mem.clone()).expect("transport");
    assert!(rng_t.restore(&snap).is_err());
    t2.restore(&serde_json::from_str(&text).expect("parse"))
        .expect("restore");
    assert!(t2.is_activated());
    assert_eq!(rd(&mut t2, 0x70), DRIVER_OK_STATUS);
    // The request in flight at snapshot time is served by the restored
    // device without a new notification.
    let (id, len) = h.queues[0]
        .wait_used(&h.mem, 10)
        .expect("served after restore");
    assert_eq!((id, len), (u32::from(head), 513));
    let mut data = vec![0u8; 512];
    h.mem
        .read_slice(&mut data, GuestAddress(DATA))
        .expect("read");
    assert!(data.iter().all(|&b| b == 6));
    let mut st = [0u8; 1];
    h.mem
        .read_slice(&mut st, GuestAddress(STATUS))
        .expect("read");
    assert_eq!(st[0], VIRTIO_BLK_S_OK);
}

// -------------------------------------------------------------------- vsock

const GUEST_CID: u64 = 42;
const RX: usize = 0;
const TX: usize = 1;
const EVT: usize = 2;

struct VsockHarness {
    h: Harness,
    dir: TempDir,
    uds: PathBuf,
    next_rx: u64,
    next_tx: u64,
}

impl VsockHarness {
    fn new() -> VsockHarness {
        let dir = TempDir::new("vsock");
        let uds = dir.0.join("v.sock");
        let dev = Vsock::new(GUEST_CID, uds.clone()).expect("vsock");
        let mut h = Harness::new(Box::new(dev), 64);
        assert_eq!(h.init(0), DRIVER_OK_STATUS);
        let mut cid = [0u8; 8];
        h.t.read(0x100, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
        let mut v = VsockHarness {
            h,
            dir,
            uds,
            next_rx: 0,
            next_tx: 0,
        };
        for _ in 0..8 {
            v.post_rx();
        }
        let evt = BUF_BASE + 0x80_0000;
        v.h.queues[EVT].add_chain(&v.h.mem, &[(evt, 8, true)]);
        v.h.notify(EVT);
        v
    }

    /// Post a 4 KiB rx buffer (header and payload in separate descriptors,
    /// as Linux does).
    fn post_rx(&mut self) {
        let base = BUF_BASE + 0x2000 * (self.next_rx % 32);
        self.next_rx += 1;
        self.h.queues[RX].add_chain(
            &self.h.mem,
            &[(base, HDR_LEN as u32, true), (base + 0x100, 4096, true)],
        );
        self.h.notify(RX);
    }

    /// Next packet the device put in the rx queue.
    fn recv(&mut self) -> (Hdr, Vec<u8>) {
        let (id, len) = self.h.wait(RX);
        let base = self.h.queues[RX].desc;
        let mut d = [0u8; 8];
        self.h
            .mem
            .read_slice(&mut d, GuestAddress(base + 16 * u64::from(id)))
            .expect("desc");
        let addr = u64::from_le_bytes(d);
        let hb: [u8; HDR_LEN] = self.h.read(addr, HDR_LEN).try_into().expect("hdr");
        let hdr = Hdr::parse(&hb);
        assert!(len as usize >= HDR_LEN);
        assert_eq!(len as usize, HDR_LEN + hdr.len as usize);
        let payload = self.h.read(addr + 0x100, hdr.len as usize);
        self.post_rx();
        (hdr, payload)
    }

    fn send(&mut self, hdr: Hdr, payload: &[u8]) {
        let base = BUF_BASE + 0x40_0000 + 0x2_0000 * (self.next_tx % 16);
        self.next_tx += 1;
        self.h.write(base, &hdr.bytes());
        self.h.write(base + HDR_LEN as u64, payload);
        let mut chain = vec![(base, HDR_LEN as u32, false)];
        if !payload.is_empty() {
            chain.push((base + HDR_LEN as u64, payload.len() as u32, false));
        }
        self.h.queues[TX].add_chain(&self.h.mem, &chain);
        self.h.notify(TX);
        self.h.wait(TX);
    }

    fn pkt(&self, op: u16, guest_port: u32, host_port: u32, len: u32) -> Hdr {
        Hdr {
            src_cid: GUEST_CID,
            dst_cid: VSOCK_HOST_CID,
            src_port: guest_port,
            dst_port: host_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        }
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).expect("read line") == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).expect("utf8")
}

#[test]
fn vsock_host_initiated_connection() {
    let mut v = VsockHarness::new();
    let mut client = UnixStream::connect(&v.uds).expect("connect uds");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    client.write_all(b"CONNECT 1234\n").expect("send CONNECT");

    let (req, _) = v.recv();
    assert_eq!(req.op, OP_REQUEST);
    assert_eq!(
        (req.src_cid, req.dst_cid, req.dst_port),
        (2, GUEST_CID, 1234)
    );
    assert_eq!(req.kind, TYPE_STREAM);
    assert_eq!(req.buf_alloc, CONN_BUF_ALLOC);
    let host_port = req.src_port;

    let resp = v.pkt(OP_RESPONSE, 1234, host_port, 0);
    v.send(resp, &[]);
    assert_eq!(read_line(&mut client), format!("OK {host_port}"));

    // host -> guest
    client.write_all(b"hello guest").expect("write");
    let (rw, data) = v.recv();
    assert_eq!((rw.op, rw.src_port, rw.dst_port), (OP_RW, host_port, 1234));
    assert_eq!(data, b"hello guest");

    // guest -> host
    let rw = v.pkt(OP_RW, 1234, host_port, 11);
    v.send(rw, b"hello host!");
    let mut buf = [0u8; 11];
    client.read_exact(&mut buf).expect("read from guest");
    assert_eq!(&buf, b"hello host!");

    // Credit request gets a credit update reporting the forwarded bytes.
    v.send(v.pkt(OP_CREDIT_REQUEST, 1234, host_port, 0), &[]);
    let (cu, _) = v.recv();
    assert_eq!(cu.op, OP_CREDIT_UPDATE);
    assert_eq!(cu.fwd_cnt, 11);

    // Guest closes: client sees EOF, guest gets RST.
    let mut sd = v.pkt(OP_SHUTDOWN, 1234, host_port, 0);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    v.send(sd, &[]);
    let (rst, _) = v.recv();
    assert_eq!(rst.op, OP_RST);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).expect("EOF");
    assert!(rest.is_empty());
}

#[test]
fn vsock_host_close_sends_shutdown_and_respects_credit() {
    let mut v = VsockHarness::new();
    let mut client = UnixStream::connect(&v.uds).expect("connect uds");
    client.write_all(b"CONNECT 77\n").expect("send CONNECT");
    let (req, _) = v.recv();
    let hp = req.src_port;
    // The guest grants only 5 bytes of credit.
    let mut resp = v.pkt(OP_RESPONSE, 77, hp, 0);
    resp.buf_alloc = 5;
    v.send(resp, &[]);
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(read_line(&mut client), format!("OK {hp}"));
    client.write_all(b"0123456789").expect("write");
    let (rw, data) = v.recv();
    assert_eq!((rw.op, data.as_slice()), (OP_RW, &b"01234"[..]));
    // Out of credit: the device asks for more instead of sending.
    let (cr, _) = v.recv();
    assert_eq!(cr.op, OP_CREDIT_REQUEST);
    let mut cu = v.pkt(OP_CREDIT_UPDATE, 77, hp, 0);
    cu.buf_alloc = 5;
    cu.fwd_cnt = 5;
    v.send(cu, &[]);
    let (rw, data) = v.recv();
    assert_eq!((rw.op, data.as_slice()), (OP_RW, &b"56789"[..]));
    // Host closes: the guest gets SHUTDOWN(RCV|SEND), answers RST.
    let mut cu = v.pkt(OP_CREDIT_UPDATE, 77, hp, 0);
    cu.buf_alloc = 5;
    cu.fwd_cnt = 10;
    v.send(cu, &[]);
    drop(client);
    let (sd, _) = v.recv();
    assert_eq!(
        (sd.op, sd.flags),
        (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND)
    );
    v.send(v.pkt(OP_RST, 77, hp, 0), &[]);
    // The connection is gone: RW now gets RST.
    v.send(v.pkt(OP_RW, 77, hp, 1), b"x");
    let (rst, _) = v.recv();
    assert_eq!(rst.op, OP_RST);
}

#[test]
fn vsock_unanswered_connect_is_reset() {
    let mut v = VsockHarness::new();
    let mut client = UnixStream::connect(&v.uds).expect("connect uds");
    client
        .set_read_timeout(Some(GUEST_REPLY_TIMEOUT * 5))
        .expect("timeout");
    client.write_all(b"CONNECT 55\n").expect("send CONNECT");
    let (req, _) = v.recv();
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 55));
    // The guest never answers: after GUEST_REPLY_TIMEOUT the device gives up,
    // tells the guest (RST for the same port pair) and closes the client,
    // which never saw `OK`.
    let (rst, _) = v.recv();
    assert_eq!(
        (rst.op, rst.src_port, rst.dst_port),
        (OP_RST, req.src_port, 55)
    );
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .expect("EOF, not a read timeout");
    assert!(rest.is_empty(), "got {rest:?}");
    // A late RESPONSE is for a connection that no longer exists.
    v.send(v.pkt(OP_RESPONSE, 55, req.src_port, 0), &[]);
    assert_eq!(v.recv().0.op, OP_RST);
}

#[test]
fn vsock_silent_host_client_is_disconnected() {
    let v = VsockHarness::new();
    let mut client = UnixStream::connect(&v.uds).expect("connect uds");
    client
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT * 3))
        .expect("timeout");
    // No `CONNECT` line: the device closes the client after HANDSHAKE_TIMEOUT.
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .expect("EOF, not a read timeout");
    assert!(rest.is_empty());
}

#[test]
fn vsock_guest_that_ignores_shutdown_is_reset() {
    let mut v = VsockHarness::new();
    let mut client = UnixStream::connect(&v.uds).expect("connect uds");
    client.write_all(b"CONNECT 66\n").expect("send CONNECT");
    let (req, _) = v.recv();
    let hp = req.src_port;
    v.send(v.pkt(OP_RESPONSE, 66, hp, 0), &[]);
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(read_line(&mut client), format!("OK {hp}"));
    drop(client);
    let (sd, _) = v.recv();
    assert_eq!(sd.op, OP_SHUTDOWN);
    // No RST from the guest: the device resets the connection itself.
    let (rst, _) = v.recv();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, hp, 66));
}

#[test]
fn vsock_guest_initiated_connection() {
    let mut v = VsockHarness::new();
    let listener =
        UnixListener::bind(format!("{}_5000", v.uds.display())).expect("bind host service");
    v.send(v.pkt(OP_REQUEST, 999, 5000, 0), &[]);
    let (resp, _) = v.recv();
    assert_eq!(resp.op, OP_RESPONSE);
    assert_eq!(
        (resp.src_port, resp.dst_port, resp.dst_cid),
        (5000, 999, GUEST_CID)
    );
    let (mut server, _) = listener.accept().expect("accept");
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    v.send(v.pkt(OP_RW, 999, 5000, 4), b"ping");
    let mut b = [0u8; 4];
    server.read_exact(&mut b).expect("read");
    assert_eq!(&b, b"ping");
    server.write_all(b"pong").expect("write");
    let (rw, data) = v.recv();
    assert_eq!((rw.op, data.as_slice()), (OP_RW, &b"pong"[..]));
    // No service on port 5001: RST.
    v.send(v.pkt(OP_REQUEST, 1000, 5001, 0), &[]);
    let (rst, _) = v.recv();
    assert_eq!((rst.op, rst.dst_port), (OP_RST, 1000));
    let _ = &v.dir;
}

#[test]
fn vsock_guest_to_host_stream_follows_credit() {
    const TOTAL: usize = 2 << 20;
    const CHUNK: usize = 64 * 1024;
    let mut v = VsockHarness::new();
    let listener = UnixListener::bind(format!("{}_5100", v.uds.display())).expect("bind");
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut got = Vec::with_capacity(TOTAL);
        let mut buf = [0u8; 4096];
        while got.len() < TOTAL {
            // A slow reader, so the device has to buffer and report credit
            // as the stream drains.
            let n = s.read(&mut buf).expect("read");
            assert!(n > 0, "stream closed after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
            if got.len() % (64 * 1024) < 4096 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        got
    });
    v.send(v.pkt(OP_REQUEST, 4000, 5100, 0), &[]);
    let (resp, _) = v.recv();
    assert_eq!(resp.op, OP_RESPONSE);
    let (buf_alloc, mut peer_fwd) = (resp.buf_alloc as usize, resp.fwd_cnt as usize);
    let pattern: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    let mut sent = 0usize;
    while sent < TOTAL {
        let credit = buf_alloc - (sent - peer_fwd);
        if credit >= CHUNK {
            let h = v.pkt(OP_RW, 4000, 5100, CHUNK as u32);
            v.send(h, &pattern[sent..sent + CHUNK]);
            sent += CHUNK;
        } else {
            // Out of credit: the device must report freed space by itself.
            let (h, _) = v.recv();
            assert_eq!(h.op, OP_CREDIT_UPDATE, "unexpected op {}", h.op);
            peer_fwd = h.fwd_cnt as usize;
        }
    }
    let got = reader.join().expect("reader");
    assert!(got == pattern, "data corrupted on the way to the host");
}

#[test]
fn vsock_restore_sends_transport_reset_event() {
    let mut v = VsockHarness::new();
    let evt_buf = BUF_BASE + 0x80_0000;
    v.h.t.pause();
    let snap = v.h.t.snapshot();
    assert_eq!(snap["device"]["guest_cid"], GUEST_CID);
    let placeholder = MmioTransport::new(Box::new(Rng::new()), v.h.mem.clone()).expect("rng");
    drop(std::mem::replace(&mut v.h.t, placeholder));
    assert!(!v.uds.exists(), "socket file removed with the device");
    v.h.write(evt_buf, &[0xff; 8]);
    let dev = Vsock::new(GUEST_CID, v.uds.clone()).expect("vsock again");
    let mut t = MmioTransport::new(Box::new(dev), v.h.mem.clone()).expect("transport");
    t.restore(&snap).expect("restore");
    v.h.t = t;
    let (id, len) = v.h.queues[EVT].wait_used(&v.h.mem, 10).expect("event");
    assert_eq!((id, len), (0, 4));
    assert_eq!(
        v.h.read(evt_buf, 4),
        EVENT_TRANSPORT_RESET.to_le_bytes().to_vec()
    );
    // The restored device serves new host connections.
    let mut client = UnixStream::connect(&v.uds).expect("connect uds");
    client.write_all(b"CONNECT 9\n").expect("send CONNECT");
    let (req, _) = v.recv();
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 9));
}

#[test]
fn vsock_full_backlog_does_not_stall_the_device() {
    let mut v = VsockHarness::new();
    // A host service that never accepts: its backlog fills up, and further
    // guest connects must fail with RST instead of blocking the worker.
    let stuck = UnixListener::bind(format!("{}_7000", v.uds.display())).expect("bind");
    // SAFETY: listen(2) again on our listening socket only lowers its backlog.
    let rc = unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&stuck), 2) };
    assert_eq!(rc, 0);
    let mut responses = 0;
    let mut resets = 0;
    for port in 0..20u32 {
        v.send(v.pkt(OP_REQUEST, 10_000 + port, 7000, 0), &[]);
        match v.recv().0.op {
            OP_RESPONSE => responses += 1,
            OP_RST => resets += 1,
            op => panic!("unexpected op {op}"),
        }
    }
    assert!(responses > 0, "no connection was accepted into the backlog");
    assert!(resets > 0, "backlog never filled");
    // The device still serves other traffic.
    let mut client = UnixStream::connect(&v.uds).expect("connect uds");
    client.write_all(b"CONNECT 8\n").expect("send CONNECT");
    let (req, _) = v.recv();
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 8));
}

#[test]
fn vsock_hostile_packets_get_rst() {
    let mut v = VsockHarness::new();
    // RW for a connection that does not exist.
    v.send(v.pkt(OP_RW, 1, 2, 3), b"abc");
    assert_eq!(v.recv().0.op, OP_RST);
    // Length field larger than the buffer.
    let p = v.pkt(OP_RW, 1, 2, 60000);
    v.send(p, b"short");
    assert_eq!(v.recv().0.op, OP_RST);
    // Unknown type.
    let mut p = v.pkt(OP_REQUEST, 1, 2, 0);
    p.kind = 9;
    v.send(p, &[]);
    assert_eq!(v.recv().0.op, OP_RST);
    // Spoofed source CID: silently dropped (next answer is for the next packet).
    let mut p = v.pkt(OP_RW, 1, 2, 0);
    p.src_cid = 7;
    v.send(p, &[]);
    // Unknown op on an established connection: RST.
    let listener = UnixListener::bind(format!("{}_6000", v.uds.display())).expect("bind");
    v.send(v.pkt(OP_REQUEST, 5, 6000, 0), &[]);
    assert_eq!(v.recv().0.op, OP_RESPONSE);
    let _server = listener.accept().expect("accept");
    v.send(v.pkt(99, 5, 6000, 0), &[]);
    let (rst, _) = v.recv();
    assert_eq!((rst.op, rst.dst_port), (OP_RST, 5));
    // A header-only chain shorter than 44 bytes is returned unused.
    let base = BUF_BASE + 0x70_0000;
    v.h.queues[TX].add_chain(&v.h.mem, &[(base, 10, false)]);
    v.h.notify(TX);
    assert_eq!(v.h.wait(TX).1, 0);
    // The device still works: bad CONNECT line is dropped, good one works.
    let mut bad = UnixStream::connect(&v.uds).expect("connect");
    bad.write_all(b"HELLO\n").expect("write");
    let mut rest = Vec::new();
    bad.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    bad.read_to_end(&mut rest).expect("closed");
    let mut good = UnixStream::connect(&v.uds).expect("connect");
    good.write_all(b"CONNECT 3\n").expect("write");
    let (req, _) = v.recv();
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 3));
}

#[test]
fn vsock_rejects_bad_cid() {
    let dir = TempDir::new("vsockcid");
    let e = Vsock::new(2, dir.0.join("x")).err().expect("cid 2 refused");
    assert!(e.to_string().contains("CID 2"), "{e}");
}

// ---------------------------------------------------------------------- net

fn run(cmd: &str, args: &[&str]) -> bool {
    std::process::Command::new(cmd)
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        run("ip", &["netns", "del", &self.0]);
    }
}

/// No IPv6 chatter (router solicitations, MLD) in the test namespace.
fn quiet_ipv6(ns: &str) {
    run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv6.conf.all.disable_ipv6=1",
        ],
    );
}

/// An ARP request from `mac`/10.201.x.2 for 10.201.x.1, with a zero vnet header.
fn arp_request(mac: [u8; 6], x: u8) -> Vec<u8> {
    let mut f = vec![0u8; super::net::NET_HDR_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[10, 201, x, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 201, x, 1]);
    f
}

#[test]
fn net_tap_exchanges_arp_with_kernel() {
    if !std::path::Path::new("/dev/net/tun").exists() {
        println!("SKIPPED: /dev/net/tun missing");
        return;
    }
    let x = (std::process::id() % 200) as u8;
    let tap = format!("bhtap{}", std::process::id() % 100000);
    let ns = Netns(format!("bh-virtio-net-{}", std::process::id()));
    if !run("ip", &["netns", "add", &ns.0]) {
        println!("SKIPPED: cannot create a network namespace (ip netns add)");
        return;
    }
    quiet_ipv6(&ns.0);
    let mac = [0x02, 0x42, 0xbb, 0, 0, 1];
    // The monitor only opens existing TAPs; the test owns this one (it goes
    // away with the namespace it is moved into).
    assert!(run("ip", &["tuntap", "add", "dev", &tap, "mode", "tap"]));
    let dev = Net::new(&tap, Some(mac)).expect("open tap");
    // The fd keeps working after the TAP moves into the test namespace,
    // where the kernel answers ARP for 10.201.x.1.
    let addr = format!("10.201.{x}.1/24");
    assert!(run("ip", &["link", "set", &tap, "netns", &ns.0]));
    assert!(run("ip", &["-n", &ns.0, "addr", "add", &addr, "dev", &tap]));
    assert!(run("ip", &["-n", &ns.0, "link", "set", &tap, "up"]));

    let mut h = Harness::new(Box::new(dev), 64);
    assert_eq!(h.init(1 << super::net::VIRTIO_NET_F_MAC), DRIVER_OK_STATUS);
    let mut m = [0u8; 6];
    h.t.read(0x100, &mut m);
    assert_eq!(m, mac);
    for i in 0..8u64 {
        h.queues[0].add_chain(&h.mem, &[(BUF_BASE + 0x1_0000 * i, 2048, true)]);
    }
    h.notify(0);
    // tx: the ARP request (with a hostile header the device must scrub).
    let mut req = arp_request(mac, x);
    req[0] = 0xff;
    req[4] = 0x77;
    h.write(BUF_BASE + 0x20_0000, &req);
    h.queues[1].add_chain(&h.mem, &[(BUF_BASE + 0x20_0000, req.len() as u32, false)]);
    h.notify(1);
    assert_eq!(h.wait(1).1, 0);
    // rx: find the ARP reply among whatever the kernel sends.
    let mut found = false;
    for _ in 0..8 {
        let Some((id, len)) = h.queues[0].wait_used(&h.mem, 10) else {
            break;
        };
        let f = h.read(BUF_BASE + 0x1_0000 * u64::from(id), len as usize);
        assert_eq!(&f[10..12], &1u16.to_le_bytes(), "num_buffers = 1");
        let eth = &f[super::net::NET_HDR_LEN..];
        if eth.len() >= 42 && eth[12..14] == [0x08, 0x06] && eth[20..22] == [0, 2] {
            assert_eq!(&eth[0..6], &mac, "reply to our MAC");
            assert_eq!(
                &eth[28..32],
                &[10, 201, x, 1],
                "sender is the namespace's address"
            );
            found = true;
            break;
        }
    }
    assert!(found, "no ARP reply came back through the TAP");
}

#[test]
fn net_rx_waits_for_buffers() {
    if !std::path::Path::new("/dev/net/tun").exists() {
        println!("SKIPPED: /dev/net/tun missing");
        return;
    }
    let x = (std::process::id() % 200) as u8 + 1;
    let tap = format!("bhtbq{}", std::process::id() % 100000);
    let ns = Netns(format!("bh-virtio-netb-{}", std::process::id()));
    if !run("ip", &["netns", "add", &ns.0]) {
        println!("SKIPPED: cannot create a network namespace (ip netns add)");
        return;
    }
    quiet_ipv6(&ns.0);
    let mac = [0x02, 0x42, 0xbb, 0, 0, 2];
    // The monitor only opens existing TAPs; the test owns this one (it goes
    // away with the namespace it is moved into).
    assert!(run("ip", &["tuntap", "add", "dev", &tap, "mode", "tap"]));
    let dev = Net::new(&tap, None).expect("open tap");
    let addr = format!("10.201.{x}.1/24");
    assert!(run("ip", &["link", "set", &tap, "netns", &ns.0]));
    assert!(run("ip", &["-n", &ns.0, "addr", "add", &addr, "dev", &tap]));
    assert!(run("ip", &["-n", &ns.0, "link", "set", &tap, "up"]));
    let mut h = Harness::new(Box::new(dev), 64);
    wr(&mut h.t, 0x14, 0);
    assert_eq!(rd(&mut h.t, 0x10) & (1 << super::net::VIRTIO_NET_F_MAC), 0);
    assert_eq!(h.init(0), DRIVER_OK_STATUS);
    // No rx buffers yet: the reply must wait inside the device, not be lost
    // or spin.
    let req = arp_request(mac, x);
    h.write(BUF_BASE + 0x20_0000, &req);
    h.queues[1].add_chain(&h.mem, &[(BUF_BASE + 0x20_0000, req.len() as u32, false)]);
    h.notify(1);
    assert_eq!(h.wait(1).1, 0);
    std::thread::sleep(Duration::from_millis(300));
    let mut found = false;
    for i in 0..8u64 {
        h.queues[0].add_chain(&h.mem, &[(BUF_BASE + 0x1_0000 * i, 2048, true)]);
        h.notify(0);
        let Some((id, len)) = h.queues[0].wait_used(&h.mem, 10) else {
            break;
        };
        let f = h.read(BUF_BASE + 0x1_0000 * u64::from(id), len as usize);
        let eth = &f[super::net::NET_HDR_LEN..];
        if eth.len() >= 42 && eth[12..14] == [0x08, 0x06] && eth[20..22] == [0, 2] {
            found = true;
            break;
        }
    }
    assert!(found, "ARP reply lost while no rx buffers were posted");
}

#[test]
fn net_open_error_names_the_tap() {
    let e = Net::new("this-name-is-far-too-long", None)
        .err()
        .expect("bad name");
    assert!(e.to_string().contains("this-name-is-far-too-long"), "{e}");
    let e = Net::new("bhtapmissing9", None).err().expect("missing TAP");
    assert!(matches!(e, Error::NoSuchTap(_)), "{e}");
    assert!(e.to_string().contains("ip tuntap add bhtapmissing9"), "{e}");
    assert!(!std::path::Path::new("/sys/class/net/bhtapmissing9").exists());
}
