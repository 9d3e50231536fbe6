//! The Bulkhead side: a private bulkheadd driven through the real CLI.

use super::*;

// ---------------------------------------------------------------------------------------
// Bulkhead side

pub(super) struct Bulkhead {
    pub(super) p: Platform,
    pub(super) rootfs: PathBuf,
}

impl Bulkhead {
    pub(super) fn start() -> Bulkhead {
        let p = Platform::start();
        // One busybox root shared by every zone (they only run `sleep`; LXD copies its image
        // per container, which is part of what `lxc launch` costs).
        let rootfs = p.dir.path().join("rootfs");
        build_busybox_rootfs(&rootfs).expect("busybox rootfs");
        Bulkhead { p, rootfs }
    }

    pub(super) fn create(&self, name: &str, start: bool) -> Result<Duration, String> {
        let cmd = format!("command={IDLE}");
        let mut c = self.p.command();
        c.args(["create", name, "--rootfs"])
            .arg(&self.rootfs)
            .args(["-c", &cmd]);
        if start {
            c.arg("--start");
        }
        timed(&mut c)
    }

    pub(super) fn exec_true(&self, name: &str) -> Result<Duration, String> {
        timed(self.p.command().args(["exec", name, "--", "true"]))
    }

    pub(super) fn list(&self) -> Result<Duration, String> {
        timed(self.p.command().arg("list"))
    }

    pub(super) fn delete(&self, names: &[String]) {
        for chunk in names.chunks(100) {
            let mut c = self.p.command();
            c.args(["delete", "--force"]).args(chunk);
            run_bounded(&mut c, Duration::from_secs(600));
        }
    }

    pub(super) fn daemon_pid(&self) -> Option<i32> {
        self.p.daemon.as_ref().map(|c| c.id() as i32)
    }

    /// Pids of the running monitors (from their pid files).
    pub(super) fn monitor_pids(&self) -> Vec<i32> {
        let mut v = Vec::new();
        if let Ok(rd) = fs::read_dir(self.p.run_dir().join("instances")) {
            for e in rd.flatten() {
                if let Ok(s) = fs::read_to_string(e.path().join("monitor.pid")) {
                    if let Ok(pid) = s.trim().parse::<i32>() {
                        if Path::new(&format!("/proc/{pid}")).exists() {
                            v.push(pid);
                        }
                    }
                }
            }
        }
        v
    }

    /// Number of instances `bulkhead list` reports with status `running`.
    pub(super) fn running(&self) -> Result<usize, String> {
        let out = output(self.p.command().args(["--format", "json", "list"]))?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        Ok(v.as_array()
            .map(|a| a.iter().filter(|i| i["status"] == "running").count())
            .unwrap_or(0))
    }

    /// kill -9 of the daemon, start it again at once; time until `bulkhead list` answers.
    pub(super) fn restart_after_kill9(&mut self) -> Result<Duration, String> {
        self.p.kill_daemon();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.p.dir.path().join("daemon.log"))
            .map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let child = Command::new(daemon_bin())
            .arg("--root")
            .arg(self.p.root())
            .arg("--run-dir")
            .arg(self.p.run_dir())
            .arg("--cgroup-parent")
            .arg(&self.p.cgroup_parent)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start bulkheadd: {e}"))?;
        self.p.daemon = Some(child);
        loop {
            let ok = self
                .p
                .command()
                .arg("list")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > Duration::from_secs(120) {
                return Err("bulkheadd did not answer within 120 s".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
