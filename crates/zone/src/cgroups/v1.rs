//! cgroup v1 manager: one directory per mounted hierarchy (co-mounted
//! controllers such as `cpu,cpuacct` share one), limits written to each
//! controller's files, freezing through the freezer hierarchy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources, LinuxThrottleDevice};
use serde::{Deserialize, Serialize};

use super::mountinfo::Hierarchy;
use super::stats::{BlkioEntry, HugetlbStats, MemoryEntry, Stats};
use super::util::{self, parse_err, read, read_flat_keyed, read_opt, read_u64_opt, write};
use super::{relative_to_root, CgroupError};

/// The zone's directory in one v1 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct V1Dir {
    /// Directory name of the hierarchy's mount point, e.g. `memory`, `cpu,cpuacct`.
    pub name: String,
    /// Controllers of the hierarchy (`name=systemd` for named ones).
    pub controllers: Vec<String>,
    /// Mount point of the hierarchy.
    pub mount: PathBuf,
    /// The zone's cgroup directory on the host.
    pub path: PathBuf,
}

#[derive(Clone, Debug)]
pub(crate) struct V1 {
    pub dirs: Vec<V1Dir>,
}

fn missing(controller: &str, field: &str) -> CgroupError {
    CgroupError::ControllerMissing {
        controller: controller.to_string(),
        field: field.to_string(),
    }
}

fn invalid(field: &str, value: impl ToString, reason: &str) -> CgroupError {
    CgroupError::InvalidResource {
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// A memory value: -1 (unlimited) or a byte count.
fn check_mem(field: &str, v: Option<i64>) -> Result<Option<i64>, CgroupError> {
    match v {
        Some(x) if x < -1 => Err(invalid(
            field,
            x,
            "must be -1 (unlimited) or a number of bytes",
        )),
        other => Ok(other),
    }
}

/// Effective byte value of a v1 memory setting (-1 = unlimited).
fn eff(v: i64) -> u64 {
    if v < 0 {
        u64::MAX
    } else {
        v as u64
    }
}

/// The "type major:minor access" rule text of the v1 devices controller;
/// `None` for a FIFO rule (type "p"): the device cgroup does not gate FIFOs,
/// so runc accepts such a rule and skips it, and so do we.
pub(crate) fn device_rule_text(d: &LinuxDeviceCgroup) -> Result<Option<String>, CgroupError> {
    let typ = match d.typ().unwrap_or(LinuxDeviceType::A) {
        LinuxDeviceType::A => 'a',
        LinuxDeviceType::B => 'b',
        LinuxDeviceType::C | LinuxDeviceType::U => 'c',
        LinuxDeviceType::P => return Ok(None),
    };
    let num = |v: Option<i64>, field: &str| -> Result<String, CgroupError> {
        match v {
            None | Some(-1) => Ok("*".to_string()),
            Some(n) if (0..=i64::from(u32::MAX)).contains(&n) => Ok(n.to_string()),
            Some(n) => Err(invalid(field, n, "must be -1 (any) or a device number")),
        }
    };
    let access = d.access().clone().unwrap_or_default();
    if access.chars().any(|c| !matches!(c, 'r' | 'w' | 'm')) {
        return Err(invalid(
            "devices[].access",
            &access,
            "only the letters r, w and m are allowed",
        ));
    }
    let access = if access.is_empty() {
        "rwm".to_string()
    } else {
        access
    };
    Ok(Some(format!(
        "{typ} {}:{} {access}",
        num(d.major(), "devices[].major")?,
        num(d.minor(), "devices[].minor")?
    )))
}

impl V1 {
    pub(crate) fn resolve(
        hier: &[Hierarchy],
        spec: Option<&Path>,
        id: &str,
        parent_env: Option<&str>,
    ) -> Result<V1, CgroupError> {
        let mut dirs = Vec::new();
        for h in hier {
            let mut rel = relative_to_root(spec, id, &h.own, parent_env)?;
            // When only a sub-tree of the hierarchy is mounted, paths that
            // name that sub-tree are taken relative to the mount.
            if let Ok(root) = h.root.strip_prefix("/") {
                if !root.as_os_str().is_empty() {
                    if let Ok(rest) = rel.strip_prefix(root) {
                        rel = rest.to_path_buf();
                    }
                }
            }
            let name = h
                .mount
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            dirs.push(V1Dir {
                name,
                controllers: h.controllers.clone(),
                mount: h.mount.clone(),
                path: h.mount.join(rel),
            });
        }
        Ok(V1 { dirs })
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|d| d.controllers.iter().any(|c| c == controller))
            .map(|d| d.path.as_path())
    }

    fn need(&self, controller: &str, field: &str) -> Result<&Path, CgroupError> {
        self.dir(controller)
            .ok_or_else(|| missing(controller, field))
    }

    pub(crate) fn create(&self) -> Result<(), CgroupError> {
        for d in &self.dirs {
            util::mkdir_all(&d.path)?;
            if d.controllers.iter().any(|c| c == "cpuset") {
                init_cpuset(&d.mount, &d.path)?;
            }
        }
        Ok(())
    }

    pub(crate) fn apply(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        if let Some(u) = r.unified() {
            if !u.is_empty() {
                return Err(CgroupError::Unsupported(
                    "linux.resources.unified needs cgroup v2, but this host's controllers are on cgroup v1".into(),
                ));
            }
        }
        // Refusals that need no file system access come before any write.
        if let Some(m) = r.memory() {
            check_mem("memory.limit", m.limit())?;
            check_mem("memory.swap", m.swap())?;
            check_mem("memory.reservation", m.reservation())?;
            if let Some(sw) = m.swappiness().filter(|s| *s > 100) {
                return Err(invalid("memory.swappiness", sw, "must be 0..100"));
            }
        }
        for d in r.devices().iter().flatten() {
            device_rule_text(d)?;
        }
        self.apply_cpu(r)?;
        self.apply_memory(r)?;
        if let Some(p) = r.pids() {
            let dir = self.need("pids", "pids")?;
            let v = if p.limit() <= 0 {
                "max".to_string()
            } else {
                p.limit().to_string()
            };
            write(&dir.join("pids.max"), &v)?;
        }
        self.apply_blkio(r)?;
        if let Some(hp) = r.hugepage_limits() {
            if !hp.is_empty() {
                let dir = self.need("hugetlb", "hugepageLimits")?;
                for l in hp {
                    let f = dir.join(format!("hugetlb.{}.limit_in_bytes", l.page_size()));
                    if !f.exists() {
                        return Err(invalid(
                            "hugepageLimits[].pageSize",
                            l.page_size(),
                            &format!("{} does not exist", f.display()),
                        ));
                    }
                    write(&f, &l.limit().to_string())?;
                }
            }
        }
        if let Some(n) = r.network() {
            if let Some(id) = n.class_id() {
                let dir = self.need("net_cls", "network.classID")?;
                write(&dir.join("net_cls.classid"), &id.to_string())?;
            }
            if let Some(prios) = n.priorities() {
                if !prios.is_empty() {
                    let dir = self.need("net_prio", "network.priorities")?;
                    for p in prios {
                        write(
                            &dir.join("net_prio.ifpriomap"),
                            &format!("{} {}", p.name(), p.priority()),
                        )?;
                    }
                }
            }
        }
        if let Some(rdma) = r.rdma() {
            if !rdma.is_empty() {
                let dir = self.need("rdma", "rdma")?;
                for (dev, lim) in rdma {
                    write(&dir.join("rdma.max"), &super::v2::rdma_line(dev, lim))?;
                }
            }
        }
        if let Some(devs) = r.devices() {
            let dir = self.need("devices", "devices")?;
            // Check every rule before touching the cgroup.
            let rules = devs
                .iter()
                .filter_map(|d| {
                    device_rule_text(d)
                        .map(|t| t.map(|t| (d.allow(), t)))
                        .transpose()
                })
                .collect::<Result<Vec<_>, CgroupError>>()?;
            write(&dir.join("devices.deny"), "a")?;
            for (allow, text) in rules {
                let f = if allow {
                    "devices.allow"
                } else {
                    "devices.deny"
                };
                write(&dir.join(f), &text)?;
            }
        }
        Ok(())
    }

    fn apply_cpu(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        let Some(c) = r.cpu() else { return Ok(()) };
        let any_cpu = c.shares().is_some()
            || c.quota().is_some()
            || c.period().is_some()
            || c.realtime_runtime().is_some()
            || c.realtime_period().is_some()
            || c.idle().is_some()
            || c.burst().is_some();
        if any_cpu {
            let dir = self.need("cpu", "cpu")?;
            if let Some(s) = c.shares() {
                if s != 0 {
                    write(&dir.join("cpu.shares"), &s.to_string())?;
                }
            }
            if let Some(p) = c.period() {
                if p != 0 {
                    write(&dir.join("cpu.cfs_period_us"), &p.to_string())?;
                }
            }
            if let Some(q) = c.quota() {
                if q != 0 {
                    let v = if q < 0 { -1 } else { q };
                    write(&dir.join("cpu.cfs_quota_us"), &v.to_string())?;
                }
            }
            if let Some(b) = c.burst() {
                write(&dir.join("cpu.cfs_burst_us"), &b.to_string())?;
            }
            if let Some(p) = c.realtime_period() {
                if p != 0 {
                    write(&dir.join("cpu.rt_period_us"), &p.to_string())?;
                }
            }
            if let Some(rt) = c.realtime_runtime() {
                if rt != 0 {
                    write(&dir.join("cpu.rt_runtime_us"), &rt.to_string())?;
                }
            }
            if let Some(i) = c.idle() {
                let f = dir.join("cpu.idle");
                if !f.exists() {
                    return Err(invalid("cpu.idle", i, "this kernel has no cpu.idle"));
                }
                write(&f, &i.to_string())?;
            }
        }
        let cpus = c.cpus().as_deref().filter(|s| !s.is_empty());
        let mems = c.mems().as_deref().filter(|s| !s.is_empty());
        if cpus.is_some() || mems.is_some() {
            let dir = self.need("cpuset", "cpu.cpus/mems")?;
            if let Some(v) = cpus {
                write(&dir.join("cpuset.cpus"), v)?;
            }
            if let Some(v) = mems {
                write(&dir.join("cpuset.mems"), v)?;
            }
        }
        Ok(())
    }

    fn apply_memory(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        let Some(m) = r.memory() else { return Ok(()) };
        let limit = check_mem("memory.limit", m.limit())?;
        let swap = check_mem("memory.swap", m.swap())?;
        let reservation = check_mem("memory.reservation", m.reservation())?;
        let any = limit.is_some()
            || swap.is_some()
            || reservation.is_some()
            || m.swappiness().is_some()
            || m.disable_oom_killer() == Some(true)
            || m.kernel().is_some()
            || m.kernel_tcp().is_some();
        if !any {
            return Ok(());
        }
        let dir = self.need("memory", "memory")?;
        let limit_f = dir.join("memory.limit_in_bytes");
        let memsw_f = dir.join("memory.memsw.limit_in_bytes");
        let has_memsw = memsw_f.exists();
        // An unlimited memory limit with no swap setting also lifts the
        // memory+swap limit, or the kernel would refuse memsw < limit.
        let swap = match (limit, swap) {
            (Some(-1), None) if has_memsw => Some(-1),
            (_, s) => s,
        };
        let swap = match swap {
            Some(s) if !has_memsw => {
                if s != -1 && Some(s) != limit {
                    return Err(CgroupError::Unsupported(format!(
                        "linux.resources.memory.swap {s} cannot be applied: {} does not exist (swap accounting is off; boot with swapaccount=1)",
                        memsw_f.display()
                    )));
                }
                None
            }
            other => other,
        };
        if let (Some(l), Some(s)) = (limit, swap) {
            if s != -1 && l == -1 {
                return Err(invalid(
                    "memory.swap",
                    s,
                    "memory+swap cannot be limited while memory.limit is -1 (unlimited)",
                ));
            }
            if s != -1 && s < l {
                return Err(invalid(
                    "memory.swap",
                    s,
                    &format!("memory+swap must be at least the memory limit {l}"),
                ));
            }
        }
        match (limit, swap) {
            (Some(l), Some(s)) => {
                // memory.limit_in_bytes may never exceed memsw.limit_in_bytes:
                // raise memsw first when the new memsw covers the current limit.
                let cur_limit = util::parse_u64(&limit_f, &read(&limit_f)?)?;
                if eff(s) >= cur_limit {
                    write(&memsw_f, &s.to_string())?;
                    write(&limit_f, &l.to_string())?;
                } else {
                    write(&limit_f, &l.to_string())?;
                    write(&memsw_f, &s.to_string())?;
                }
            }
            (Some(l), None) => write(&limit_f, &l.to_string())?,
            (None, Some(s)) => write(&memsw_f, &s.to_string())?,
            (None, None) => {}
        }
        if let Some(v) = reservation {
            write(&dir.join("memory.soft_limit_in_bytes"), &v.to_string())?;
        }
        if let Some(sw) = m.swappiness() {
            if sw > 100 {
                return Err(invalid("memory.swappiness", sw, "must be 0..100"));
            }
            write(&dir.join("memory.swappiness"), &sw.to_string())?;
        }
        if m.disable_oom_killer() == Some(true) {
            write(&dir.join("memory.oom_control"), "1")?;
        }
        for (field, file, v) in [
            ("memory.kernel", "memory.kmem.limit_in_bytes", m.kernel()),
            (
                "memory.kernelTCP",
                "memory.kmem.tcp.limit_in_bytes",
                m.kernel_tcp(),
            ),
        ] {
            let Some(v) = check_mem(field, v)? else {
                continue;
            };
            let f = dir.join(file);
            if !f.exists() {
                continue;
            }
            match write(&f, &v.to_string()) {
                // Newer kernels keep the kmem files but refuse limits on them.
                Err(CgroupError::Write { source, .. })
                    if source.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                other => other?,
            }
        }
        Ok(())
    }

    fn apply_blkio(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        let Some(b) = r.block_io() else { return Ok(()) };
        let empty = |v: &Option<Vec<LinuxThrottleDevice>>| v.as_ref().map_or(0, Vec::len) == 0;
        let any = b.weight().is_some()
            || b.leaf_weight().is_some()
            || b.weight_device().as_ref().is_some_and(|v| !v.is_empty())
            || !empty(b.throttle_read_bps_device())
            || !empty(b.throttle_write_bps_device())
            || !empty(b.throttle_read_iops_device())
            || !empty(b.throttle_write_iops_device());
        if !any {
            return Ok(());
        }
        let dir = self.need("blkio", "blockIO")?;
        // CFQ-era kernels have blkio.weight; BFQ kernels blkio.bfq.weight.
        let pick = |a: &str, b: &str| -> Option<PathBuf> {
            [a, b].iter().map(|f| dir.join(f)).find(|p| p.exists())
        };
        let unsupported = |field: &str, file: &str| {
            CgroupError::Unsupported(format!(
                "linux.resources.blockIO.{field} is not supported by this kernel: {} has no {file}",
                dir.display()
            ))
        };
        if let Some(w) = b.weight() {
            let f = pick("blkio.weight", "blkio.bfq.weight")
                .ok_or_else(|| unsupported("weight", "blkio.weight or blkio.bfq.weight"))?;
            write(&f, &w.to_string())?;
        }
        if let Some(w) = b.leaf_weight() {
            let f = pick("blkio.leaf_weight", "blkio.leaf_weight")
                .ok_or_else(|| unsupported("leafWeight", "blkio.leaf_weight"))?;
            write(&f, &w.to_string())?;
        }
        for wd in b.weight_device().iter().flatten() {
            if let Some(w) = wd.weight() {
                let f = pick("blkio.weight_device", "blkio.bfq.weight_device")
                    .ok_or_else(|| unsupported("weightDevice", "blkio.weight_device"))?;
                write(&f, &format!("{}:{} {}", wd.major(), wd.minor(), w))?;
            }
            if let Some(w) = wd.leaf_weight() {
                let f = pick("blkio.leaf_weight_device", "blkio.leaf_weight_device").ok_or_else(
                    || unsupported("weightDevice.leafWeight", "blkio.leaf_weight_device"),
                )?;
                write(&f, &format!("{}:{} {}", wd.major(), wd.minor(), w))?;
            }
        }
        for (list, file) in [
            (
                b.throttle_read_bps_device(),
                "blkio.throttle.read_bps_device",
            ),
            (
                b.throttle_write_bps_device(),
                "blkio.throttle.write_bps_device",
            ),
            (
                b.throttle_read_iops_device(),
                "blkio.throttle.read_iops_device",
            ),
            (
                b.throttle_write_iops_device(),
                "blkio.throttle.write_iops_device",
            ),
        ] {
            for t in list.iter().flatten() {
                write(
                    &dir.join(file),
                    &format!("{}:{} {}", t.major(), t.minor(), t.rate()),
                )?;
            }
        }
        Ok(())
    }

    pub(crate) fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        for d in &self.dirs {
            write(&d.path.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn freezer_state(&self) -> Result<(PathBuf, String), CgroupError> {
        let dir = self.need("freezer", "freezer (pause)")?;
        let f = dir.join("freezer.state");
        let s = read(&f)?;
        Ok((f, s.trim().to_string()))
    }

    pub(crate) fn freeze(&self) -> Result<(), CgroupError> {
        let (f, _) = self.freezer_state()?;
        write(&f, "FROZEN")?;
        // The v1 freezer can sit in FREEZING while a task is in an
        // uninterruptible sleep; writing FROZEN again retries the freeze.
        let done = util::wait_for(Duration::from_secs(10), || {
            let s = read(&f)?;
            if s.trim() == "FROZEN" {
                return Ok(Some(()));
            }
            write(&f, "FROZEN")?;
            Ok(None)
        })?;
        if done.is_none() {
            let state = read(&f)?.trim().to_string();
            // Do not leave the zone half frozen.
            write(&f, "THAWED")?;
            return Err(CgroupError::FreezeTimeout {
                path: f.parent().map(Path::to_path_buf).unwrap_or_default(),
                state,
            });
        }
        Ok(())
    }

    pub(crate) fn thaw(&self) -> Result<(), CgroupError> {
        let (f, _) = self.freezer_state()?;
        write(&f, "THAWED")?;
        let done = util::wait_for(Duration::from_secs(10), || {
            Ok((read(&f)?.trim() == "THAWED").then_some(()))
        })?;
        if done.is_none() {
            return Err(CgroupError::Unsupported(format!(
                "{} did not reach THAWED",
                f.display()
            )));
        }
        Ok(())
    }

    pub(crate) fn is_frozen(&self) -> Result<bool, CgroupError> {
        Ok(self.freezer_state()?.1 == "FROZEN")
    }

    pub(crate) fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let dir = ["freezer", "pids", "memory", "cpu", "devices"]
            .iter()
            .find_map(|c| self.dir(c))
            .or_else(|| self.dirs.first().map(|d| d.path.as_path()));
        let mut v = Vec::new();
        if let Some(d) = dir {
            util::procs_recursive(d, &mut v)?;
        }
        Ok(v)
    }

    pub(crate) fn oom_kill_count(&self) -> Result<u64, CgroupError> {
        let dir = self.need("memory", "memory")?;
        Ok(read_flat_keyed(&dir.join("memory.oom_control"))?
            .get("oom_kill")
            .copied()
            .unwrap_or(0))
    }

    pub(crate) fn stats(&self) -> Result<Stats, CgroupError> {
        let mut st = Stats::default();
        if let Some(d) = self.dir("cpuacct") {
            let u = &mut st.cpu.usage;
            u.total = read_u64_opt(&d.join("cpuacct.usage"))?.unwrap_or(0);
            u.percpu = read_list(&d.join("cpuacct.usage_percpu"))?;
            u.percpu_kernel = read_list(&d.join("cpuacct.usage_percpu_sys"))?;
            u.percpu_user = read_list(&d.join("cpuacct.usage_percpu_user"))?;
            match (
                read_u64_opt(&d.join("cpuacct.usage_user"))?,
                read_u64_opt(&d.join("cpuacct.usage_sys"))?,
            ) {
                (Some(user), Some(sys)) => {
                    u.user = user;
                    u.kernel = sys;
                }
                _ => {
                    // cpuacct.stat counts clock ticks.
                    let m = read_flat_keyed(&d.join("cpuacct.stat"))?;
                    let hz = match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
                        Ok(Some(hz)) if hz > 0 => hz as u64,
                        _ => 100,
                    };
                    let ns = |t: u64| t.saturating_mul(1_000_000_000) / hz;
                    u.user = ns(m.get("user").copied().unwrap_or(0));
                    u.kernel = ns(m.get("system").copied().unwrap_or(0));
                }
            }
        }
        if let Some(d) = self.dir("cpu") {
            let m = read_flat_keyed(&d.join("cpu.stat"))?;
            let t = &mut st.cpu.throttling;
            t.periods = m.get("nr_periods").copied().unwrap_or(0);
            t.throttled_periods = m.get("nr_throttled").copied().unwrap_or(0);
            t.throttled_time = m.get("throttled_time").copied().unwrap_or(0);
        }
        if let Some(d) = self.dir("memory") {
            let mem = &mut st.memory;
            mem.raw = read_flat_keyed(&d.join("memory.stat"))?;
            mem.cache = mem
                .raw
                .get("total_cache")
                .or_else(|| mem.raw.get("cache"))
                .copied()
                .unwrap_or(0);
            mem.usage = mem_entry(d, "memory")?;
            mem.swap = mem_entry(d, "memory.memsw")?;
            mem.kernel = mem_entry(d, "memory.kmem")?;
            mem.kernel_tcp = mem_entry(d, "memory.kmem.tcp")?;
            mem.use_hierarchy = read_u64_opt(&d.join("memory.use_hierarchy"))? == Some(1);
        }
        if let Some(d) = self.dir("pids") {
            st.pids.current = read_u64_opt(&d.join("pids.current"))?.unwrap_or(0);
            st.pids.limit = match read_u64_opt(&d.join("pids.max"))? {
                Some(u64::MAX) | None => 0,
                Some(n) => n,
            };
        }
        if let Some(d) = self.dir("blkio") {
            let b = &mut st.blkio;
            // Scheduler statistics (CFQ "blkio.", BFQ "blkio.bfq.") when present,
            // otherwise the throttle layer's, which every kernel keeps.
            let sched = ["blkio.", "blkio.bfq."]
                .into_iter()
                .find(|p| d.join(format!("{p}io_service_bytes_recursive")).exists());
            let prefixes: Vec<&str> = sched.into_iter().chain(["blkio.throttle."]).collect();
            for p in prefixes {
                if b.io_service_bytes_recursive.is_empty() {
                    b.io_service_bytes_recursive =
                        read_blkio(&d.join(format!("{p}io_service_bytes_recursive")))?;
                }
                if b.io_serviced_recursive.is_empty() {
                    b.io_serviced_recursive =
                        read_blkio(&d.join(format!("{p}io_serviced_recursive")))?;
                }
            }
            if let Some(p) = sched {
                b.io_queued_recursive = read_blkio(&d.join(format!("{p}io_queued_recursive")))?;
                b.io_service_time_recursive =
                    read_blkio(&d.join(format!("{p}io_service_time_recursive")))?;
                b.io_wait_time_recursive =
                    read_blkio(&d.join(format!("{p}io_wait_time_recursive")))?;
                b.io_merged_recursive = read_blkio(&d.join(format!("{p}io_merged_recursive")))?;
                b.io_time_recursive = read_blkio(&d.join(format!("{p}time_recursive")))?;
                b.sectors_recursive = read_blkio(&d.join(format!("{p}sectors_recursive")))?;
            }
        }
        if let Some(d) = self.dir("hugetlb") {
            for size in hugetlb_sizes(d, ".usage_in_bytes")? {
                let f = |s: &str| d.join(format!("hugetlb.{size}.{s}"));
                st.hugetlb.insert(
                    size.clone(),
                    HugetlbStats {
                        usage: read_u64_opt(&f("usage_in_bytes"))?.unwrap_or(0),
                        max: read_u64_opt(&f("max_usage_in_bytes"))?.unwrap_or(0),
                        failcnt: read_u64_opt(&f("failcnt"))?.unwrap_or(0),
                    },
                );
            }
        }
        Ok(st)
    }

    pub(crate) fn destroy(&self) -> Result<(), CgroupError> {
        let mut first_err = None;
        for d in &self.dirs {
            if d.path == d.mount {
                continue;
            }
            if let Err(e) = util::remove_tree(&d.path) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Page sizes that have a `hugetlb.<size><suffix>` file in `dir`.
pub(crate) fn hugetlb_sizes(dir: &Path, suffix: &str) -> Result<Vec<String>, CgroupError> {
    let Some(rd) = super::util::read_dir_if_exists(dir)? else {
        return Ok(Vec::new());
    };
    let mut v = Vec::new();
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        if let Some(size) = name
            .strip_prefix("hugetlb.")
            .and_then(|r| r.strip_suffix(suffix))
        {
            if !size.contains('.') {
                v.push(size.to_string());
            }
        }
    }
    v.sort();
    Ok(v)
}

/// A whitespace-separated list of numbers; empty if the file is missing.
fn read_list(path: &Path) -> Result<Vec<u64>, CgroupError> {
    match read_opt(path)? {
        Some(s) => s
            .split_whitespace()
            .map(|t| util::parse_u64(path, t))
            .collect(),
        None => Ok(Vec::new()),
    }
}

fn mem_entry(dir: &Path, prefix: &str) -> Result<MemoryEntry, CgroupError> {
    let f = |s: &str| dir.join(format!("{prefix}.{s}"));
    Ok(MemoryEntry {
        usage: read_u64_opt(&f("usage_in_bytes"))?.unwrap_or(0),
        max: read_u64_opt(&f("max_usage_in_bytes"))?.unwrap_or(0),
        limit: read_u64_opt(&f("limit_in_bytes"))?.unwrap_or(0),
        failcnt: read_u64_opt(&f("failcnt"))?.unwrap_or(0),
    })
}

/// Parses blkio stat files: "MAJ:MIN Op value" lines and a "Total value" line.
fn read_blkio(path: &Path) -> Result<Vec<BlkioEntry>, CgroupError> {
    let Some(text) = read_opt(path)? else {
        return Ok(Vec::new());
    };
    let mut v = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dev, op, val) = match f.as_slice() {
            [dev, op, val] => (*dev, *op, *val),
            [dev, val] if dev.contains(':') => (*dev, "", *val),
            _ => continue, // "Total N" and blank lines
        };
        let (maj, min) = dev
            .split_once(':')
            .ok_or_else(|| parse_err(path, line, "expected MAJ:MIN"))?;
        v.push(BlkioEntry {
            major: util::parse_u64(path, maj)?,
            minor: util::parse_u64(path, min)?,
            op: op.to_string(),
            value: util::parse_u64(path, val)?,
        });
    }
    Ok(v)
}

/// A new cpuset cgroup starts with empty cpus/mems and cannot take tasks;
/// fill every empty level from the mount down with its parent's values.
fn init_cpuset(mount: &Path, path: &Path) -> Result<(), CgroupError> {
    let Ok(rel) = path.strip_prefix(mount) else {
        return Ok(());
    };
    let mut parent = mount.to_path_buf();
    for comp in rel.components() {
        let child = parent.join(comp);
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let cf = child.join(f);
            if read(&cf)?.trim().is_empty() {
                let pv = read(&parent.join(f))?;
                write(&cf, pv.trim())?;
            }
        }
        parent = child;
    }
    Ok(())
}
