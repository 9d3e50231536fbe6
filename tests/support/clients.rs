//! Real OCI clients driving the runtime under test: a private podman store and a private
//! containerd daemon, each confined to its own temporary directory and torn down on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

use crate::{build_busybox_rootfs, run_cmd, tar_dir, unique_id, wait_for, Out};

/// Unmount (lazily) every mount below `dir`, deepest first.
pub fn unmount_below(dir: &Path) {
    let prefix = dir.to_string_lossy().to_string();
    let mut mps: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    mps.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mps {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Is `tool` on PATH?
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// podman with a private storage root, run root and tmp dir, cgroupfs, file events, and the
/// runtime under test. Has a busybox image `localhost/<image>` imported.
pub struct Podman {
    dir: TempDir,
    pub runtime: PathBuf,
    pub image: String,
}

impl Podman {
    pub fn new(runtime: PathBuf) -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("bulkhead-podman-")
            .tempdir()
            .expect("podman tempdir");
        let p = Podman {
            dir,
            runtime,
            image: format!("localhost/{}", unique_id("bulkhead-busybox")),
        };
        let rootfs = p.dir.path().join("rootfs");
        build_busybox_rootfs(&rootfs).expect("busybox rootfs");
        let tar = p.dir.path().join("rootfs.tar");
        tar_dir(&rootfs, &tar);
        let o = run_cmd(p.cmd(&["import"]).arg(&tar).arg(&p.image));
        o.ok();
        p
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `podman <global options> <args…>`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .args(["--storage-driver", "vfs"])
            .arg("--runtime")
            .arg(&self.runtime)
            .args(args);
        c
    }

    /// Options every `run` needs here: no network traffic, rlimits this host can grant.
    pub const RUN_OPTS: &'static [&'static str] = &[
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ];

    /// `podman run <RUN_OPTS> <opts…> <image> <cmd…>`.
    pub fn run(&self, opts: &[&str], cmd: &[&str]) -> Out {
        let mut c = self.cmd(&["run"]);
        c.args(Self::RUN_OPTS).args(opts).arg(&self.image).args(cmd);
        run_cmd(&mut c)
    }

    pub fn podman(&self, args: &[&str]) -> Out {
        run_cmd(&mut self.cmd(args))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = run_cmd(&mut self.cmd(&["rm", "--all", "--force", "--time", "0"]));
        let _ = run_cmd(&mut self.cmd(&["system", "reset", "--force"]));
        unmount_below(self.dir.path());
    }
}

/// A private containerd daemon (own root, state, sockets, config) with a busybox image
/// imported as `localhost/<name>:latest`.
pub struct Containerd {
    dir: TempDir,
    child: Option<Child>,
    pub runtime: PathBuf,
    pub image: String,
}

impl Containerd {
    pub fn start(runtime: PathBuf) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("bulkhead-ctrd-")
            .tempdir()
            .expect("containerd tempdir");
        let d = dir.path();
        let sock = d.join("c.sock");
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = sock.display(),
        );
        fs::write(d.join("config.toml"), config).expect("config.toml");
        let log = fs::File::create(d.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .arg("--address")
            .arg(&sock)
            .arg("--root")
            .arg(d.join("root"))
            .arg("--state")
            .arg(d.join("state"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let mut c = Containerd {
            dir,
            child: Some(child),
            runtime,
            image: String::new(),
        };
        wait_for("containerd to answer", || {
            (run_cmd(&mut c.ctr(&["version"])).code == 0).then_some(())
        });
        // Image: podman (private store) exports the busybox rootfs as an OCI archive.
        let podman = Podman::new(c.runtime.clone());
        let archive = c.dir.path().join("image.tar");
        let name = podman.image.trim_start_matches("localhost/").to_string();
        run_cmd(
            podman
                .cmd(&["save", "--format", "oci-archive", "-o"])
                .arg(&archive)
                .arg(&podman.image),
        )
        .ok();
        let base = format!("localhost/{name}");
        run_cmd(
            c.ctr(&["images", "import", "--base-name", &base])
                .arg(&archive),
        )
        .ok();
        c.image = format!("{base}:latest");
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    /// `ctr -a <socket> <args…>`.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(self.socket()).args(args);
        c
    }

    /// `ctr run --runc-binary <runtime> <opts…> <image> <id> <cmd…>`.
    pub fn run(&self, opts: &[&str], id: &str, cmd: &[&str]) -> Out {
        let mut c = self.ctr(&["run", "--runc-binary"]);
        c.arg(&self.runtime)
            .args(opts)
            .arg(&self.image)
            .arg(id)
            .args(cmd);
        run_cmd(&mut c)
    }

    pub fn ctr_out(&self, args: &[&str]) -> Out {
        run_cmd(&mut self.ctr(args))
    }

    /// The daemon's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks first (their shims exit once deleted), then containers, then the daemon.
        let tasks = run_cmd(&mut self.ctr(&["task", "ls", "-q"]));
        for t in tasks
            .stdout
            .lines()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let _ = run_cmd(&mut self.ctr(&["task", "kill", "-s", "SIGKILL", t]));
            let _ = wait_for_task_gone(self, t);
        }
        let cs = run_cmd(&mut self.ctr(&["containers", "ls", "-q"]));
        for c in cs.stdout.lines().map(str::trim).filter(|c| !c.is_empty()) {
            let _ = run_cmd(&mut self.ctr(&["containers", "delete", c]));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        unmount_below(self.dir.path());
    }
}

fn wait_for_task_gone(c: &Containerd, task: &str) -> bool {
    for _ in 0..100 {
        let _ = run_cmd(&mut c.ctr(&["task", "delete", task]));
        let ls = run_cmd(&mut c.ctr(&["task", "ls", "-q"]));
        if !ls.stdout.lines().any(|l| l.trim() == task) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}
