//! bulkhead-vmm's virtio devices driven by the test guest, checked from
//! both sides: virtio-blk (read, write, read-only, a sequential read with
//! requests in flight), virtio-net on a TAP in
//! a test-owned network namespace (guest pings the host, host pings the
//! guest), virtio-vsock over the Unix-socket backend (both directions), and
//! virtio-rng.

#[macro_use]
#[path = "support/vmm.rs"]
mod vmm;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;
use std::time::{Duration, Instant};

use vmm::{fnv1a32, unique, NetNs, Scratch, Vm, VmSpec, HANG_GUARD};

/// A 1 MiB disk image whose sector 0 holds a recognisable pattern.
fn make_disk(dir: &Scratch, token: &str) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join("disk.img");
    let mut sector0 = vec![0u8; 512];
    let text = format!("BULKHEAD-DISK {token} ");
    for (i, b) in sector0.iter_mut().enumerate() {
        *b = text.as_bytes()[i % text.len()];
    }
    let f = fs::File::create(&path).expect("create disk");
    f.set_len(1 << 20).expect("size disk");
    f.write_all_at(&sector0, 0).expect("write sector 0");
    (path, sector0)
}

fn sector(path: &std::path::Path, n: u64) -> Vec<u8> {
    let f = fs::File::open(path).expect("open disk");
    let mut buf = vec![0u8; 512];
    f.read_exact_at(&mut buf, n * 512).expect("read sector");
    buf
}

/// True when `detail` shows the guest read `sector0` (its FNV-1a checksum
/// in some common spelling, or its first bytes).
fn shows_sector(detail: &str, sector0: &[u8]) -> bool {
    let h = fnv1a32(sector0);
    let spellings = [
        format!("{h:08x}"),
        format!("{h:#010x}"),
        format!("{h:#x}"),
        h.to_string(),
    ];
    spellings.iter().any(|s| detail.contains(s.as_str()))
        || detail.contains(&String::from_utf8_lossy(&sector0[..16]).into_owned())
}

#[test]
fn block_device_reads_and_writes_the_host_file() {
    require_kvm!();
    let dir = Scratch::new("bh-blk");
    let token = unique("t");
    let (disk, sector0) = make_disk(&dir, &token);
    let pattern = "written-by-guest-4b1d";
    let mut vm = Vm::start(
        &VmSpec::guest(&format!("checks=blk blk.write={pattern}"))
            .arg("--disk")
            .arg(disk.display().to_string()),
    );
    let r = vm.finish();
    r.assert_all_passed();
    let detail = r.ok("blk");
    assert!(
        shows_sector(&detail, &sector0),
        "guest did not report sector 0 (fnv1a {:08x}): {detail}",
        fnv1a32(&sector0)
    );
    // Capacity in 512-byte sectors matches the 1 MiB file.
    assert_eq!(vmm::field(&detail, "sectors"), Some("2048"), "{detail}");
    // The guest negotiated indirect descriptors and EVENT_IDX: its requests went
    // through indirect tables, and it notified only when the device's avail_event
    // asked, so a device that did not keep avail_event current would have timed out.
    assert_eq!(vmm::field(&detail, "indirect"), Some("1"), "{detail}");
    assert_eq!(vmm::field(&detail, "event_idx"), Some("1"), "{detail}");
    // Host side, after power-off: the guest's pattern is on sector 1, sector 0 intact.
    let s1 = sector(&disk, 1);
    assert!(
        s1.starts_with(pattern.as_bytes()),
        "sector 1 does not hold the guest's pattern: {:?}",
        String::from_utf8_lossy(&s1[..64])
    );
    assert_eq!(sector(&disk, 0), sector0, "sector 0 changed");
}

#[test]
fn block_device_streams_a_sequential_read() {
    require_kvm!();
    let dir = Scratch::new("bh-blkread");
    let (disk, _) = make_disk(&dir, &unique("r"));
    // Requests in flight, through indirect tables, with EVENT_IDX: the read
    // that bench/vmm-boot times.
    let mut vm = Vm::start(
        &VmSpec::guest("checks=blkread blkread.kib=16 blkread.depth=4")
            .arg("--disk")
            .arg(format!("{},ro", disk.display())),
    );
    let r = vm.finish();
    r.assert_all_passed();
    let detail = r.ok("blkread");
    assert_eq!(vmm::field(&detail, "bytes"), Some("1048576"), "{detail}");
    assert_eq!(vmm::field(&detail, "requests"), Some("64"), "{detail}");
    assert_eq!(vmm::field(&detail, "event_idx"), Some("1"), "{detail}");
    assert_eq!(vmm::field(&detail, "indirect"), Some("1"), "{detail}");
}

#[test]
fn read_only_block_device_rejects_writes() {
    require_kvm!();
    let dir = Scratch::new("bh-blk-ro");
    let (disk, sector0) = make_disk(&dir, "ro");
    let mut vm = Vm::start(
        &VmSpec::guest("checks=blk blk.write=must-not-land")
            .arg("--disk")
            .arg(format!("{},ro", disk.display())),
    );
    let s = vm.wait_guarded(HANG_GUARD);
    assert!(s.success(), "monitor exited with {s}\n{}", vm.dump());
    let r = vm.report();
    assert!(r.done().is_some(), "guest did not finish:\n{}", r.text);
    // The guest still reads sector 0 ...
    let all: Vec<_> = r.results("blk");
    assert!(!all.is_empty(), "no blk result:\n{}", r.text);
    let text: String = all
        .iter()
        .map(|l| l.detail.as_str())
        .collect::<Vec<_>>()
        .join(" | ");
    assert!(shows_sector(&text, &sector0), "sector 0 not read: {text}");
    // ... and sees its write refused: the device offers VIRTIO_BLK_F_RO or
    // answers the write with an I/O error (either way the guest says so).
    let lower = text.to_lowercase();
    assert!(
        lower.contains("read-only") || lower.contains("ioerr"),
        "guest report does not show the write was refused: {text}"
    );
    // Host side: nothing landed.
    assert_eq!(
        sector(&disk, 1),
        vec![0u8; 512],
        "read-only disk was written"
    );
    assert_eq!(sector(&disk, 0), sector0);
}

#[test]
fn entropy_device_fills_buffers() {
    require_kvm!();
    let mut vm = Vm::start(&VmSpec::guest("checks=rng").arg("--rng"));
    let r = vm.finish();
    r.assert_all_passed();
    r.ok("rng");
}

#[test]
fn network_reaches_the_host_and_back() {
    require_kvm!();
    let ns = NetNs::new();
    let mut vm = Vm::start(
        &VmSpec::guest("checks=net net.ip=10.0.2.15 net.peer=10.0.2.1 net.serve_ms=10000")
            .arg("--net")
            .arg(format!("tap={},mac=52:54:00:12:34:56", ns.tap))
            .in_netns(&ns.name),
    );
    // Guest → host: ARP + ICMP echo to 10.0.2.1 (the TAP's address).
    let r = vm.wait_serial("the guest's net result", |r| !r.results("net").is_empty());
    let detail = r.ok("net");
    // Host → guest while it serves: ping from inside the namespace.
    let start = Instant::now();
    let mut last = String::new();
    let mut answered = false;
    while start.elapsed() < Duration::from_secs(20) && vm.try_wait().is_none() {
        // busybox (busybox-static) ping: iputils-ping is not installed everywhere.
        let (ok, out) = ns.try_exec(&["busybox", "ping", "-c", "1", "-W", "2", "10.0.2.15"]);
        last = out;
        if ok {
            answered = true;
            break;
        }
    }
    assert!(
        answered,
        "guest did not answer the host's ping: {last}\nguest net: {detail}\n{}",
        vm.dump()
    );
    // The host learned the guest's MAC through ARP.
    let neigh = ns.exec(&["ip", "neigh", "show", "10.0.2.15"]);
    assert!(
        neigh.to_lowercase().contains("52:54:00:12:34:56"),
        "neighbour table: {neigh}"
    );
    let r = vm.finish();
    r.assert_all_passed();
    // The guest saw (and answered) the host's echo requests.
    let serve = r.ok("net.serve");
    let echoes: u32 = vmm::field(&serve, "echo_replies")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(echoes >= 1, "guest answered no echo request: {serve}");
    // EVENT_IDX on the receive queue: the guest refilled buffers without
    // notifying while the device still had some (it asks through avail_event
    // only when it runs out), and frames kept arriving.
    assert_eq!(vmm::field(&detail, "event_idx"), Some("1"), "{detail}");
    assert_eq!(vmm::field(&detail, "indirect"), Some("1"), "{detail}");
    let saved: u32 = vmm::field(&serve, "rx_kicks_saved")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        saved >= 1,
        "no receive-queue notification was left out: {serve}"
    );
}

#[test]
fn vsock_connects_both_ways() {
    require_kvm!();
    let dir = Scratch::new("bh-vsock");
    let uds = dir.join("v.sock");
    let (gport, hport) = (5000u32, 6000u32);
    // Guest → host: the device connects to `<uds>_<port>`.
    let listener =
        UnixListener::bind(format!("{}_{gport}", uds.display())).expect("listen for the guest");
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("guest connection");
        s.set_read_timeout(Some(HANG_GUARD)).expect("timeout");
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).expect("read from guest");
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        s.write_all(b"hello from host\n").expect("reply to guest");
        got
    });
    let mut vm = Vm::start(
        &VmSpec::guest(&format!(
            "checks=vsock vsock.port={gport} vsock.listen={hport}"
        ))
        .arg("--vsock")
        .arg(format!("cid=3,uds={}", uds.display())),
    );
    let from_guest = server.join().expect("server thread");
    assert!(
        from_guest.contains("hello from guest"),
        "guest sent {from_guest:?}"
    );

    // Host → guest: CONNECT <port> on the main socket; retry until the
    // guest listens (the device resets connections to closed ports).
    let start = Instant::now();
    let (mut conn, ack) = loop {
        assert!(
            start.elapsed() < HANG_GUARD && vm.try_wait().is_none(),
            "guest never accepted CONNECT {hport}\n{}",
            vm.dump()
        );
        let Ok(mut s) = UnixStream::connect(&uds) else {
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(format!("CONNECT {hport}\n").as_bytes())
            .expect("send CONNECT");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(n) if n > 0 && line.starts_with("OK ") => break (r, line),
            _ => thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(
        ack.trim_end()
            .strip_prefix("OK ")
            .and_then(|p| p.parse::<u32>().ok())
            .is_some(),
        "bad ack {ack:?}"
    );
    conn.get_mut()
        .write_all(b"shout this please\n")
        .expect("send line");
    let mut echo = String::new();
    conn.read_line(&mut echo).expect("read echo");
    assert_eq!(echo, "SHOUT THIS PLEASE\n");

    let r = vm.finish();
    r.assert_all_passed();
    let detail = r.ok("vsock");
    assert!(
        detail.contains("hello from host"),
        "guest did not print the host's reply: {detail}"
    );
    // The guest negotiated indirect descriptors (its two-buffer receive chains)
    // and EVENT_IDX on all three queues.
    assert_eq!(vmm::field(&detail, "indirect"), Some("1"), "{detail}");
    assert_eq!(vmm::field(&detail, "event_idx"), Some("1"), "{detail}");
    let listen = r.ok("vsock.listen");
    assert!(
        listen.contains("shout this please"),
        "guest did not report the host's line: {listen}"
    );
}
