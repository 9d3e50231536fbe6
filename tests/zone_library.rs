//! The zone library as a monitor uses it (no bulkhead-runc in between): create with the
//! zone's stdio on pipes the caller owns, start, exec with typed overrides and its own
//! stdio, typed resource updates and typed stats, delete. `harness = false`: this runs
//! single-threaded in `main`, as the library's create/exec require.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};

use system_tests::{is_root, read_cgroup, Bundle};
use zone::container::{self, CreateOpts, ExecOpts, ExecOverrides, ExecUser, ResourceUpdate};

fn pipe() -> (std::fs::File, OwnedFd) {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    (std::fs::File::from(r), w)
}

fn read_all(mut f: std::fs::File) -> String {
    let mut s = String::new();
    f.read_to_string(&mut s).expect("read pipe");
    s
}

fn main() {
    if !is_root() {
        println!("SKIPPED: needs root");
        return;
    }
    let state = tempfile::tempdir().expect("state root");
    let mut b = Bundle::new();
    b.sh("echo init-out; echo init-err >&2; read line; echo got:$line; sleep 1000");
    b.write();
    let cg = b.cgroups_path();
    let id = system_tests::unique_id("lib");
    let devnull = std::fs::File::open("/dev/null").expect("/dev/null");
    let (in_r, in_w) = {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        (r, std::fs::File::from(w))
    };
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let spawned = container::create(&CreateOpts {
        root: state.path().to_path_buf(),
        id: id.clone(),
        bundle: b.path().to_path_buf(),
        stdio: Some([in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()]),
        ..Default::default()
    })
    .expect("create");
    // The caller's copies: only the zone holds the pipes' write ends now.
    drop((in_r, out_w, err_w, devnull));
    container::start(state.path(), &id).expect("start");
    {
        use std::io::Write;
        let mut w = in_w;
        writeln!(w, "hello-from-monitor").expect("write stdin");
    }

    // exec: typed overrides on the zone's own process, output on our pipe.
    let mut p = container::exec_base_process(state.path(), &id).expect("base process");
    p.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "echo uid:$(id -u) gid:$(id -g) v:$V; grep CapEff /proc/self/status".into(),
    ]));
    ExecOverrides {
        env: vec!["V=typed".into()],
        user: Some(ExecUser {
            uid: 1000,
            gid: Some(1000),
        }),
        ..Default::default()
    }
    .apply(&mut p)
    .expect("overrides");
    let (x_r, x_w) = pipe();
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    let ex = container::exec(&ExecOpts {
        root: state.path().to_path_buf(),
        id: id.clone(),
        process: p,
        stdio: Some([null.as_raw_fd(), x_w.as_raw_fd(), x_w.as_raw_fd()]),
        ..Default::default()
    })
    .expect("exec");
    drop(x_w);
    let exec_out = read_all(x_r);
    let code = container::wait_exit(ex.pid).expect("wait exec");
    assert_eq!(code, 0, "exec failed: {exec_out}");
    assert!(
        exec_out.contains("uid:1000 gid:1000 v:typed"),
        "exec output: {exec_out:?}"
    );

    // Typed update and stats.
    container::update_resources(
        state.path(),
        &id,
        &ResourceUpdate {
            memory_limit: Some(96 << 20),
            pids_limit: Some(77),
            ..Default::default()
        },
    )
    .expect("update");
    let mem = read_cgroup("memory", &cg, "memory.limit_in_bytes")
        .or_else(|| read_cgroup("memory", &cg, "memory.max"))
        .expect("memory limit file");
    assert_eq!(mem, (96u64 << 20).to_string());
    let pids = read_cgroup("pids", &cg, "pids.max").expect("pids.max");
    assert_eq!(pids, "77");
    let st = container::stats(state.path(), &id).expect("stats");
    assert!(st.pids_current >= 1, "{st:?}");
    assert_eq!(st.pids_limit, 77, "{st:?}");
    assert!(st.memory_usage > 0, "{st:?}");
    assert_eq!(st.memory_limit, 96 << 20, "{st:?}");
    assert!(st.cpu_usage_ns > 0, "{st:?}");
    let ev = container::stats_event(state.path(), &id).expect("stats event");
    assert_eq!(ev["type"], "stats");
    assert_eq!(ev["data"]["pids"]["limit"], 77);
    // The recorded config keeps the old limits and gains the new ones.
    let (rec, _) = container::load(state.path(), &id).expect("load");
    let r = rec
        .config
        .linux()
        .clone()
        .unwrap()
        .resources()
        .clone()
        .unwrap();
    assert!(
        r.devices().is_some(),
        "update dropped the recorded device rules"
    );
    assert_eq!(r.pids().unwrap().limit(), 77);

    container::kill(state.path(), &id, libc::SIGKILL, false).expect("kill");
    let code = container::wait_exit(spawned.pid).expect("wait init");
    assert_eq!(code, 128 + libc::SIGKILL);
    container::delete(state.path(), &id, false).expect("delete");
    let out = read_all(out_r);
    let err = read_all(err_r);
    assert!(out.contains("init-out"), "zone stdout: {out:?}");
    assert!(
        out.contains("got:hello-from-monitor"),
        "zone stdout: {out:?}"
    );
    assert_eq!(err.trim(), "init-err", "zone stderr: {err:?}");
    assert!(!state.path().join(&id).exists());
    println!("zone_library: ok (create/start/exec with stdio, overrides, update, stats)");
}
