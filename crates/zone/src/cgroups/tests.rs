//! Real cgroup tests (run as root): each test creates its own cgroup nested
//! under the test process's cgroup, puts forked children in it, checks what
//! the kernel does, and removes it again.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder,
    LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};

use super::testutil::{errno, fork_gated};
use super::*;

fn test_id(name: &str) -> String {
    format!("bulkhead-test-{name}-{}", std::process::id())
}

/// Removes the test cgroup even when an assertion fails.
struct Guard(Cgroup);

impl std::ops::Deref for Guard {
    type Target = Cgroup;
    fn deref(&self) -> &Cgroup {
        &self.0
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Best effort: a failing test must not leave cgroups behind.
        let _ = self.0.thaw();
        let _ = self.0.destroy();
    }
}

/// Resolves and creates a test cgroup with the host's manager; `None` (and a
/// SKIPPED line) when not root.
fn host_cgroup(name: &str) -> Option<Guard> {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: cgroup tests need root");
        return None;
    }
    let cg = Cgroup::resolve(None, &test_id(name)).expect("resolve");
    // A leftover from an earlier, aborted run.
    cg.destroy().expect("destroy leftover");
    cg.create().expect("create");
    Some(Guard(cg))
}

fn v1_cgroup(name: &str) -> Option<Guard> {
    let cg = host_cgroup(name)?;
    if cg.version() != CgroupVersion::V1 {
        cg.destroy().expect("destroy");
        println!("SKIPPED: host uses cgroup v2; v1 test {name} does not apply");
        return None;
    }
    Some(cg)
}

fn v1_dir(cg: &Cgroup, controller: &str) -> PathBuf {
    cg.state()
        .v1
        .iter()
        .find(|d| d.controllers.iter().any(|c| c == controller))
        .map(|d| d.path.clone())
        .unwrap_or_else(|| panic!("no {controller} hierarchy"))
}

fn has_v1(cg: &Cgroup, controller: &str) -> bool {
    cg.state()
        .v1
        .iter()
        .any(|d| d.controllers.iter().any(|c| c == controller))
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

/// Removes the cgroup and checks no directory is left in any hierarchy.
fn destroy_and_check(cg: &Cgroup) {
    cg.destroy().expect("destroy");
    for (dir, _) in cg.mount_sources() {
        assert!(
            !dir.exists(),
            "{} still exists after destroy",
            dir.display()
        );
    }
}

fn resources(json: &str) -> LinuxResources {
    serde_json::from_str(json).expect("resources json")
}

#[test]
fn path_resolution_rules() {
    let own = Path::new("user.slice/me");
    let r = |spec: Option<&str>, env: Option<&str>| {
        relative_to_root(spec.map(Path::new), "zid", own, env)
    };
    assert_eq!(
        r(None, None).expect("none"),
        PathBuf::from("user.slice/me/zid")
    );
    assert_eq!(
        r(Some("a/b"), None).expect("rel"),
        PathBuf::from("user.slice/me/a/b")
    );
    assert_eq!(
        r(Some("/zones/x"), None).expect("abs"),
        PathBuf::from("zones/x")
    );
    assert_eq!(
        r(None, Some("/bulkhead")).expect("env abs"),
        PathBuf::from("bulkhead/zid")
    );
    assert_eq!(
        r(None, Some("sub")).expect("env rel"),
        PathBuf::from("user.slice/me/sub/zid")
    );
    let e = r(Some("system.slice:bulkhead:zid"), None).expect_err("systemd");
    assert!(
        e.to_string()
            .contains("systemd cgroup paths are not supported"),
        "{e}"
    );
    let e = r(Some("a/../../etc"), None).expect_err("dotdot");
    assert!(e.to_string().contains("\"..\""), "{e}");
    let e = r(Some("/"), None).expect_err("root");
    assert!(
        e.to_string().contains("root of the cgroup hierarchy"),
        "{e}"
    );
}

#[test]
fn state_roundtrip_and_mount_sources() {
    let Some(cg) = host_cgroup("state") else {
        return;
    };
    let st = cg.state();
    let json = serde_json::to_string(&st).expect("serialise");
    let back: CgroupState = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, st);
    let cg2 = Cgroup::from_state(&back);
    assert_eq!(cg2.mount_sources(), cg.mount_sources());
    for (dir, name) in cg.mount_sources() {
        assert!(dir.is_dir(), "{} was not created", dir.display());
        if cg.version() == CgroupVersion::V1 {
            assert!(!name.is_empty());
            assert!(
                dir.to_string_lossy().contains(&format!("/{name}/")),
                "{}",
                dir.display()
            );
        }
    }
    destroy_and_check(&cg2);
    // Destroying again is fine (missing = ok).
    cg.destroy().expect("second destroy");
}

#[test]
fn absolute_path_is_below_each_hierarchy_root() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: cgroup tests need root");
        return;
    }
    let id = test_id("abs");
    let abs = PathBuf::from(format!("/{id}/inner"));
    let cg = Guard(Cgroup::resolve(Some(&abs), "ignored-id").expect("resolve"));
    cg.create().expect("create");
    let state = cg.state();
    match cg.version() {
        CgroupVersion::V1 => {
            for d in &state.v1 {
                assert_eq!(d.path, d.mount.join(&id).join("inner"), "{d:?}");
                assert!(d.path.is_dir());
            }
        }
        CgroupVersion::V2 => {
            let d = state.v2.as_ref().expect("v2 dir");
            assert_eq!(d.path, d.mount.join(&id).join("inner"));
        }
    }
    cg.destroy().expect("destroy");
    // Only the zone's own directory goes; the parent we created stays
    // until removed by whoever owns it.
    for (dir, _) in cg.mount_sources() {
        assert!(!dir.exists());
        let parent = dir.parent().expect("parent");
        std::fs::remove_dir(parent).expect("remove test parent");
    }
}

#[test]
fn v1_apply_writes_files_and_names_refused_values() {
    let Some(cg) = v1_cgroup("files") else { return };
    // The first CPU and memory node this cgroup may use (copied from its parent).
    let first = |f: &str| -> String {
        let v = read_trim(&v1_dir(&cg, "cpuset").join(f));
        v.split([',', '-']).next().unwrap_or_default().to_string()
    };
    let (cpu0, mem0) = (first("cpuset.cpus"), first("cpuset.mems"));
    let r = resources(&format!(
        r#"{{"memory":{{"limit":67108864,"swap":67108864,"reservation":33554432,"swappiness":10}},
            "cpu":{{"shares":512,"quota":50000,"period":100000,"cpus":"{cpu0}","mems":"{mem0}"}},
            "pids":{{"limit":16}},
            "devices":[{{"allow":false,"access":"rwm"}},{{"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"}}]}}"#
    ));
    cg.apply(&r).expect("apply");
    let mem = v1_dir(&cg, "memory");
    assert_eq!(read_trim(&mem.join("memory.limit_in_bytes")), "67108864");
    assert_eq!(
        read_trim(&mem.join("memory.memsw.limit_in_bytes")),
        "67108864"
    );
    assert_eq!(
        read_trim(&mem.join("memory.soft_limit_in_bytes")),
        "33554432"
    );
    assert_eq!(read_trim(&mem.join("memory.swappiness")), "10");
    let cpu = v1_dir(&cg, "cpu");
    assert_eq!(read_trim(&cpu.join("cpu.shares")), "512");
    assert_eq!(read_trim(&cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(read_trim(&cpu.join("cpu.cfs_period_us")), "100000");
    let cpuset = v1_dir(&cg, "cpuset");
    assert_eq!(read_trim(&cpuset.join("cpuset.cpus")), cpu0);
    assert_eq!(read_trim(&cpuset.join("cpuset.mems")), mem0);
    assert_eq!(read_trim(&v1_dir(&cg, "pids").join("pids.max")), "16");
    assert_eq!(
        read_trim(&v1_dir(&cg, "devices").join("devices.list")),
        "c 1:3 rwm"
    );

    // Raising memory and memory+swap together needs memsw written first;
    // lowering them needs the limit written first.
    cg.apply(&resources(
        r#"{"memory":{"limit":268435456,"swap":536870912}}"#,
    ))
    .expect("raise");
    assert_eq!(read_trim(&mem.join("memory.limit_in_bytes")), "268435456");
    assert_eq!(
        read_trim(&mem.join("memory.memsw.limit_in_bytes")),
        "536870912"
    );
    cg.apply(&resources(
        r#"{"memory":{"limit":16777216,"swap":16777216}}"#,
    ))
    .expect("lower");
    assert_eq!(read_trim(&mem.join("memory.limit_in_bytes")), "16777216");
    assert_eq!(
        read_trim(&mem.join("memory.memsw.limit_in_bytes")),
        "16777216"
    );
    cg.apply(&resources(r#"{"memory":{"limit":-1}}"#))
        .expect("unlimited");
    cg.apply(&resources(r#"{"pids":{"limit":0}}"#))
        .expect("pids max");
    assert_eq!(read_trim(&v1_dir(&cg, "pids").join("pids.max")), "max");

    // Errors a user can hit: invalid values, and values the kernel refuses.
    let e = cg
        .apply(&resources(r#"{"memory":{"limit":-5}}"#))
        .expect_err("negative limit");
    assert!(e.to_string().contains("memory.limit -5"), "{e}");
    let e = cg
        .apply(&resources(r#"{"cpu":{"cpus":"999"}}"#))
        .expect_err("bad cpuset");
    let msg = e.to_string();
    assert!(
        msg.starts_with("writing 999 to ") && msg.contains("cpuset.cpus: "),
        "{msg}"
    );
    let e = cg
        .apply(&resources(r#"{"unified":{"memory.high":"1"}}"#))
        .expect_err("unified on v1");
    assert!(e.to_string().contains("cgroup v2"), "{e}");
    if !has_v1(&cg, "net_cls") {
        let e = cg
            .apply(&resources(r#"{"network":{"classID":1048577}}"#))
            .expect_err("no net_cls hierarchy");
        assert!(e.to_string().contains("controller net_cls"), "{e}");
    }
    if !has_v1(&cg, "hugetlb") {
        let e = cg
            .apply(&resources(
                r#"{"hugepageLimits":[{"pageSize":"2MB","limit":0}]}"#,
            ))
            .expect_err("no hugetlb hierarchy");
        assert!(e.to_string().contains("controller hugetlb"), "{e}");
    }
    destroy_and_check(&cg);
}

/// "MAJ:MIN" of the first block device in /sys/block.
fn some_block_device() -> Option<String> {
    let mut names: Vec<_> = std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    names
        .iter()
        .find_map(|p| std::fs::read_to_string(p.join("dev")).ok())
        .map(|s| s.trim().to_string())
}

#[test]
fn v1_blkio_weight_and_throttle() {
    let Some(cg) = v1_cgroup("blkio") else { return };
    let Some(dev) = some_block_device() else {
        println!("SKIPPED: no block device in /sys/block");
        return;
    };
    let (maj, min) = dev.split_once(':').expect("MAJ:MIN");
    let r = resources(&format!(
        r#"{{"blockIO":{{"weight":500,
            "throttleReadBpsDevice":[{{"major":{maj},"minor":{min},"rate":1048576}}],
            "throttleWriteIOPSDevice":[{{"major":{maj},"minor":{min},"rate":100}}]}}}}"#
    ));
    let dir = v1_dir(&cg, "blkio");
    let weight_file = ["blkio.weight", "blkio.bfq.weight"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists());
    match weight_file {
        Some(f) => {
            cg.apply(&r).expect("apply blkio");
            let w = read_trim(&f);
            assert!(w == "500" || w.ends_with(" 500"), "{}: {w}", f.display());
        }
        None => {
            println!("SKIPPED: blkio weight: no blkio.weight or blkio.bfq.weight here");
            let e = cg.apply(&r).expect_err("weight unsupported");
            assert!(e.to_string().contains("blockIO.weight"), "{e}");
            cg.apply(&resources(&format!(
                r#"{{"blockIO":{{"throttleReadBpsDevice":[{{"major":{maj},"minor":{min},"rate":1048576}}],
                    "throttleWriteIOPSDevice":[{{"major":{maj},"minor":{min},"rate":100}}]}}}}"#
            )))
            .expect("apply throttle");
        }
    }
    assert_eq!(
        read_trim(&dir.join("blkio.throttle.read_bps_device")),
        format!("{dev} 1048576")
    );
    assert_eq!(
        read_trim(&dir.join("blkio.throttle.write_iops_device")),
        format!("{dev} 100")
    );
    // A device that does not exist is refused by the kernel, with the file named.
    let e = cg
        .apply(&resources(
            r#"{"blockIO":{"throttleReadBpsDevice":[{"major":4095,"minor":4095,"rate":1}]}}"#,
        ))
        .expect_err("no such device");
    assert!(
        e.to_string().starts_with("writing 4095:4095 1 to ")
            && e.to_string().contains("blkio.throttle.read_bps_device: "),
        "{e}"
    );
    destroy_and_check(&cg);
}

#[test]
fn v1_memory_limit_oom_kills_child() {
    let Some(cg) = v1_cgroup("oom") else { return };
    let swap_on = std::fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1);
    if swap_on
        && !v1_dir(&cg, "memory")
            .join("memory.memsw.limit_in_bytes")
            .exists()
    {
        println!("SKIPPED: swap is on but swap accounting is off: the child would swap instead of being OOM-killed");
        return;
    }
    let limit: i64 = 32 << 20;
    let r = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .swap(limit)
                .build()
                .expect("memory"),
        )
        .build()
        .expect("resources");
    cg.apply(&r).expect("apply");
    assert_eq!(cg.oom_kill_count().expect("oom count"), 0);
    let mut child = fork_gated(|| {
        let len = 256usize << 20;
        // SAFETY: anonymous private mapping, touched page by page.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return 2;
            }
            let b = p as *mut u8;
            let mut off = 0;
            while off < len {
                std::ptr::write_volatile(b.add(off), 1);
                off += 4096;
            }
        }
        0
    });
    cg.add_process(child.pid).expect("add");
    assert_eq!(cg.pids().expect("pids"), vec![child.pid]);
    child.release();
    match child.wait() {
        WaitStatus::Signaled(_, Signal::SIGKILL, _) => {}
        other => panic!("child touching 256 MiB in a 32 MiB cgroup was not OOM-killed: {other:?}"),
    }
    assert!(cg.oom_kill_count().expect("oom count") >= 1);
    let st = cg.stats().expect("stats");
    assert_eq!(st.memory.usage.limit, limit as u64);
    // The peak usage reached the limit before the kill.
    assert!(st.memory.usage.max + (1 << 20) >= limit as u64, "{st:?}");
    destroy_and_check(&cg);
}

#[test]
fn v1_pids_limit_stops_forks() {
    let Some(cg) = v1_cgroup("pids") else { return };
    let r = LinuxResourcesBuilder::default()
        .pids(
            LinuxPidsBuilder::default()
                .limit(8i64)
                .build()
                .expect("pids"),
        )
        .build()
        .expect("resources");
    cg.apply(&r).expect("apply");
    let mut child = fork_gated(|| {
        let mut kids = [0i32; 64];
        let mut n = 0usize;
        let mut refused = false;
        while n < kids.len() {
            // SAFETY: single-threaded child; grandchildren just pause.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: waits for the SIGKILL below.
                unsafe {
                    libc::pause();
                    libc::_exit(0);
                }
            }
            if pid < 0 {
                refused = errno() == libc::EAGAIN;
                break;
            }
            kids[n] = pid;
            n += 1;
        }
        for k in &kids[..n] {
            // SAFETY: killing and reaping our own children.
            unsafe {
                libc::kill(*k, libc::SIGKILL);
                libc::waitpid(*k, std::ptr::null_mut(), 0);
            }
        }
        if refused {
            n as i32
        } else {
            100
        }
    });
    cg.add_process(child.pid).expect("add");
    child.release();
    // The limit of 8 counts the child itself: 7 forks succeed, the 8th fails.
    assert_eq!(child.exit_code(), 7);
    destroy_and_check(&cg);
}

/// Opens `path` with `flags` in the child; 0 on success, else errno.
fn try_open(path: &std::ffi::CStr, flags: i32) -> i32 {
    // SAFETY: NUL-terminated path; the descriptor is closed at once.
    unsafe {
        let fd = libc::open(path.as_ptr(), flags);
        if fd < 0 {
            return errno();
        }
        libc::close(fd);
    }
    0
}

#[test]
fn v1_device_rules_are_enforced() {
    let Some(cg) = v1_cgroup("devices") else {
        return;
    };
    let rules = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .expect("deny all"),
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(1i64)
            .minor(3i64)
            .access("rwm")
            .build()
            .expect("null"),
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(1i64)
            .minor(5i64)
            .access("r")
            .build()
            .expect("zero"),
    ];
    let r = LinuxResourcesBuilder::default()
        .devices(rules)
        .build()
        .expect("resources");
    cg.apply(&r).expect("apply");
    let mut child = fork_gated(|| {
        let mut bad = 0;
        if try_open(c"/dev/null", libc::O_RDWR) != 0 {
            bad |= 1;
        }
        if try_open(c"/dev/zero", libc::O_RDONLY) != 0 {
            bad |= 2;
        }
        if try_open(c"/dev/zero", libc::O_WRONLY) != libc::EPERM {
            bad |= 4;
        }
        if try_open(c"/dev/full", libc::O_RDONLY) != libc::EPERM {
            bad |= 8;
        }
        bad
    });
    cg.add_process(child.pid).expect("add");
    child.release();
    assert_eq!(child.exit_code(), 0, "bit 1: /dev/null refused, 2: /dev/zero read refused, 4: /dev/zero write allowed, 8: /dev/full allowed");
    destroy_and_check(&cg);
}

/// A child that spins, and answers each byte on `ping` with one on `pong`.
fn busy_echo_child(ping_rd: i32, pong_wr: i32) -> impl FnOnce() -> i32 {
    move || {
        // SAFETY: raw syscalls on inherited descriptors; busy loop.
        unsafe {
            let fl = libc::fcntl(ping_rd, libc::F_GETFL);
            libc::fcntl(ping_rd, libc::F_SETFL, fl | libc::O_NONBLOCK);
            let mut x: u64 = 0;
            loop {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                let mut b = [0u8];
                let n = libc::read(ping_rd, b.as_mut_ptr().cast(), 1);
                if n == 1 {
                    if b[0] == b'q' {
                        std::hint::black_box(x);
                        return 0;
                    }
                    libc::write(pong_wr, b.as_ptr().cast(), 1);
                }
            }
        }
    }
}

fn pipe() -> (i32, i32) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    (fds[0], fds[1])
}

fn send(fd: i32, b: u8) {
    // SAFETY: one byte from a live buffer.
    assert_eq!(unsafe { libc::write(fd, [b].as_ptr().cast(), 1) }, 1);
}

/// Waits up to `ms` for one byte; `None` if nothing came.
fn recv(fd: i32, ms: i32) -> Option<u8> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd; then one byte into a live buffer.
    unsafe {
        if libc::poll(&mut p, 1, ms) != 1 {
            return None;
        }
        let mut b = [0u8];
        (libc::read(fd, b.as_mut_ptr().cast(), 1) == 1).then_some(b[0])
    }
}

/// Freeze/thaw a busy echoing child: frozen it cannot answer, thawed it does.
fn freeze_thaw_roundtrip(cg: &Cgroup) {
    let (ping_rd, ping_wr) = pipe();
    let (pong_rd, pong_wr) = pipe();
    let mut child = fork_gated(busy_echo_child(ping_rd, pong_wr));
    cg.add_process(child.pid).expect("add");
    child.release();
    send(ping_wr, b'a');
    assert_eq!(recv(pong_rd, -1), Some(b'a'), "running child answers");
    assert!(!cg.is_frozen().expect("is_frozen"));
    cg.freeze().expect("freeze");
    assert!(cg.is_frozen().expect("is_frozen"));
    assert_eq!(cg.pids().expect("pids"), vec![child.pid]);
    send(ping_wr, b'b');
    // A frozen process cannot answer, however long we wait; 300 ms is only
    // how long we look (a slow machine cannot make this pass wrongly).
    assert_eq!(recv(pong_rd, 300), None, "frozen child answered");
    cg.thaw().expect("thaw");
    assert!(!cg.is_frozen().expect("is_frozen"));
    assert_eq!(recv(pong_rd, -1), Some(b'b'), "thawed child answers");
    let st = cg.stats().expect("stats");
    send(ping_wr, b'q');
    assert_eq!(child.exit_code(), 0);
    for fd in [ping_rd, ping_wr, pong_rd, pong_wr] {
        // SAFETY: closing our own descriptors.
        unsafe { libc::close(fd) };
    }
    if cg.version() == CgroupVersion::V1 {
        // cpuacct.usage is exact; the user/system split is tick-sampled and
        // may still be zero for a short run, so only the total is checked.
        assert!(st.cpu.usage.total > 0, "{st:?}");
        assert!(!st.cpu.usage.percpu.is_empty(), "{st:?}");
        assert!(st.memory.usage.usage > 0, "{st:?}");
        assert_eq!(st.pids.current, 1, "{st:?}");
        let json = serde_json::to_value(&st).expect("json");
        assert!(json["cpu"]["usage"]["total"]
            .as_u64()
            .is_some_and(|v| v > 0));
        assert!(json["memory"]["usage"]["usage"].as_u64().is_some());
        assert_eq!(json["pids"]["current"].as_u64(), Some(1));
    } else {
        assert!(st.cpu.usage.total > 0, "{st:?}");
    }
}

#[test]
fn v1_freeze_thaw_busy_process_and_stats() {
    let Some(cg) = v1_cgroup("freeze") else {
        return;
    };
    freeze_thaw_roundtrip(&cg);
    destroy_and_check(&cg);
}

#[test]
fn destroy_removes_nested_children() {
    let Some(cg) = host_cgroup("nested") else {
        return;
    };
    for (dir, _) in cg.mount_sources() {
        std::fs::create_dir_all(dir.join("a/b")).expect("nested mkdir");
    }
    destroy_and_check(&cg);
}

/// A v2 cgroup on this host's cgroup2 mount (the empty unified hierarchy on
/// hybrid hosts).
fn v2_cgroup(name: &str) -> Option<Guard> {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: cgroup tests need root");
        return None;
    }
    let Some(mount) = mountinfo::cgroup2_mount().expect("mountinfo") else {
        println!("SKIPPED: no cgroup2 file system mounted");
        return None;
    };
    let cg = Cgroup::resolve_v2_at(&mount, None, &test_id(name)).expect("resolve v2");
    cg.destroy().expect("destroy leftover");
    cg.create().expect("create v2");
    assert_eq!(cg.version(), CgroupVersion::V2);
    Some(Guard(cg))
}

#[test]
fn v2_create_add_freeze_pids_destroy() {
    let Some(cg) = v2_cgroup("v2freeze") else {
        return;
    };
    freeze_thaw_roundtrip(&cg);
    destroy_and_check(&cg);
}

#[test]
fn v2_device_program_is_enforced() {
    let Some(cg) = v2_cgroup("v2devices") else {
        return;
    };
    let rules = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .expect("deny all"),
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(1i64)
            .minor(3i64)
            .access("rw")
            .build()
            .expect("null"),
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(1i64)
            .minor(5i64)
            .access("r")
            .build()
            .expect("zero"),
        // A later deny overrides the earlier allow for write access.
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .typ(LinuxDeviceType::C)
            .major(1i64)
            .minor(3i64)
            .access("w")
            .build()
            .expect("null write"),
    ];
    let r = LinuxResourcesBuilder::default()
        .devices(rules)
        .build()
        .expect("resources");
    cg.apply(&r).expect("apply (attach eBPF device program)");
    // Applying again replaces the program rather than stacking a second one.
    cg.apply(&r).expect("re-apply");
    let mut child = fork_gated(|| {
        let mut bad = 0;
        if try_open(c"/dev/null", libc::O_RDONLY) != 0 {
            bad |= 1;
        }
        if try_open(c"/dev/null", libc::O_RDWR) != libc::EPERM {
            bad |= 2;
        }
        if try_open(c"/dev/zero", libc::O_RDONLY) != 0 {
            bad |= 4;
        }
        if try_open(c"/dev/zero", libc::O_WRONLY) != libc::EPERM {
            bad |= 8;
        }
        if try_open(c"/dev/full", libc::O_RDONLY) != libc::EPERM {
            bad |= 16;
        }
        bad
    });
    cg.add_process(child.pid).expect("add");
    child.release();
    assert_eq!(
        child.exit_code(),
        0,
        "bits: 1 null read refused, 2 null write allowed, 4 zero read refused, 8 zero write allowed, 16 full allowed"
    );
    destroy_and_check(&cg);
}

#[test]
fn v2_controller_limits() {
    let Some(cg) = v2_cgroup("v2limits") else {
        return;
    };
    let dir = cg.mount_sources()[0].0.clone();
    let mut tested = false;
    if dir.join("memory.max").exists() {
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64i64 << 20)
                    .build()
                    .expect("memory"),
            )
            .build()
            .expect("resources");
        cg.apply(&r).expect("apply memory");
        assert_eq!(
            read_trim(&dir.join("memory.max")),
            (64u64 << 20).to_string()
        );
        tested = true;
    } else {
        println!("SKIPPED: memory not available in cgroup v2 here");
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(1i64 << 30)
                    .build()
                    .expect("m"),
            )
            .build()
            .expect("resources");
        let e = cg.apply(&r).expect_err("memory controller missing");
        assert!(e.to_string().contains("controller memory"), "{e}");
    }
    if dir.join("pids.max").exists() {
        let r = LinuxResourcesBuilder::default()
            .pids(
                LinuxPidsBuilder::default()
                    .limit(10i64)
                    .build()
                    .expect("pids"),
            )
            .build()
            .expect("resources");
        cg.apply(&r).expect("apply pids");
        assert_eq!(read_trim(&dir.join("pids.max")), "10");
        tested = true;
    } else {
        println!("SKIPPED: pids not available in cgroup v2 here");
    }
    if dir.join("cpu.max").exists() {
        let r = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(1024u64)
                    .quota(50000i64)
                    .period(100000u64)
                    .build()
                    .expect("cpu"),
            )
            .build()
            .expect("resources");
        cg.apply(&r).expect("apply cpu");
        assert_eq!(read_trim(&dir.join("cpu.max")), "50000 100000");
        assert_eq!(read_trim(&dir.join("cpu.weight")), "39");
        tested = true;
    } else {
        println!("SKIPPED: cpu not available in cgroup v2 here");
    }
    let e = cg
        .apply(&resources(r#"{"unified":{"no.such.file":"1"}}"#))
        .expect_err("unified missing file");
    assert!(e.to_string().contains("does not exist"), "{e}");
    if !tested {
        println!("SKIPPED: no v2 controller available here; only error paths were checked");
    }
    destroy_and_check(&cg);
}
