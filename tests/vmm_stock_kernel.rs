//! A stock Debian kernel (linux-image-cloud-amd64, fetched with
//! `apt-get download` + `dpkg-deb -x`, never installed) booted by
//! bulkhead-vmm with a tiny busybox initramfs whose /init prints a marker
//! and powers off. On a VT-x/AMD-V host it must reach init. On kvm_pvm
//! (paravirtual nested KVM, which cannot emulate some instructions a stock
//! kernel uses) a run that does not reach init is reported as
//! `SKIPPED: kvm_pvm: stock kernel stopped at <where>: <failures>` with what
//! the monitor said — never a silent pass.

#[macro_use]
#[path = "support/vmm.rs"]
mod vmm;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vmm::{is_kvm_pvm, Vm, VmSpec};

const MARKER: &str = "BULKHEAD-INIT-REACHED";

/// Where downloaded packages and the extracted kernel are kept between runs.
fn cache_dir() -> PathBuf {
    std::env::var_os("BULKHEAD_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/bulkhead-test-cache"))
        .join("stock-kernel")
}

fn find_vmlinuz(root: &Path) -> Option<PathBuf> {
    fs::read_dir(root.join("boot"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
}

/// Downloads and unpacks the kernel package; `Err` explains why it could not.
fn stock_kernel() -> Result<PathBuf, String> {
    let cache = cache_dir();
    let root = cache.join("root");
    if let Some(k) = find_vmlinuz(&root) {
        return Ok(k);
    }
    fs::create_dir_all(&cache).map_err(|e| format!("create {}: {e}", cache.display()))?;
    // The meta package depends on the versioned image package that holds the files.
    let deps = Command::new("apt-cache")
        .args(["depends", "linux-image-cloud-amd64"])
        .output()
        .map_err(|e| format!("apt-cache: {e}"))?;
    let deps = String::from_utf8_lossy(&deps.stdout);
    let pkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .ok_or_else(|| format!("apt-cache depends linux-image-cloud-amd64 names no image: {deps}"))?
        .to_string();
    let dl = Command::new("apt-get")
        .args(["download", &pkg])
        .current_dir(&cache)
        .output()
        .map_err(|e| format!("apt-get: {e}"))?;
    if !dl.status.success() {
        return Err(format!(
            "apt-get download {pkg} failed: {}",
            String::from_utf8_lossy(&dl.stderr).trim()
        ));
    }
    let deb = fs::read_dir(&cache)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&pkg) && n.ends_with(".deb"))
        })
        .ok_or_else(|| format!("apt-get download left no {pkg}*.deb in {}", cache.display()))?;
    let x = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .output()
        .map_err(|e| format!("dpkg-deb: {e}"))?;
    if !x.status.success() {
        return Err(format!(
            "dpkg-deb -x {} failed: {}",
            deb.display(),
            String::from_utf8_lossy(&x.stderr).trim()
        ));
    }
    find_vmlinuz(&root).ok_or_else(|| format!("no boot/vmlinuz-* in {}", deb.display()))
}

/// Appends one cpio "newc" entry.
fn cpio_entry(out: &mut Vec<u8>, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    static INO: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let ino = INO.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let namesize = name.len() + 1;
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, // uid
        0, // gid
        1, // nlink
        0, // mtime
        data.len(),
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        0, // check
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// A minimal initramfs: static busybox, /dev/console, and an /init that
/// prints the marker and powers off. Written by hand (the newc format is
/// a few fixed-width hex fields) so the test needs no cpio tool.
fn initramfs(path: &Path) -> Result<(), String> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .find_map(|p| fs::read(p).ok())
        .ok_or("busybox not found (install busybox-static)")?;
    let init = format!("#!/bin/busybox sh\n/bin/busybox echo {MARKER}\n/bin/busybox poweroff -f\n");
    let mut c = Vec::new();
    cpio_entry(&mut c, "bin", 0o040755, (0, 0), &[]);
    cpio_entry(&mut c, "dev", 0o040755, (0, 0), &[]);
    cpio_entry(&mut c, "proc", 0o040755, (0, 0), &[]);
    cpio_entry(&mut c, "dev/console", 0o020600, (5, 1), &[]);
    cpio_entry(&mut c, "bin/busybox", 0o100755, (0, 0), &busybox);
    cpio_entry(&mut c, "init", 0o100755, (0, 0), init.as_bytes());
    cpio_entry(&mut c, "TRAILER!!!", 0, (0, 0), &[]);
    fs::write(path, c).map_err(|e| format!("write {}: {e}", path.display()))
}

#[test]
fn stock_debian_kernel_reaches_init() {
    require_kvm!();
    let kernel = match stock_kernel() {
        Ok(k) => k,
        Err(e) => {
            println!("SKIPPED: cannot fetch the stock kernel: {e}");
            return;
        }
    };
    let dir = vmm::Scratch::new("bh-stock");
    let initrd = dir.join("initramfs.cpio");
    initramfs(&initrd).expect("build initramfs");
    let mut spec =
        VmSpec::guest("console=ttyS0 earlyprintk=ttyS0 panic=-1 rdinit=/init noxsave").mem("512M");
    spec.kernel = kernel.clone();
    spec.initrd = Some(initrd);
    let mut vm = Vm::start(&spec);

    // A stock kernel on kvm_pvm may take minutes before it stops; this is a
    // hang guard, not a speed check.
    let guard = Duration::from_secs(if is_kvm_pvm() { 360 } else { 180 });
    let start = std::time::Instant::now();
    let reached = loop {
        let text = vm.report().text;
        if text.contains(MARKER) {
            break true;
        }
        if vm.try_wait().is_some() {
            break vm.report().text.contains(MARKER);
        }
        if start.elapsed() > guard {
            vm.kill();
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if reached {
        vm.wait_guarded(vmm::HANG_GUARD);
        return;
    }
    let serial = vm.report().text;
    let stderr = vm.stderr();
    if is_kvm_pvm() {
        let last = serial
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("<no serial output>")
            .trim();
        let failures: Vec<&str> = stderr
            .lines()
            .filter(|l| {
                let l = l.to_lowercase();
                l.contains("emulation") || l.contains("internal error") || l.contains("unhandled")
            })
            .collect();
        let failures = if failures.is_empty() {
            format!(
                "no emulation failure reported (monitor status {:?}, stderr: {})",
                vm.status,
                stderr.trim()
            )
        } else {
            failures.join("; ")
        };
        println!(
            "SKIPPED: kvm_pvm: stock kernel stopped at {last:?} after {:?}: {failures}",
            start.elapsed()
        );
        return;
    }
    panic!(
        "stock kernel {} did not reach init\n{}",
        kernel.display(),
        vm.dump()
    );
}
