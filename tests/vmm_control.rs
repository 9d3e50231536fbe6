//! bulkhead-vmm's control socket with the test guest's `tick` check:
//! pause stops the guest (no tick while paused), resume continues it; a
//! snapshot of a paused VM restored into a new monitor continues counting
//! where the first one stopped.

#[macro_use]
#[path = "support/vmm.rs"]
mod vmm;

use std::thread::sleep;
use std::time::Duration;

use vmm::{Vm, VmSpec};
use vmm_proto::{ErrorKind, Request, Response, VmState};

/// How long the paused guest is watched for ticks: several tick periods
/// (~200 ms each). Not a speed assertion — a paused guest prints nothing,
/// however long we look.
const PAUSED_WATCH: Duration = Duration::from_millis(1500);

#[test]
fn pause_stops_ticks_and_resume_continues() {
    require_kvm!();
    let mut vm = Vm::start(&VmSpec::guest("checks=tick tick.count=100000").with_api());
    vm.wait_serial("two ticks", |r| r.ticks().len() >= 2);

    let mut api = vm.client();
    assert_eq!(api.pause().expect("pause").state, VmState::Paused);
    // Let a line that was half-written when the vCPU stopped settle.
    sleep(Duration::from_millis(300));
    let before = vm.report().text;
    sleep(PAUSED_WATCH);
    let after = vm.report().text;
    assert_eq!(
        before, after,
        "serial output grew while paused:\n--- before\n{before}\n--- after\n{after}"
    );
    let desc = api.describe().expect("describe");
    assert_eq!(
        desc.state,
        VmState::Paused,
        "describe while paused: {desc:?}"
    );
    assert_eq!(desc.pid, vm.pid());
    // A graceful shutdown needs a running guest.
    match api.call(&Request::Shutdown { timeout_secs: 1 }) {
        Ok(Response::Error(e)) => assert_eq!(e.kind, ErrorKind::Paused, "{e}"),
        other => panic!("shutdown while paused: {other:?}"),
    }

    let n = vm.report().ticks().len();
    assert_eq!(api.resume().expect("resume").state, VmState::Running);
    vm.wait_serial("ticks after resume", |r| r.ticks().len() >= n + 2);
    let ticks = vm.report().ticks();
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "ticks not consecutive across pause/resume: {ticks:?}"
    );

    assert_eq!(api.stop().expect("stop").state, VmState::Stopped);
    assert!(vm.wait_guarded(vmm::HANG_GUARD).success(), "{}", vm.dump());
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
    let mut api = vm.client();
    // Only a paused VM can be snapshotted.
    match api.snapshot(&snapdir) {
        Err(vmm_proto::ClientError::Api { source, .. }) => {
            assert_eq!(source.kind, ErrorKind::NotPaused, "{source}")
        }
        other => panic!("snapshot of a running VM: {other:?}"),
    }
    api.pause().expect("pause");
    sleep(Duration::from_millis(300));
    let last = *vm.report().ticks().last().expect("ticks before snapshot");
    let done = api.snapshot(&snapdir).expect("snapshot");
    assert_eq!(done.dir, snapdir);
    assert!(done.memory_bytes_written > 0, "{done:?}");
    assert!(
        snapdir.is_dir() && std::fs::read_dir(&snapdir).map(|d| d.count()).unwrap_or(0) > 0,
        "snapshot wrote nothing to {}",
        snapdir.display()
    );
    api.stop().expect("stop");
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
    restored.client().stop().expect("stop");
    restored.wait_guarded(vmm::HANG_GUARD);
}

#[test]
fn shutdown_presses_the_power_button_and_the_guest_powers_off() {
    require_kvm!();
    // The guest's `power` check waits for the GED interrupt, reports it,
    // then finishes and powers off through the sleep register.
    let mut vm = Vm::start(&VmSpec::guest("checks=power power.wait_ms=120000").with_api());
    vm.wait_serial("the guest waiting for the button", |r| {
        r.lines().any(|l| l.starts_with("power.wait ready"))
    });
    let mut api = vm.client();
    let done = api.shutdown(120).expect("shutdown");
    assert!(done.graceful, "{done:?}\n{}", vm.dump());
    assert_eq!(done.state, VmState::Stopped);
    let status = vm.wait_guarded(vmm::HANG_GUARD);
    assert!(status.success(), "{status}\n{}", vm.dump());
    let r = vm.report();
    r.assert_all_passed();
    assert!(r.ok("power").contains("button"), "{}", r.text);
}
