//! The platform with zones, end to end: the real bulkheadd driven through the real
//! `bulkhead` CLI. Lifecycle verbs, exec, live limits, isolation between zones, survival
//! of `kill -9` of the daemon, exits noticed while it was down, autostart and restart
//! policies, snapshots, console and logs, events and metrics.

use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use system_tests::platform::Platform;
use system_tests::{require_root, wait_for};

fn pid_alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

const SLEEPER: &str = "sh -c 'trap \"exit 0\" TERM; while :; do sleep 1; done'";

#[test]
fn zone_lifecycle_through_the_cli_leaves_nothing_behind() {
    require_root!();
    let p = Platform::start();
    let root = p.rootfs("web");
    p.cli(&[
        "create",
        "web",
        "--rootfs",
        root.to_str().unwrap(),
        "-c",
        &format!("command={SLEEPER}"),
        "-c",
        "limits.memory=64MiB",
        "-c",
        "limits.processes=50",
        "--description",
        "the web server",
    ])
    .ok();
    let v = p.show("web");
    assert_eq!(v["status"], "stopped");
    assert_eq!(v["kind"], "zone");
    assert_eq!(v["description"], "the web server");
    assert!(p.cli(&["list"]).ok().out().contains("STOPPED"));

    p.cli(&["start", "web"]).ok();
    let v = p.show("web");
    assert_eq!(v["status"], "running", "{v}");
    let pid = v["pid"].as_i64().expect("pid");
    assert!(pid_alive(pid));
    assert_eq!(v["state"]["memory_limit_bytes"], 64 << 20, "{v}");
    assert_eq!(v["state"]["processes_limit"], 50, "{v}");

    // exec: stdout, stderr and the exit code come back separately.
    let o = p.cli(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(o.code, 7, "{o:?}");
    assert_eq!(o.stdout, "out\n");
    assert_eq!(o.stderr, "err\n");
    // The zone's hostname is its name, its init is PID 1, and stdin reaches an exec with -i.
    assert_eq!(
        p.cli(&["exec", "web", "--", "hostname"]).ok().out().trim(),
        "web"
    );
    let ps = p
        .cli(&["exec", "web", "--", "ps", "-o", "pid,args"])
        .ok()
        .stdout
        .clone();
    assert!(
        ps.lines()
            .any(|l| l.trim().starts_with("1 ") && l.contains("trap")),
        "{ps}"
    );
    let o = p.cli_input(&["exec", "-i", "web", "--", "tr", "a-z", "A-Z"], b"hello\n");
    assert_eq!((o.code, o.stdout.as_str()), (0, "HELLO\n"), "{o:?}");
    let o = p.cli(&[
        "exec",
        "--env",
        "GREETING=hi",
        "--cwd",
        "/tmp",
        "--user",
        "65534:65534",
        "web",
        "--",
        "sh",
        "-c",
        "echo $GREETING $(pwd) $(id -u)",
    ]);
    assert_eq!(o.stdout.trim(), "hi /tmp 65534", "{o:?}");
    let o = p.cli(&["exec", "web", "--", "/no/such/binary"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("/no/such/binary"), "{o:?}");

    // freeze / unfreeze
    p.cli(&["freeze", "web"]).ok();
    assert_eq!(p.status("web"), "frozen");
    p.cli(&["freeze", "web"]).fails_with_one_line(&["frozen"]);
    p.cli(&["unfreeze", "web"]).ok();
    assert_eq!(p.status("web"), "running");

    // delete refuses a running zone; restart gives a new init; stop is graceful.
    p.cli(&["delete", "web"])
        .fails_with_one_line(&["running", "--force"]);
    p.cli(&["restart", "web"]).ok();
    let pid2 = p.show("web")["pid"].as_i64().unwrap();
    assert_ne!(pid, pid2);
    assert!(!pid_alive(pid));
    p.cli(&["stop", "web"]).ok();
    let v = p.show("web");
    assert_eq!(v["status"], "stopped");
    assert_eq!(
        v["last_exit"], 0,
        "the trap made init exit 0 on SIGTERM: {v}"
    );

    // rename a stopped instance, then delete it: no directory, zone state, cgroup or row.
    p.cli(&["rename", "web", "www"]).ok();
    p.cli(&["show", "web"]).fails_with_one_line(&["not found"]);
    p.cli(&["start", "www"]).ok();
    p.cli(&["delete", "--force", "www"]).ok();
    p.cli(&["show", "www"]).fails_with_one_line(&["not found"]);
    assert_eq!(p.json(&["list"]), serde_json::json!([]));
    let count = |d: &Path| system_tests::platform::entries(d);
    assert_eq!(count(&p.run_dir().join("instances")), 0);
    assert_eq!(count(&p.run_dir().join("zones")), 0);
    assert_eq!(count(&p.root().join("instances")), 0);
    assert!(
        p.leftover_cgroups().is_empty(),
        "{:?}",
        p.leftover_cgroups()
    );
    assert!(!pid_alive(pid2));
}

#[test]
fn zones_survive_kill_9_of_the_daemon_and_exits_meanwhile_are_recorded() {
    require_root!();
    let mut p = Platform::start();
    p.zone("db", SLEEPER, &[]);
    p.zone("job", "sh -c 'read x; exit 3'", &[]);
    let db_pid = p.show("db")["pid"].as_i64().unwrap();
    let job_pid = p.show("job")["pid"].as_i64().unwrap();

    p.kill_daemon();
    assert!(pid_alive(db_pid), "the zone must outlive the daemon");
    // While the daemon is down, "job" ends with code 3 (its console gets a line).
    let monitors = p.run_dir().join("instances");
    let job_dir = std::fs::read_dir(&monitors)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|d| {
            std::fs::read_to_string(d.join("monitor.json"))
                .is_ok_and(|s| s.contains("\"name\": \"job\""))
        })
        .expect("job's monitor directory");
    {
        let mut s = UnixStream::connect(job_dir.join("monitor.sock")).unwrap();
        s.write_all(b"{\"op\":\"console\"}\n").unwrap();
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("ok"), "{line}");
        s.write_all(b"go\n").unwrap();
    }
    wait_for("job to end", || (!pid_alive(job_pid)).then_some(()));

    p.start_daemon();
    let v = p.show("db");
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(v["pid"].as_i64(), Some(db_pid), "re-adopted, not restarted");
    assert_eq!(
        p.cli(&["exec", "db", "--", "echo", "still here"])
            .ok()
            .out()
            .trim(),
        "still here"
    );
    let v = p.show("job");
    assert_eq!(v["status"], "stopped", "{v}");
    assert_eq!(v["last_exit"], 3, "{v}");
    assert!(
        p.daemon_log().contains("re-adopted db"),
        "{}",
        p.daemon_log()
    );
}

#[test]
fn two_zones_see_neither_each_others_processes_nor_files() {
    require_root!();
    let p = Platform::start();
    let ra = p.zone("alpha", SLEEPER, &[]);
    let rb = p.zone("beta", SLEEPER, &[]);
    p.cli(&[
        "exec",
        "alpha",
        "--",
        "sh",
        "-c",
        "echo secret > /tmp/alpha-file; sleep 300 & echo started",
    ])
    .ok();
    let ps_b = p
        .cli(&["exec", "beta", "--", "ps", "-o", "pid,args"])
        .ok()
        .stdout
        .clone();
    assert!(
        !ps_b.contains("sleep 300"),
        "beta sees alpha's process: {ps_b}"
    );
    let o = p.cli(&["exec", "beta", "--", "cat", "/tmp/alpha-file"]);
    assert_ne!(o.code, 0, "beta reads alpha's file: {o:?}");
    assert!(ra.join("tmp/alpha-file").exists() && !rb.join("tmp/alpha-file").exists());
    // Each zone's root is not host root: its uid 0 maps to a range of its own.
    let map_a = p
        .cli(&["exec", "alpha", "--", "cat", "/proc/self/uid_map"])
        .ok()
        .stdout
        .clone();
    let map_b = p
        .cli(&["exec", "beta", "--", "cat", "/proc/self/uid_map"])
        .ok()
        .stdout
        .clone();
    let host = |m: &str| {
        m.split_whitespace()
            .nth(1)
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        host(&map_a) >= 1_000_000 && host(&map_b) >= 1_000_000,
        "{map_a} {map_b}"
    );
    assert_ne!(host(&map_a), host(&map_b));
    // And the host sees both inits under different pid namespaces.
    let pa = p.show("alpha")["pid"].as_i64().unwrap();
    let pb = p.show("beta")["pid"].as_i64().unwrap();
    let ns = |pid: i64| std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    assert_ne!(ns(pa), ns(pb));
}

#[test]
fn a_limit_changed_on_a_running_zone_takes_effect() {
    require_root!();
    let p = Platform::start();
    p.zone(
        "web",
        SLEEPER,
        &["-c", "limits.memory=64MiB", "-c", "limits.processes=40"],
    );
    let pid = p.show("web")["pid"].as_i64().unwrap() as i32;
    let mem = || {
        p.cgroup_file(pid, "memory", "memory.limit_in_bytes")
            .or_else(|| p.cgroup_file(pid, "memory", "memory.max"))
            .map(|s| s.trim().to_string())
    };
    let Some(before) = mem() else {
        println!("SKIPPED: no memory cgroup controller on this host");
        return;
    };
    assert_eq!(before, (64u64 << 20).to_string());
    p.cli(&["config", "set", "web", "limits.memory", "96MiB"])
        .ok();
    assert_eq!(mem().unwrap(), (96u64 << 20).to_string());
    p.cli(&["config", "set", "web", "limits.processes=20"]).ok();
    assert_eq!(p.show("web")["state"]["processes_limit"], 20);
    // A fork bomb stops at the new cap (counted from the host: inside, nothing more can run).
    let _ = p.cli(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "for i in $(seq 40); do sleep 60 & done",
    ]);
    let cur: u32 = p
        .cgroup_file(pid, "pids", "pids.current")
        .and_then(|s| s.trim().parse().ok())
        .expect("pids.current");
    assert!(
        (10..=20).contains(&cur),
        "pids cap of 20 not enforced: {cur} tasks"
    );
    let max = p.cgroup_file(pid, "pids", "pids.max").unwrap_or_default();
    assert_eq!(max.trim(), "20");
    // A key that cannot change live is refused and nothing is saved.
    p.cli(&["config", "set", "web", "hostname", "other"])
        .fails_with_one_line(&["hostname", "running"]);
    assert!(p.show("web")["config"].get("hostname").is_none());
    // A value the kernel refuses (below what the zone uses) leaves the old config.
    p.cli(&["config", "unset", "web", "limits.memory"]).ok();
    assert!(p.show("web")["config"].get("limits.memory").is_none());
    let after = mem().unwrap();
    assert!(
        after.parse::<u64>().unwrap() > 1 << 40,
        "unset removes the cap: {after}"
    );
}

#[test]
fn autostart_and_restart_policies_work_across_a_daemon_restart() {
    require_root!();
    let mut p = Platform::start();
    let r = p.rootfs("auto");
    p.cli(&[
        "create",
        "auto",
        "--rootfs",
        r.to_str().unwrap(),
        "-c",
        &format!("command={SLEEPER}"),
        "-c",
        "boot.autostart=true",
    ])
    .ok();
    let r = p.rootfs("flaky");
    // Fails twice in a row, then the policy gives up.
    p.cli(&[
        "create",
        "flaky",
        "--rootfs",
        r.to_str().unwrap(),
        "-c",
        "command=sh -c 'echo run >> /tmp/runs; exit 1'",
        "-c",
        "boot.restart=on-failure:2",
    ])
    .ok();
    let r = p.rootfs("always");
    let always_root = r.clone();
    p.cli(&[
        "create",
        "always",
        "--rootfs",
        r.to_str().unwrap(),
        "-c",
        &format!("command={SLEEPER}"),
        "-c",
        "boot.restart=always",
        "--start",
    ])
    .ok();
    assert_eq!(p.status("auto"), "stopped");

    p.kill_daemon();
    p.start_daemon();
    p.wait_status("auto", "running");

    p.cli(&["start", "flaky"]).ok();
    let runs = r_runs(&p);
    wait_for("flaky to run 3 times", || (runs() >= 3).then_some(()));
    p.wait_status("flaky", "stopped");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(runs(), 3, "on-failure:2 = the first run and two restarts");
    assert_eq!(p.show("flaky")["last_exit"], 1);

    // "always": killing init from the host brings it back with a new pid.
    let pid = p.show("always")["pid"].as_i64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("always to come back", || {
        let v = p.show("always");
        (v["status"] == "running" && v["pid"].as_i64() != Some(pid)).then_some(())
    });
    // An operator's stop is final: no restart.
    p.cli(&["stop", "always", "--timeout", "5"]).ok();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(p.status("always"), "stopped");
    assert!(always_root.exists());
}

fn r_runs(p: &Platform) -> impl Fn() -> usize + '_ {
    move || {
        std::fs::read_to_string(p.dir.path().join("roots/flaky/tmp/runs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

#[test]
fn snapshots_restore_any_of_several() {
    require_root!();
    let p = Platform::start();
    let root = p.zone("web", SLEEPER, &[]);
    let write = |v: &str| {
        p.cli(&[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            &format!("echo {v} > /tmp/version"),
        ])
        .ok();
    };
    write("one");
    p.cli(&["snapshot", "create", "web", "s1"]).ok();
    write("two");
    p.cli(&["snapshot", "create", "web", "s2"]).ok();
    write("three");
    let list = p.json(&["snapshot", "list", "web"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["s1", "s2"]);
    assert_eq!(list[0]["stateful"], true);
    p.cli(&["snapshot", "create", "web", "s1"])
        .fails_with_one_line(&["already exists"]);
    p.cli(&["snapshot", "restore", "web", "s1"])
        .fails_with_one_line(&["running"]);
    p.cli(&["stop", "web", "--timeout", "5"]).ok();
    // The older snapshot, while a later one exists.
    p.cli(&["snapshot", "restore", "web", "s1"]).ok();
    assert_eq!(
        std::fs::read_to_string(root.join("tmp/version")).unwrap(),
        "one\n"
    );
    p.cli(&["snapshot", "restore", "web", "s2"]).ok();
    assert_eq!(
        std::fs::read_to_string(root.join("tmp/version")).unwrap(),
        "two\n"
    );
    p.cli(&["snapshot", "delete", "web", "s1"]).ok();
    p.cli(&["snapshot", "restore", "web", "s1"])
        .fails_with_one_line(&["not found"]);
    p.cli(&["start", "web"]).ok();
    assert_eq!(
        p.cli(&["exec", "web", "--", "cat", "/tmp/version"])
            .ok()
            .out(),
        "two"
    );
}

#[test]
fn console_logs_events_and_metrics() {
    require_root!();
    let p = Platform::start();
    let mut events = p
        .command()
        .args(["events", "--type", "lifecycle"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The init is an interactive shell on the zone's console.
    p.zone("con", "sh", &[]);
    let since = chrono_now_secs();
    // Console: through a raw upgraded stream, as the CLI does it.
    let mut s = UnixStream::connect(p.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /1.0/instances/con/console HTTP/1.1\r\nHost: b\r\nConnection: upgrade\r\nUpgrade: bulkhead-stream\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(
        String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(&api::frame::encode(
        api::frame::FrameKind::Stdin,
        b"echo con$((40+2))sole\n",
    ))
    .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&got).contains("con42sole") {
        assert!(
            Instant::now() < deadline,
            "no console output: {}",
            String::from_utf8_lossy(&got)
        );
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "console closed");
        got.extend_from_slice(&buf[..n]);
    }
    drop(s);
    // Logs keep what the console printed; --since in the future shows nothing.
    wait_for("the log", || {
        p.cli(&["logs", "con"])
            .stdout
            .contains("con42sole")
            .then_some(())
    });
    assert!(!p
        .cli(&["logs", "con", "--since", &(since - 3600).to_string()])
        .ok()
        .stdout
        .is_empty());
    assert_eq!(
        p.cli(&["logs", "con", "--since", "1999-01-01T00:00:00Z"])
            .ok()
            .stdout,
        p.cli(&["logs", "con"]).stdout
    );
    p.cli(&["logs", "con", "--since", "tomorrow"])
        .fails_with_one_line(&["since"]);
    // Metrics.
    let m = p.http("GET", "/1.0/metrics", None);
    assert_eq!(m.0, 200);
    assert!(
        m.1.contains("bulkhead_memory_bytes{name=\"con\",kind=\"zone\"}"),
        "{}",
        m.1
    );
    assert!(
        m.1.contains("bulkhead_instances{status=\"running\"} 1"),
        "{}",
        m.1
    );
    p.cli(&["delete", "--force", "con"]).ok();
    // Events: created, started, stopped, deleted, in that order.
    let _ = events.kill();
    let _ = events.wait();
    let mut out = String::new();
    events
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let actions: Vec<String> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let pos = |a: &str| {
        actions
            .iter()
            .position(|x| x == a)
            .unwrap_or_else(|| panic!("no {a} in {actions:?}"))
    };
    assert!(pos("instance-created") < pos("instance-started"));
    assert!(pos("instance-started") < pos("instance-stopped"));
    assert!(pos("instance-stopped") < pos("instance-deleted"));
}

fn chrono_now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn help_completions_man_pages_and_a_terminal_exec() {
    require_root!();
    let p = Platform::start();
    let help = p.cli(&["help", "exec"]).ok().stdout.clone();
    assert!(
        help.contains("Examples:") && help.contains("--tty"),
        "{help}"
    );
    let bash = p.cli(&["completion", "bash"]).ok().stdout.clone();
    assert!(
        bash.contains("bulkhead") && bash.contains("snapshot"),
        "completion script"
    );
    let man = p.dir.path().join("man");
    p.cli(&["man", man.to_str().unwrap()]).ok();
    let page = std::fs::read_to_string(man.join("bulkhead-exec.1")).expect("bulkhead-exec.1");
    assert!(page.contains(".TH"), "{page}");
    let keys = p.cli(&["config", "keys"]).ok().stdout.clone();
    assert!(
        keys.contains("limits.memory") && keys.contains("boot.restart"),
        "{keys}"
    );
    let yaml = p.cli(&["--format", "yaml", "list"]).ok().stdout.clone();
    assert_eq!(yaml.trim(), "[]");

    // exec -t through the API: a terminal of the size asked for.
    p.zone("tty", SLEEPER, &[]);
    let mut s = UnixStream::connect(p.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"POST /1.0/instances/tty/exec HTTP/1.1\r\nHost: b\r\nConnection: upgrade\r\nUpgrade: bulkhead-stream\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"));
    s.write_all(
        br#"{"command":["sh","-c","tty; stty size; exit 5"],"tty":true,"cols":99,"rows":33}"#,
    )
    .unwrap();
    s.write_all(b"\n").unwrap();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let code = loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "stream closed before the exit frame: {}",
            String::from_utf8_lossy(&out)
        );
        buf.extend_from_slice(&chunk[..n]);
        let mut done = None;
        while let Some((kind, payload)) = api::frame::decode(&mut buf).unwrap() {
            match kind {
                api::frame::FrameKind::Stdout => out.extend_from_slice(&payload),
                api::frame::FrameKind::Exit => {
                    done = Some(i32::from_be_bytes(payload[..4].try_into().unwrap()))
                }
                other => panic!(
                    "unexpected frame {other:?}: {}",
                    String::from_utf8_lossy(&payload)
                ),
            }
        }
        if let Some(c) = done {
            break c;
        }
    };
    let text = String::from_utf8_lossy(&out);
    assert_eq!(code, 5);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("33 99"), "{text}");
}
