//! cgroup v2 manager: one directory in the unified hierarchy, controllers
//! enabled top-down through `cgroup.subtree_control`, limits in the v2 file
//! names (memory.max, cpu.max, io.max...), freezing through `cgroup.freeze`,
//! device rules through an eBPF program (see `devices_bpf`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{LinuxRdma, LinuxResources};
use serde::{Deserialize, Serialize};

use super::stats::{BlkioEntry, HugetlbStats, Stats};
use super::util::{self, parse_err, read, read_flat_keyed, read_opt, read_u64_opt, write};
use super::{devices_bpf, CgroupError};

/// Controllers a zone may need; enabled in every ancestor where available.
const WANTED: &[&str] = &[
    "cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc",
];

/// The zone's directory in the unified hierarchy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct V2Dir {
    /// cgroup2 mount point, e.g. `/sys/fs/cgroup`.
    pub mount: PathBuf,
    /// The zone's cgroup directory on the host.
    pub path: PathBuf,
}

#[derive(Clone, Debug)]
pub(crate) struct V2 {
    pub dir: V2Dir,
}

fn invalid(field: &str, value: impl ToString, reason: &str) -> CgroupError {
    CgroupError::InvalidResource {
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// OCI cpu.shares (2..262144) to cgroup v2 cpu.weight (1..10000).
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// blkio weight (10..1000) to io.weight (1..10000).
pub(crate) fn blkio_to_io_weight(w: u16) -> u64 {
    let w = u64::from(w.clamp(10, 1000));
    1 + ((w - 10) * 9999) / 990
}

/// OCI memory.swap is memory+swap; v2 memory.swap.max is swap alone.
/// Returns the value to write, or `None` to leave the file alone.
pub(crate) fn swap_max(
    limit: Option<i64>,
    swap: Option<i64>,
) -> Result<Option<String>, CgroupError> {
    match (limit, swap) {
        // Unlimited memory and no swap setting: unlimited swap too.
        (Some(-1), None) => Ok(Some("max".into())),
        (_, None) | (_, Some(0)) => Ok(None),
        (_, Some(-1)) => Ok(Some("max".into())),
        (Some(l), Some(s)) if l > 0 => {
            if s < l {
                Err(invalid(
                    "memory.swap",
                    s,
                    &format!("memory+swap must be at least the memory limit {l}"),
                ))
            } else {
                Ok(Some((s - l).to_string()))
            }
        }
        (_, Some(s)) => Err(invalid(
            "memory.swap",
            s,
            "a memory+swap limit needs a memory limit (linux.resources.memory.limit)",
        )),
    }
}

fn mem_value(field: &str, v: i64) -> Result<String, CgroupError> {
    match v {
        -1 => Ok("max".into()),
        x if x < -1 => Err(invalid(
            field,
            x,
            "must be -1 (unlimited) or a number of bytes",
        )),
        x => Ok(x.to_string()),
    }
}

/// An `rdma.max` line: "<device> hca_handle=N hca_object=N".
pub(crate) fn rdma_line(dev: &str, lim: &LinuxRdma) -> String {
    let mut s = dev.to_string();
    if let Some(h) = lim.hca_handles() {
        s.push_str(&format!(" hca_handle={h}"));
    }
    if let Some(o) = lim.hca_objects() {
        s.push_str(&format!(" hca_object={o}"));
    }
    s
}

impl V2 {
    pub(crate) fn new(mount: &Path, rel: &Path) -> V2 {
        V2 {
            dir: V2Dir {
                mount: mount.to_path_buf(),
                path: mount.join(rel),
            },
        }
    }

    fn path(&self) -> &Path {
        &self.dir.path
    }

    /// The control file `name`, which the controller `ctrl` provides.
    fn file(&self, ctrl: &str, name: &str, field: &str) -> Result<PathBuf, CgroupError> {
        let p = self.path().join(name);
        if p.exists() {
            Ok(p)
        } else {
            Err(CgroupError::ControllerMissing {
                controller: format!(
                    "{ctrl} (no {}: the controller is not in cgroup.controllers or could not be enabled in the parent's cgroup.subtree_control)",
                    p.display()
                ),
                field: field.to_string(),
            })
        }
    }

    pub(crate) fn create(&self) -> Result<(), CgroupError> {
        let rel = self
            .path()
            .strip_prefix(&self.dir.mount)
            .map_err(|_| CgroupError::InvalidPath {
                path: self.path().display().to_string(),
                reason: format!("not below the cgroup2 mount {}", self.dir.mount.display()),
            })?
            .to_path_buf();
        let mut level = self.dir.mount.clone();
        for comp in rel.components() {
            util::mkdir_all(&level)?;
            self.enable_controllers(&level);
            level.push(comp);
        }
        util::mkdir_all(&level)
    }

    /// Enables every wanted controller available at `dir` for its children.
    /// Failures are not fatal here (a cgroup with processes of its own
    /// cannot delegate, for example); `apply` reports a missing controller
    /// when a resource actually needs it.
    fn enable_controllers(&self, dir: &Path) {
        let Ok(avail) = read(&dir.join("cgroup.controllers")) else {
            return;
        };
        let enabled = read(&dir.join("cgroup.subtree_control")).unwrap_or_default();
        for c in avail.split_whitespace() {
            if WANTED.contains(&c) && !enabled.split_whitespace().any(|e| e == c) {
                let _ = write(&dir.join("cgroup.subtree_control"), &format!("+{c}"));
            }
        }
    }

    pub(crate) fn apply(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        // Refusals that need no file system access come before any write.
        if let Some(n) = r.network() {
            if n.class_id().is_some() || n.priorities().as_ref().is_some_and(|p| !p.is_empty()) {
                return Err(CgroupError::Unsupported(
                    "linux.resources.network (net_cls/net_prio) does not exist on cgroup v2".into(),
                ));
            }
        }
        if let Some(m) = r.memory() {
            swap_max(m.limit(), m.swap())?;
            for (field, v) in [
                ("memory.limit", m.limit()),
                ("memory.reservation", m.reservation()),
            ] {
                if let Some(v) = v {
                    mem_value(field, v)?;
                }
            }
        }
        self.apply_cpu(r)?;
        self.apply_memory(r)?;
        if let Some(p) = r.pids() {
            let v = if p.limit() <= 0 {
                "max".to_string()
            } else {
                p.limit().to_string()
            };
            write(&self.file("pids", "pids.max", "pids")?, &v)?;
        }
        self.apply_io(r)?;
        for l in r.hugepage_limits().iter().flatten() {
            let name = format!("hugetlb.{}.max", l.page_size());
            write(
                &self.file("hugetlb", &name, "hugepageLimits")?,
                &l.limit().to_string(),
            )?;
        }
        for (dev, lim) in r.rdma().iter().flatten() {
            write(
                &self.file("rdma", "rdma.max", "rdma")?,
                &rdma_line(dev, lim),
            )?;
        }
        if let Some(u) = r.unified() {
            let mut keys: Vec<&String> = u.keys().collect();
            keys.sort();
            for k in keys {
                if k.contains('/') || k == "." || k == ".." || k.is_empty() {
                    return Err(invalid("unified", k, "a key must be a cgroup file name"));
                }
                let f = self.path().join(k);
                if !f.exists() {
                    return Err(invalid(
                        "unified",
                        k,
                        &format!("{} does not exist (controller not enabled?)", f.display()),
                    ));
                }
                write(&f, &u[k])?;
            }
        }
        if let Some(devs) = r.devices() {
            devices_bpf::apply(self.path(), devs)?;
        }
        Ok(())
    }

    fn apply_cpu(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        let Some(c) = r.cpu() else { return Ok(()) };
        if c.realtime_runtime().is_some_and(|v| v != 0)
            || c.realtime_period().is_some_and(|v| v != 0)
        {
            return Err(CgroupError::Unsupported(
                "linux.resources.cpu.realtimeRuntime/realtimePeriod are not supported on cgroup v2"
                    .into(),
            ));
        }
        if let Some(s) = c.shares() {
            if s != 0 {
                let w = shares_to_weight(s);
                write(
                    &self.file("cpu", "cpu.weight", "cpu.shares")?,
                    &w.to_string(),
                )?;
            }
        }
        let quota = c.quota().filter(|q| *q != 0);
        let period = c.period().filter(|p| *p != 0);
        if quota.is_some() || period.is_some() {
            let q = match quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_string(),
            };
            let v = match period {
                Some(p) => format!("{q} {p}"),
                None => q,
            };
            write(&self.file("cpu", "cpu.max", "cpu.quota")?, &v)?;
        }
        if let Some(b) = c.burst() {
            write(
                &self.file("cpu", "cpu.max.burst", "cpu.burst")?,
                &b.to_string(),
            )?;
        }
        if let Some(i) = c.idle() {
            write(&self.file("cpu", "cpu.idle", "cpu.idle")?, &i.to_string())?;
        }
        if let Some(v) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
            write(&self.file("cpuset", "cpuset.cpus", "cpu.cpus")?, v)?;
        }
        if let Some(v) = c.mems().as_deref().filter(|s| !s.is_empty()) {
            write(&self.file("cpuset", "cpuset.mems", "cpu.mems")?, v)?;
        }
        Ok(())
    }

    fn apply_memory(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        let Some(m) = r.memory() else { return Ok(()) };
        // swappiness, disableOOMKiller, kernel and kernelTCP have no v2
        // equivalent; like runc, they are not applied on v2.
        let swap = swap_max(m.limit(), m.swap())?;
        if let Some(l) = m.limit() {
            let v = mem_value("memory.limit", l)?;
            write(&self.file("memory", "memory.max", "memory.limit")?, &v)?;
        }
        if let Some(res) = m.reservation() {
            let v = mem_value("memory.reservation", res)?;
            write(
                &self.file("memory", "memory.low", "memory.reservation")?,
                &v,
            )?;
        }
        if let Some(s) = swap {
            let f = self.path().join("memory.swap.max");
            if f.exists() {
                write(&f, &s)?;
            } else if s != "max" {
                return Err(CgroupError::Unsupported(format!(
                    "linux.resources.memory.swap cannot be applied: {} does not exist (no swap accounting)",
                    f.display()
                )));
            }
        }
        Ok(())
    }

    fn apply_io(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        let Some(b) = r.block_io() else { return Ok(()) };
        // BFQ's io.bfq.weight takes blkio-range weights; io.weight its own range.
        let bfq = self.path().join("io.bfq.weight");
        if let Some(w) = b.weight() {
            if bfq.exists() {
                write(&bfq, &w.to_string())?;
            } else {
                let f = self.file("io", "io.weight", "blockIO.weight")?;
                write(&f, &format!("default {}", blkio_to_io_weight(w)))?;
            }
        }
        if b.leaf_weight().is_some()
            || b.weight_device()
                .iter()
                .flatten()
                .any(|d| d.leaf_weight().is_some())
        {
            return Err(CgroupError::Unsupported(
                "linux.resources.blockIO.leafWeight is not supported on cgroup v2".into(),
            ));
        }
        for wd in b.weight_device().iter().flatten() {
            if let Some(w) = wd.weight() {
                if bfq.exists() {
                    write(&bfq, &format!("{}:{} {}", wd.major(), wd.minor(), w))?;
                } else {
                    let f = self.file("io", "io.weight", "blockIO.weightDevice")?;
                    let v = format!("{}:{} {}", wd.major(), wd.minor(), blkio_to_io_weight(w));
                    write(&f, &v)?;
                }
            }
        }
        for (list, key) in [
            (b.throttle_read_bps_device(), "rbps"),
            (b.throttle_write_bps_device(), "wbps"),
            (b.throttle_read_iops_device(), "riops"),
            (b.throttle_write_iops_device(), "wiops"),
        ] {
            for t in list.iter().flatten() {
                let f = self.file("io", "io.max", "blockIO.throttle*")?;
                let v = format!("{}:{} {key}={}", t.major(), t.minor(), t.rate());
                write(&f, &v)?;
            }
        }
        Ok(())
    }

    pub(crate) fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        write(&self.path().join("cgroup.procs"), &pid.to_string())
    }

    fn frozen_flag(&self) -> Result<Option<u64>, CgroupError> {
        Ok(read_flat_keyed(&self.path().join("cgroup.events"))?
            .get("frozen")
            .copied())
    }

    fn set_frozen(&self, on: bool) -> Result<(), CgroupError> {
        let f = self.path().join("cgroup.freeze");
        if !f.exists() {
            return Err(CgroupError::Unsupported(format!(
                "cannot {} {}: no cgroup.freeze (kernel older than 5.2?)",
                if on { "freeze" } else { "thaw" },
                self.path().display()
            )));
        }
        write(&f, if on { "1" } else { "0" })?;
        let want = u64::from(on);
        let done = util::wait_for(Duration::from_secs(10), || {
            Ok((self.frozen_flag()? == Some(want)).then_some(()))
        })?;
        if done.is_none() {
            if on {
                write(&f, "0")?;
            }
            return Err(CgroupError::FreezeTimeout {
                path: self.path().to_path_buf(),
                state: format!("frozen {}", self.frozen_flag()?.unwrap_or(0)),
            });
        }
        Ok(())
    }

    pub(crate) fn freeze(&self) -> Result<(), CgroupError> {
        self.set_frozen(true)
    }

    pub(crate) fn thaw(&self) -> Result<(), CgroupError> {
        self.set_frozen(false)
    }

    pub(crate) fn is_frozen(&self) -> Result<bool, CgroupError> {
        let events = self.path().join("cgroup.events");
        match self.frozen_flag()? {
            Some(v) => Ok(v == 1),
            None if events.exists() => Ok(false),
            None => Err(CgroupError::Read {
                path: events,
                source: std::io::Error::from_raw_os_error(libc::ENOENT),
            }),
        }
    }

    pub(crate) fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut v = Vec::new();
        util::procs_recursive(self.path(), &mut v)?;
        Ok(v)
    }

    pub(crate) fn oom_kill_count(&self) -> Result<u64, CgroupError> {
        Ok(read_flat_keyed(&self.path().join("memory.events"))?
            .get("oom_kill")
            .copied()
            .unwrap_or(0))
    }

    pub(crate) fn stats(&self) -> Result<Stats, CgroupError> {
        let d = self.path();
        let mut st = Stats::default();
        let cpu = read_flat_keyed(&d.join("cpu.stat"))?;
        let us = |k: &str| cpu.get(k).copied().unwrap_or(0).saturating_mul(1000);
        st.cpu.usage.total = us("usage_usec");
        st.cpu.usage.user = us("user_usec");
        st.cpu.usage.kernel = us("system_usec");
        st.cpu.throttling.periods = cpu.get("nr_periods").copied().unwrap_or(0);
        st.cpu.throttling.throttled_periods = cpu.get("nr_throttled").copied().unwrap_or(0);
        st.cpu.throttling.throttled_time = us("throttled_usec");

        if let Some(cur) = read_u64_opt(&d.join("memory.current"))? {
            let mem = &mut st.memory;
            mem.raw = read_flat_keyed(&d.join("memory.stat"))?;
            mem.cache = mem.raw.get("file").copied().unwrap_or(0);
            let events = read_flat_keyed(&d.join("memory.events"))?;
            mem.usage.usage = cur;
            mem.usage.limit = read_u64_opt(&d.join("memory.max"))?.unwrap_or(u64::MAX);
            mem.usage.max = read_u64_opt(&d.join("memory.peak"))?.unwrap_or(0);
            mem.usage.failcnt = events.get("max").copied().unwrap_or(0);
            if let Some(sw) = read_u64_opt(&d.join("memory.swap.current"))? {
                // Reported like v1's memsw: memory plus swap.
                mem.swap.usage = sw.saturating_add(cur);
                let swmax = read_u64_opt(&d.join("memory.swap.max"))?.unwrap_or(u64::MAX);
                mem.swap.limit = swmax.saturating_add(mem.usage.limit);
            }
        }
        if let Some(cur) = read_u64_opt(&d.join("pids.current"))? {
            st.pids.current = cur;
            st.pids.limit = match read_u64_opt(&d.join("pids.max"))? {
                Some(u64::MAX) | None => 0,
                Some(n) => n,
            };
        }
        let io_f = d.join("io.stat");
        if let Some(text) = read_opt(&io_f)? {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let mut it = line.split_whitespace();
                let dev = it.next().unwrap_or_default();
                let (maj, min) = dev
                    .split_once(':')
                    .ok_or_else(|| parse_err(&io_f, line, "expected MAJ:MIN"))?;
                let major = util::parse_u64(&io_f, maj)?;
                let minor = util::parse_u64(&io_f, min)?;
                for kv in it {
                    let Some((k, v)) = kv.split_once('=') else {
                        continue;
                    };
                    let value = util::parse_u64(&io_f, v)?;
                    let (list, op) = match k {
                        "rbytes" => (&mut st.blkio.io_service_bytes_recursive, "Read"),
                        "wbytes" => (&mut st.blkio.io_service_bytes_recursive, "Write"),
                        "rios" => (&mut st.blkio.io_serviced_recursive, "Read"),
                        "wios" => (&mut st.blkio.io_serviced_recursive, "Write"),
                        _ => continue,
                    };
                    list.push(BlkioEntry {
                        major,
                        minor,
                        op: op.to_string(),
                        value,
                    });
                }
            }
        }
        for size in super::v1::hugetlb_sizes(d, ".current")? {
            let f = |s: &str| d.join(format!("hugetlb.{size}.{s}"));
            let events = read_flat_keyed(&f("events"))?;
            st.hugetlb.insert(
                size.clone(),
                HugetlbStats {
                    usage: read_u64_opt(&f("current"))?.unwrap_or(0),
                    max: 0,
                    failcnt: events.get("max").copied().unwrap_or(0),
                },
            );
        }
        Ok(st)
    }

    pub(crate) fn destroy(&self) -> Result<(), CgroupError> {
        if self.dir.path == self.dir.mount || self.dir.path.as_os_str().is_empty() {
            return Ok(());
        }
        util::remove_tree(self.path())
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(1000), 10_000);
        assert_eq!(
            swap_max(Some(100), Some(300)).expect("ok"),
            Some("200".into())
        );
        assert_eq!(
            swap_max(Some(100), Some(-1)).expect("ok"),
            Some("max".into())
        );
        assert_eq!(swap_max(Some(-1), None).expect("ok"), Some("max".into()));
        assert_eq!(swap_max(Some(100), None).expect("ok"), None);
        assert!(swap_max(Some(300), Some(100)).is_err());
        assert!(swap_max(None, Some(100)).is_err());
    }
}
