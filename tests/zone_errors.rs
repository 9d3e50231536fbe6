//! Bad input: every mistake a user can make with a bundle or an id fails with a non-zero
//! exit, exactly one line on stderr naming the problem, and leaves no state dir, no cgroup
//! (in any hierarchy) and no mount behind.

use std::fs;

use serde_json::json;
use system_tests::{require_root, Bundle, Out, Zone};

/// `create` with output in files (if create wrongly succeeds, the waiting init would hold
/// captured pipes open forever).
fn create(z: &Zone) -> Out {
    z.create_with(&[])
}

#[test]
fn malformed_json_is_rejected() {
    require_root!();
    let z = Zone::new(Bundle::new());
    fs::write(
        z.bundle.path().join("config.json"),
        "{\"ociVersion\": \"1.0.2\", \"process\": {",
    )
    .expect("write");
    let o = create(&z);
    o.fails_with_one_line_any(&["json", "config.json", "eof", "parse", "end of"]);
    z.assert_nothing_left();
}

#[test]
fn wrong_type_names_the_json_path() {
    require_root!();
    let mut b = Bundle::new();
    b.set("/process/args", json!("sh -c true"));
    let z = Zone::new(b);
    let o = create(&z);
    o.fails_with_one_line(&["process.args"]);
    z.assert_nothing_left();

    let mut b = Bundle::new();
    b.set("/linux/resources/pids/limit", json!("many"));
    let z = Zone::new(b);
    let o = create(&z);
    o.fails_with_one_line(&["pids"]);
    o.fails_with_one_line(&["limit"]);
    z.assert_nothing_left();
}

#[test]
fn nonexistent_root_path_is_named() {
    require_root!();
    let mut b = Bundle::new();
    b.set("/root/path", json!("no-such-rootfs-dir"));
    let z = Zone::new(b);
    let o = create(&z);
    o.fails_with_one_line(&["no-such-rootfs-dir"]);
    z.assert_nothing_left();
}

#[test]
fn missing_bundle_is_named() {
    require_root!();
    let z = Zone::new(Bundle::new());
    let missing = z.bundle.path().join("no-such-bundle");
    let mut c = z.cmd(&["create"]);
    c.arg("--bundle").arg(&missing).arg(&z.id);
    let o = system_tests::run_cmd(&mut c);
    o.fails_with_one_line(&["no-such-bundle"]);
    z.assert_nothing_left();
}

#[test]
fn negative_memory_limit_is_rejected() {
    require_root!();
    let mut b = Bundle::new();
    b.memory_limit(-5);
    let z = Zone::new(b);
    let o = create(&z);
    o.fails_with_one_line(&["memory"]);
    z.assert_nothing_left();
}

#[test]
fn duplicate_id_is_rejected_and_original_survives() {
    require_root!();
    let mut b = Bundle::new();
    b.sh("exec sleep 1000");
    let z = Zone::new(b);
    z.create();
    let pid = z.pid();
    let cg = z.cgroup_dirs();
    let o = z.create_with(&[]);
    o.fails_with_one_line_any(&[&z.id, "already exists"]);
    // The first zone is untouched.
    assert_eq!(z.state()["status"], "created");
    assert_eq!(z.state()["pid"].as_i64(), Some(pid as i64));
    assert!(
        cg.iter().any(|d| d.exists()),
        "original zone lost its cgroup"
    );
}

#[test]
fn unknown_id_is_reported() {
    require_root!();
    let z = Zone::new(Bundle::new());
    let before = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    for verb in [
        vec!["state", "no-such-zone"],
        vec!["start", "no-such-zone"],
        vec!["kill", "no-such-zone", "KILL"],
        vec!["delete", "no-such-zone"],
        vec!["pause", "no-such-zone"],
        vec!["exec", "no-such-zone", "true"],
    ] {
        let o = z.rt(&verb);
        o.fails_with_one_line_any(&["no-such-zone", "does not exist", "not found"]);
        assert!(
            !z.state_root().join("no-such-zone").exists(),
            "{verb:?} made a state dir"
        );
    }
    let after = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert_eq!(
        before
            .lines()
            .filter(|l| l.contains("no-such-zone"))
            .count(),
        after.lines().filter(|l| l.contains("no-such-zone")).count()
    );
}
