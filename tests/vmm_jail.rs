//! The running monitor is confined, seen from the host through /proc:
//! its own mount and network namespaces, a root that holds nothing of the
//! host's, no capabilities, no_new_privs, and a seccomp filter on every
//! thread. `--no-jail` turns all of that off.

#[macro_use]
#[path = "support/vmm.rs"]
mod vmm;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vmm::{Vm, VmSpec};
use vmm_proto::{DiskSpec, JailConfig, SerialSpec, VmConfig, VmState};

fn status_field(pid: &str, field: &str) -> String {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn ns(pid: &str, kind: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .expect("read ns link")
        .display()
        .to_string()
}

#[test]
fn running_monitor_is_confined() {
    require_kvm!();
    let base = vmm::Scratch::new("bh-jail-base");
    let mut vm = Vm::start(
        &VmSpec::guest("checks=tick tick.count=100000")
            .with_api()
            .args(["--id", "jail-test-vm", "--jail-dir"])
            .arg(base.path().display().to_string()),
    );
    vm.wait_serial("a tick", |r| !r.ticks().is_empty());
    let pid = vm.pid().to_string();

    for kind in ["mnt", "net", "ipc", "uts"] {
        assert_ne!(ns(&pid, kind), ns("self", kind), "{kind} namespace shared");
    }
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(status_field(&pid, set), "0000000000000000", "{set}");
    }
    assert_eq!(status_field(&pid, "NoNewPrivs:"), "1");
    // Every thread (vCPU, API, VMM, device workers) runs under a filter.
    let mut threads = 0;
    for t in fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let tid = t.expect("task").file_name().to_string_lossy().into_owned();
        let s = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).expect("status");
        let mode = s
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .map(str::trim)
            .unwrap_or("?")
            .to_string();
        assert_eq!(mode, "2", "thread {tid} has seccomp mode {mode}");
        threads += 1;
    }
    assert!(threads >= 2, "expected vCPU + VMM threads, saw {threads}");
    // Its root is the jail: nothing of the host's file system.
    let root = format!("/proc/{pid}/root");
    assert!(
        fs::metadata(format!("{root}/etc/passwd")).is_err(),
        "the monitor can see /etc/passwd"
    );
    assert!(
        fs::metadata(format!("{root}/usr")).is_err(),
        "the monitor can see /usr"
    );

    // Still working: the guest keeps ticking under the jail.
    let n = vm.report().ticks().len();
    vm.wait_serial("more ticks", |r| r.ticks().len() > n);
    // The jail's root lives on a tmpfs in the monitor's own mount
    // namespace: the host's jail directory stays empty, during and after.
    let host_view = || -> Vec<String> {
        fs::read_dir(base.path())
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(host_view(), Vec::<String>::new(), "while running");
    vm.client().stop().expect("stop");
    vm.wait_guarded(vmm::HANG_GUARD);
    assert_eq!(host_view(), Vec::<String>::new(), "after exit");
}

#[test]
fn no_jail_leaves_the_monitor_unconfined() {
    require_kvm!();
    let mut vm = Vm::start(
        &VmSpec::guest("checks=tick tick.count=100000")
            .with_api()
            .arg("--no-jail"),
    );
    vm.wait_serial("a tick", |r| !r.ticks().is_empty());
    let pid = vm.pid().to_string();
    assert_eq!(ns(&pid, "mnt"), ns("self", "mnt"));
    assert_eq!(status_field(&pid, "Seccomp:"), "0");
    vm.client().stop().expect("stop");
    vm.wait_guarded(vmm::HANG_GUARD);
}

#[test]
fn unprivileged_jail_user_still_runs_devices() {
    require_kvm!();
    let dir = vmm::Scratch::new("bh-jail-uid");
    let disk = dir.join("disk.img");
    fs::File::create(&disk)
        .and_then(|f| f.set_len(1 << 20))
        .expect("disk");
    let mut vm = Vm::start(
        &VmSpec::guest("checks=blk,tick blk.write=as-nobody tick.count=100000")
            .with_api()
            .args(["--jail-uid", "65534", "--jail-gid", "65534", "--disk"])
            .arg(disk.display().to_string()),
    );
    vm.wait_serial("a tick", |r| !r.ticks().is_empty());
    let pid = vm.pid().to_string();
    assert_eq!(status_field(&pid, "Uid:"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(&pid, "Gid:"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(&pid, "CapEff:"), "0000000000000000");
    // The block device, opened before the switch, still works.
    vm.report().ok("blk");
    vm.client().stop().expect("stop");
    vm.wait_guarded(vmm::HANG_GUARD);
    let mut s1 = [0u8; 9];
    std::os::unix::fs::FileExt::read_exact_at(&fs::File::open(&disk).expect("disk"), &mut s1, 512)
        .expect("sector 1");
    assert_eq!(&s1, b"as-nobody");
}

/// The uid/gid a supervisor gives one VM's monitor (outside any system range).
const VM_UID: u32 = 200_000;
const VM_GID: u32 = 200_001;

/// A monitor started from `--config <file.json>` with `cfg`; its serial
/// log and control socket are the ones `cfg` names.
fn start_with_config(dir: &vmm::Scratch, cfg: &VmConfig) -> Vm {
    let file = dir.join("vm.json");
    fs::write(&file, cfg.to_json().expect("config as JSON")).expect("write config");
    let mut vm = Vm::start_raw(
        &["--config".to_string(), file.display().to_string()],
        false,
        false,
    );
    if let SerialSpec::File(p) = &cfg.serial {
        vm.serial = p.clone();
    }
    vm.api = cfg.api_socket.clone();
    vm
}

fn ids(pid: &str) -> (String, String) {
    (status_field(pid, "Uid:"), status_field(pid, "Gid:"))
}

#[test]
fn monitor_jailed_as_its_own_uid_keeps_disk_serial_control_and_snapshots() {
    require_kvm!();
    let dir = vmm::Scratch::new("bh-jail-200k");
    let disk = dir.join("disk.img");
    fs::File::create(&disk)
        .and_then(|f| f.set_len(1 << 20))
        .expect("disk");
    let snaps = dir.join("snapshots");
    let mut cfg = VmConfig::new(vmm::guest_elf());
    cfg.cmdline = "checks=blk,tick blk.write=as-vm-uid tick.count=100000".into();
    cfg.serial = SerialSpec::File(dir.join("serial.log"));
    cfg.disks = vec![DiskSpec {
        path: disk.clone(),
        read_only: false,
    }];
    cfg.api_socket = Some(dir.join("api.sock"));
    cfg.snapshot_dir = Some(snaps.clone());
    cfg.jail = JailConfig {
        id: Some(vmm::unique("uid200k")),
        uid: VM_UID,
        gid: VM_GID,
        ..JailConfig::default()
    };
    cfg.validate().expect("valid config");
    let mut vm = start_with_config(&dir, &cfg);
    vm.wait_serial("a tick", |r| !r.ticks().is_empty());
    let pid = vm.pid().to_string();
    let want = (
        format!("{VM_UID}\t{VM_UID}\t{VM_UID}\t{VM_UID}"),
        format!("{VM_GID}\t{VM_GID}\t{VM_GID}\t{VM_GID}"),
    );
    assert_eq!(ids(&pid), want, "{}", vm.dump());
    assert_eq!(status_field(&pid, "CapEff:"), "0000000000000000");
    // Every thread, not only the main one, runs as the VM's uid.
    for t in fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let tid = t.expect("task").file_name().to_string_lossy().into_owned();
        let s = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).expect("status");
        let uid = s
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .unwrap_or("?");
        assert_eq!(uid.trim(), want.0, "thread {tid}");
    }
    // The control socket, bound before the switch, is root's and private;
    // the (root) supervisor still connects.
    let sock = cfg.api_socket.as_ref().expect("api socket");
    let meta = fs::metadata(sock).expect("control socket");
    assert_eq!((meta.uid(), meta.permissions().mode() & 0o777), (0, 0o600));
    let mut api = vm.client();
    let d = api.describe().expect("describe");
    assert_eq!(d.state, VmState::Running);
    assert!(d.jailed);
    assert_eq!((d.pid, d.uid, d.gid), (vm.pid(), VM_UID, VM_GID));
    assert_eq!(d.id, cfg.jail.id);
    assert_eq!(d.serial_path.as_deref(), Some(vm.serial.as_path()));
    assert_eq!(d.devices.len(), 1);
    // The disk (opened before the switch) works; the serial file keeps growing.
    vm.report().ok("blk");
    let n = vm.report().ticks().len();
    vm.wait_serial("more ticks", |r| r.ticks().len() > n);
    // Snapshots land in the snapshot directory, which the monitor was given.
    assert_eq!(fs::metadata(&snaps).expect("snapshot dir").uid(), VM_UID);
    api.pause().expect("pause");
    let done = api
        .snapshot(snaps.join("s1"))
        .expect("snapshot as the VM's uid");
    assert!(done.memory_bytes_written > 0);
    let state = fs::metadata(snaps.join("s1/state.json")).expect("state.json");
    assert_eq!(state.uid(), VM_UID);
    api.resume().expect("resume");
    assert_eq!(api.stop().expect("stop").state, VmState::Stopped);
    assert!(vm.wait_guarded(vmm::HANG_GUARD).success(), "{}", vm.dump());
    let mut s1 = [0u8; 9];
    std::os::unix::fs::FileExt::read_exact_at(&fs::File::open(&disk).expect("disk"), &mut s1, 512)
        .expect("sector 1");
    assert_eq!(&s1, b"as-vm-uid");
}

#[test]
fn serial_socket_works_for_a_monitor_jailed_as_its_own_uid() {
    require_kvm!();
    let dir = vmm::Scratch::new("bh-jail-200k-sock");
    let serial = dir.join("serial.sock");
    let mut cfg = VmConfig::new(vmm::guest_elf());
    cfg.cmdline = "checks=tick tick.count=100000".into();
    cfg.serial = SerialSpec::Socket(serial.clone());
    cfg.api_socket = Some(dir.join("api.sock"));
    cfg.jail = JailConfig {
        id: Some(vmm::unique("uid200k-sock")),
        uid: VM_UID,
        gid: VM_GID,
        ..JailConfig::default()
    };
    let mut vm = start_with_config(&dir, &cfg);
    let mut api = vm.client();
    let d = api.describe().expect("describe");
    assert_eq!((d.uid, d.gid), (VM_UID, VM_GID));
    assert_eq!(d.serial, format!("socket:{}", serial.display()));
    let mut console = UnixStream::connect(&serial).expect("connect to the serial socket");
    console
        .set_read_timeout(Some(vmm::HANG_GUARD))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&got).contains("BULKHEAD-GUEST tick") {
        let n = console.read(&mut buf).expect("serial output");
        assert!(n > 0, "serial socket closed\n{}", vm.dump());
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        ids(&vm.pid().to_string()).0,
        format!("{VM_UID}\t{VM_UID}\t{VM_UID}\t{VM_UID}")
    );
    api.set_timeout(Duration::from_secs(30));
    api.stop().expect("stop");
    assert!(vm.wait_guarded(vmm::HANG_GUARD).success(), "{}", vm.dump());
}
