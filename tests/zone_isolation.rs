//! Zone isolation seen from inside and outside: PID namespace, hostname, file-system
//! confinement (escapes via `..`, symlinks and symlinked mount destinations), no leaked file
//! descriptors, and user-namespace id mapping.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

use serde_json::json;
use system_tests::{proc_status, require_root, Bundle, Zone};

#[test]
fn pid_namespace_shows_only_zone_processes() {
    require_root!();
    let mut b = Bundle::new();
    b.sh("sleep 1000 & echo pid=$$; ps -o pid,comm; touch /tmp/ready; wait");
    let z = Zone::new(b);
    z.spawn(Some("/tmp/ready"));
    let out = z.stdout_log();
    assert!(out.contains("pid=1\n"), "init is not PID 1 inside: {out}");
    // `ps` inside: the header plus sh (1), sleep and ps itself — nothing from the host.
    let rows: Vec<&str> = out.lines().filter(|l| !l.starts_with("pid=")).collect();
    let procs: Vec<(u32, String)> = rows[1..]
        .iter()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.to_string()))
        })
        .collect();
    assert_eq!(
        procs.len(),
        3,
        "unexpected processes inside the zone: {out}"
    );
    assert!(procs.iter().any(|(p, c)| *p == 1 && c == "sh"), "{out}");
    assert!(procs.iter().all(|(p, _)| *p < 10), "{out}");
    // Outside: the init's host pid is not 1 and its NSpid shows both levels, ending in 1.
    let pid = z.pid();
    assert_ne!(pid, 1);
    let nspid = proc_status(pid, "NSpid").expect("NSpid");
    let levels: Vec<&str> = nspid.split_whitespace().collect();
    assert_eq!(levels.len(), 2, "NSpid {nspid}");
    assert_eq!(levels[0], pid.to_string());
    assert_eq!(levels[1], "1");
    let host_ns = fs::read_link("/proc/self/ns/pid").expect("own pid ns");
    let zone_ns = fs::read_link(format!("/proc/{pid}/ns/pid")).expect("zone pid ns");
    assert_ne!(host_ns, zone_ns);
}

#[test]
fn hostname_is_the_zones() {
    require_root!();
    let host_before = nix::unistd::gethostname().expect("gethostname");
    let mut b = Bundle::new();
    b.set("/hostname", json!("zone-hn-test"))
        .sh("hostname; cat /proc/sys/kernel/hostname");
    let z = Zone::new(b);
    let o = z.run();
    o.ok();
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines, ["zone-hn-test", "zone-hn-test"], "{o:#?}");
    assert_eq!(
        nix::unistd::gethostname().expect("gethostname"),
        host_before
    );
}

#[test]
fn filesystem_outside_root_is_unreachable() {
    require_root!();
    let mut b = Bundle::new();
    let rootfs = b.rootfs();
    // A host directory outside the rootfs, which naive symlink following would write into.
    let host = tempfile::tempdir().expect("tempdir");
    fs::write(host.path().join("sentinel"), "host").expect("sentinel");
    let hostp = host.path().to_str().expect("utf8").to_string();
    symlink("/../../etc", rootfs.join("escape")).expect("symlink");
    symlink(format!("{hostp}/abs"), rootfs.join("mnt/abs")).expect("symlink");
    symlink(
        format!("../../../../../../..{hostp}/rel"),
        rootfs.join("mnt/rel"),
    )
    .expect("symlink");
    b.mount(
        json!({"destination": "/mnt/abs/sub", "type": "tmpfs", "source": "tmpfs",
                   "options": ["size=1m"]}),
    );
    b.mount(
        json!({"destination": "/mnt/rel/sub", "type": "tmpfs", "source": "tmpfs",
                   "options": ["size=1m"]}),
    );
    b.sh(&format!(
        "echo root:$(ls / | tr '\\n' ' '); echo dotdot:$(ls /.. | tr '\\n' ' '); \
         cd ../../..; echo cd:$(pwd):$(ls | tr '\\n' ' '); cd /; \
         echo escape:$(cat /escape/passwd | wc -l); \
         echo sentinel:$(ls {hostp}/sentinel 2>&1 >/dev/null | wc -l); \
         echo abs:$(grep -c ' {hostp}/abs/sub ' /proc/self/mountinfo); \
         echo rel:$(grep -c ' {hostp}/rel/sub ' /proc/self/mountinfo); \
         echo fds:$(ls /proc/self/fd | tr '\\n' ' '); \
         echo cwd:$(readlink /proc/1/cwd); touch /tmp/ready; sleep 1000"
    ));
    let z = Zone::new(b);
    z.spawn(Some("/tmp/ready"));
    let out = z.stdout_log();
    let field = |k: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .unwrap_or_else(|| panic!("no {k}: line in {out}"))
            .trim()
            .to_string()
    };
    let root = field("root");
    assert!(root.contains("bin") && root.contains("escape"), "{out}");
    assert_eq!(field("dotdot"), root, "ls /.. differs from ls /");
    assert_eq!(
        field("cd"),
        format!("/:{root}"),
        "cd ../../.. left the root"
    );
    // The zone's /etc/passwd has 2 lines (root, nobody); the host's has more.
    assert_eq!(field("escape"), "2", "symlink to /../../etc escaped: {out}");
    assert_eq!(field("sentinel"), "1", "host dir visible inside: {out}");
    assert_eq!(
        field("abs"),
        "1",
        "absolute symlink mount not inside root: {out}"
    );
    assert_eq!(
        field("rel"),
        "1",
        "relative symlink mount not inside root: {out}"
    );
    // `ls` itself holds fd 3 (the directory it reads); anything more leaked from the runtime.
    assert_eq!(field("fds"), "0 1 2 3", "leaked fds in the zone: {out}");
    assert_eq!(field("cwd"), "/", "{out}");
    // Outside: nothing was created or mounted on the host path; the mounts landed in rootfs.
    assert!(
        !host.path().join("abs").exists(),
        "mount created a dir on the host"
    );
    assert!(
        !host.path().join("rel").exists(),
        "mount created a dir on the host"
    );
    let inside = rootfs.join(hostp.trim_start_matches('/'));
    assert!(
        inside.join("abs/sub").is_dir(),
        "abs mount point not under rootfs"
    );
    assert!(
        inside.join("rel/sub").is_dir(),
        "rel mount point not under rootfs"
    );
    assert!(system_tests::mounts_mentioning(host.path()).is_empty());
    let pid = z.pid();
    // The init's cwd and root (seen through /proc) are the rootfs directory itself.
    let want = fs::metadata(&rootfs).expect("rootfs");
    for link in ["cwd", "root"] {
        let md = fs::metadata(format!("/proc/{pid}/{link}")).expect("proc link");
        assert_eq!(
            (md.dev(), md.ino()),
            (want.dev(), want.ino()),
            "{link} is not the rootfs"
        );
    }
    let fds: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let mut fds = fds;
    fds.sort();
    assert_eq!(fds, ["0", "1", "2"], "zone init holds extra fds");
}

#[test]
fn user_namespace_maps_root_to_unprivileged_host_uid() {
    require_root!();
    let shared = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(shared.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    let mut b = Bundle::new();
    b.userns(100000, 65536)
        .mount(json!({"destination": "/mnt/host", "type": "bind",
                      "source": shared.path(), "options": ["rbind", "rw"]}))
        .sh(
            "id -u > /tmp/idu; id -g >> /tmp/idu; echo x > /mnt/host/created; \
             touch /tmp/ready; sleep 1000",
        );
    let z = Zone::new(b);
    z.spawn(Some("/tmp/ready"));
    let inside = fs::read_to_string(z.bundle.rootfs().join("tmp/idu")).expect("idu");
    assert_eq!(inside.lines().collect::<Vec<_>>(), ["0", "0"]);
    let pid = z.pid();
    let uid = proc_status(pid, "Uid").expect("Uid");
    assert!(
        uid.split_whitespace().all(|u| u == "100000"),
        "host Uid: {uid}"
    );
    let gid = proc_status(pid, "Gid").expect("Gid");
    assert!(
        gid.split_whitespace().all(|g| g == "100000"),
        "host Gid: {gid}"
    );
    let md = fs::metadata(shared.path().join("created")).expect("created file");
    assert_eq!((md.uid(), md.gid()), (100000, 100000));
    let map = fs::read_to_string(format!("/proc/{pid}/uid_map")).expect("uid_map");
    let m: Vec<&str> = map.split_whitespace().collect();
    assert_eq!(m, ["0", "100000", "65536"]);
}

#[test]
fn preserve_fds_passes_exactly_the_requested_fds() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    require_root!();
    let files = tempfile::tempdir().expect("tempdir");
    fs::write(files.path().join("three"), "preserved-three\n").expect("write");
    fs::write(files.path().join("four"), "leaked-four\n").expect("write");
    let three = fs::File::open(files.path().join("three")).expect("open");
    let four = fs::File::open(files.path().join("four")).expect("open");
    let (r3, r4) = (three.as_raw_fd(), four.as_raw_fd());
    let mut b = Bundle::new();
    b.sh(
        "read l <&3; echo got:$l; read m <&4 2>/dev/null && echo leak:$m; \
          echo fds:$(ls /proc/self/fd | tr '\\n' ' ')",
    );
    let z = Zone::new(b);
    let mut c = z.cmd(&["run", "--preserve-fds", "1", "--bundle"]);
    c.arg(z.bundle.path()).arg(&z.id);
    // SAFETY: between fork and exec only async-signal-safe fcntl(2)/dup2(2) calls run. The
    // descriptors are first parked above 100 so that moving them to 3 and 4 cannot clobber
    // each other; dup2 clears close-on-exec on the copies.
    unsafe {
        c.pre_exec(move || {
            let a = libc::fcntl(r3, libc::F_DUPFD, 100);
            let b = libc::fcntl(r4, libc::F_DUPFD, 100);
            if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(a);
            libc::close(b);
            Ok(())
        });
    }
    let o = system_tests::run_cmd(&mut c);
    o.ok();
    assert!(o.stdout.contains("got:preserved-three"), "{o:#?}");
    assert!(!o.stdout.contains("leak:"), "fd 4 reached the zone: {o:#?}");
    // sh holds 0-2 and the preserved 3; `ls` adds 4 for the directory it reads.
    let fds = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("fds:"))
        .expect("fds line")
        .trim()
        .to_string();
    assert_eq!(fds, "0 1 2 3 4", "{o:#?}");
}

/// CVE-2019-5736: while the zone's init is still the runtime (created, not yet started),
/// the executable a zone process could reach through /proc/<pid>/exe must not be the
/// runtime's binary on disk, and writing through it must fail.
#[test]
fn runtime_binary_cannot_be_overwritten_through_proc_exe() {
    require_root!();
    let mut b = Bundle::new();
    b.args(&["true"]);
    let z = Zone::new(b);
    z.create();
    let pid = z.pid();
    let on_disk = fs::canonicalize(z.runtime_path()).expect("runtime path");
    let before = fs::read(&on_disk).expect("read runtime binary");
    let exe = format!("/proc/{pid}/exe");
    let target = fs::read_link(&exe).expect("readlink exe");
    assert_ne!(target, on_disk, "zone init runs the on-disk runtime binary");
    let write = fs::OpenOptions::new()
        .write(true)
        .open(&exe)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"\x7fEVIL"));
    assert!(
        write.is_err(),
        "writing through {exe} ({target:?}) succeeded"
    );
    z.start();
    assert_eq!(z.wait(), 0);
    assert_eq!(fs::read(&on_disk).expect("re-read runtime binary"), before);
}

/// A new network namespace has its own stack with loopback up (as runc sets it up), and
/// nothing of the host's interfaces: a server in the zone is reachable on 127.0.0.1 from
/// inside the zone.
#[test]
fn network_namespace_has_loopback_up_and_no_host_interfaces() {
    require_root!();
    let mut b = Bundle::new();
    b.sh("ls /sys/class/net; cat /sys/class/net/lo/flags; \
         mkdir -p /tmp/www && echo served-by-zone > /tmp/www/index.html && \
         httpd -p 127.0.0.1:8080 -h /tmp/www && wget -qO- http://127.0.0.1:8080/index.html");
    let z = Zone::new(b);
    let o = z.run();
    o.ok();
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"lo"),
        "interfaces other than lo: {o:#?}"
    );
    // IFF_UP | IFF_LOOPBACK (plus RUNNING once up, depending on the kernel).
    let flags = u32::from_str_radix(lines.get(1).unwrap_or(&"").trim_start_matches("0x"), 16)
        .expect("lo flags");
    assert_eq!(flags & 0x9, 0x9, "lo is not up: {o:#?}");
    assert!(o.stdout.contains("served-by-zone"), "{o:#?}");
}
