//! The running monitor is confined, seen from the host through /proc:
//! its own mount and network namespaces, a root that holds nothing of the
//! host's, no capabilities, no_new_privs, and a seccomp filter on every
//! thread. `--no-jail` turns all of that off.

#[macro_use]
#[path = "support/vmm.rs"]
mod vmm;

use std::fs;

use vmm::{Vm, VmSpec};

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
    vm.api_ok(serde_json::json!({"op": "stop"}));
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
    vm.api_ok(serde_json::json!({"op": "stop"}));
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
    vm.api_ok(serde_json::json!({"op": "stop"}));
    vm.wait_guarded(vmm::HANG_GUARD);
    let mut s1 = [0u8; 9];
    std::os::unix::fs::FileExt::read_exact_at(&fs::File::open(&disk).expect("disk"), &mut s1, 512)
        .expect("sector 1");
    assert_eq!(&s1, b"as-nobody");
}
