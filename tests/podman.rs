//! podman (Debian's) driving the runtime under test: `run --rm` exit codes and output, an
//! interactive terminal, `exec`, `stop`, and memory/pids limits seen inside and on the host.

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};

use system_tests::clients::{have, Podman};
use system_tests::{require_root, runtime};

fn podman() -> Option<Podman> {
    if !have("podman") {
        println!("SKIPPED: podman is not installed");
        return None;
    }
    Some(Podman::new(runtime()))
}

#[test]
fn run_rm_propagates_exit_code_and_output() {
    require_root!();
    let Some(p) = podman() else { return };
    let o = p.run(
        &["--rm"],
        &["sh", "-c", "echo out-line; echo err-line >&2; exit 5"],
    );
    assert_eq!(o.code, 5, "{o:#?}");
    assert_eq!(o.out(), "out-line", "{o:#?}");
    assert!(o.stderr.contains("err-line"), "{o:#?}");
    let o = p.run(&["--rm", "--hostname", "pm-zone"], &["hostname"]);
    assert_eq!(o.ok().out(), "pm-zone");
    // --rm removed it.
    let ps = p.podman(&["ps", "-a", "-q"]);
    assert_eq!(ps.ok().out(), "", "containers left after --rm");
}

#[test]
fn run_it_with_a_terminal() {
    require_root!();
    let Some(p) = podman() else { return };
    let pty = nix::pty::openpty(None, None).expect("openpty");
    // `setsid --ctty` makes the pty (its stdin) podman's controlling terminal.
    let mut c = Command::new("setsid");
    c.arg("--ctty")
        .arg("--wait")
        .arg(p.cmd(&[]).get_program())
        .args(p.cmd(&["run"]).get_args())
        .args(Podman::RUN_OPTS)
        .args(["--rm", "-it", &p.image, "sh"]);
    let slave = pty.slave;
    c.stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::from(slave.try_clone().expect("dup")))
        .stderr(Stdio::from(slave));
    let mut child = c.spawn().expect("spawn podman -it");
    let mut m = fs::File::from(pty.master.try_clone().expect("dup"));
    m.write_all(b"echo h\"\"i; tty; exit 3\n").expect("write");
    let text = system_tests::read_until(&pty.master, |t| {
        t.lines().filter(|l| l.contains("/dev/pts/")).count() >= 1 && t.contains("\nhi")
    });
    let status = system_tests::wait_for("podman -it to exit", || {
        child.try_wait().expect("try_wait podman")
    });
    assert!(
        text.lines().any(|l| l.trim() == "hi"),
        "no hi from the terminal: {text:?}"
    );
    assert!(
        text.lines().any(|l| l.trim().starts_with("/dev/pts/")),
        "zone stdin is not a tty: {text:?}"
    );
    assert_eq!(system_tests::exit_code(status), 3, "{text:?}");
}

#[test]
fn exec_and_stop() {
    require_root!();
    let Some(p) = podman() else { return };
    let name = system_tests::unique_id("pm");
    p.run(&["-d", "--name", &name], &["sleep", "1000"]).ok();
    let o = p.podman(&[
        "exec",
        &name,
        "sh",
        "-c",
        "echo in-exec; ps -o comm | grep -c sleep; exit 4",
    ]);
    assert_eq!(o.code, 4, "{o:#?}");
    assert_eq!(
        o.stdout.lines().collect::<Vec<_>>(),
        ["in-exec", "1"],
        "{o:#?}"
    );
    let pid: i32 = p
        .podman(&["inspect", "--format", "{{.State.Pid}}", &name])
        .ok()
        .out()
        .parse()
        .expect("pid");
    assert!(pid > 0 && fs::metadata(format!("/proc/{pid}")).is_ok());
    p.podman(&["stop", "--time", "1", &name]).ok();
    let st = p.podman(&["inspect", "--format", "{{.State.Status}}", &name]);
    assert_eq!(st.ok().out(), "exited");
    assert!(
        fs::metadata(format!("/proc/{pid}")).is_err(),
        "zone init still alive"
    );
}

#[test]
fn memory_and_pids_limits() {
    require_root!();
    let Some(p) = podman() else { return };
    let name = system_tests::unique_id("pm");
    p.run(
        &[
            "-d",
            "--name",
            &name,
            "--memory",
            "48m",
            "--pids-limit",
            "42",
        ],
        &["sleep", "1000"],
    )
    .ok();
    let o = p.podman(&[
        "exec",
        &name,
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max 2>/dev/null \
         || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max",
    ]);
    assert_eq!(
        o.ok().stdout.lines().collect::<Vec<_>>(),
        [(48u64 << 20).to_string().as_str(), "42"],
        "{o:#?}"
    );
    let mem = p.podman(&["inspect", "--format", "{{.HostConfig.Memory}}", &name]);
    assert_eq!(mem.ok().out(), (48u64 << 20).to_string());
    // On the host: the init's own cgroups carry the limits.
    let pid: i32 = p
        .podman(&["inspect", "--format", "{{.State.Pid}}", &name])
        .ok()
        .out()
        .parse()
        .expect("pid");
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let path_of = |ctrl: &str| -> Option<String> {
        cg.lines().find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, c, p) = (it.next()?, it.next()?, it.next()?);
            c.split(',').any(|x| x == ctrl).then(|| p.to_string())
        })
    };
    if let (Some(m), Some(pp)) = (path_of("memory"), path_of("pids")) {
        let lim = fs::read_to_string(format!("/sys/fs/cgroup/memory{m}/memory.limit_in_bytes"))
            .expect("memory.limit_in_bytes");
        assert_eq!(lim.trim(), (48u64 << 20).to_string());
        let max =
            fs::read_to_string(format!("/sys/fs/cgroup/pids{pp}/pids.max")).expect("pids.max");
        assert_eq!(max.trim(), "42");
    } else {
        let u = path_of("").expect("unified cgroup");
        let lim = fs::read_to_string(format!("/sys/fs/cgroup{u}/memory.max")).expect("memory.max");
        assert_eq!(lim.trim(), (48u64 << 20).to_string());
    }
    p.podman(&["rm", "--force", "--time", "0", &name]).ok();
}
