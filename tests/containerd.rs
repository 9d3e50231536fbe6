//! containerd (a private daemon started by the test) driving the runtime under test through
//! `ctr run --runc-binary`: exit codes and output, `ctr task exec`, `ctr task kill`.

use system_tests::clients::{have, Containerd};
use system_tests::{require_root, runtime, unique_id, wait_for};

fn daemon() -> Option<Containerd> {
    for tool in ["containerd", "ctr", "containerd-shim-runc-v2", "podman"] {
        if !have(tool) {
            println!("SKIPPED: {tool} is not installed");
            return None;
        }
    }
    Some(Containerd::start(runtime()))
}

#[test]
fn ctr_run_rm_propagates_exit_code_and_output() {
    require_root!();
    let Some(c) = daemon() else { return };
    let id = unique_id("ctr");
    let o = c.run(
        &["--rm"],
        &id,
        &["sh", "-c", "echo out-line; hostname; exit 3"],
    );
    assert_eq!(o.code, 3, "{o:#?}\ncontainerd log:\n{}", c.log());
    let lines: Vec<&str> = o.stdout.lines().map(str::trim).collect();
    assert_eq!(lines.first(), Some(&"out-line"), "{o:#?}");
    let o = c.run(&["--rm"], &unique_id("ctr"), &["true"]);
    assert_eq!(o.code, 0, "{o:#?}");
    // --rm removed the containers.
    let ls = c.ctr_out(&["containers", "ls", "-q"]);
    assert_eq!(ls.ok().out(), "", "containers left after --rm");
}

#[test]
fn ctr_task_exec_and_kill() {
    require_root!();
    let Some(c) = daemon() else { return };
    let id = unique_id("ctr");
    let o = c.run(
        &["-d"],
        &id,
        &["sh", "-c", "trap 'exit 9' TERM; while :; do sleep 1; done"],
    );
    assert_eq!(o.code, 0, "{o:#?}\ncontainerd log:\n{}", c.log());
    let ls = c.ctr_out(&["task", "ls"]);
    let row = ls
        .ok()
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .map(str::to_string);
    let row = row.unwrap_or_else(|| panic!("task not listed: {ls:#?}"));
    assert!(row.contains("RUNNING"), "{row}");
    let pid: i32 = row
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("pid");
    assert!(std::fs::metadata(format!("/proc/{pid}")).is_ok());

    let o = c.ctr_out(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "sh",
        "-c",
        "echo in-exec $$; exit 6",
    ]);
    assert_eq!(o.code, 6, "{o:#?}");
    assert!(o.stdout.starts_with("in-exec "), "{o:#?}");
    assert_ne!(o.out(), "in-exec 1");

    c.ctr_out(&["task", "kill", "-s", "SIGTERM", &id]).ok();
    let st = wait_for("task to stop", || {
        let ls = c.ctr_out(&["task", "ls"]);
        ls.stdout
            .lines()
            .find(|l| l.starts_with(&id) && l.contains("STOPPED"))
            .map(str::to_string)
    });
    assert!(st.contains("STOPPED"));
    let o = c.ctr_out(&["task", "delete", &id]);
    o.ok();
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_err(),
        "zone init still alive"
    );
    c.ctr_out(&["containers", "delete", &id]).ok();
}
