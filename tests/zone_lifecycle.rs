//! The runc-compatible lifecycle seen through the command line and on the host: state
//! transitions, list, ps, exec (exit codes, detach, env, cwd, user), kill (signal delivery,
//! `--all`), delete (refuses running zones without `--force`, removes cgroups and state),
//! hooks, the console socket, `spec` and `features`.

use std::fs;
use std::os::unix::net::UnixListener;

use serde_json::{json, Value};
use system_tests::{proc_status, require_root, Bundle, Zone};

#[test]
fn state_goes_created_running_stopped() {
    require_root!();
    let mut b = Bundle::new();
    b.sh(": > /tmp/ready; exec sleep 1000");
    let z = Zone::new(b);
    z.create();
    let s = z.state();
    assert_eq!(s["status"], "created", "{s}");
    assert_eq!(s["id"], z.id.as_str());
    let pid = s["pid"].as_i64().expect("pid") as i32;
    assert_eq!(pid, z.pid(), "state pid differs from --pid-file");
    assert!(
        fs::metadata(format!("/proc/{pid}")).is_ok(),
        "created init not alive"
    );
    let bundle = fs::canonicalize(z.bundle.path()).expect("canon");
    assert_eq!(
        s["bundle"].as_str().map(std::path::PathBuf::from),
        Some(bundle.clone())
    );
    assert!(s["ociVersion"].is_string(), "{s}");
    // The user process has not run yet.
    assert!(
        !z.bundle.rootfs().join("tmp/ready").exists(),
        "process ran before start"
    );

    z.start();
    system_tests::wait_for("zone to run", || {
        z.bundle.rootfs().join("tmp/ready").exists().then_some(())
    });
    assert_eq!(z.state()["status"], "running");

    let list = z.rt(&["list", "--format", "json"]);
    let l: Value = serde_json::from_str(list.ok().out()).expect("list json");
    let entry = l
        .as_array()
        .and_then(|a| a.iter().find(|e| e["id"] == z.id.as_str()))
        .unwrap_or_else(|| panic!("{l}"));
    assert_eq!(entry["status"], "running");
    assert_eq!(entry["pid"].as_i64(), Some(pid as i64));

    z.kill("KILL").ok();
    assert_eq!(z.wait(), 128 + 9);
    assert_eq!(z.state()["status"], "stopped");
    let list = z.rt(&["list", "--format", "json"]);
    let l: Value = serde_json::from_str(list.ok().out()).expect("list json");
    assert_eq!(l[0]["status"], "stopped", "{l}");

    z.delete(false).ok();
    z.assert_nothing_left();
    z.rt(&["state", &z.id])
        .fails_with_one_line_any(&[&z.id, "does not exist", "not found"]);
}

#[test]
fn ps_lists_zone_processes() {
    require_root!();
    let mut b = Bundle::new();
    b.sh("sleep 1000 & : > /tmp/ready; wait");
    let z = Zone::new(b);
    z.spawn(Some("/tmp/ready"));
    let o = z.rt(&["ps", "--format", "json", &z.id]);
    let pids: Vec<i64> = serde_json::from_str(o.ok().out()).expect("ps json");
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(pids.contains(&(z.pid() as i64)), "{pids:?}");
    for p in pids {
        // Host pids, in the zone's cgroup.
        let cg = fs::read_to_string(format!("/proc/{p}/cgroup")).expect("cgroup");
        assert!(cg.contains(&z.cgroups_path()), "{cg}");
    }
}

#[test]
fn exec_runs_in_the_zone() {
    require_root!();
    let mut b = Bundle::new();
    b.set("/hostname", json!("exec-zone"))
        .sh(": > /tmp/ready; exec sleep 1000");
    let z = Zone::new(b);
    z.spawn(Some("/tmp/ready"));
    let o = z.exec(&[], &["sh", "-c", "hostname; echo $$; exit 3"]);
    assert_eq!(o.code, 3, "{o:#?}");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines[0], "exec-zone");
    assert_ne!(lines[1], "1");
    let o = z.exec(&["--env", "FOO=bar baz"], &["sh", "-c", "echo $FOO"]);
    assert_eq!(o.ok().out(), "bar baz");
    let o = z.exec(&["--cwd", "/tmp"], &["pwd"]);
    assert_eq!(o.ok().out(), "/tmp");
    let o = z.exec(&["--user", "65534:65534"], &["sh", "-c", "id -u; id -g"]);
    assert_eq!(
        o.ok().stdout.lines().collect::<Vec<_>>(),
        ["65534", "65534"]
    );

    let pidfile = z.bundle.path().join("exec.pid");
    let pf = pidfile.to_str().expect("utf8");
    z.exec_detached(&["--pid-file", pf], &["sleep", "999"]).ok();
    let pid: i32 = fs::read_to_string(&pidfile)
        .expect("exec pid file")
        .trim()
        .parse()
        .expect("pid");
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert_eq!(cmdline, b"sleep\0999\0");
    let ns = proc_status(pid, "NSpid").expect("NSpid");
    assert_eq!(
        ns.split_whitespace().count(),
        2,
        "detached exec not in the zone: {ns}"
    );
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/ns/pid")).expect("ns"),
        fs::read_link(format!("/proc/{}/ns/pid", z.pid())).expect("ns")
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL)
        .expect("kill exec");
    assert_eq!(system_tests::wait_exit_code(pid), 137);
}

#[test]
fn kill_delivers_signals() {
    require_root!();
    let mut b = Bundle::new();
    b.sh(
        "trap 'echo term > /tmp/term; exit 7' TERM; : > /tmp/ready; \
          while :; do sleep 1; done",
    );
    let z = Zone::new(b);
    z.spawn(Some("/tmp/ready"));
    z.kill("TERM").ok();
    assert_eq!(z.wait(), 7);
    assert_eq!(
        fs::read_to_string(z.bundle.rootfs().join("tmp/term")).expect("trap marker"),
        "term\n"
    );
    // --all reaches every process of the zone: init ignores TERM, its two children (forked
    // before the trap, so with the default action) die of it, and init carries on.
    let mut b = Bundle::new();
    b.sh(
        "sleep 1000 & sleep 1000 & trap '' TERM; : > /tmp/ready; wait; \
          : > /tmp/after; exec sleep 1000",
    );
    let z = Zone::new(b);
    z.spawn(Some("/tmp/ready"));
    assert_eq!(z.cgroup_file("pids", "pids.current").as_deref(), Some("3"));
    z.rt(&["kill", "--all", &z.id, "TERM"]).ok();
    let after = z.bundle.rootfs().join("tmp/after");
    system_tests::wait_for("the zone's children to die of SIGTERM", || {
        after.exists().then_some(())
    });
    assert_eq!(
        z.state()["status"],
        "running",
        "init did not survive kill --all TERM"
    );
    system_tests::wait_for("only init left in the zone cgroup", || {
        (z.cgroup_file("pids", "cgroup.procs").as_deref() == Some(z.pid().to_string().as_str()))
            .then_some(())
    });
    z.rt(&["kill", "--all", &z.id, "KILL"]).ok();
    assert_eq!(z.wait(), 137);
}

#[test]
fn delete_refuses_running_and_force_removes_everything() {
    require_root!();
    let mut b = Bundle::new();
    b.sh(": > /tmp/ready; exec sleep 1000");
    let z = Zone::new(b);
    z.spawn(Some("/tmp/ready"));
    let dirs = z.cgroup_dirs();
    let present: Vec<_> = dirs.iter().filter(|d| d.exists()).collect();
    assert!(!present.is_empty(), "zone has no cgroup dirs at {dirs:?}");
    let o = z.delete(false);
    assert_ne!(o.code, 0, "delete of a running zone succeeded: {o:#?}");
    assert_eq!(z.state()["status"], "running");
    assert!(z.state_dir().exists());
    z.delete(true).ok();
    assert_eq!(z.wait(), 137);
    z.assert_nothing_left();

    // A stopped zone deletes without --force.
    let mut b = Bundle::new();
    b.args(&["true"]);
    let z = Zone::new(b);
    z.create().start();
    assert_eq!(z.wait(), 0);
    assert_eq!(z.state()["status"], "stopped");
    z.delete(false).ok();
    z.assert_nothing_left();
}

fn hook(dir: &std::path::Path, name: &str) -> Value {
    json!({"path": "/bin/sh",
           "args": ["sh", "-c", format!("cat > {}/{name}.json", dir.display())]})
}

fn read_hook(dir: &std::path::Path, name: &str) -> Option<Value> {
    let s = fs::read_to_string(dir.join(format!("{name}.json"))).ok()?;
    Some(serde_json::from_str(&s).unwrap_or_else(|e| panic!("{name} hook got {s:?}: {e}")))
}

#[test]
fn hooks_run_with_state_on_stdin() {
    require_root!();
    let hooks = tempfile::tempdir().expect("tempdir");
    let h = hooks.path();
    let mut b = Bundle::new();
    b.sh(": > /tmp/ready; exec sleep 1000");
    for k in ["prestart", "createRuntime", "poststart", "poststop"] {
        b.hook(k, hook(h, k));
    }
    let z = Zone::new(b);
    z.create();
    for k in ["prestart", "createRuntime"] {
        let s = read_hook(h, k).unwrap_or_else(|| panic!("{k} hook did not run at create"));
        assert_eq!(s["id"], z.id.as_str(), "{k}: {s}");
        assert_eq!(s["pid"].as_i64(), Some(z.pid() as i64), "{k}: {s}");
        assert!(s["bundle"].is_string(), "{k}: {s}");
    }
    // runtime-tools hooks_stdin: prestart hooks see "created"; createRuntime hooks run
    // while the zone is still "creating" (runtime-spec runtime.md, lifecycle step 3).
    assert_eq!(read_hook(h, "prestart").unwrap()["status"], "created");
    assert_eq!(read_hook(h, "createRuntime").unwrap()["status"], "creating");
    // runtime-spec lifecycle steps 6-9: poststart runs after `start` ran the process
    // (runc < 1.2 runs it during create: opencontainers/runc#1710, fixed by #5186).
    assert!(
        read_hook(h, "poststart").is_none(),
        "poststart ran at create, before start"
    );
    z.start();
    let s = system_tests::wait_for("poststart hook", || read_hook(h, "poststart"));
    assert_eq!(s["id"], z.id.as_str(), "{s}");
    assert!(read_hook(h, "poststop").is_none(), "poststop ran early");
    z.kill("KILL").ok();
    z.wait();
    z.delete(false).ok();
    let s = read_hook(h, "poststop").expect("poststop hook did not run at delete");
    assert_eq!(s["id"], z.id.as_str(), "{s}");
}

#[test]
fn failing_prestart_hook_fails_create_and_leaves_nothing() {
    require_root!();
    let hooks = tempfile::tempdir().expect("tempdir");
    let ran = hooks.path().join("ran.json");
    let mut b = Bundle::new();
    b.hook(
        "prestart",
        json!({"path": "/bin/sh",
               "args": ["sh", "-c", format!("cat > {}; exit 3", ran.display())]}),
    );
    let z = Zone::new(b);
    let o = z.create_with(&[]);
    assert_ne!(o.code, 0, "create succeeded despite a failing hook: {o:#?}");
    // The hook really ran (with the state on stdin) and failed; then everything was undone.
    let s: Value = serde_json::from_str(&fs::read_to_string(&ran).expect("hook ran"))
        .expect("hook got JSON state");
    assert_eq!(s["id"], z.id.as_str(), "{s}");
    let pid = s["pid"].as_i64().expect("state pid in hook input");
    z.assert_nothing_left();
    assert_ne!(z.rt(&["state", &z.id]).code, 0);
    // The half-created init is gone (or at least no longer in the zone's pid namespace).
    let alive = fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|st| {
            st.lines()
                .any(|l| l.starts_with("NSpid:") && l.split_whitespace().count() > 2)
        })
        .unwrap_or(false);
    assert!(
        !alive,
        "zone init {pid} left running after the failed create"
    );
}

#[test]
fn console_socket_receives_the_pty_master() {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::io::{IoSliceMut, Write};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    require_root!();
    let sockdir = tempfile::tempdir().expect("tempdir");
    let sock = sockdir.path().join("console.sock");
    let listener = UnixListener::bind(&sock).expect("bind console socket");
    let mut b = Bundle::new();
    b.terminal(true).args(&["sh"]);
    let z = Zone::new(b);
    let creator = {
        let sock = sock.clone();
        let id = z.id.clone();
        let mut c = z.cmd(&["create"]);
        c.arg("--bundle")
            .arg(z.bundle.path())
            .arg("--console-socket")
            .arg(&sock)
            .arg("--pid-file")
            .arg(z.bundle.path().join("init.pid"))
            .arg(&id);
        std::thread::spawn(move || system_tests::run_cmd(&mut c))
    };
    // Accept with a hang guard: a runtime that never connects must fail the test, not hang it.
    listener.set_nonblocking(true).expect("nonblocking");
    let conn =
        system_tests::wait_for(
            "the runtime to connect to the console socket",
            || match listener.accept() {
                Ok((c, _)) => Some(c),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        !creator.is_finished(),
                        "create exited without connecting to the console socket"
                    );
                    None
                }
                Err(e) => panic!("accept: {e}"),
            },
        );
    conn.set_nonblocking(false).expect("blocking");
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .expect("recvmsg");
    let mut master = None;
    for c in msg.cmsgs().expect("cmsgs") {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel just installed these descriptors in our table for us; we
            // take ownership of each exactly once.
            master = fds.first().map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    let master = master.expect("no fd in SCM_RIGHTS message");
    let o = creator.join().expect("create thread");
    assert_eq!(o.code, 0, "create with --console-socket failed: {o:#?}");
    z.start();
    let mut f = fs::File::from(master.try_clone().expect("dup"));
    f.write_all(b"echo h\"\"i; exit\n").expect("write to pty");
    let text = system_tests::read_until(&master, |_| false);
    assert!(
        text.lines().any(|l| l.trim() == "hi"),
        "no `hi` line from the zone's terminal: {text:?}"
    );
    let pid: i32 = fs::read_to_string(z.bundle.path().join("init.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(system_tests::wait_exit_code(pid), 0);
}

#[test]
fn spec_writes_a_config_that_runs() {
    require_root!();
    let b = Bundle::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let z = Zone::new(b);
    let o = z.rt(&["spec".as_ref(), "--bundle".as_ref(), dir.path().as_os_str()]);
    o.ok();
    let text = fs::read_to_string(dir.path().join("config.json")).expect("spec wrote config.json");
    let mut cfg: Value = serde_json::from_str(&text).expect("spec config is JSON");
    assert!(cfg["ociVersion"].is_string());
    assert!(cfg["linux"]["namespaces"].is_array(), "{cfg}");
    // Run it as-is except: our rootfs, no terminal, a command that prints.
    system_tests::json_set(&mut cfg, "/root/path", json!(z.bundle.rootfs()));
    system_tests::json_set(&mut cfg, "/process/terminal", json!(false));
    system_tests::json_set(&mut cfg, "/process/args", json!(["echo", "spec-ok"]));
    let mut b2 = Bundle::new();
    b2.config = cfg;
    let z2 = Zone::new(b2);
    let o = z2.run();
    assert_eq!(o.ok().out(), "spec-ok");
}

#[test]
fn features_is_json() {
    require_root!();
    let z = Zone::new(Bundle::new());
    let o = z.rt(&["features"]);
    let v: Value = serde_json::from_str(o.ok().out()).expect("features JSON");
    assert!(v["ociVersionMin"].is_string(), "{v}");
    assert!(v["ociVersionMax"].is_string(), "{v}");
    let ns = v["linux"]["namespaces"]
        .as_array()
        .expect("linux.namespaces");
    for want in ["pid", "mount", "user", "network", "uts", "ipc"] {
        assert!(
            ns.iter().any(|n| n == want),
            "features lacks namespace {want}: {v}"
        );
    }
    assert!(v["hooks"].as_array().is_some_and(|h| !h.is_empty()), "{v}");
}

#[test]
fn run_propagates_exit_code_and_cleans_up() {
    require_root!();
    let mut b = Bundle::new();
    b.sh("echo to-stdout; echo to-stderr >&2; exit 42");
    let z = Zone::new(b);
    let o = z.run();
    assert_eq!(o.code, 42, "{o:#?}");
    assert_eq!(o.out(), "to-stdout");
    assert!(o.stderr.contains("to-stderr"), "{o:#?}");
    // Foreground `run` deletes the zone when it exits.
    z.assert_nothing_left();
}
