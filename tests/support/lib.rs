//! Support library for Bulkhead's whole-system tests (and the `bench` package).
//!
//! Owns: picking the OCI runtime under test, building a busybox root file system and an OCI
//! bundle around it, driving one zone through the runtime's runc-compatible command line with
//! a private `--root` state directory, reading the zone's cgroup files on the host, and
//! cleaning everything up in `Drop` so that a failing test leaves nothing behind.
//!
//! Everything here starts real processes as root; callers check [`is_root`] first (see the
//! [`require_root!`] macro) and print `SKIPPED: <reason>` when a test cannot run.

pub mod clients;
pub mod platform;

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tempfile::TempDir;

/// How long helpers wait for something that should happen "soon" before declaring a hang.
/// This is a hang guard, never a speed assertion: the machines are slow and shared.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// True when the test process runs as root (uid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Return early from a test that needs root, printing `SKIPPED: needs root`.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            println!("SKIPPED: needs root");
            return;
        }
    };
}

/// The OCI runtime under test.
///
/// `$BULKHEAD_TEST_RUNTIME` (a path) wins. Otherwise `bulkhead-runc` next to the test
/// executable, then under `$BULKHEAD_TARGET_DIR` (see [`find_built_binary`]).
/// Panics with a precise message when none exists, so a missing runtime fails loudly.
pub fn runtime() -> PathBuf {
    find_runtime().unwrap_or_else(|e| panic!("{e}"))
}

/// [`runtime`] without panicking: the path, or a precise message saying what was tried.
pub fn find_runtime() -> Result<PathBuf, String> {
    find_built_binary("bulkhead-runc", "BULKHEAD_TEST_RUNTIME")
}

/// A workspace binary for the system tests: the file named by `$<env_var>` when set
/// (it must exist); else `name` next to the test executable (`<out>/deps/<test>-hash`
/// → `<out>/`); else under `$BULKHEAD_TARGET_DIR` when that is set. The workspace builds
/// for an explicit target (.cargo/config.toml), so cargo's output dir is
/// `<target dir>/x86_64-unknown-linux-gnu/<profile>`; a plain `<target dir>/<profile>`
/// is tried too. The error names every path tried.
pub fn find_built_binary(name: &str, env_var: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(format!("{env_var}={} is not a file", p.display()));
        }
        return Ok(p);
    }
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            tried.push(dir.join(name));
        }
    }
    if let Some(t) = std::env::var_os("BULKHEAD_TARGET_DIR") {
        for out in [
            "x86_64-unknown-linux-gnu/release",
            "release",
            "x86_64-unknown-linux-gnu/debug",
            "debug",
        ] {
            tried.push(Path::new(&t).join(out).join(name));
        }
    }
    if let Some(found) = tried.iter().find(|c| c.is_file()) {
        return Ok(found.clone());
    }
    Err(format!(
        "{name} not found (tried {tried:?}); build the workspace (`cargo build --workspace --release`) \
         or set {env_var}=<path> or BULKHEAD_TARGET_DIR=<cargo target dir>"
    ))
}

/// A fresh, process-unique identifier with the given prefix (container ids, cgroup names).
pub fn unique_id(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Make this process a child subreaper, so zone init processes whose runtime parent exits
/// (`create`, `exec --detach`) are re-parented to us and can be reaped with `waitpid`.
pub fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        nix::sys::prctl::set_child_subreaper(true).expect("prctl(PR_SET_CHILD_SUBREAPER)");
    });
}

/// Wait for `pid` to exit with a hang guard; returns the exit code (128+signal if killed).
pub fn wait_exit_code(pid: i32) -> i32 {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => panic!("waitpid({pid}): {e} (is the test process a subreaper?)"),
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} did not exit within {HANG_GUARD:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll `f` until it returns `Some`, panicking with `what` after [`HANG_GUARD`].
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Output of one command: exit code (128+signal when killed), stdout, stderr.
#[derive(Debug, Clone)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    fn from_output(o: std::process::Output) -> Out {
        Out {
            code: exit_code(o.status),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Panic with the full output unless the command exited 0.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "command failed: {self:#?}");
        self
    }

    /// stdout with surrounding whitespace trimmed.
    pub fn out(&self) -> &str {
        self.stdout.trim()
    }

    /// Assert a failure with exactly one non-empty line on stderr that contains every
    /// `needle` (case-insensitive).
    #[track_caller]
    pub fn fails_with_one_line(&self, needles: &[&str]) {
        assert_ne!(self.code, 0, "expected failure: {self:#?}");
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one line on stderr, got {}: {:?}",
            lines.len(),
            self.stderr
        );
        let lower = lines[0].to_lowercase();
        for n in needles {
            assert!(
                lower.contains(&n.to_lowercase()),
                "stderr line does not name {n:?}: {:?}",
                lines[0]
            );
        }
    }

    /// Like [`Out::fails_with_one_line`], but the line must contain at least one of
    /// `alternatives` (case-insensitive).
    #[track_caller]
    pub fn fails_with_one_line_any(&self, alternatives: &[&str]) {
        self.fails_with_one_line(&[]);
        let lower = self.stderr.to_lowercase();
        assert!(
            alternatives
                .iter()
                .any(|a| lower.contains(&a.to_lowercase())),
            "stderr names none of {alternatives:?}: {:?}",
            self.stderr.trim()
        );
    }
}

/// Exit code of a finished process: its code, or 128+signal when killed by a signal.
pub fn exit_code(s: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code()
        .or_else(|| s.signal().map(|sig| 128 + sig))
        .unwrap_or(-1)
}

/// Run a command to completion with stdin closed and capture its output.
pub fn run_cmd(cmd: &mut Command) -> Out {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Out::from_output(o)
}

/// Run a command feeding `input` on its stdin.
pub fn run_cmd_input(cmd: &mut Command, input: &[u8]) -> Out {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).expect("write stdin");
    }
    Out::from_output(child.wait_with_output().expect("wait"))
}

/// Populate `root` with a busybox file system: `bin/busybox` (copied from the host's static
/// `/bin/busybox`), a symlink per applet in `bin/`, `/etc/passwd` and `/etc/group` with root
/// and nobody (65534), and empty `proc sys dev tmp root mnt` directories.
pub fn build_busybox_rootfs(root: &Path) -> std::io::Result<()> {
    let busybox = Path::new("/bin/busybox");
    for d in [
        "bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "mnt",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::copy(busybox, root.join("bin/busybox"))?;
    let list = Command::new(busybox).arg("--list").output()?;
    if !list.status.success() {
        return Err(std::io::Error::other("busybox --list failed"));
    }
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" {
            continue;
        }
        symlink("busybox", root.join("bin").join(applet))?;
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(root.join("etc/group"), "root:x:0:\nnobody:x:65534:\n")?;
    Ok(())
}

/// `lchown -R uid:gid root` (does not follow symlinks).
pub fn chown_tree(root: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(root, Some(uid), Some(gid))?;
    if fs::symlink_metadata(root)?.is_dir() {
        for e in fs::read_dir(root)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// The default capability set of the test bundles (Docker's familiar default set).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A runc-like default `config.json` (what `runc spec` writes, with `terminal: false`, a
/// writable root, a relative `cgroupsPath` and a broader default capability set).
pub fn default_config(cgroups_path: &str) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["true"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": DEFAULT_CAPS, "effective": DEFAULT_CAPS, "permitted": DEFAULT_CAPS
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "zone-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

/// Set `value` at JSON pointer `ptr` (e.g. `/linux/resources/memory/limit`), creating
/// intermediate objects as needed.
pub fn json_set(doc: &mut Value, ptr: &str, value: Value) {
    let mut cur = doc;
    let parts: Vec<&str> = ptr.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let obj = cur.as_object_mut().expect("object");
        if i + 1 == parts.len() {
            obj.insert((*part).to_string(), value);
            return;
        }
        cur = obj.entry((*part).to_string()).or_insert_with(|| json!({}));
    }
}

/// An OCI bundle in its own temporary directory: `rootfs/` (busybox) + `config.json`.
pub struct Bundle {
    dir: TempDir,
    /// The configuration; written to `config.json` by [`Bundle::write`] / [`Zone::new`].
    pub config: Value,
}

impl Bundle {
    /// A new bundle with a fresh busybox rootfs and [`default_config`] with a relative,
    /// unique `cgroupsPath` (so the zone's cgroup nests under the test process's own).
    pub fn new() -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("bulkhead-bundle-")
            .tempdir()
            .expect("bundle tempdir");
        // World-traversable, so a zone whose root maps to an unprivileged host uid can
        // still reach its rootfs.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        build_busybox_rootfs(&dir.path().join("rootfs")).expect("busybox rootfs");
        let cg = unique_id("bulkhead-test");
        Bundle {
            dir,
            config: default_config(&cg),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }
    /// Write `config.json`.
    pub fn write(&self) {
        fs::write(
            self.path().join("config.json"),
            serde_json::to_vec_pretty(&self.config).expect("serialize"),
        )
        .expect("write config.json");
    }

    /// Set any field by JSON pointer.
    pub fn set(&mut self, ptr: &str, v: Value) -> &mut Self {
        json_set(&mut self.config, ptr, v);
        self
    }
    pub fn args(&mut self, args: &[&str]) -> &mut Self {
        self.set("/process/args", json!(args))
    }
    /// `sh -c <script>` as the zone's init.
    pub fn sh(&mut self, script: &str) -> &mut Self {
        self.args(&["sh", "-c", script])
    }
    pub fn env(&mut self, var: &str) -> &mut Self {
        if let Some(env) = self.config["process"]["env"].as_array_mut() {
            env.push(json!(var));
        }
        self
    }
    pub fn terminal(&mut self, on: bool) -> &mut Self {
        self.set("/process/terminal", json!(on))
    }
    pub fn cgroups_path(&self) -> String {
        self.config["linux"]["cgroupsPath"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    pub fn add_namespace(&mut self, ns: &str) -> &mut Self {
        if let Some(list) = self.config["linux"]["namespaces"].as_array_mut() {
            list.push(json!({"type": ns}));
        }
        self
    }
    /// Map zone ids 0..size to host ids host..host+size for both uids and gids, adding a
    /// user namespace.
    /// The rootfs is handed to the mapped root (`host`), as an image unpacker would.
    pub fn userns(&mut self, host: u32, size: u32) -> &mut Self {
        chown_tree(&self.rootfs(), host, host).expect("chown rootfs");
        self.add_namespace("user");
        let m = json!([{"containerID": 0, "hostID": host, "size": size}]);
        self.set("/linux/uidMappings", m.clone());
        self.set("/linux/gidMappings", m)
    }
    pub fn memory_limit(&mut self, bytes: i64) -> &mut Self {
        self.set("/linux/resources/memory/limit", json!(bytes))
    }
    pub fn pids_limit(&mut self, n: i64) -> &mut Self {
        self.set("/linux/resources/pids/limit", json!(n))
    }
    /// Replace all capability sets with `caps`.
    pub fn capabilities(&mut self, caps: &[&str]) -> &mut Self {
        self.set(
            "/process/capabilities",
            json!({"bounding": caps, "effective": caps, "permitted": caps}),
        )
    }
    pub fn mount(&mut self, m: Value) -> &mut Self {
        if let Some(list) = self.config["mounts"].as_array_mut() {
            list.push(m);
        }
        self
    }
    /// Append a hook of `kind` (`prestart`, `createRuntime`, `poststart`, `poststop`, …).
    pub fn hook(&mut self, kind: &str, hook: Value) -> &mut Self {
        if !self.config["hooks"].is_object() {
            self.config["hooks"] = json!({});
        }
        if !self.config["hooks"][kind].is_array() {
            self.config["hooks"][kind] = json!([]);
        }
        if let Some(a) = self.config["hooks"][kind].as_array_mut() {
            a.push(hook);
        }
        self
    }
}

impl Default for Bundle {
    fn default() -> Self {
        Bundle::new()
    }
}

/// One cgroup hierarchy mounted on this host.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    /// Controllers (`memory`, `name=systemd`, …); empty for cgroup2.
    pub controllers: Vec<String>,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// This process's cgroup in it, as a path below `mountpoint`.
    pub own: PathBuf,
}

/// Every cgroup hierarchy (v1 and v2) mounted in this process's mount namespace, with this
/// process's own cgroup in each.
pub fn hierarchies() -> Vec<Hierarchy> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroups = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let (root, mnt, fstype) = (l[3], l[4], r[0]);
        // A v1 hierarchy's controllers are those of the /proc/self/cgroup line whose
        // controller list is wholly contained in the mount's super options (which may also
        // carry flags such as `xattr` or `clone_children`).
        let opts: Vec<&str> = r[2].split(',').collect();
        let mut controllers = Vec::new();
        let own = cgroups.lines().find_map(|cl| {
            let mut it = cl.splitn(3, ':');
            let (_id, ctrl, path) = (it.next()?, it.next()?, it.next()?);
            let c: Vec<&str> = ctrl.split(',').filter(|s| !s.is_empty()).collect();
            let matches = match fstype {
                "cgroup2" => c.is_empty(),
                "cgroup" => !c.is_empty() && c.iter().all(|x| opts.contains(x)),
                _ => false,
            };
            if matches {
                controllers = c.iter().map(|x| x.to_string()).collect();
            }
            matches.then(|| path.to_string())
        });
        let Some(own) = own else { continue };
        // The cgroup path is relative to the hierarchy root; the mount may show a subtree.
        let rel = own
            .strip_prefix(root)
            .unwrap_or(&own)
            .trim_start_matches('/')
            .to_string();
        out.push(Hierarchy {
            controllers,
            mountpoint: PathBuf::from(mnt),
            own: PathBuf::from(rel),
        });
    }
    out
}

/// Where the cgroup `cgroups_path` (relative → below our own cgroup, absolute → below the
/// hierarchy root) lives in every hierarchy.
pub fn cgroup_dirs(cgroups_path: &str) -> Vec<PathBuf> {
    hierarchies()
        .into_iter()
        .map(|h| {
            if let Some(abs) = cgroups_path.strip_prefix('/') {
                h.mountpoint.join(abs)
            } else {
                h.mountpoint.join(&h.own).join(cgroups_path)
            }
        })
        .collect()
}

/// The directory of controller `ctrl` (e.g. `memory`, `pids`, `freezer`) for `cgroups_path`,
/// on v1 the controller's hierarchy, on a pure v2 host the unified one.
pub fn cgroup_dir(ctrl: &str, cgroups_path: &str) -> Option<PathBuf> {
    let hs = hierarchies();
    let h = hs
        .iter()
        .find(|h| h.controllers.iter().any(|c| c == ctrl))
        .or_else(|| {
            hs.iter().find(|h| {
                // v2 lists no `freezer` controller: cgroup.freeze is in every non-root
                // cgroup of a hierarchy that has controllers at all.
                h.controllers.is_empty()
                    && fs::read_to_string(h.mountpoint.join("cgroup.controllers"))
                        .map(|c| {
                            c.split_whitespace().any(|x| x == ctrl)
                                || (ctrl == "freezer" && !c.trim().is_empty())
                        })
                        .unwrap_or(false)
            })
        })?;
    Some(if let Some(abs) = cgroups_path.strip_prefix('/') {
        h.mountpoint.join(abs)
    } else {
        h.mountpoint.join(&h.own).join(cgroups_path)
    })
}

/// Read a cgroup file of the zone, trimmed.
pub fn read_cgroup(ctrl: &str, cgroups_path: &str, file: &str) -> Option<String> {
    let d = cgroup_dir(ctrl, cgroups_path)?;
    fs::read_to_string(d.join(file))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Lines of `/proc/self/mountinfo` that mention `needle` (a test's temp path).
pub fn mounts_mentioning(needle: &Path) -> Vec<String> {
    let n = needle.to_string_lossy().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&n))
        .map(str::to_string)
        .collect()
}

/// A field (`Uid`, `CapEff`, `NoNewPrivs`, …) of `/proc/<pid>/status`.
pub fn proc_status(pid: i32, field: &str) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// One zone: a bundle, a unique id and a private runtime `--root` state directory.
/// Dropping it kills and force-deletes the zone and reaps its init.
pub struct Zone {
    pub id: String,
    pub bundle: Bundle,
    state_root: TempDir,
    runtime: PathBuf,
    init_pid: std::cell::Cell<Option<i32>>,
}

impl Zone {
    /// Write the bundle's `config.json` and prepare a zone with a fresh id and state root.
    pub fn new(bundle: Bundle) -> Zone {
        Zone::with_runtime(bundle, runtime())
    }

    pub fn with_runtime(bundle: Bundle, runtime: PathBuf) -> Zone {
        become_subreaper();
        bundle.write();
        let state_root = tempfile::Builder::new()
            .prefix("bulkhead-state-")
            .tempdir()
            .expect("state tempdir");
        Zone {
            id: unique_id("zone"),
            bundle,
            state_root,
            runtime,
            init_pid: std::cell::Cell::new(None),
        }
    }

    /// The runtime's `--root`.
    pub fn state_root(&self) -> &Path {
        self.state_root.path()
    }
    pub fn runtime_path(&self) -> &Path {
        &self.runtime
    }
    pub fn cgroups_path(&self) -> String {
        self.bundle.cgroups_path()
    }

    /// `<runtime> --root <state> <args…>` (not yet run).
    pub fn cmd<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new(&self.runtime);
        c.arg("--root").arg(self.state_root.path());
        for a in args {
            c.arg(a);
        }
        c
    }

    /// Run a runtime subcommand to completion, stdin closed.
    pub fn rt<S: AsRef<OsStr>>(&self, args: &[S]) -> Out {
        run_cmd(&mut self.cmd(args))
    }

    /// `run --bundle <b> <id>` in the foreground; returns the zone's output and exit code.
    pub fn run(&self) -> Out {
        let b = self.bundle.path().to_path_buf();
        self.rt(&[
            OsStr::new("run"),
            OsStr::new("--bundle"),
            b.as_os_str(),
            OsStr::new(&self.id),
        ])
    }

    /// `create --bundle <b> --pid-file <f> <id>` with the zone's stdout/stderr going to
    /// `stdout.log`/`stderr.log` in the bundle (the init keeps them open after the runtime
    /// exits, so pipes would never reach EOF). Returns the runtime's exit code.
    pub fn create_with(&self, extra: &[&str]) -> Out {
        let out = fs::File::create(self.bundle.path().join("stdout.log")).expect("stdout.log");
        let err = fs::File::create(self.bundle.path().join("stderr.log")).expect("stderr.log");
        let pidfile = self.bundle.path().join("init.pid");
        let mut c = self.cmd(&["create"]);
        c.arg("--bundle")
            .arg(self.bundle.path())
            .arg("--pid-file")
            .arg(&pidfile)
            .args(extra)
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let status = c.status().expect("spawn runtime create");
        if status.success() {
            if let Some(pid) = fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                self.init_pid.set(Some(pid));
            }
        }
        Out {
            code: exit_code(status),
            stdout: self.stdout_log(),
            stderr: self.stderr_log(),
        }
    }

    /// `create`; panics with the runtime's output if it fails.
    pub fn create(&self) -> &Self {
        let o = self.create_with(&[]);
        assert_eq!(o.code, 0, "create failed: {o:#?}");
        self
    }

    /// `start`; panics if it fails.
    pub fn start(&self) -> &Self {
        self.rt(&["start", &self.id]).ok();
        self
    }

    /// `create` + `start`, then wait until the zone has created `marker` (a path inside the
    /// zone, e.g. `/tmp/ready`) when given.
    pub fn spawn(&self, marker: Option<&str>) -> &Self {
        self.create().start();
        if let Some(m) = marker {
            let host = self.bundle.rootfs().join(m.trim_start_matches('/'));
            wait_for(&format!("zone marker {m}"), || host.exists().then_some(()));
        }
        self
    }

    /// The zone's output so far (when started with [`Zone::create`]).
    pub fn stdout_log(&self) -> String {
        fs::read_to_string(self.bundle.path().join("stdout.log")).unwrap_or_default()
    }
    pub fn stderr_log(&self) -> String {
        fs::read_to_string(self.bundle.path().join("stderr.log")).unwrap_or_default()
    }

    /// The init pid recorded at create (host pid namespace).
    pub fn pid(&self) -> i32 {
        self.init_pid.get().expect("zone was not created")
    }

    /// Wait for the zone's init to exit (we are its subreaper); returns its exit code
    /// (128+signal when killed).
    pub fn wait(&self) -> i32 {
        let code = wait_exit_code(self.pid());
        self.init_pid.set(None);
        code
    }

    /// `state <id>` parsed.
    pub fn state(&self) -> Value {
        let o = self.rt(&["state", &self.id]);
        o.ok();
        serde_json::from_str(&o.stdout)
            .unwrap_or_else(|e| panic!("state output is not JSON ({e}): {:?}", o.stdout))
    }

    /// `kill <id> <sig>`.
    pub fn kill(&self, sig: &str) -> Out {
        self.rt(&["kill", &self.id, sig])
    }

    /// `delete [--force] <id>`.
    pub fn delete(&self, force: bool) -> Out {
        if force {
            self.rt(&["delete", "--force", &self.id])
        } else {
            self.rt(&["delete", &self.id])
        }
    }

    /// `exec <args…>` (options then `<id> cmd…`).
    pub fn exec(&self, opts: &[&str], cmd: &[&str]) -> Out {
        let mut c = self.cmd(&["exec"]);
        c.args(opts).arg(&self.id).args(cmd);
        run_cmd(&mut c)
    }

    /// `exec --detach <opts…> <id> <cmd…>` with the runtime's and the process's output
    /// going to `exec.log` in the bundle: the detached process inherits the runtime's
    /// stdio, so pipes would only reach EOF when it exits.
    pub fn exec_detached(&self, opts: &[&str], cmd: &[&str]) -> Out {
        let log = self.bundle.path().join("exec.log");
        let f = fs::File::create(&log).expect("exec.log");
        let mut c = self.cmd(&["exec", "--detach"]);
        c.args(opts)
            .arg(&self.id)
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup"))
            .stderr(f);
        let status = c.status().expect("spawn runtime exec");
        Out {
            code: exit_code(status),
            stdout: String::new(),
            stderr: fs::read_to_string(&log).unwrap_or_default(),
        }
    }

    /// Where this zone's cgroup is (or would be) in every hierarchy.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_dirs(&self.cgroups_path())
    }

    /// Read a cgroup file of this zone on the host.
    pub fn cgroup_file(&self, ctrl: &str, file: &str) -> Option<String> {
        read_cgroup(ctrl, &self.cgroups_path(), file)
    }

    /// The runtime's state directory for this zone (`<root>/<id>`).
    pub fn state_dir(&self) -> PathBuf {
        self.state_root.path().join(&self.id)
    }

    /// Assert that nothing of this zone is left: no state dir, no cgroup dir in any
    /// hierarchy, no mount mentioning the bundle or the state root.
    #[track_caller]
    pub fn assert_nothing_left(&self) {
        assert!(
            !self.state_dir().exists(),
            "state dir left behind: {}",
            self.state_dir().display()
        );
        for d in self.cgroup_dirs() {
            assert!(!d.exists(), "cgroup dir left behind: {}", d.display());
        }
        let m1 = mounts_mentioning(self.bundle.path());
        let m2 = mounts_mentioning(self.state_root.path());
        assert!(m1.is_empty() && m2.is_empty(), "mounts left: {m1:?} {m2:?}");
    }
}

impl Drop for Zone {
    fn drop(&mut self) {
        let _ = self.rt(&["kill", "--all", &self.id, "KILL"]);
        if let Some(pid) = self.init_pid.get() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
                    _ => break,
                }
            }
        }
        let _ = self.rt(&["delete", "--force", &self.id]);
        // Leave no cgroup behind even if the runtime could not delete it.
        for d in self.cgroup_dirs() {
            let _ = fs::remove_dir(d);
        }
    }
}

/// Read everything from a reader until EOF/EIO or until `done` says the text is complete,
/// with the hang guard. Used for PTY masters.
pub fn read_until(fd: &std::os::fd::OwnedFd, mut done: impl FnMut(&str) -> bool) -> String {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let deadline = Instant::now() + HANG_GUARD;
    let mut text = String::new();
    let mut file = fs::File::from(fd.try_clone().expect("dup"));
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !done(&text) {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break, // EIO: the other side of the PTY is gone.
        }
    }
    text
}

/// Pack `dir` into an uncompressed tarball at `tar` (for `podman import`).
pub fn tar_dir(dir: &Path, tar: &Path) {
    run_cmd(
        Command::new("tar")
            .arg("-C")
            .arg(dir)
            .arg("-cf")
            .arg(tar)
            .arg("."),
    )
    .ok();
}
