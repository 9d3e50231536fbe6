//! bulkhead-vmm's control socket with the test guest's `tick` check:
//! pause stops the guest (no tick while paused), resume continues it; a
//! snapshot of a paused VM restored into a new monitor continues counting
//! where the first one stopped.

#[macro_use]
#[path = "support/vmm.rs"]
mod vmm;

use std::thread::sleep;
use std::time::Duration;

use serde_json::json;
use vmm::{Vm, VmSpec};

/// How long the paused guest is watched for ticks: several tick periods
/// (~200 ms each). Not a speed assertion — a paused guest prints nothing,
/// however long we look.
const PAUSED_WATCH: Duration = Duration::from_millis(1500);

#[test]
fn pause_stops_ticks_and_resume_continues() {
    require_kvm!();
    let mut vm = Vm::start(&VmSpec::guest("checks=tick tick.count=100000").with_api());
    vm.wait_serial("two ticks", |r| r.ticks().len() >= 2);

    vm.api_ok(json!({"op": "pause"}));
    // Let a line that was half-written when the vCPU stopped settle.
    sleep(Duration::from_millis(300));
    let before = vm.report().text;
    sleep(PAUSED_WATCH);
    let after = vm.report().text;
    assert_eq!(
        before, after,
        "serial output grew while paused:\n--- before\n{before}\n--- after\n{after}"
    );
    let desc = vm.api(&json!({"op": "describe"}));
    assert!(
        desc.to_string().to_lowercase().contains("paused"),
        "describe while paused: {desc}"
    );

    let n = vm.report().ticks().len();
    vm.api_ok(json!({"op": "resume"}));
    vm.wait_serial("ticks after resume", |r| r.ticks().len() >= n + 2);
    let ticks = vm.report().ticks();
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "ticks not consecutive across pause/resume: {ticks:?}"
    );

    vm.api_ok(json!({"op": "stop"}));
    vm.wait_guarded(vmm::HANG_GUARD);
}

#[test]
fn snapshot_restores_into_a_new_monitor() {
    require_kvm!();
    // A jailed monitor writes only below paths its jail keeps: snapshots go
    // below --snapshot-dir, given at start.
    let snaps = vmm::Scratch::new("bh-snaps");
    let mut vm = Vm::start(
        &VmSpec::guest("checks=tick tick.count=100000")
            .with_api()
            .arg("--snapshot-dir")
            .arg(snaps.path().display().to_string()),
    );
    let snapdir = snaps.join("snapshot");
    vm.wait_serial("three ticks", |r| r.ticks().len() >= 3);
    vm.api_ok(json!({"op": "pause"}));
    sleep(Duration::from_millis(300));
    let last = *vm.report().ticks().last().expect("ticks before snapshot");
    vm.api_ok(json!({"op": "snapshot", "dir": snapdir.display().to_string()}));
    assert!(
        snapdir.is_dir() && std::fs::read_dir(&snapdir).map(|d| d.count()).unwrap_or(0) > 0,
        "snapshot wrote nothing to {}",
        snapdir.display()
    );
    vm.api_ok(json!({"op": "stop"}));
    vm.wait_guarded(vmm::HANG_GUARD);

    // A new process from the snapshot: memory and CPU state come back, so
    // the guest's counter continues (it does not restart from 0).
    let mut restored = Vm::start_raw(
        &["--restore".to_string(), snapdir.display().to_string()],
        true,
        true,
    );
    let r = restored.wait_serial("ticks after restore", |r| r.ticks().len() >= 2);
    let ticks = r.ticks();
    assert!(
        ticks[0] > last && ticks[0] <= last + 2,
        "restored guest ticks {ticks:?} do not continue from {last}\n{}",
        restored.dump()
    );
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");
    restored.api_ok(json!({"op": "stop"}));
    restored.wait_guarded(vmm::HANG_GUARD);
}
