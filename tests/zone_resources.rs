//! Resource caps seen from inside and outside: memory limit (OOM kill, host survives), pids
//! limit (fork fails, pids.current stays under the cap), freeze/thaw via pause/resume,
//! `update` while running, and `events --stats`.

use std::fs;
use std::time::Duration;

use serde_json::{json, Value};
use system_tests::{require_root, run_cmd_input, wait_for, Bundle, Zone};

const MIB: i64 = 1024 * 1024;

#[test]
fn memory_cap_oom_kills_the_zone_and_host_survives() {
    require_root!();
    let mut b = Bundle::new();
    b.memory_limit(16 * MIB);
    // Where the host could swap around the cap, forbid it (memsw on v1).
    if std::path::Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
        b.set("/linux/resources/memory/swap", json!(16 * MIB));
    }
    b.sh(
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || \
         cat /sys/fs/cgroup/memory.max; \
         a=$(head -c 200000000 /dev/zero | tr '\\0' x); echo survived",
    );
    let z = Zone::new(b);
    z.create().start();
    let code = z.wait();
    let out = z.stdout_log();
    assert_eq!(
        code,
        128 + 9,
        "zone was not SIGKILLed by the OOM killer; output {out:?}"
    );
    assert!(
        !out.contains("survived"),
        "allocation succeeded under the cap: {out}"
    );
    // Inside, the zone saw its limit.
    assert_eq!(
        out.lines().next().map(str::trim),
        Some((16 * MIB).to_string().as_str())
    );
    // Outside: the cgroup recorded hitting the limit / an OOM kill.
    if let Some(oom) = z.cgroup_file("memory", "memory.oom_control") {
        let kills = oom
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        // With swap capped too (memsw), the hits are counted in memory.memsw.failcnt.
        let failcnt: u64 = ["memory.failcnt", "memory.memsw.failcnt"]
            .iter()
            .filter_map(|f| z.cgroup_file("memory", f))
            .filter_map(|v| v.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        // oom_kill is the kernel's own count of OOM kills in this cgroup (failcnt stays 0
        // here when memsw is capped too, so it is only reported).
        assert!(kills >= 1, "oom_control {oom:?} failcnt {failcnt}");
        assert_eq!(
            z.cgroup_file("memory", "memory.limit_in_bytes").as_deref(),
            Some((16 * MIB).to_string().as_str())
        );
    } else {
        let events = z
            .cgroup_file("memory", "memory.events")
            .expect("memory.events");
        assert!(
            events.contains("oom_kill 1") || events.contains("oom_kill"),
            "{events}"
        );
    }
    // The host and this test process survived: we are still here, and can still run things.
    let o = system_tests::run_cmd(std::process::Command::new("/bin/busybox").arg("true"));
    o.ok();
}

#[test]
fn pids_cap_makes_fork_fail() {
    require_root!();
    let mut b = Bundle::new();
    // Once the cap is reached nothing can fork, so everything after the loop uses shell
    // builtins only (`read`, `echo`, `: >`, `exec`). A failed fork ends a non-interactive busybox sh,
    // so the loop runs in a subshell.
    b.pids_limit(20).sh(
        "(i=0; while [ $i -lt 100 ]; do sleep 1000 & i=$((i+1)); done) 2>/tmp/forkerr; \
         d=/sys/fs/cgroup/pids; [ -e $d/pids.max ] || d=/sys/fs/cgroup; \
         read max < $d/pids.max; read cur < $d/pids.current; echo $max; echo $cur; \
         : > /tmp/ready; exec sleep 1000",
    );
    let z = Zone::new(b);
    z.spawn(Some("/tmp/ready"));
    let err = fs::read_to_string(z.bundle.rootfs().join("tmp/forkerr")).unwrap_or_default();
    assert!(
        err.contains("can't fork") || err.contains("Resource temporarily unavailable"),
        "fork did not fail inside the zone: {err:?}"
    );
    let out = z.stdout_log();
    let mut lines = out.lines();
    assert_eq!(lines.next().map(str::trim), Some("20"), "{out}");
    let inside: u64 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("pids.current");
    assert!(inside <= 20, "pids.current inside {inside}");
    let max = z.cgroup_file("pids", "pids.max").expect("pids.max");
    assert_eq!(max, "20");
    let current: u64 = z
        .cgroup_file("pids", "pids.current")
        .and_then(|v| v.parse().ok())
        .expect("pids.current");
    assert!(
        (10..=20).contains(&current),
        "pids.current on host {current}; inside {out:?}"
    );
    let events = z.cgroup_file("pids", "pids.events").unwrap_or_default();
    let hits: u64 = events
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(hits > 0, "pids.events shows no refused fork: {events:?}");
}

fn counter(z: &Zone) -> Option<u64> {
    fs::read_to_string(z.bundle.rootfs().join("tmp/counter"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn pause_freezes_and_resume_continues() {
    require_root!();
    let mut b = Bundle::new();
    b.sh(
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.new; \
          mv /tmp/counter.new /tmp/counter; usleep 20000; done",
    );
    let z = Zone::new(b);
    z.spawn(Some("/tmp/counter"));
    z.rt(&["pause", &z.id]).ok();
    assert_eq!(z.state()["status"], "paused");
    if let Some(st) = z.cgroup_file("freezer", "freezer.state") {
        assert_eq!(st, "FROZEN");
    } else {
        assert_eq!(
            z.cgroup_file("freezer", "cgroup.freeze").as_deref(),
            Some("1")
        );
    }
    let frozen = counter(&z).expect("counter");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(counter(&z), Some(frozen), "counter advanced while paused");
    let st = system_tests::proc_status(z.pid(), "State").unwrap_or_default();
    assert!(!st.starts_with('R'), "init runs while frozen: {st}");
    z.rt(&["resume", &z.id]).ok();
    assert_eq!(z.state()["status"], "running");
    wait_for("counter to advance after resume", || {
        counter(&z).filter(|c| *c > frozen)
    });
    if let Some(st) = z.cgroup_file("freezer", "freezer.state") {
        assert_eq!(st, "THAWED");
    }
}

#[test]
fn update_changes_limits_while_running() {
    require_root!();
    let mut b = Bundle::new();
    b.memory_limit(64 * MIB)
        .pids_limit(50)
        .sh("touch /tmp/ready; sleep 1000");
    let z = Zone::new(b);
    z.spawn(Some("/tmp/ready"));
    assert_eq!(z.cgroup_file("pids", "pids.max").as_deref(), Some("50"));
    let res = json!({"memory": {"limit": 96 * MIB}, "pids": {"limit": 33}});
    let mut c = z.cmd(&["update", "--resources", "-", &z.id]);
    run_cmd_input(&mut c, res.to_string().as_bytes()).ok();
    assert_eq!(z.cgroup_file("pids", "pids.max").as_deref(), Some("33"));
    let mem = z
        .cgroup_file("memory", "memory.limit_in_bytes")
        .or_else(|| z.cgroup_file("memory", "memory.max"));
    assert_eq!(mem, Some((96 * MIB).to_string()));
    // Inside sees the new limit too.
    // (v1: the pids hierarchy's directory; pure v2: the zone's own cgroup at the top.)
    let o = z.exec(
        &[],
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max",
        ],
    );
    assert_eq!(o.ok().out(), "33");
    // Flag form.
    z.rt(&["update", "--pids-limit", "44", &z.id]).ok();
    assert_eq!(z.cgroup_file("pids", "pids.max").as_deref(), Some("44"));
}

#[test]
fn events_stats_report_memory_and_pids() {
    require_root!();
    let mut b = Bundle::new();
    b.memory_limit(64 * MIB)
        .sh("sleep 1000 & sleep 1000 & : > /tmp/ready; wait");
    let z = Zone::new(b);
    z.spawn(Some("/tmp/ready"));
    let o = z.rt(&["events", "--stats", &z.id]);
    o.ok();
    let v: Value = serde_json::from_str(o.out()).unwrap_or_else(|e| panic!("{e}: {o:?}"));
    assert_eq!(v["type"], "stats", "{v}");
    assert_eq!(v["id"], z.id.as_str(), "{v}");
    let data = &v["data"];
    assert_eq!(data["pids"]["current"], 3, "{v}");
    let usage = data["memory"]["usage"]["usage"]
        .as_u64()
        .expect("memory.usage.usage");
    assert!(usage > 0, "{v}");
    let limit = data["memory"]["usage"]["limit"]
        .as_i64()
        .expect("memory.usage.limit");
    assert_eq!(limit, 64 * MIB, "{v}");
    // Matches the host's view of the cgroup.
    let host: u64 = z
        .cgroup_file("pids", "pids.current")
        .and_then(|s| s.parse().ok())
        .expect("pids.current");
    assert_eq!(host, 3);
}
