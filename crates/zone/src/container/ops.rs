//! Operations on a zone that exists: start (through the exec fifo), kill, delete,
//! pause/resume, pids, state, list, stats and resource updates.

use super::*;

/// Start a created zone: release its init through the exec fifo.
pub fn start(root: &Path, id: &str) -> Result<()> {
    let (st, sd) = State::load(root, id)?;
    match st.status(&sd) {
        Status::Created => {}
        Status::Stopped => {
            return Err(ZoneError::State(
                "cannot start a container that has stopped".into(),
            ))
        }
        s => {
            return Err(ZoneError::State(format!(
                "cannot start an already {s} container"
            )))
        }
    }
    let fifo_path = sd.fifo();
    let fifo = nix::fcntl::open(
        &fifo_path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("open {}", fifo_path.display()))?;
    let pidfd = crate::process::pidfd_open(st.pid)?;
    loop {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [
            PollFd::new(fifo.as_fd(), PollFlags::POLLIN),
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(ZoneError::sys("poll exec fifo", e)),
            Ok(_) => {}
        }
        let fifo_ready = fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP));
        let died = fds[1].revents().is_some_and(|r| !r.is_empty());
        if fifo_ready {
            let mut b = [0u8; 1];
            match nix::unistd::read(&fifo, &mut b) {
                Ok(1) => break,
                Ok(_) => {
                    return Err(ZoneError::Msg(
                        "zone init closed the exec fifo without starting".into(),
                    ))
                }
                Err(Errno::EAGAIN) => {}
                Err(e) => return Err(ZoneError::sys("read exec fifo", e)),
            }
        }
        if died {
            let _ = std::fs::remove_file(&fifo_path);
            return Err(ZoneError::Msg(format!(
                "container \"{id}\" init exited before it was started"
            )));
        }
    }
    let _ = std::fs::remove_file(&fifo_path);
    let hooks = hooks_of(&st.config);
    for h in hooks.poststart().iter().flatten() {
        if let Err(e) = crate::hooks::run_hook("poststart", h, &st.oci_state(Status::Running)) {
            tracing::warn!(id, "{e}");
        }
    }
    Ok(())
}

/// Send a signal to the init (or, with `all`, to every process in the cgroup).
pub fn kill(root: &Path, id: &str, sig: i32, all: bool) -> Result<()> {
    let (st, sd) = State::load(root, id)?;
    let status = st.status(&sd);
    if status == Status::Stopped && !all {
        return Err(ZoneError::State("container not running".into()));
    }
    if all {
        let cg = Cgroup::from_state(&st.cgroup);
        for p in cg.pids()? {
            let _ = crate::process::kill(p, sig);
        }
        if status == Status::Paused && sig == libc::SIGKILL {
            let _ = cg.thaw();
        }
        return Ok(());
    }
    crate::process::kill(st.pid, sig)
}

/// Remove a zone. Running zones need `force` (SIGKILL everything first).
pub fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    let (st, sd) = match State::load(root, id) {
        Ok(x) => x,
        Err(ZoneError::NotExist(_)) if force => {
            // A half-created directory without state is removed too.
            if let Ok(sd) = StateDir::new(root, id) {
                let _ = std::fs::remove_dir_all(&sd.dir);
            }
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let status = st.status(&sd);
    let cg = Cgroup::from_state(&st.cgroup);
    match status {
        Status::Stopped => {}
        Status::Created => {
            let _ = crate::process::kill(st.pid, libc::SIGKILL);
            crate::process::wait_gone(st.pid);
        }
        Status::Running | Status::Paused | Status::Creating => {
            if !force {
                return Err(ZoneError::State(format!(
                    "cannot delete container \"{id}\" that is not stopped: {status}"
                )));
            }
            let _ = crate::process::kill(st.pid, libc::SIGKILL);
        }
    }
    // Whatever is left in the cgroup goes too (shared pid namespace case).
    if let Ok(pids) = cg.pids() {
        for p in &pids {
            let _ = crate::process::kill(*p, libc::SIGKILL);
        }
        if status == Status::Paused {
            let _ = cg.thaw();
        }
        for p in pids {
            crate::process::wait_gone(p);
        }
    }
    crate::process::wait_gone(st.pid);
    let hooks = hooks_of(&st.config);
    for h in hooks.poststop().iter().flatten() {
        if let Err(e) = crate::hooks::run_hook("poststop", h, &st.oci_state(Status::Stopped)) {
            tracing::warn!(id, "{e}");
        }
    }
    let destroyed = cg.destroy();
    std::fs::remove_dir_all(&sd.dir)
        .map_err(|e| ZoneError::io("remove state directory", &sd.dir, e))?;
    destroyed?;
    Ok(())
}

/// Freeze a running zone.
pub fn pause(root: &Path, id: &str) -> Result<()> {
    let (st, sd) = State::load(root, id)?;
    match st.status(&sd) {
        Status::Running | Status::Created => Ok(Cgroup::from_state(&st.cgroup).freeze()?),
        s => Err(ZoneError::State(format!(
            "container \"{id}\" is {s}, not running"
        ))),
    }
}

/// Thaw a paused zone.
pub fn resume(root: &Path, id: &str) -> Result<()> {
    let (st, sd) = State::load(root, id)?;
    match st.status(&sd) {
        Status::Paused => Ok(Cgroup::from_state(&st.cgroup).thaw()?),
        s => Err(ZoneError::State(format!(
            "container \"{id}\" is {s}, not paused"
        ))),
    }
}

/// Pids in the zone's cgroup.
pub fn pids(root: &Path, id: &str) -> Result<Vec<i32>> {
    let (st, _) = State::load(root, id)?;
    Ok(Cgroup::from_state(&st.cgroup).pids()?)
}

/// State view of one zone.
pub fn state(root: &Path, id: &str) -> Result<crate::state::StateView> {
    let (st, sd) = State::load(root, id)?;
    Ok(st.view(&sd))
}

/// All zones under `root`, sorted by id.
pub fn list(root: &Path) -> Result<Vec<crate::state::StateView>> {
    let rd = match std::fs::read_dir(root) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(ZoneError::io("read", root, e)),
    };
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        if let Ok((st, sd)) = State::load(root, &name) {
            out.push(st.view(&sd));
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Loaded state (for the CLI's events/update/exec).
pub fn load(root: &Path, id: &str) -> Result<(State, StateDir)> {
    State::load(root, id)
}

pub use crate::resources::{ResourceUpdate, ZoneStats};

/// Resource use of a zone, typed (see [`ZoneStats`]).
pub fn stats(root: &Path, id: &str) -> Result<ZoneStats> {
    let (st, _) = State::load(root, id)?;
    let cg = Cgroup::from_state(&st.cgroup);
    let s = cg.stats()?;
    Ok(ZoneStats::from_cgroup(s, cg.oom_kill_count().unwrap_or(0)))
}

/// `{"type":"stats","id":…,"data":…}` (runc's `events --stats` line).
pub fn stats_event(root: &Path, id: &str) -> Result<serde_json::Value> {
    Ok(stats(root, id)?.event_json(id))
}

/// Apply new resource limits to a zone and remember them: the given limits
/// are written to the cgroup and merged into the zone's recorded resources
/// (limits not given keep their recorded values).
pub fn update(root: &Path, id: &str, r: &oci_spec::runtime::LinuxResources) -> Result<()> {
    let (mut st, sd) = State::load(root, id)?;
    if st.status(&sd) == Status::Stopped {
        return Err(ZoneError::State(format!("container \"{id}\" is stopped")));
    }
    Cgroup::from_state(&st.cgroup).apply(r)?;
    if let Some(l) = st.config.linux_mut() {
        let merged = match l.resources() {
            Some(old) => merge_resources(old, r)?,
            None => r.clone(),
        };
        l.set_resources(Some(merged));
    }
    st.save(&sd)
}

/// Typed form of [`update`]: change only the limits set in `u`.
pub fn update_resources(root: &Path, id: &str, u: &ResourceUpdate) -> Result<()> {
    update(root, id, &u.to_resources())
}

/// `new`'s set fields over `old` (objects merged key by key).
fn merge_resources(
    old: &oci_spec::runtime::LinuxResources,
    new: &oci_spec::runtime::LinuxResources,
) -> Result<oci_spec::runtime::LinuxResources> {
    fn merge(a: &mut serde_json::Value, b: &serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    if v.is_null() {
                        continue;
                    }
                    match a.get_mut(k) {
                        Some(slot) => merge(slot, v),
                        None => {
                            a.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            (a, b) => *a = b.clone(),
        }
    }
    let enc = |r| serde_json::to_value(r).map_err(|e| ZoneError::Msg(format!("resources: {e}")));
    let mut a = enc(old)?;
    merge(&mut a, &enc(new)?);
    serde_json::from_value(a).map_err(|e| ZoneError::Msg(format!("resources: {e}")))
}

/// Remove a stopped zone after `run` saw it exit (no force needed).
pub fn cleanup_after_run(root: &Path, id: &str) -> Result<()> {
    delete(root, id, true)
}
