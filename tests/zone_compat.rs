//! Valid configurations that runc accepts and bulkhead-runc must accept too (issue 9):
//! seccomp masked comparisons without `valueTwo`, user namespaces with a private state
//! root, FIFO device-cgroup rules, unknown capabilities, joined namespaces, and runc's
//! one-line argument errors.

use std::fs;

use system_tests::{proc_status, require_root, Bundle, Zone};

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
