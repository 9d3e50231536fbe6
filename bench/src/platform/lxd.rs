//! The LXD side: a private LXD 5.0 (own LXD_DIR, a `dir` pool, no network) with the
//! same busybox root imported as an image.

use super::*;

// ---------------------------------------------------------------------------------------
// LXD side

pub(super) struct Lxd {
    pub(super) dir: tempfile::TempDir,
    pub(super) child: Option<Child>,
}

impl Lxd {
    pub(super) fn lxc(&self, args: &[&str]) -> Command {
        let mut c = Command::new("lxc");
        c.env("LXD_DIR", self.dir.path().join("lxd")).args(args);
        c
    }

    pub(super) fn spawn(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("lxd.log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new("lxd")
            .args(["--group", "root"])
            .env("LXD_DIR", self.dir.path().join("lxd"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run lxd: {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls `lxc list` until it answers; time from now.
    pub(super) fn wait_answers(&self, t: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        loop {
            let ok = self
                .lxc(&["list", "--format", "csv", "-c", "n"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > t {
                return Err(format!("lxd did not answer within {t:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A private LXD with a `dir` pool, a root-disk-only profile, and the busybox image `bb`.
    pub(super) fn start(timeout: Duration) -> Result<Lxd, String> {
        for tool in ["lxd", "lxc"] {
            if !system_tests::clients::have(tool) {
                return Err(format!("{tool} not installed (apt-get install lxd)"));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("bhlxd-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        fs::create_dir_all(dir.path().join("lxd")).map_err(|e| e.to_string())?;
        let mut l = Lxd { dir, child: None };
        l.spawn()?;
        l.wait_answers(timeout).map_err(|e| {
            let log = fs::read_to_string(l.dir.path().join("lxd.log")).unwrap_or_default();
            let last = log
                .lines()
                .rfind(|x| x.contains("level=error"))
                .unwrap_or("")
                .to_string();
            format!("{e} {last}")
        })?;
        let preseed = "config:\n  images.auto_update_interval: \"0\"\nstorage_pools:\n- name: default\n  driver: dir\nprofiles:\n- name: default\n  devices:\n    root:\n      path: /\n      pool: default\n      type: disk\n";
        let mut c = Command::new("lxd");
        c.args(["init", "--preseed"])
            .env("LXD_DIR", l.dir.path().join("lxd"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|e| e.to_string())?;
        {
            use std::io::Write;
            let mut si = child.stdin.take().ok_or("no stdin")?;
            si.write_all(preseed.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let o = child.wait_with_output().map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(format!("lxd init --preseed: {}", first_line(&o.stderr)));
        }
        // The image: the same busybox root, with an /sbin/init that execs the idle command.
        let img = l.dir.path().join("image");
        build_busybox_rootfs(&img.join("rootfs")).map_err(|e| e.to_string())?;
        fs::write(
            img.join("rootfs/sbin/init"),
            format!("#!/bin/sh\nexec {IDLE}\n"),
        )
        .map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(
            img.join("rootfs/sbin/init"),
            fs::Permissions::from_mode(0o755),
        )
        .map_err(|e| e.to_string())?;
        fs::write(
            img.join("metadata.yaml"),
            "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: busybox (bulkhead bench)\n",
        )
        .map_err(|e| e.to_string())?;
        let tar = l.dir.path().join("bb.tar.gz");
        output(
            Command::new("tar")
                .arg("-C")
                .arg(&img)
                .arg("-czf")
                .arg(&tar)
                .args(["metadata.yaml", "rootfs"]),
        )?;
        output(
            l.lxc(&["image", "import"])
                .arg(&tar)
                .args(["--alias", "bb"]),
        )
        .map_err(|e| format!("lxc image import: {e}"))?;
        Ok(l)
    }

    pub(super) fn launch(&self, name: &str) -> Result<Duration, String> {
        timed(&mut self.lxc(&["launch", "bb", name]))
    }
    pub(super) fn init(&self, name: &str) -> Result<Duration, String> {
        timed(&mut self.lxc(&["init", "bb", name]))
    }
    pub(super) fn exec_true(&self, name: &str) -> Result<Duration, String> {
        timed(&mut self.lxc(&["exec", name, "--", "true"]))
    }
    pub(super) fn list(&self) -> Result<Duration, String> {
        timed(&mut self.lxc(&["list"]))
    }
    pub(super) fn delete(&self, names: &[String]) {
        for chunk in names.chunks(50) {
            let mut c = self.lxc(&["delete", "--force"]);
            c.args(chunk);
            run_bounded(&mut c, Duration::from_secs(600));
        }
    }
    pub(super) fn names(&self) -> Vec<String> {
        output(&mut self.lxc(&["list", "--format", "csv", "-c", "n"]))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .filter(|s| !s.is_empty())
            .collect()
    }
    pub(super) fn running(&self) -> Result<usize, String> {
        Ok(
            output(&mut self.lxc(&["list", "--format", "csv", "-c", "s"]))?
                .lines()
                .filter(|l| l.trim() == "RUNNING")
                .count(),
        )
    }
    pub(super) fn daemon_pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }
    /// Pids of the `[lxc monitor]` processes (parents of the containers' inits).
    pub(super) fn monitor_pids(&self) -> Vec<i32> {
        let mut v = Vec::new();
        for n in self.names() {
            let Ok(s) = output(&mut self.lxc(&["query", &format!("/1.0/instances/{n}/state")]))
            else {
                continue;
            };
            let Ok(j) = serde_json::from_str::<serde_json::Value>(&s) else {
                continue;
            };
            let Some(pid) = j["pid"].as_i64() else {
                continue;
            };
            if let Some(pp) = fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|st| {
                    st.lines()
                        .find(|l| l.starts_with("PPid:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<i32>().ok())
                })
            {
                v.push(pp);
            }
        }
        v
    }
    pub(super) fn kill9_restart(&mut self) -> Result<Duration, String> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let t0 = Instant::now();
        self.spawn()?;
        self.wait_answers(Duration::from_secs(120))?;
        Ok(t0.elapsed())
    }
}

impl Drop for Lxd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let names = self.names();
            self.delete(&names);
            let mut c = Command::new("lxd");
            c.args(["shutdown", "--timeout", "30"])
                .env("LXD_DIR", self.dir.path().join("lxd"));
            run_bounded(&mut c, Duration::from_secs(40));
            if let Some(mut c) = self.child.take() {
                wait_child(&mut c, Duration::from_secs(5));
            }
        }
        unmount_below(self.dir.path());
    }
}
