//! The test guest under QEMU's microvm (a second, independent machine with
//! the same kind of ACPI + virtio-mmio model): proves that what the guest
//! reports is right, so a failing bulkhead-vmm test points at the monitor.

#[macro_use]
#[path = "support/vmm.rs"]
mod vmm;

use std::fs;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmm::{field, Report, Scratch, HANG_GUARD};

fn qemu() -> Option<&'static str> {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .ok()
        .filter(|s| s.success())
        .map(|_| "qemu-system-x86_64")
}

/// Runs the guest under QEMU with `extra` arguments (inside network
/// namespace `netns` when given); returns its serial report.
fn run_qemu(cmdline: &str, extra: &[String], netns: Option<&str>) -> Report {
    let dir = Scratch::new("bh-qemu");
    let serial = dir.join("serial.log");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, qemu().expect("checked")]);
            c
        }
        None => Command::new(qemu().expect("checked")),
    };
    let mut child = cmd
        .args([
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=on",
            "-enable-kvm",
            "-cpu",
            "host,-arch-capabilities",
            "-m",
            "128",
            "-smp",
            "2",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            // virtio-mmio version 2 (modern), as the design doc requires.
            "-global",
            "virtio-mmio.force-legacy=false",
            "-serial",
        ])
        .arg(format!("file:{}", serial.display()))
        .arg("-kernel")
        .arg(vmm::guest_elf())
        .args(["-append", cmdline])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu");
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            let text = fs::read_to_string(&serial).unwrap_or_default();
            assert!(s.success(), "qemu exited with {s}; serial:\n{text}");
            return Report::new(text);
        }
        if start.elapsed() > HANG_GUARD {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "qemu did not finish; serial:\n{}",
                fs::read_to_string(&serial).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn guest_passes_under_qemu_microvm() {
    require_kvm!();
    if qemu().is_none() {
        println!("SKIPPED: qemu-system-x86_64 not installed");
        return;
    }
    let dir = Scratch::new("bh-qemu-disk");
    let disk = dir.join("disk.img");
    let f = fs::File::create(&disk).expect("disk");
    f.set_len(1 << 20).expect("size");
    f.write_all_at(&[0x42; 512], 0).expect("sector 0");
    let cmdline = "checks=cmdline,memmap,acpi,blk,rng blk.write=from-qemu-guest";
    let r = run_qemu(
        cmdline,
        &[
            "-drive".into(),
            format!("id=d0,file={},format=raw,if=none", disk.display()),
            "-device".into(),
            "virtio-blk-device,drive=d0".into(),
            "-device".into(),
            "virtio-rng-device".into(),
        ],
        None,
    );
    r.assert_all_passed();
    assert!(r.ok("cmdline").contains(cmdline));
    // The guest's indirect-descriptor and EVENT_IDX driver code works against
    // QEMU's device too (the reference for bulkhead-vmm's).
    let blk = r.ok("blk");
    assert_eq!(field(&blk, "indirect"), Some("1"), "{blk}");
    assert_eq!(field(&blk, "event_idx"), Some("1"), "{blk}");
    assert_eq!(field(&r.ok("acpi"), "cpus"), Some("2"));
    let ram: u64 = field(&r.ok("memmap"), "ram")
        .and_then(vmm::parse_num)
        .expect("ram= in memmap");
    assert!(ram > 120 << 20 && ram <= 128 << 20, "ram={ram}");
    let mut s1 = [0u8; 512];
    fs::File::open(&disk)
        .expect("disk")
        .read_exact_at(&mut s1, 512)
        .expect("sector 1");
    assert!(
        s1.starts_with(b"from-qemu-guest"),
        "sector 1: {:?}",
        String::from_utf8_lossy(&s1[..32])
    );
}

#[test]
fn guest_network_works_under_qemu_microvm() {
    require_kvm!();
    if qemu().is_none() {
        println!("SKIPPED: qemu-system-x86_64 not installed");
        return;
    }
    let ns = vmm::NetNs::new();
    let r = run_qemu(
        "checks=net net.ip=10.0.2.15 net.peer=10.0.2.1 net.serve_ms=500",
        &[
            "-netdev".into(),
            format!("tap,id=n0,ifname={},script=no,downscript=no", ns.tap),
            "-device".into(),
            "virtio-net-device,netdev=n0,mac=52:54:00:12:34:57".into(),
        ],
        Some(&ns.name),
    );
    r.assert_all_passed();
    let net = r.ok("net");
    assert_eq!(field(&net, "mac"), Some("52:54:00:12:34:57"), "{net}");
    // QEMU's virtio-net checks the guest's indirect/EVENT_IDX receive path too.
    assert_eq!(field(&net, "indirect"), Some("1"), "{net}");
    assert_eq!(field(&net, "event_idx"), Some("1"), "{net}");
    assert!(
        field(&net, "peer_mac").is_some(),
        "no ARP reply seen: {net}"
    );
}
