//! VMs as instances of the platform, with the in-repo test guest: created and started
//! through the CLI, jailed under a uid of their own (never 0), console log, freeze,
//! survival of `kill -9` of the daemon, a graceful stop through the ACPI power button,
//! and what does not apply to a VM refused clearly.

#[macro_use]
#[path = "support/vmm.rs"]
mod vmm;

use system_tests::platform::Platform;
use system_tests::wait_for;

fn uids(pid: i64) -> Vec<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_vm_instance_runs_jailed_survives_the_daemon_and_stops_gracefully() {
    require_kvm!();
    let guest = vmm::guest_elf();
    let mut p = Platform::start();
    p.cli(&[
        "create",
        "vm1",
        "--vm",
        "--kernel",
        guest.to_str().unwrap(),
        "--cmdline",
        "checks=cmdline,power power.wait_ms=600000",
        "--memory",
        "64MiB",
        "--cpus",
        "1",
        "--start",
    ])
    .ok();
    let v = p.show("vm1");
    assert_eq!(
        (v["kind"].as_str(), v["status"].as_str()),
        (Some("vm"), Some("running")),
        "{v}"
    );
    let pid = v["pid"].as_i64().unwrap();
    // The monitor drops to its own uid once its devices and sockets are set up.
    wait_for("bulkhead-vmm to run as its own uid", || {
        let u = uids(pid);
        (!u.is_empty() && u.iter().all(|&x| x >= 900_000)).then_some(())
    });
    // The guest's serial console reaches the instance log.
    wait_for("the guest to wait for the power button", || {
        p.cli(&["logs", "vm1"])
            .stdout
            .contains("power.wait ready")
            .then_some(())
    });
    assert!(p.cli(&["logs", "vm1"]).stdout.contains("cmdline ok"));
    assert!(p.show("vm1")["state"]["memory_bytes"].as_u64().unwrap_or(0) > 0);

    p.cli(&["freeze", "vm1"]).ok();
    assert_eq!(p.status("vm1"), "frozen");
    p.cli(&["unfreeze", "vm1"]).ok();
    assert_eq!(p.status("vm1"), "running");

    // What a VM without an agent cannot do is refused with a reason.
    p.cli(&["exec", "vm1", "--", "true"])
        .fails_with_one_line(&["agent"]);
    p.cli(&["config", "set", "vm1", "limits.memory", "128MiB"])
        .fails_with_one_line(&["limits.memory", "running"]);

    p.kill_daemon();
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_ok(),
        "the VM must outlive the daemon"
    );
    p.start_daemon();
    let v = p.show("vm1");
    assert_eq!(
        (v["status"].as_str(), v["pid"].as_i64()),
        (Some("running"), Some(pid)),
        "{v}"
    );

    // Graceful stop: the guest sees the power button and powers off by itself (exit 0).
    p.cli(&["stop", "vm1", "--timeout", "120"]).ok();
    let v = p.show("vm1");
    assert_eq!(v["status"], "stopped");
    assert_eq!(v["last_exit"], 0, "{v}");
    let log = p.cli(&["logs", "vm1"]).stdout;
    assert!(log.contains("power ok button"), "{log}");

    // A limit applies at the next start; then delete leaves nothing.
    p.cli(&["config", "set", "vm1", "limits.memory", "96MiB"])
        .ok();
    p.cli(&["delete", "vm1"]).ok();
    assert_eq!(p.json(&["list"]), serde_json::json!([]));
    assert_eq!(
        std::fs::read_dir(p.run_dir().join("instances"))
            .map(|r| r.count())
            .unwrap_or(0),
        0
    );
}
