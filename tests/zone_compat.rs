//! Valid configurations that runc accepts and bulkhead-runc must accept too (issue 9):
//! seccomp masked comparisons without `valueTwo`, user namespaces with a private state
//! root, FIFO device-cgroup rules, unknown capabilities, joined namespaces, and runc's
//! one-line argument errors.

use std::fs;

use serde_json::json;
use system_tests::{proc_status, require_root, run_cmd, Bundle, Zone};

/// Docker's default profile writes `{"index":0,"value":2114060288,"op":"SCMP_CMP_MASKED_EQ"}`
/// (no valueTwo, meaning 0). Here: `personality(2)` fails with EPERM when
/// `(persona & 0xffff) == 0`; `linux64` calls personality(PER_LINUX = 0).
#[test]
fn seccomp_masked_eq_without_value_two_means_zero() {
    require_root!();
    let mut b = Bundle::new();
    b.set(
        "/linux/seccomp",
        json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                          "args": [{"index": 0, "value": 65535, "op": "SCMP_CMP_MASKED_EQ"}]},
                         {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]}]
        }),
    )
    .sh("linux64 true 2>&1; echo personality:$?; echo alive");
    let z = Zone::new(b);
    let o = z.run();
    o.ok();
    assert!(o.stdout.contains("alive"), "{o:#?}");
    let rc = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("personality:"))
        .expect("personality line");
    assert_ne!(rc, "0", "personality(0) was not filtered: {o:#?}");
}

/// Make a state root private (0700), as `mktemp -d` creates it.
fn private(p: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o700)).expect("chmod 0700");
}

/// With a user namespace and a private (0700) state root such as `mktemp -d`, the zone's
/// init, already the mapped user, must not need to reach `<root>/<id>/exec.fifo` by path.
#[test]
fn user_namespace_with_private_state_root_runs() {
    require_root!();
    let mut b = Bundle::new();
    b.userns(100000, 65536).sh("echo uid:$(id -u)");
    let z = Zone::new(b);
    private(z.state_root());
    let o = z.run();
    o.ok();
    assert!(o.stdout.contains("uid:0"), "{o:#?}");
    z.assert_nothing_left();

    // create/start too: the fifo handshake still works.
    let mut b = Bundle::new();
    b.userns(100000, 65536).sh("touch /tmp/ready; sleep 1000");
    let z = Zone::new(b);
    private(z.state_root());
    z.spawn(Some("/tmp/ready"));
    let uid = proc_status(z.pid(), "Uid").expect("Uid");
    assert!(uid.split_whitespace().all(|u| u == "100000"), "{uid}");
}

/// runc accepts a device-cgroup rule of type "p" (FIFOs are not gated by the device
/// cgroup) and skips it; the other rules still apply.
#[test]
fn fifo_device_rule_is_accepted_and_skipped() {
    require_root!();
    let mut b = Bundle::new();
    b.set(
        "/linux/resources/devices",
        json!([{"allow": false, "access": "rwm"},
               {"allow": true, "type": "p", "access": "rwm"}]),
    )
    .sh("mkfifo /tmp/f && echo fifo:ok; head -c1 /dev/zero | wc -c");
    let z = Zone::new(b);
    let o = z.run();
    o.ok();
    assert!(o.stdout.contains("fifo:ok"), "{o:#?}");
    // The default devices (here /dev/zero) are still allowed.
    assert!(o.stdout.lines().any(|l| l.trim() == "1"), "{o:#?}");
}

/// The runtime spec: an unknown or unavailable capability is logged and does not fail
/// creation; the known ones still apply.
#[test]
fn unknown_capability_warns_and_runs() {
    require_root!();
    let caps = ["CAP_KILL", "CAP_NOT_A_REAL_ONE"];
    let mut b = Bundle::new();
    b.set(
        "/process/capabilities",
        json!({"bounding": caps, "effective": caps, "permitted": caps}),
    )
    .sh("grep CapEff /proc/self/status | tr -d '\\t'");
    let z = Zone::new(b);
    let o = z.run();
    o.ok();
    assert!(o.stdout.contains("CapEff:0000000000000020"), "{o:#?}");
    assert!(
        o.stderr.contains("CAP_NOT_A_REAL_ONE") && o.stderr.contains("warning"),
        "{o:#?}"
    );
}

/// Namespaces joined by `path` (including the mount namespace) still get the zone's root:
/// the process is found inside the rootfs, not in the host's tree.
#[test]
fn joined_namespaces_by_path_find_the_process_in_the_root() {
    require_root!();
    let mut holder = std::process::Command::new("unshare")
        .args([
            "--mount",
            "--uts",
            "--ipc",
            "--net",
            "--propagation",
            "private",
        ])
        .args(["sleep", "1000"])
        .spawn()
        .expect("unshare");
    let pid = holder.id();
    // Wait until the holder has entered its namespaces.
    system_tests::wait_for("unshare'd holder", || {
        let own = fs::read_link("/proc/self/ns/mnt").ok()?;
        let its = fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()?;
        (own != its).then_some(())
    });
    let mut b = Bundle::new();
    let ns = |t: &str, f: &str| json!({"type": t, "path": format!("/proc/{pid}/ns/{f}")});
    b.set(
        "/linux/namespaces",
        json!([{"type": "pid"}, ns("mount", "mnt"), ns("uts", "uts"),
               ns("ipc", "ipc"), ns("network", "net")]),
    )
    .set("/hostname", json!(null))
    .args(&["/bin/sh", "-c", "echo inside:$(cat /marker-in-root)"]);
    fs::write(b.rootfs().join("marker-in-root"), "zone-root\n").expect("marker");
    let z = Zone::new(b);
    let o = z.run();
    let _ = holder.kill();
    let _ = holder.wait();
    o.ok();
    assert!(o.stdout.contains("inside:zone-root"), "{o:#?}");
}

/// `start`/`delete` without an id: one line in runc's shape, exit 1.
#[test]
fn missing_container_id_is_one_runc_line() {
    require_root!();
    let z = Zone::new(Bundle::new());
    for cmd in ["start", "delete", "state", "pause"] {
        let o = run_cmd(&mut z.cmd(&[cmd]));
        assert_eq!(o.code, 1, "{o:#?}");
        o.fails_with_one_line(&[&format!("\"{cmd}\" requires exactly 1 argument(s)")]);
    }
    let o = run_cmd(&mut z.cmd(&["exec"]));
    assert_eq!(o.code, 1, "{o:#?}");
    o.fails_with_one_line(&["\"exec\" requires a minimum of 1 argument(s)"]);
}

/// runtime-tools linux_rootfs_propagation / config_updates_without_affect: a shared
/// `rootfsPropagation` made pivot_root fail (EINVAL: a shared new root). The root
/// is made shared once inside it, and the host's mounts are not touched.
#[test]
fn shared_rootfs_propagation_starts_and_root_is_shared() {
    require_root!();
    let mut b = Bundle::new();
    b.set("/linux/rootfsPropagation", json!("shared")).args(&[
        "/bin/sh",
        "-c",
        "awk '$5==\"/\"' /proc/self/mountinfo",
    ]);
    let z = Zone::new(b);
    let o = z.run();
    o.ok();
    let line = o.stdout.lines().next().unwrap_or("");
    assert!(line.contains(" shared:"), "root mount not shared: {o:#?}");
    // `unbindable` goes the same way.
    let mut b = Bundle::new();
    b.set("/linux/rootfsPropagation", json!("unbindable"))
        .args(&["/bin/sh", "-c", "awk '$5==\"/\"' /proc/self/mountinfo"]);
    let o = Zone::new(b).run();
    o.ok();
    assert!(o.stdout.contains("unbindable"), "{o:#?}");
}

/// runtime-tools linux_ns_itype: with no mount namespace at all, the process is
/// still looked up and run inside `root.path` (chroot), not in the host's tree.
#[test]
fn no_mount_namespace_still_runs_inside_the_root() {
    require_root!();
    let mut b = Bundle::new();
    b.set("/linux/namespaces", json!([{"type": "pid"}]))
        .set("/hostname", json!(null))
        .set("/mounts", json!([]))
        .args(&["/bin/sh", "-c", "echo inside:$(cat /marker-in-root)"]);
    fs::write(b.rootfs().join("marker-in-root"), "zone-root\n").expect("marker");
    let o = Zone::new(b).run();
    o.ok();
    assert!(o.stdout.contains("inside:zone-root"), "{o:#?}");
}
