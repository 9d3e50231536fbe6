//! Instance lifecycle: create, start (spawn a monitor), watch (learn of exits through the
//! monitor's socket), stop, freeze, delete, rename, configuration changes, re-adoption of
//! running monitors at daemon start, autostart and restart policies. The daemon never
//! creates a zone itself: that happens in the instance's monitor (see docs/platform.md).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::config::{parse_bool, parse_restart, RestartPolicy};
use api::{Instance, InstanceKind, InstancesPost, Source, Status};
use monitor::{Client, MonitorConfig, Request, Response, RunState, Workload};
use tokio::io::AsyncBufReadExt;

use crate::ops::Ops;
use crate::spec;
use crate::store::{Row, Store};
use crate::ApiError;

/// How long any single call into a monitor may take.
pub const MONITOR_TIMEOUT: Duration = Duration::from_secs(5);

/// Where things live.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Persistent state: the database, bundles, logs, snapshots.
    pub root: PathBuf,
    /// Runtime state: the API socket, monitors' directories, the zone library's state.
    pub run: PathBuf,
    pub monitor_bin: PathBuf,
    pub vmm_bin: PathBuf,
    /// cgroup path prefix for zones (relative: under the monitor's own cgroup).
    pub cgroup_parent: String,
}

impl Paths {
    pub fn instance_dir(&self, id: i64) -> PathBuf {
        self.root.join("instances").join(id.to_string())
    }
    pub fn run_dir(&self, id: i64) -> PathBuf {
        self.run.join("instances").join(id.to_string())
    }
    pub fn zone_root(&self) -> PathBuf {
        self.run.join("zones")
    }
    pub fn log(&self, id: i64) -> PathBuf {
        self.instance_dir(id).join("console.log")
    }
}

/// What the daemon knows of a running instance.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub status: Status,
    pub pid: Option<i32>,
    pub started: Instant,
}

pub struct Daemon {
    pub paths: Paths,
    pub store: Mutex<Store>,
    pub runtime: Mutex<HashMap<String, Runtime>>,
    pub ops: Ops,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Consecutive automatic restarts per instance (reset after a run of 60 s).
    restarts: Mutex<HashMap<String, u32>>,
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn zone_id(id: i64) -> String {
    format!("bh{id}")
}

impl Daemon {
    pub fn new(paths: Paths, store: Store) -> Arc<Daemon> {
        Arc::new(Daemon {
            paths,
            store: Mutex::new(store),
            runtime: Mutex::new(HashMap::new()),
            ops: Ops::new(),
            locks: Mutex::new(HashMap::new()),
            restarts: Mutex::new(HashMap::new()),
        })
    }

    /// The per-instance lock that serializes state changes of one instance.
    pub fn instance_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks)
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    pub fn row(&self, name: &str) -> Result<Row, ApiError> {
        lock(&self.store)
            .get(name)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found(format!("instance {name:?} not found")))
    }

    pub fn status_of(&self, name: &str) -> (Status, Option<i32>) {
        match lock(&self.runtime).get(name) {
            Some(r) => (r.status, r.pid),
            None => (Status::Stopped, None),
        }
    }

    pub fn view(&self, r: &Row) -> Instance {
        let (status, pid) = self.status_of(&r.name);
        Instance {
            name: r.name.clone(),
            kind: r.kind,
            source: r.source.clone(),
            config: r.config.clone(),
            description: r.description.clone(),
            status,
            created_at: r.created_at.clone(),
            pid,
            last_exit: r.last_exit,
        }
    }

    pub fn is_running(&self, name: &str) -> bool {
        !matches!(self.status_of(name).0, Status::Stopped)
    }

    /// Validates and records a new instance (no monitor yet). Nothing is left behind on
    /// failure.
    pub fn create(&self, req: &InstancesPost) -> Result<Row, ApiError> {
        api::validate_name("instance", &req.name).map_err(ApiError::bad)?;
        api::config::validate_all(req.kind, &req.config)
            .map_err(|e| ApiError::bad(e.to_string()))?;
        match (&req.kind, &req.source) {
            (InstanceKind::Zone, Source::Rootfs { path }) => {
                let p = Path::new(path);
                if !p.is_absolute() {
                    return Err(ApiError::bad(format!(
                        "source path {path:?} must be absolute"
                    )));
                }
                if !p.is_dir() {
                    return Err(ApiError::bad(format!(
                        "source root directory {path} does not exist"
                    )));
                }
            }
            (InstanceKind::Zone, Source::Bundle { path }) => {
                let p = Path::new(path);
                if !p.is_absolute() {
                    return Err(ApiError::bad(format!(
                        "bundle path {path:?} must be absolute"
                    )));
                }
                zone::spec::load_bundle(p)
                    .map_err(|e| ApiError::bad(format!("bundle {path}: {e}")))?;
            }
            (InstanceKind::Zone, Source::None) => {
                return Err(ApiError::bad(
                    "a zone needs a root file system: give a rootfs directory or an OCI bundle",
                ))
            }
            (InstanceKind::Vm, Source::None) => {}
            (InstanceKind::Vm, _) => {
                return Err(ApiError::bad(
                    "a VM takes no rootfs or bundle source; give vm.kernel and vm.disk.* keys",
                ))
            }
        }
        if req.kind == InstanceKind::Vm {
            if let Some(k) = req.config.get("vm.kernel") {
                if !Path::new(k).is_file() {
                    return Err(ApiError::bad(format!(
                        "vm.kernel: kernel {k} does not exist"
                    )));
                }
            }
            for (k, v) in &req.config {
                if k.starts_with("vm.disk.") {
                    if let Some((p, _)) = api::config::parse_disk(v) {
                        if !Path::new(&p).exists() {
                            return Err(ApiError::bad(format!("{k}: disk {p} does not exist")));
                        }
                    }
                }
            }
        }
        let mut store = lock(&self.store);
        if store.get(&req.name).map_err(ApiError::internal)?.is_some() {
            return Err(ApiError::conflict(format!(
                "instance {:?} already exists",
                req.name
            )));
        }
        let row = store
            .insert(
                &req.name,
                req.kind,
                &req.source,
                &req.config,
                &req.description,
                &crate::ops::now_rfc3339(),
            )
            .map_err(ApiError::internal)?;
        drop(store);
        if let Err(e) = std::fs::create_dir_all(self.paths.instance_dir(row.id)) {
            let _ = lock(&self.store).delete(&row.name);
            return Err(ApiError::internal(format!(
                "create {}: {e}",
                self.paths.instance_dir(row.id).display()
            )));
        }
        self.ops.lifecycle("instance-created", &row.name);
        Ok(row)
    }

    /// Writes what the monitor needs and starts it; returns once the instance runs.
    pub async fn start(self: &Arc<Self>, name: &str) -> Result<(), ApiError> {
        let guard = self.instance_lock(name);
        let _g = guard.lock().await;
        self.start_locked(name).await
    }

    async fn start_locked(self: &Arc<Self>, name: &str) -> Result<(), ApiError> {
        let row = self.row(name)?;
        if self.is_running(name) {
            return Err(ApiError::conflict(format!(
                "instance {name:?} is already running"
            )));
        }
        let run_dir = self.paths.run_dir(row.id);
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| ApiError::internal(format!("create {}: {e}", run_dir.display())))?;
        let workload = match self.prepare(&row, &run_dir) {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&run_dir);
                return Err(e);
            }
        };
        let cfg = MonitorConfig {
            name: row.name.clone(),
            run_dir: run_dir.clone(),
            log: self.paths.log(row.id),
            log_max: 8 << 20,
            workload,
        };
        lock(&self.runtime).insert(
            name.to_string(),
            Runtime {
                status: Status::Starting,
                pid: None,
                started: Instant::now(),
            },
        );
        let monitor_bin = self.paths.monitor_bin.clone();
        let res = tokio::task::spawn_blocking(move || spawn_monitor(&monitor_bin, &cfg))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))
            .and_then(|r| r);
        match res {
            Ok(pid) => {
                lock(&self.runtime).insert(
                    name.to_string(),
                    Runtime {
                        status: Status::Running,
                        pid: Some(pid),
                        started: Instant::now(),
                    },
                );
                let _ = lock(&self.store).set_want_running(name, true);
                self.ops.lifecycle("instance-started", name);
                self.watch(name.to_string(), row.id);
                Ok(())
            }
            Err(e) => {
                lock(&self.runtime).remove(name);
                let _ = std::fs::remove_dir_all(&run_dir);
                if row.kind == InstanceKind::Zone {
                    // The monitor removes a zone it failed to start; make sure.
                    let _ =
                        zone::container::delete(&self.paths.zone_root(), &zone_id(row.id), true);
                }
                Err(e)
            }
        }
    }

    /// The bundle (zones) or VM config the monitor will run.
    fn prepare(&self, row: &Row, run_dir: &Path) -> Result<Workload, ApiError> {
        let dir = self.paths.instance_dir(row.id);
        match row.kind {
            InstanceKind::Zone => {
                let (rootfs, base) = match &row.source {
                    Source::Rootfs { path } => (PathBuf::from(path), None),
                    Source::Bundle { path } => {
                        let b = zone::spec::load_bundle(Path::new(path))
                            .map_err(|e| ApiError::bad(format!("bundle {path}: {e}")))?;
                        (b.rootfs.clone(), Some(b.spec))
                    }
                    Source::None => return Err(ApiError::bad("a zone needs a root file system")),
                };
                if !rootfs.is_dir() {
                    return Err(ApiError::bad(format!(
                        "the zone's root directory {} does not exist any more",
                        rootfs.display()
                    )));
                }
                let privileged = row
                    .config
                    .get("security.privileged")
                    .and_then(|v| parse_bool(v))
                    .unwrap_or(false);
                if !privileged {
                    check_reachable(&rootfs)?;
                }
                let cg = format!("{}/{}", self.paths.cgroup_parent, zone_id(row.id));
                let spec = spec::zone_spec(row.id, &row.name, &rootfs, base, &row.config, &cg)
                    .map_err(|e| ApiError::bad(format!("{e:#}")))?;
                let bundle = dir.join("bundle");
                std::fs::create_dir_all(&bundle)
                    .map_err(|e| ApiError::internal(format!("create {}: {e}", bundle.display())))?;
                let text = serde_json::to_vec_pretty(&spec).map_err(ApiError::internal)?;
                zone::state::write_atomic(&bundle.join("config.json"), &text)
                    .map_err(ApiError::internal)?;
                let _ = std::fs::create_dir_all(self.paths.zone_root());
                // A zone left over by a monitor that died hard is removed first.
                let _ = zone::container::delete(&self.paths.zone_root(), &zone_id(row.id), true);
                Ok(Workload::Zone {
                    state_root: self.paths.zone_root(),
                    id: zone_id(row.id),
                    bundle,
                })
            }
            InstanceKind::Vm => crate::vm::prepare(self, row, run_dir),
        }
    }

    /// Follows the monitor of a running instance until it ends.
    pub fn watch(self: &Arc<Self>, name: String, id: i64) {
        let me = self.clone();
        tokio::spawn(async move {
            let sock = monitor::socket_path(&me.paths.run_dir(id));
            if let Ok(mut s) = tokio::net::UnixStream::connect(&sock).await {
                use tokio::io::AsyncWriteExt;
                if s.write_all(&monitor::to_line(&Request::Watch))
                    .await
                    .is_ok()
                {
                    let mut lines = tokio::io::BufReader::new(s).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let Ok(Response::Status(st)) = serde_json::from_str::<Response>(&line)
                        else {
                            continue;
                        };
                        let status = match st.state {
                            RunState::Running => Status::Running,
                            RunState::Frozen => Status::Frozen,
                            RunState::Stopping => Status::Stopping,
                            RunState::Exited => break,
                        };
                        let mut rt = lock(&me.runtime);
                        if let Some(r) = rt.get_mut(&name) {
                            if r.status != status {
                                r.status = status;
                            }
                        }
                    }
                }
            }
            me.exited(&name, id).await;
        });
    }

    /// The monitor is gone: record how the instance ended and apply the restart policy.
    async fn exited(self: &Arc<Self>, name: &str, id: i64) {
        // The name may have changed meanwhile only for stopped instances, so it is current.
        let run_dir = self.paths.run_dir(id);
        // The monitor writes exit.json before closing its socket; give a dying one a moment.
        let mut rec = None;
        for _ in 0..50 {
            rec = monitor::read_exit(&run_dir);
            if rec.is_some() || !monitor_alive(&run_dir) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if rec.is_none() {
            rec = monitor::read_exit(&run_dir);
        }
        let code = rec.map(|r| r.code);
        let ran_for = lock(&self.runtime).get(name).map(|r| r.started.elapsed());
        lock(&self.runtime).remove(name);
        let _ = std::fs::remove_dir_all(&run_dir);
        let row = {
            let mut s = lock(&self.store);
            let _ = s.set_last_exit(name, code);
            s.get(name).ok().flatten()
        };
        let mut d = BTreeMap::new();
        if let Some(c) = code {
            d.insert("exit_code".into(), c.to_string());
        }
        self.ops.emit("lifecycle", "instance-stopped", name, d);
        let Some(row) = row else { return };
        if !row.want_running {
            return;
        }
        let policy = row
            .config
            .get("boot.restart")
            .and_then(|v| parse_restart(v))
            .unwrap_or(RestartPolicy::No);
        let n = {
            let mut r = lock(&self.restarts);
            let e = r.entry(name.to_string()).or_insert(0);
            if ran_for.is_some_and(|d| d > Duration::from_secs(60)) {
                *e = 0;
            }
            *e += 1;
            *e
        };
        let again = match policy {
            RestartPolicy::No => false,
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure(max) => code != Some(0) && max.is_none_or(|m| n <= m),
        };
        if !again {
            let _ = lock(&self.store).set_want_running(name, false);
            return;
        }
        let backoff = Duration::from_secs(1u64 << (n - 1).min(6)).min(Duration::from_secs(60));
        tracing::info!("instance {name} exited ({code:?}); restart {n} in {backoff:?}");
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(backoff).await;
            // Still wanted (not stopped or deleted meanwhile)?
            let want = lock(&me.store)
                .get(&name)
                .ok()
                .flatten()
                .is_some_and(|r| r.want_running && r.id == id);
            if want && !me.is_running(&name) {
                if let Err(e) = me.start(&name).await {
                    tracing::warn!("restart of {name}: {}", e.message);
                } else {
                    me.ops.lifecycle("instance-restarted", &name);
                }
            }
        });
    }

    /// Graceful stop (signal, wait `timeout`, kill) or forced; returns once stopped.
    pub async fn stop(
        self: &Arc<Self>,
        name: &str,
        timeout: Option<u64>,
        force: bool,
    ) -> Result<(), ApiError> {
        let guard = self.instance_lock(name);
        let _g = guard.lock().await;
        self.stop_locked(name, timeout, force).await
    }

    async fn stop_locked(
        self: &Arc<Self>,
        name: &str,
        timeout: Option<u64>,
        force: bool,
    ) -> Result<(), ApiError> {
        let row = self.row(name)?;
        if !self.is_running(name) {
            return Err(ApiError::conflict(format!(
                "instance {name:?} is not running"
            )));
        }
        let _ = lock(&self.store).set_want_running(name, false);
        let timeout = timeout.unwrap_or_else(|| {
            row.config
                .get("boot.stop.timeout")
                .and_then(|v| v.parse().ok())
                .unwrap_or(30)
        });
        let sock = monitor::socket_path(&self.paths.run_dir(row.id));
        let req = Request::Stop {
            signal: libc::SIGTERM,
            timeout_s: timeout,
            force,
        };
        let r = tokio::task::spawn_blocking(move || Client::call(&sock, &req, MONITOR_TIMEOUT))
            .await
            .map_err(ApiError::internal)?;
        if let Err(e) = r {
            if monitor_alive(&self.paths.run_dir(row.id)) {
                return Err(ApiError::internal(format!("stop {name}: {e}")));
            }
        }
        // Wait for the watcher to see the exit (the monitor kills after `timeout`).
        let deadline = Instant::now() + Duration::from_secs(timeout + 30);
        while self.is_running(name) {
            if Instant::now() > deadline {
                return Err(ApiError::internal(format!("instance {name} did not stop")));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    pub async fn restart(
        self: &Arc<Self>,
        name: &str,
        timeout: Option<u64>,
        force: bool,
    ) -> Result<(), ApiError> {
        let guard = self.instance_lock(name);
        let _g = guard.lock().await;
        if self.is_running(name) {
            self.stop_locked(name, timeout, force).await?;
        }
        self.start_locked(name).await
    }

    pub async fn freeze(self: &Arc<Self>, name: &str, on: bool) -> Result<(), ApiError> {
        let guard = self.instance_lock(name);
        let _g = guard.lock().await;
        let row = self.row(name)?;
        let (status, _) = self.status_of(name);
        match (on, status) {
            (true, Status::Running) | (false, Status::Frozen) => {}
            (true, s) | (false, s) => {
                return Err(ApiError::conflict(format!(
                    "instance {name:?} is {s}; {} needs it {}",
                    if on { "freeze" } else { "unfreeze" },
                    if on { "running" } else { "frozen" }
                )))
            }
        }
        let req = if on {
            Request::Freeze
        } else {
            Request::Unfreeze
        };
        self.call(row.id, req).await?;
        if let Some(r) = lock(&self.runtime).get_mut(name) {
            r.status = if on { Status::Frozen } else { Status::Running };
        }
        self.ops.lifecycle(
            if on {
                "instance-frozen"
            } else {
                "instance-unfrozen"
            },
            name,
        );
        Ok(())
    }

    /// One request to an instance's monitor, with the monitor timeout.
    pub async fn call(&self, id: i64, req: Request) -> Result<Response, ApiError> {
        let sock = monitor::socket_path(&self.paths.run_dir(id));
        tokio::task::spawn_blocking(move || Client::call(&sock, &req, MONITOR_TIMEOUT))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| match e {
                monitor::ClientError::Refused(m) => ApiError::bad(m),
                e => ApiError::unavailable(e.to_string()),
            })
    }

    pub async fn delete(self: &Arc<Self>, name: &str, force: bool) -> Result<(), ApiError> {
        let guard = self.instance_lock(name);
        let _g = guard.lock().await;
        let row = self.row(name)?;
        if self.is_running(name) {
            if !force {
                return Err(ApiError::conflict(format!(
                    "instance {name:?} is running; stop it first or delete with --force"
                )));
            }
            self.stop_locked(name, Some(0), true).await?;
        }
        lock(&self.store).delete(name).map_err(ApiError::internal)?;
        let _ = std::fs::remove_dir_all(self.paths.instance_dir(row.id));
        let _ = std::fs::remove_dir_all(self.paths.run_dir(row.id));
        lock(&self.locks).remove(name);
        lock(&self.restarts).remove(name);
        self.ops.lifecycle("instance-deleted", name);
        Ok(())
    }

    pub async fn rename(self: &Arc<Self>, name: &str, new: &str) -> Result<Row, ApiError> {
        let guard = self.instance_lock(name);
        let _g = guard.lock().await;
        api::validate_name("instance", new).map_err(ApiError::bad)?;
        self.row(name)?;
        if self.is_running(name) {
            return Err(ApiError::conflict(format!(
                "instance {name:?} is running; stop it before renaming"
            )));
        }
        let mut store = lock(&self.store);
        if store.get(new).map_err(ApiError::internal)?.is_some() {
            return Err(ApiError::conflict(format!(
                "instance {new:?} already exists"
            )));
        }
        store.rename(name, new).map_err(ApiError::internal)?;
        let row = store
            .get(new)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::internal("renamed instance vanished"))?;
        drop(store);
        let mut d = BTreeMap::new();
        d.insert("old_name".into(), name.to_string());
        self.ops.emit("lifecycle", "instance-renamed", new, d);
        Ok(row)
    }

    /// Replaces the configuration (PUT, or PATCH after merging), validating every key and
    /// applying limits to a running zone first: if the kernel refuses, nothing is saved.
    pub async fn set_config(
        self: &Arc<Self>,
        name: &str,
        config: BTreeMap<String, String>,
        description: String,
        if_match: Option<i64>,
    ) -> Result<Row, ApiError> {
        let guard = self.instance_lock(name);
        let _g = guard.lock().await;
        let row = self.row(name)?;
        if let Some(g) = if_match {
            if g != row.generation {
                return Err(ApiError::precondition(format!(
                    "instance {name:?} changed since you read it (ETag \"{}\" is current)",
                    row.generation
                )));
            }
        }
        api::config::validate_all(row.kind, &config).map_err(|e| ApiError::bad(e.to_string()))?;
        if self.is_running(name) {
            let fixed = api::config::not_live_changes(&row.config, &config, row.kind);
            if !fixed.is_empty() {
                return Err(ApiError::bad(format!(
                    "cannot change {} while {name:?} is running; stop it first",
                    fixed.join(", ")
                )));
            }
            if row.kind == InstanceKind::Zone {
                let disk = match &row.source {
                    Source::Rootfs { path } => spec::block_device_of(Path::new(path)),
                    _ => None,
                };
                let u = spec::live_update(&row.config, &config, disk);
                if u != monitor::ResourceUpdate::default() {
                    self.call(row.id, Request::Update(u)).await?;
                }
            }
        }
        let ok = lock(&self.store)
            .update_config(name, &config, &description, Some(row.generation))
            .map_err(ApiError::internal)?;
        if !ok {
            return Err(ApiError::precondition(format!(
                "instance {name:?} changed concurrently; retry"
            )));
        }
        self.ops.lifecycle("instance-updated", name);
        self.row(name)
    }

    /// At daemon start: find every instance's monitor again; record the ones that ended
    /// while the daemon was away; then autostart and restart what should run.
    pub async fn adopt(self: &Arc<Self>) {
        let rows = lock(&self.store).list().unwrap_or_default();
        for row in &rows {
            let run_dir = self.paths.run_dir(row.id);
            let sock = monitor::socket_path(&run_dir);
            let alive = if sock.exists() {
                let s = sock.clone();
                tokio::task::spawn_blocking(move || {
                    Client::call(&s, &Request::Status, MONITOR_TIMEOUT)
                })
                .await
                .ok()
                .and_then(|r| r.ok())
            } else {
                None
            };
            match alive {
                Some(Response::Status(st)) => {
                    let status = match st.state {
                        RunState::Frozen => Status::Frozen,
                        RunState::Stopping => Status::Stopping,
                        _ => Status::Running,
                    };
                    lock(&self.runtime).insert(
                        row.name.clone(),
                        Runtime {
                            status,
                            pid: Some(st.pid),
                            started: Instant::now(),
                        },
                    );
                    self.watch(row.name.clone(), row.id);
                    tracing::info!("re-adopted {} (pid {})", row.name, st.pid);
                }
                _ if run_dir.exists() => {
                    // Ended while we were away (or the monitor is hung): record it.
                    lock(&self.runtime).insert(
                        row.name.clone(),
                        Runtime {
                            status: Status::Stopping,
                            pid: None,
                            started: Instant::now(),
                        },
                    );
                    self.exited(&row.name, row.id).await;
                }
                _ => {}
            }
        }
        for row in rows {
            let autostart = row
                .config
                .get("boot.autostart")
                .and_then(|v| parse_bool(v))
                .unwrap_or(false);
            if autostart && !self.is_running(&row.name) {
                let me = self.clone();
                tokio::spawn(async move {
                    match me.start(&row.name).await {
                        Ok(()) => tracing::info!("autostarted {}", row.name),
                        Err(e) => tracing::warn!("autostart of {}: {}", row.name, e.message),
                    }
                });
            }
        }
    }
}

/// A zone's root (uid 1,000,000 and up on the host) must be able to reach its root
/// directory: every directory above it needs search permission for others.
fn check_reachable(rootfs: &Path) -> Result<(), ApiError> {
    use std::os::unix::fs::PermissionsExt;
    for dir in rootfs.ancestors() {
        if let Ok(m) = std::fs::metadata(dir) {
            if m.permissions().mode() & 0o001 == 0 {
                return Err(ApiError::bad(format!(
                    "the zone's root {} is out of reach of the zone's unprivileged root user: {} has mode {:o}; allow search by others (chmod o+x) or set security.privileged=true",
                    rootfs.display(),
                    dir.display(),
                    m.permissions().mode() & 0o7777
                )));
            }
        }
    }
    Ok(())
}

/// Whether the monitor whose pid file is in `run_dir` still runs.
pub fn monitor_alive(run_dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(monitor::pid_path(run_dir)) else {
        return false;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return false;
    };
    // Signal 0 only checks that the process exists; a zombie does not count.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && zone::state::proc_stat(pid).is_some_and(|(s, _)| s != 'Z')
}

/// Starts a detached monitor and waits for its start-up report; the pid it runs.
fn spawn_monitor(bin: &Path, cfg: &MonitorConfig) -> Result<i32, ApiError> {
    let cfg_path = cfg.run_dir.join("monitor.json");
    let text = serde_json::to_vec_pretty(cfg).map_err(ApiError::internal)?;
    zone::state::write_atomic(&cfg_path, &text).map_err(ApiError::internal)?;
    let (rd, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ApiError::internal(format!("pipe: {e}")))?;
    let wr_raw = wr.as_raw_fd();
    let mut cmd = std::process::Command::new(bin);
    cmd.arg(&cfg_path)
        .env(monitor::READY_FD_ENV, "3")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls (dup2, setsid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(wr_raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| ApiError::internal(format!("run {}: {e}", bin.display())))?;
    drop(wr);
    // The first process exits as soon as it has forked the real monitor.
    let _ = child.wait();
    // One line is the whole report (the pipe may stay open in the monitor's children).
    let mut f = std::io::BufReader::new(std::fs::File::from(rd));
    let mut line = String::new();
    let _ = std::io::BufRead::read_line(&mut f, &mut line);
    let line = line.trim_end().to_string();
    if let Some(pid) = line.strip_prefix("ok ") {
        return pid
            .trim()
            .parse()
            .map_err(|_| ApiError::internal(format!("monitor reported {line:?}")));
    }
    if let Some(msg) = line.strip_prefix("error ") {
        return Err(ApiError::bad(format!("start {}: {msg}", cfg.name)));
    }
    let log = std::fs::read_to_string(cfg.run_dir.join("monitor.log")).unwrap_or_default();
    Err(ApiError::internal(format!(
        "the monitor of {} exited without reporting: {}",
        cfg.name,
        log.lines().last().unwrap_or("no message")
    )))
}
