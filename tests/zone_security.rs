//! Process hardening seen from inside and outside: seccomp errno actions, capability sets
//! and what dropped capabilities forbid, masked and read-only /proc paths, rlimits,
//! no_new_privs, oom_score_adj, env, cwd, umask, user and additional groups.

use std::fs;

use serde_json::json;
use system_tests::{proc_status, require_root, Bundle, Zone};

/// Lines `key:value` printed by a zone script.
fn field(out: &str, k: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{k}:")))
        .unwrap_or_else(|| panic!("no {k}: line in {out:?}"))
        .trim()
        .to_string()
}

#[test]
fn seccomp_errno_actions_apply() {
    require_root!();
    let mut b = Bundle::new();
    b.set(
        "/linux/seccomp",
        json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 122}
            ]
        }),
    )
    .sh(
        "mkdir /tmp/x 2>&1; echo mkdir:$?; touch /tmp/f; chmod 600 /tmp/f 2>&1; \
         echo chmod:$?; echo ok > /tmp/written; cat /tmp/written; \
         grep Seccomp: /proc/self/status; touch /tmp/ready; sleep 1000",
    );
    let z = Zone::new(b);
    z.spawn(Some("/tmp/ready"));
    let out = z.stdout_log();
    assert!(
        out.contains("Function not implemented"),
        "mkdir not ENOSYS: {out}"
    );
    assert_ne!(field(&out, "mkdir"), "0");
    assert!(
        out.contains("Disk quota exceeded"),
        "chmod not errno 122: {out}"
    );
    assert_ne!(field(&out, "chmod"), "0");
    assert!(
        out.lines().any(|l| l == "ok"),
        "other syscalls broken: {out}"
    );
    assert_eq!(field(&out, "Seccomp"), "2", "{out}");
    // Outside: nothing was created, and the init carries a filter.
    assert!(!z.bundle.rootfs().join("tmp/x").exists());
    assert_eq!(proc_status(z.pid(), "Seccomp").as_deref(), Some("2"));
}

fn cap_mask(bits: &[u32]) -> String {
    format!("{:016x}", bits.iter().fold(0u64, |m, b| m | (1 << b)))
}

#[test]
fn dropped_capabilities_are_gone() {
    require_root!();
    let mut b = Bundle::new();
    // CAP_KILL (5) and CAP_AUDIT_WRITE (29) only: no CHOWN, SYS_ADMIN, MKNOD.
    b.capabilities(&["CAP_KILL", "CAP_AUDIT_WRITE"])
        .set("/process/noNewPrivileges", json!(true))
        .sh(
            "grep -E '^Cap(Eff|Bnd|Prm|Inh)' /proc/self/status | tr -d '\\t'; \
             touch /tmp/f; chown 65534 /tmp/f 2>&1; echo chown:$?; \
             hostname other 2>&1; echo hostname:$?; \
             mknod /tmp/null c 1 3 2>&1; echo mknod:$?; touch /tmp/ready; sleep 1000",
        );
    let z = Zone::new(b);
    z.spawn(Some("/tmp/ready"));
    let out = z.stdout_log();
    let want = cap_mask(&[5, 29]);
    assert_eq!(field(&out, "CapEff"), want, "{out}");
    assert_eq!(field(&out, "CapBnd"), want, "{out}");
    assert_eq!(field(&out, "CapPrm"), want, "{out}");
    for op in ["chown", "hostname", "mknod"] {
        assert_ne!(
            field(&out, op),
            "0",
            "{op} succeeded without its capability: {out}"
        );
    }
    assert!(out.contains("Operation not permitted"), "{out}");
    // Outside.
    let pid = z.pid();
    assert_eq!(proc_status(pid, "CapEff").as_deref(), Some(want.as_str()));
    assert_eq!(proc_status(pid, "CapBnd").as_deref(), Some(want.as_str()));
    let rootfs = z.bundle.rootfs();
    assert!(!rootfs.join("tmp/null").exists(), "mknod created a node");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(rootfs.join("tmp/f")).expect("f").uid(), 0);
}

#[test]
fn masked_and_readonly_paths() {
    require_root!();
    let mut b = Bundle::new();
    b.sh("echo kcore:$(head -c 16 /proc/kcore 2>/dev/null | wc -c); \
          echo keys:$(cat /proc/keys 2>/dev/null | wc -c); \
          echo timer:$(cat /proc/timer_list 2>/dev/null | wc -c); \
          echo 1 > /proc/sys/kernel/domainname 2>/dev/null; echo domain:$?; \
          echo fw:$(ls /sys/firmware 2>/dev/null | wc -l); \
          touch /tmp/ready; sleep 1000");
    let z = Zone::new(b);
    z.spawn(Some("/tmp/ready"));
    let out = z.stdout_log();
    assert_eq!(field(&out, "kcore"), "0", "{out}");
    assert_eq!(field(&out, "keys"), "0", "{out}");
    assert_eq!(field(&out, "timer"), "0", "{out}");
    assert_ne!(field(&out, "domain"), "0", "/proc/sys writable: {out}");
    assert_eq!(field(&out, "fw"), "0", "{out}");
    // Outside: the zone's mount table covers the paths, /proc/sys read-only.
    let mi = fs::read_to_string(format!("/proc/{}/mountinfo", z.pid())).expect("mountinfo");
    let mount_of = |p: &str| {
        mi.lines()
            .find(|l| l.split(' ').nth(4) == Some(p))
            .map(str::to_string)
    };
    // Masked paths that exist on this kernel are covered (runc skips absent ones).
    for p in ["/proc/kcore", "/proc/keys", "/proc/timer_list"] {
        if std::path::Path::new(p).exists() {
            assert!(mount_of(p).is_some(), "{p} not masked: {mi}");
        }
    }
    let sys = mount_of("/proc/sys").expect("/proc/sys mount");
    let opts = sys.split(' ').nth(5).unwrap_or_default();
    assert!(
        opts.split(',').any(|o| o == "ro"),
        "/proc/sys not ro: {sys}"
    );
}

#[test]
fn process_settings_apply() {
    require_root!();
    let mut b = Bundle::new();
    b.set(
        "/process/rlimits",
        json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256},
               {"type": "RLIMIT_NPROC", "hard": 1000, "soft": 900}]),
    )
    .set("/process/noNewPrivileges", json!(true))
    .set("/process/oomScoreAdj", json!(123))
    .set("/process/cwd", json!("/tmp"))
    .set(
        "/process/user",
        json!({"uid": 65534, "gid": 65534, "umask": 23, "additionalGids": [1234, 5678]}),
    )
    .env("ZONE_GREETING=hello zone")
    .sh(
        "echo nofile:$(ulimit -n); echo nofileh:$(ulimit -Hn); echo nproc:$(ulimit -u); \
         grep NoNewPrivs: /proc/self/status | tr -d '\\t'; \
         echo oom:$(cat /proc/self/oom_score_adj); echo env:$ZONE_GREETING; \
         echo cwd:$(pwd); echo umask:$(umask); \
         echo uid:$(id -u); echo gid:$(id -g); echo groups:$(id -G); \
         : > /tmp/ready; exec sleep 1000",
    );
    let z = Zone::new(b);
    z.spawn(Some("/tmp/ready"));
    let out = z.stdout_log();
    assert_eq!(field(&out, "nofile"), "256", "{out}");
    assert_eq!(field(&out, "nofileh"), "512", "{out}");
    assert_eq!(field(&out, "nproc"), "900", "{out}");
    assert_eq!(field(&out, "NoNewPrivs"), "1", "{out}");
    assert_eq!(field(&out, "oom"), "123", "{out}");
    assert_eq!(field(&out, "env"), "hello zone", "{out}");
    assert_eq!(field(&out, "cwd"), "/tmp", "{out}");
    assert_eq!(field(&out, "umask"), "0027", "{out}");
    assert_eq!(field(&out, "uid"), "65534", "{out}");
    assert_eq!(field(&out, "gid"), "65534", "{out}");
    let groups = field(&out, "groups");
    assert!(
        groups.split(' ').any(|g| g == "1234") && groups.split(' ').any(|g| g == "5678"),
        "{out}"
    );
    // Outside: the init (now `sleep`, same process) as the host sees it.
    let pid = z.pid();
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("nofile");
    assert_eq!(
        nofile.split_whitespace().collect::<Vec<_>>()[3..5],
        ["256", "512"]
    );
    assert_eq!(proc_status(pid, "NoNewPrivs").as_deref(), Some("1"));
    assert_eq!(
        fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .expect("oom")
            .trim(),
        "123"
    );
    let uid = proc_status(pid, "Uid").expect("Uid");
    assert!(uid.split_whitespace().all(|u| u == "65534"), "{uid}");
    let g = proc_status(pid, "Groups").expect("Groups");
    assert!(g.contains("1234") && g.contains("5678"), "{g}");
    let environ = fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(environ
        .split(|c| *c == 0)
        .any(|e| e == b"ZONE_GREETING=hello zone"));
    assert_eq!(proc_status(pid, "Umask").as_deref(), Some("0027"));
}

// ---- Issue 9: container-escape regressions (hostile bundles) ----

/// CVE-2019-16884 / CVE-2025-52565 shape: the rootfs's `/proc` is a symlink chain through
/// a volume the zone controls (`/proc` → `/v/link/p`, rootfs `/v/link` → `/a`; the volume at
/// `/v` holds `link` → `fake` and `fake/p/self` → `/a/p/self`). Procfs would be mounted
/// at the link's target and the masks would land in the volume. The runtime must refuse
/// a `/proc` that is not an ordinary directory, and leave nothing behind.
#[test]
fn symlinked_proc_through_a_volume_is_refused() {
    require_root!();
    use std::os::unix::fs::symlink;
    let volume = tempfile::tempdir().expect("volume");
    let v = volume.path();
    fs::create_dir_all(v.join("fake/p")).expect("mkdir");
    symlink("fake", v.join("link")).expect("symlink");
    symlink("/a/p/self", v.join("fake/p/self")).expect("symlink");
    let mut b = Bundle::new();
    let root = b.rootfs();
    fs::remove_dir(root.join("proc")).expect("rmdir proc");
    symlink("/v/link/p", root.join("proc")).expect("symlink proc");
    fs::create_dir_all(root.join("v")).expect("mkdir v");
    fs::create_dir_all(root.join("a/p")).expect("mkdir a/p");
    symlink("/a", root.join("v/link")).expect("symlink v/link");
    b.mount(json!({"destination": "/v", "type": "bind", "source": v,
                   "options": ["rbind", "rw"]}))
        .sh("echo keys:$(cat /proc/keys 2>/dev/null | wc -c); \
             echo timer:$(cat /proc/timer_list 2>/dev/null | wc -c); \
             echo core > /proc/sys/kernel/core_pattern 2>/dev/null; echo core:$?");
    let z = Zone::new(b);
    let o = z.create_with(&[]);
    o.fails_with_one_line(&["proc", "ordinary directory"]);
    z.assert_nothing_left();
    // Nothing was mounted or written into the volume.
    let mut names: Vec<String> = fs::read_dir(v)
        .expect("read volume")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["fake", "link"], "volume changed");
    assert!(fs::read_dir(v.join("fake/p")).expect("p").count() == 1);

    // The same with /sys.
    let mut b = Bundle::new();
    let root = b.rootfs();
    fs::remove_dir(root.join("sys")).expect("rmdir sys");
    fs::create_dir_all(root.join("elsewhere")).expect("mkdir");
    symlink("/elsewhere", root.join("sys")).expect("symlink sys");
    b.args(&["true"]);
    let z = Zone::new(b);
    let o = z.create_with(&[]);
    o.fails_with_one_line(&["sysfs", "ordinary directory"]);
    z.assert_nothing_left();
}

/// A volume mounted over a path of `/proc` (here a directory the zone controls bound at
/// `/proc/sys`) must not receive the read-only remount meant for procfs: every masked and
/// read-only target is resolved inside the root and checked to be on procfs/sysfs.
#[test]
fn masks_only_land_on_procfs_and_sysfs() {
    require_root!();
    let volume = tempfile::tempdir().expect("volume");
    fs::create_dir_all(volume.path().join("kernel")).expect("mkdir");
    let mut b = Bundle::new();
    b.mount(json!({"destination": "/proc/sys", "type": "bind",
                   "source": volume.path(), "options": ["rbind", "rw"]}))
        .args(&["true"]);
    let z = Zone::new(b);
    let o = z.create_with(&[]);
    o.fails_with_one_line(&["/proc/sys", "procfs"]);
    z.assert_nothing_left();
}

/// CVE-2025-31133: the mask source `/dev/null` must be the real null device. A bundle that
/// puts a file of its own at `/dev/null` would turn every "masked" file into a bind mount
/// of that file (writable, attacker-chosen); the runtime refuses.
#[test]
fn fake_dev_null_is_not_used_as_a_mask() {
    require_root!();
    let b0 = tempfile::tempdir().expect("dir");
    let fake = b0.path().join("fake-null");
    fs::write(&fake, "not the null device\n").expect("write");
    let mut b = Bundle::new();
    b.mount(json!({"destination": "/dev/null", "type": "bind",
                   "source": fake, "options": ["bind", "rw"]}))
        .args(&["true"]);
    let z = Zone::new(b);
    let o = z.create_with(&[]);
    o.fails_with_one_line(&["/dev/null", "null device"]);
    z.assert_nothing_left();
    assert_eq!(
        fs::read_to_string(&fake).expect("fake"),
        "not the null device\n"
    );
}

/// CVE-2024-21626 shape: a directory fd the caller leaked (`exec 9</usr/lib`) must not let
/// `args[0] = /proc/self/fd/9/../../bin/busybox` run the host's binary, in `run` or
/// `exec`. The rootfs has no /usr at all, so success can only mean a host escape.
#[test]
fn leaked_directory_fd_cannot_reach_the_host_binary() {
    require_root!();
    let host_bin = "/proc/self/fd/9/../../bin/busybox";
    if !std::path::Path::new("/usr/lib/../../bin/busybox").exists() {
        println!("SKIPPED: host has no /bin/busybox");
        return;
    }
    let mut b = Bundle::new();
    b.args(&[host_bin, "echo", "ESCAPED"]);
    let z = Zone::new(b);
    let script = format!(
        "exec 9</usr/lib; exec '{}' --root '{}' run --bundle '{}' '{}'",
        z.runtime_path().display(),
        z.state_root().display(),
        z.bundle.path().display(),
        z.id
    );
    let o = system_tests::run_cmd(std::process::Command::new("sh").arg("-c").arg(&script));
    assert_ne!(o.code, 0, "run through a leaked fd succeeded: {o:#?}");
    assert!(!o.stdout.contains("ESCAPED"), "host binary ran: {o:#?}");
    assert!(
        o.stderr.contains("no such executable"),
        "unexpected error: {o:#?}"
    );
    z.assert_nothing_left();

    // exec into a running zone.
    let mut b = Bundle::new();
    b.sh("touch /tmp/ready; sleep 1000");
    let z = Zone::new(b);
    z.spawn(Some("/tmp/ready"));
    let script = format!(
        "exec 9</usr/lib; exec '{}' --root '{}' exec '{}' {host_bin} echo ESCAPED",
        z.runtime_path().display(),
        z.state_root().display(),
        z.id
    );
    let o = system_tests::run_cmd(std::process::Command::new("sh").arg("-c").arg(&script));
    assert_ne!(o.code, 0, "exec through a leaked fd succeeded: {o:#?}");
    assert!(!o.stdout.contains("ESCAPED"), "host binary ran: {o:#?}");
    // The fd is not even visible to a process exec'd normally.
    let script = format!(
        "exec 9</usr/lib; exec '{}' --root '{}' exec '{}' ls /proc/self/fd",
        z.runtime_path().display(),
        z.state_root().display(),
        z.id
    );
    let o = system_tests::run_cmd(std::process::Command::new("sh").arg("-c").arg(&script));
    o.ok();
    assert!(
        !o.stdout.split_whitespace().any(|f| f == "9"),
        "fd 9 leaked into the zone: {o:#?}"
    );
}

/// CVE-2022-29162: the config written by `spec` has no inheritable and no ambient
/// capabilities (runc's default since 1.1.2), so `exec -u 1000` gets none at all.
#[test]
fn default_spec_has_no_inheritable_or_ambient_capabilities() {
    require_root!();
    let dir = tempfile::tempdir().expect("dir");
    let z0 = Zone::new(Bundle::new());
    let mut c = z0.cmd(&["spec", "--bundle"]);
    c.arg(dir.path());
    system_tests::run_cmd(&mut c).ok();
    let spec: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join("config.json")).expect("read"))
            .expect("json");
    let caps = &spec["process"]["capabilities"];
    for set in ["inheritable", "ambient"] {
        assert!(
            caps[set].as_array().is_none_or(|a| a.is_empty()),
            "{set} not empty: {caps}"
        );
    }
    assert!(caps["bounding"].as_array().is_some_and(|a| !a.is_empty()));
    // A zone with those capabilities: a non-root exec keeps nothing.
    let mut b = Bundle::new();
    b.set("/process/capabilities", caps.clone())
        .sh("touch /tmp/ready; sleep 1000");
    let z = Zone::new(b);
    z.spawn(Some("/tmp/ready"));
    let o = z.exec(
        &["-u", "1000"],
        &[
            "sh",
            "-c",
            "grep -E '^Cap(Inh|Prm|Eff|Amb)' /proc/self/status | tr -d '\\t'",
        ],
    );
    o.ok();
    for f in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(field(&o.stdout, f), "0000000000000000", "{o:#?}");
    }
}

/// CVE-2016-9962: while the zone's init is still the runtime (created, waiting on the exec
/// fifo, holding the fifo's descriptor), a process exec'd into the zone must not be able to
/// look into it through /proc/1/fd (nor ptrace it): the runtime is non-dumpable until
/// execve. After start, the workload is an ordinary (dumpable) process again.
#[test]
fn runtime_stages_are_not_dumpable_before_execve() {
    require_root!();
    let mut b = Bundle::new();
    b.sh("touch /tmp/started; sleep 1000");
    let z = Zone::new(b);
    z.create();
    let probe = "readlink /proc/1/fd/0 >/dev/null 2>&1; echo fd:$?; \
                 head -c1 /proc/1/environ >/dev/null 2>&1; echo environ:$?";
    let o = z.exec(&[], &["sh", "-c", probe]);
    o.ok();
    assert_ne!(field(&o.stdout, "fd"), "0", "/proc/1/fd readable: {o:#?}");
    assert_ne!(
        field(&o.stdout, "environ"),
        "0",
        "/proc/1/environ readable: {o:#?}"
    );
    z.start();
    let marker = z.bundle.rootfs().join("tmp/started");
    system_tests::wait_for("zone start", || marker.exists().then_some(()));
    let o = z.exec(&[], &["sh", "-c", probe]);
    o.ok();
    assert_eq!(field(&o.stdout, "fd"), "0", "{o:#?}");
}

/// CVE-2025-52881 shape: a volume bound below `/proc/sys` must not receive the write meant
/// for a sysctl; sysctls are written only to files on the zone's procfs.
#[test]
fn sysctl_writes_only_reach_procfs() {
    require_root!();
    let volume = tempfile::tempdir().expect("volume");
    fs::create_dir_all(volume.path().join("ipv4")).expect("mkdir");
    fs::write(volume.path().join("ipv4/ip_forward"), "untouched\n").expect("write");
    let mut b = Bundle::new();
    b.mount(json!({"destination": "/proc/sys/net", "type": "bind",
                   "source": volume.path(), "options": ["rbind", "rw"]}))
        .set("/linux/sysctl", json!({"net.ipv4.ip_forward": "1"}))
        .args(&["true"]);
    let z = Zone::new(b);
    let o = z.create_with(&[]);
    o.fails_with_one_line(&["net.ipv4.ip_forward", "procfs"]);
    z.assert_nothing_left();
    assert_eq!(
        fs::read_to_string(volume.path().join("ipv4/ip_forward")).expect("read"),
        "untouched\n"
    );
    // A plain sysctl still applies.
    let mut b = Bundle::new();
    b.set("/linux/sysctl", json!({"net.ipv4.ip_forward": "1"}))
        .sh("cat /proc/sys/net/ipv4/ip_forward");
    let z = Zone::new(b);
    let o = z.run();
    o.ok();
    assert_eq!(o.out(), "1", "{o:#?}");
}
