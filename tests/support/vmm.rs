//! Support for the VMM system tests (`tests/vmm_*.rs`): finding the real
//! `bulkhead-vmm` and the test guest (building the guest when missing),
//! starting monitors with a private scratch directory, reading the guest's
//! serial report (`BULKHEAD-GUEST <check> ok|FAIL <detail>`, see
//! docs/vmm-design.md), the control socket, and test-owned network
//! namespaces. Included by each test file with
//! `#[path = "support/vmm.rs"] mod vmm;` so it does not touch the zone
//! tests' support library. Everything is cleaned up in `Drop`.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Hang guard for a guest run: never a speed assertion, only the point at
/// which a run that should have ended is declared hung (machines are slow
/// and every VM exit costs ~100 µs on kvm_pvm).
pub const HANG_GUARD: Duration = Duration::from_secs(180);

/// Prefix of every guest report line.
pub const PREFIX: &str = "BULKHEAD-GUEST";

/// Prints `SKIPPED: <reason>` and returns from the test when the host
/// cannot run VMs (not root, or no usable /dev/kvm). Needs
/// `#[macro_use] #[path = "support/vmm.rs"] mod vmm;`.
macro_rules! require_kvm {
    () => {
        if let Some(reason) = $crate::vmm::skip_reason() {
            println!("SKIPPED: {reason}");
            return;
        }
    };
}

/// Why VM tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root".into());
    }
    match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("no /dev/kvm".into()),
        Err(e) => Some(format!("no /dev/kvm: {e}")),
    }
}

/// True on a host whose KVM is the paravirtual nested kvm_pvm.
pub fn is_kvm_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// The repository root (the workspace that holds `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A unique name for this test process: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The monitor under test: `$BULKHEAD_TEST_VMM`, else `bulkhead-vmm` next to
/// the test executable, else under `$BULKHEAD_TARGET_DIR`
/// ([`system_tests::find_built_binary`]). Panics with what was tried, so a
/// missing monitor fails loudly.
pub fn vmm_binary() -> PathBuf {
    system_tests::find_built_binary("bulkhead-vmm", "BULKHEAD_TEST_VMM")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The test guest ELF: `$BULKHEAD_TEST_GUEST`, else the release build in
/// `guest/target`, built with `cargo build --release` in `guest/` when
/// missing (once per test process).
pub fn guest_elf() -> PathBuf {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("BULKHEAD_TEST_GUEST") {
                let p = PathBuf::from(p);
                assert!(
                    p.is_file(),
                    "BULKHEAD_TEST_GUEST={} is not a file",
                    p.display()
                );
                return p;
            }
            let guest = repo_root().join("guest");
            let candidates = [
                guest.join("target/x86_64-unknown-linux-gnu/release/bulkhead-guest"),
                guest.join("target/release/bulkhead-guest"),
            ];
            let find = || candidates.iter().find(|c| c.is_file()).cloned();
            if let Some(p) = find() {
                return p;
            }
            // The guest has its own workspace, target dir and .cargo/config:
            // build it from its own directory, ignoring our target dir.
            let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "--release"])
                .current_dir(&guest)
                .env_remove("CARGO_TARGET_DIR")
                .env_remove("CARGO_BUILD_TARGET")
                .env_remove("RUSTFLAGS")
                .output()
                .expect("run cargo to build the test guest");
            assert!(
                out.status.success(),
                "building the test guest failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            find().unwrap_or_else(|| panic!("guest built, but none of {candidates:?} exists"))
        })
        .clone()
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        let p = std::env::temp_dir().join(unique(prefix));
        fs::create_dir_all(&p).expect("create scratch dir");
        Scratch(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One guest report line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckLine {
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

/// The guest's serial output, parsed.
#[derive(Clone, Debug)]
pub struct Report {
    pub text: String,
}

impl Report {
    pub fn new(text: String) -> Report {
        Report { text }
    }

    /// Complete lines (ending in a newline) that carry the report prefix.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        let complete = match self.text.rfind('\n') {
            Some(i) => &self.text[..i],
            None => "",
        };
        complete
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').split_once(PREFIX))
            .map(|(_, rest)| rest.trim())
    }

    /// All result lines of `check`, in order.
    pub fn results(&self, check: &str) -> Vec<CheckLine> {
        self.lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                let name = it.next()?;
                let verdict = it.next()?;
                let detail = it.next().unwrap_or("").to_string();
                let ok = match verdict {
                    "ok" => true,
                    "FAIL" => false,
                    _ => return None,
                };
                (name == check).then(|| CheckLine {
                    check: name.to_string(),
                    ok,
                    detail,
                })
            })
            .collect()
    }

    /// The detail of the first result of `check`; panics with the whole
    /// serial output when it is missing or FAIL.
    pub fn ok(&self, check: &str) -> String {
        let r = self.results(check);
        match r.first() {
            Some(l) if l.ok => l.detail.clone(),
            Some(l) => panic!(
                "guest check {check} FAILED: {}\nserial:\n{}",
                l.detail, self.text
            ),
            None => panic!(
                "guest printed no result for {check}\nserial:\n{}",
                self.text
            ),
        }
    }

    /// `(passed, failed)` from the `done` line.
    pub fn done(&self) -> Option<(u32, u32)> {
        self.lines().find_map(|l| {
            let rest = l.strip_prefix("done ")?;
            let mut it = rest.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
    }

    /// Panics unless the guest finished with no failed check.
    pub fn assert_all_passed(&self) {
        match self.done() {
            Some((p, 0)) if p > 0 => {}
            other => panic!(
                "guest did not finish cleanly (done = {other:?})\nserial:\n{}",
                self.text
            ),
        }
    }

    /// Tick numbers (`BULKHEAD-GUEST tick <n>`), complete lines only.
    pub fn ticks(&self) -> Vec<u64> {
        self.lines()
            .filter_map(|l| l.strip_prefix("tick "))
            .filter_map(|n| n.split_whitespace().next()?.parse().ok())
            .collect()
    }
}

/// Finds `key=<value>` in a detail string (value up to the next space/comma).
pub fn field<'a>(detail: &'a str, key: &str) -> Option<&'a str> {
    detail
        .split([' ', ','])
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Parses `123`, `0x7b`, optionally followed by K/M/G (binary units).
pub fn parse_num(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let digits = digits.trim_end_matches("Ki").trim_end_matches("Mi");
    let n = match digits.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok()?,
        None => digits.parse().ok()?,
    };
    n.checked_mul(mult)
}

/// How to start one monitor.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub mem: String,
    pub vcpus: u32,
    pub extra: Vec<String>,
    pub api_sock: bool,
    /// Run the monitor under `ip netns exec <ns>`.
    pub netns: Option<String>,
}

impl VmSpec {
    /// The test guest with `cmdline`, 128 MiB, one vCPU.
    pub fn guest(cmdline: &str) -> VmSpec {
        VmSpec {
            kernel: guest_elf(),
            initrd: None,
            cmdline: cmdline.to_string(),
            mem: "128M".into(),
            vcpus: 1,
            extra: vec![],
            api_sock: false,
            netns: None,
        }
    }
    pub fn mem(mut self, m: &str) -> Self {
        self.mem = m.into();
        self
    }
    pub fn vcpus(mut self, n: u32) -> Self {
        self.vcpus = n;
        self
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.extra.push(a.into());
        self
    }
    pub fn args<S: Into<String>>(mut self, a: impl IntoIterator<Item = S>) -> Self {
        self.extra.extend(a.into_iter().map(Into::into));
        self
    }
    pub fn with_api(mut self) -> Self {
        self.api_sock = true;
        self
    }
    pub fn in_netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.into());
        self
    }
}

/// A running (or finished) monitor with its serial log, stdout and stderr
/// in a scratch directory.
pub struct Vm {
    pub child: Child,
    pub dir: Scratch,
    pub serial: PathBuf,
    pub api: Option<PathBuf>,
    pub status: Option<ExitStatus>,
    pub args: Vec<String>,
}

impl Vm {
    /// Starts the monitor described by `spec` (serial to a file).
    pub fn start(spec: &VmSpec) -> Vm {
        let dir = Scratch::new("bh-vm");
        let serial = dir.join("serial.log");
        let mut args: Vec<String> = vec![
            "--kernel".into(),
            spec.kernel.display().to_string(),
            "--mem".into(),
            spec.mem.clone(),
            "--vcpus".into(),
            spec.vcpus.to_string(),
            "--serial".into(),
            format!("file:{}", serial.display()),
        ];
        if !spec.cmdline.is_empty() {
            args.push("--cmdline".into());
            args.push(spec.cmdline.clone());
        }
        if let Some(i) = &spec.initrd {
            args.push("--initrd".into());
            args.push(i.display().to_string());
        }
        let api = spec.api_sock.then(|| dir.join("api.sock"));
        if let Some(a) = &api {
            args.push("--api-sock".into());
            args.push(a.display().to_string());
        }
        args.extend(spec.extra.iter().cloned());
        Self::spawn(dir, serial, api, args, spec.netns.as_deref())
    }

    /// Starts the monitor with exactly `args` (plus `--serial file:` when
    /// `serial` is set), for restore and bad-input runs.
    pub fn start_raw(args: &[String], with_serial: bool, with_api: bool) -> Vm {
        let dir = Scratch::new("bh-vm");
        let serial = dir.join("serial.log");
        let mut all: Vec<String> = args.to_vec();
        if with_serial {
            all.push("--serial".into());
            all.push(format!("file:{}", serial.display()));
        }
        let api = with_api.then(|| dir.join("api.sock"));
        if let Some(a) = &api {
            all.push("--api-sock".into());
            all.push(a.display().to_string());
        }
        Self::spawn(dir, serial, api, all, None)
    }

    fn spawn(
        dir: Scratch,
        serial: PathBuf,
        api: Option<PathBuf>,
        args: Vec<String>,
        netns: Option<&str>,
    ) -> Vm {
        let vmm = vmm_binary();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&vmm);
                c
            }
            None => Command::new(&vmm),
        };
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("stdout")).expect("stdout file"))
            .stderr(fs::File::create(dir.join("stderr")).expect("stderr file"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", vmm.display()));
        Vm {
            child,
            dir,
            serial,
            api,
            status: None,
            args,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The serial output so far.
    pub fn report(&self) -> Report {
        Report::new(
            fs::read(&self.serial)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
        )
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    /// Everything the test knows about this run, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "args: {:?}\nstatus: {:?}\nstderr:\n{}\nserial:\n{}",
            self.args,
            self.status,
            self.stderr(),
            self.report().text
        )
    }

    /// Has the process ended? (Reaps it.)
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits for the monitor to exit; kills it and panics after `guard`.
    pub fn wait_guarded(&mut self, guard: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait() {
                return s;
            }
            if start.elapsed() > guard {
                self.kill();
                panic!(
                    "monitor still running after {guard:?} (hang)\n{}",
                    self.dump()
                );
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the run to end and returns the guest's report; panics
    /// unless the monitor exited with status 0.
    pub fn finish(&mut self) -> Report {
        let s = self.wait_guarded(HANG_GUARD);
        assert!(s.success(), "monitor exited with {s}\n{}", self.dump());
        self.report()
    }

    /// Polls the serial output until `pred` holds; panics if the monitor
    /// exits first or after the hang guard.
    pub fn wait_serial(&mut self, what: &str, mut pred: impl FnMut(&Report) -> bool) -> Report {
        let start = Instant::now();
        loop {
            let r = self.report();
            if pred(&r) {
                return r;
            }
            if self.try_wait().is_some() {
                // One last look: output may have landed just before exit.
                let r = self.report();
                if pred(&r) {
                    return r;
                }
                panic!("monitor exited before {what}\n{}", self.dump());
            }
            if start.elapsed() > HANG_GUARD {
                self.kill();
                panic!("no {what} after {HANG_GUARD:?}\n{}", self.dump());
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// A typed client of the control socket (waits for the socket to come
    /// up); each call is bounded by the hang guard.
    pub fn client(&self) -> vmm_proto::Client {
        let path = self.api.as_ref().expect("started without an API socket");
        vmm_proto::Client::connect_retry(path, HANG_GUARD)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.dump()))
    }

    /// Sends one control request as raw JSON (for requests the typed
    /// client cannot express); returns the parsed response line.
    pub fn api(&self, req: &serde_json::Value) -> serde_json::Value {
        let path = self.api.as_ref().expect("started without an API socket");
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() < HANG_GUARD => {
                    let _ = e;
                    sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("cannot connect to {}: {e}\n{}", path.display(), self.dump()),
            }
        };
        stream
            .set_read_timeout(Some(HANG_GUARD))
            .expect("read timeout");
        let mut w = stream.try_clone().expect("clone stream");
        writeln!(w, "{req}").expect("send request");
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("no response to {req}: {e}\n{}", self.dump()));
        assert!(
            !line.is_empty(),
            "monitor closed the control connection without answering {req}\n{}",
            self.dump()
        );
        serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("response to {req} is not JSON ({e}): {line:?}"))
    }

    /// Sends a request and panics unless the response reports success
    /// (no `error` member; `ok`, when present, is true).
    pub fn api_ok(&self, req: serde_json::Value) -> serde_json::Value {
        let resp = self.api(&req);
        let failed = resp.get("error").is_some_and(|e| !e.is_null())
            || resp
                .get("ok")
                .is_some_and(|v| v == &serde_json::Value::Bool(false));
        assert!(!failed, "request {req} failed: {resp}\n{}", self.dump());
        resp
    }

    pub fn kill(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the monitor with `args` to completion (for bad input); returns its
/// output.
pub fn run_vmm(args: &[&str]) -> Output {
    let mut child = Command::new(vmm_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bulkhead-vmm");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if start.elapsed() > HANG_GUARD {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "bulkhead-vmm {args:?} did not exit (hang)\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        sleep(Duration::from_millis(20));
    }
}

/// A network namespace owned by the test, with a TAP interface carrying
/// `10.0.2.1/24`; deleted (with the TAP) on drop.
pub struct NetNs {
    pub name: String,
    pub tap: String,
}

/// Runs a command; panics with its output on failure.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl NetNs {
    pub fn new() -> NetNs {
        let name = unique("bh-test");
        let tap = "bhtap0".to_string();
        sh(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name, tap };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&["ip", "tuntap", "add", "dev", &ns.tap, "mode", "tap"]);
        ns.exec(&["ip", "addr", "add", "10.0.2.1/24", "dev", &ns.tap]);
        ns.exec(&["ip", "link", "set", &ns.tap, "up"]);
        ns
    }

    /// Runs `argv` inside the namespace; panics on failure.
    pub fn exec(&self, argv: &[&str]) -> String {
        sh(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv))
    }

    /// Runs `argv` inside the namespace; returns whether it succeeded and its output.
    pub fn try_exec(&self, argv: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .expect("ip netns exec");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// FNV-1a (32 bit) — the checksum the test guest reports for disk sectors.
pub fn fnv1a32(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in data {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}
