//! A real bulkheadd for a test: its own state root, runtime directory, socket and cgroup
//! prefix, driven through the real `bulkhead` CLI (and raw HTTP where a test needs to send
//! what the CLI never would). `Drop` force-deletes every instance, kills the daemon and any
//! monitor left, and removes the cgroup prefix, so a failing test leaves nothing behind.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::{
    build_busybox_rootfs, find_built_binary, run_cmd, run_cmd_input, unique_id, wait_for, Out,
};

pub struct Platform {
    pub dir: TempDir,
    pub daemon: Option<Child>,
    pub cgroup_parent: String,
    bin: PathBuf,
}

pub fn cli_bin() -> PathBuf {
    find_built_binary("bulkhead", "BULKHEAD_CLI").unwrap_or_else(|e| panic!("{e}"))
}

pub fn daemon_bin() -> PathBuf {
    find_built_binary("bulkheadd", "BULKHEAD_DAEMON").unwrap_or_else(|e| panic!("{e}"))
}

impl Platform {
    /// A running daemon with empty state.
    pub fn start() -> Platform {
        let dir = tempfile::Builder::new()
            .prefix("bulkhead-platform-")
            .tempdir()
            .expect("tempdir");
        let mut p = Platform {
            dir,
            daemon: None,
            cgroup_parent: unique_id("bulkhead-test"),
            bin: cli_bin(),
        };
        p.start_daemon();
        p
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("bulkhead.sock")
    }

    /// Starts bulkheadd (again) and waits until its socket answers.
    pub fn start_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("daemon log");
        let child = Command::new(daemon_bin())
            .arg("--root")
            .arg(self.root())
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bulkheadd");
        self.daemon = Some(child);
        let sock = self.socket();
        wait_for("bulkheadd to answer", || {
            UnixStream::connect(&sock)
                .ok()
                .and_then(|_| (self.cli(&["list"]).code == 0).then_some(()))
        });
    }

    /// `kill -9` of the daemon (its instances must live on).
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("BULKHEAD_SOCKET", self.socket());
        c
    }

    /// `bulkhead ARGS…` with stdin closed.
    pub fn cli(&self, args: &[&str]) -> Out {
        run_cmd(self.command().args(args))
    }

    pub fn cli_input(&self, args: &[&str], input: &[u8]) -> Out {
        run_cmd_input(self.command().args(args), input)
    }

    /// `bulkhead --format json ARGS…`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--format", "json"];
        a.extend_from_slice(args);
        let o = self.cli(&a);
        o.ok();
        serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{a:?}: {e}: {}", o.stdout))
    }

    /// The instance as `bulkhead show` reports it.
    pub fn show(&self, name: &str) -> Value {
        self.json(&["show", name])
    }

    pub fn status(&self, name: &str) -> String {
        self.show(name)["status"].as_str().unwrap_or("").to_string()
    }

    /// Waits until `name` has `status`.
    pub fn wait_status(&self, name: &str, status: &str) {
        wait_for(&format!("{name} to be {status}"), || {
            (self.status(name) == status).then_some(())
        });
    }

    /// A busybox root file system in the test's directory.
    pub fn rootfs(&self, name: &str) -> PathBuf {
        let r = self.dir.path().join("roots").join(name);
        build_busybox_rootfs(&r).expect("busybox rootfs");
        r
    }

    /// Creates and starts a zone running `command` from a fresh busybox root.
    pub fn zone(&self, name: &str, command: &str, extra: &[&str]) -> PathBuf {
        let root = self.rootfs(name);
        let cmd = format!("command={command}");
        let mut args = vec![
            "create",
            name,
            "--rootfs",
            root.to_str().unwrap_or(""),
            "-c",
            &cmd,
            "--start",
        ];
        args.extend_from_slice(extra);
        self.cli(&args).ok();
        root
    }

    /// One raw HTTP request on the API socket: (status, body).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http_raw(&self.socket(), method, path, body)
    }

    /// Host directories of the instance's cgroup in `controller` (v1) or the v2 tree.
    pub fn cgroup_file(&self, pid: i32, controller: &str, file: &str) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        for l in text.lines() {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            if ctrls.split(',').any(|c| c == controller) {
                return std::fs::read_to_string(format!(
                    "/sys/fs/cgroup/{controller}{path}/{file}"
                ))
                .ok();
            }
            if ctrls.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
                return std::fs::read_to_string(format!("/sys/fs/cgroup{path}/{file}")).ok();
            }
        }
        None
    }

    /// Every cgroup directory left under this test's prefix.
    pub fn leftover_cgroups(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(hs) = std::fs::read_dir("/sys/fs/cgroup") else {
            return out;
        };
        for h in hs.flatten() {
            find_dirs(&h.path(), &self.cgroup_parent, 6, &mut out);
        }
        // Only a prefix with zone cgroups inside counts as left over.
        out.retain(|p| {
            std::fs::read_dir(p)
                .map(|r| {
                    r.flatten()
                        .any(|c| c.file_type().map(|t| t.is_dir()).unwrap_or(false))
                })
                .unwrap_or(false)
        });
        out
    }
}

/// Every directory called `name` below `dir` (at most `depth` levels down).
fn find_dirs(dir: &Path, name: &str, depth: u32, out: &mut Vec<PathBuf>) {
    if depth == 0 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            if e.file_name().to_string_lossy() == name {
                out.push(e.path());
            } else {
                find_dirs(&e.path(), name, depth - 1, out);
            }
        }
    }
}

/// How many entries `dir` holds, not counting hidden ones (the zone library's
/// `.seccomp-cache` in its state root is shared by every zone and outlives them).
pub fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

/// One HTTP/1.1 request on a Unix socket; the connection is closed after it.
pub fn http_raw(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s =
        UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: bulkhead\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send request");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

impl Drop for Platform {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            if let Ok(v) =
                serde_json::from_str::<Value>(&self.cli(&["--format", "json", "list"]).stdout)
            {
                for i in v.as_array().into_iter().flatten() {
                    if let Some(n) = i["name"].as_str() {
                        let _ = self.cli(&["delete", "--force", n]);
                    }
                }
            }
        }
        self.kill_daemon();
        // Monitors the daemon could not reach.
        if let Ok(rd) = std::fs::read_dir(self.run_dir().join("instances")) {
            for e in rd.flatten() {
                if let Ok(pid) = std::fs::read_to_string(e.path().join("monitor.pid")) {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        for p in self.leftover_cgroups() {
            let _ = std::fs::remove_dir(&p);
        }
        // Remove the (empty) prefix directories too.
        if let Ok(hs) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hs.flatten() {
                let mut v = Vec::new();
                find_dirs(&h.path(), &self.cgroup_parent, 6, &mut v);
                for p in v {
                    let _ = std::fs::remove_dir(p);
                }
            }
        }
    }
}
