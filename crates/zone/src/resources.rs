//! Typed resource updates and statistics for a running zone, so a caller (a
//! monitor, bulkhead-runc's `update` and `events`) never assembles or reads
//! JSON: [`ResourceUpdate`] becomes the spec's `LinuxResources`, and
//! [`ZoneStats`] summarises the cgroup's counters (the full runc-shaped
//! detail stays available in [`ZoneStats::detail`]).

use oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxPids, LinuxResources};
use serde::Serialize;

/// Limits to change on a running zone (runc `update`'s flags). `None` leaves a
/// limit as it is; `-1` means unlimited where the kernel has such a value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceUpdate {
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// Memory + swap limit in bytes.
    pub memory_swap: Option<i64>,
    /// Memory soft limit (reservation) in bytes.
    pub memory_reservation: Option<i64>,
    /// CPU shares (relative weight).
    pub cpu_shares: Option<u64>,
    /// CPU CFS quota in microseconds per period.
    pub cpu_quota: Option<i64>,
    /// CPU CFS period in microseconds.
    pub cpu_period: Option<u64>,
    /// CPUs the zone may run on ("0-1,3").
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the zone may use.
    pub cpuset_mems: Option<String>,
    /// Maximum number of processes.
    pub pids_limit: Option<i64>,
}

impl ResourceUpdate {
    /// True when nothing would change.
    pub fn is_empty(&self) -> bool {
        *self == ResourceUpdate::default()
    }

    /// Set the given limits on `r`, keeping everything else.
    pub fn apply_to(&self, r: &mut LinuxResources) {
        if self.memory_limit.is_some()
            || self.memory_swap.is_some()
            || self.memory_reservation.is_some()
        {
            let mut m: LinuxMemory = r.memory().unwrap_or_default();
            if let Some(v) = self.memory_limit {
                m.set_limit(Some(v));
            }
            if let Some(v) = self.memory_swap {
                m.set_swap(Some(v));
            }
            if let Some(v) = self.memory_reservation {
                m.set_reservation(Some(v));
            }
            r.set_memory(Some(m));
        }
        if self.cpu_shares.is_some()
            || self.cpu_quota.is_some()
            || self.cpu_period.is_some()
            || self.cpuset_cpus.is_some()
            || self.cpuset_mems.is_some()
        {
            let mut c: LinuxCpu = r.cpu().clone().unwrap_or_default();
            if let Some(v) = self.cpu_shares {
                c.set_shares(Some(v));
            }
            if let Some(v) = self.cpu_quota {
                c.set_quota(Some(v));
            }
            if let Some(v) = self.cpu_period {
                c.set_period(Some(v));
            }
            if let Some(v) = &self.cpuset_cpus {
                c.set_cpus(Some(v.clone()));
            }
            if let Some(v) = &self.cpuset_mems {
                c.set_mems(Some(v.clone()));
            }
            r.set_cpu(Some(c));
        }
        if let Some(v) = self.pids_limit {
            let mut p = LinuxPids::default();
            p.set_limit(v);
            r.set_pids(Some(p));
        }
    }

    /// The update alone as `LinuxResources` (only the given limits set).
    pub fn to_resources(&self) -> LinuxResources {
        let mut r = LinuxResources::default();
        self.apply_to(&mut r);
        r
    }
}

/// A summary of a zone's resource use, read from its cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ZoneStats {
    /// CPU time used, nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory in use, bytes.
    pub memory_usage: u64,
    /// Memory limit, bytes (0: none reported).
    pub memory_limit: u64,
    /// Peak memory use, bytes (0 where the kernel does not keep it).
    pub memory_max: u64,
    /// Processes now.
    pub pids_current: u64,
    /// Process limit (0: no limit).
    pub pids_limit: u64,
    /// Bytes read from block devices.
    pub blkio_read_bytes: u64,
    /// Bytes written to block devices.
    pub blkio_write_bytes: u64,
    /// Processes the OOM killer killed in the zone.
    pub oom_kills: u64,
    /// Every counter, in the shape of runc's `events --stats` `data` object.
    #[serde(skip)]
    pub detail: crate::cgroups::Stats,
}

impl ZoneStats {
    /// Summarise the cgroup statistics `s` (and the OOM kill count).
    pub fn from_cgroup(s: crate::cgroups::Stats, oom_kills: u64) -> ZoneStats {
        let (mut read, mut write) = (0u64, 0u64);
        for e in &s.blkio.io_service_bytes_recursive {
            match e.op.to_ascii_lowercase().as_str() {
                "read" => read = read.saturating_add(e.value),
                "write" => write = write.saturating_add(e.value),
                _ => {}
            }
        }
        ZoneStats {
            cpu_usage_ns: s.cpu.usage.total,
            memory_usage: s.memory.usage.usage,
            memory_limit: s.memory.usage.limit,
            memory_max: s.memory.usage.max,
            pids_current: s.pids.current,
            pids_limit: s.pids.limit,
            blkio_read_bytes: read,
            blkio_write_bytes: write,
            oom_kills,
            detail: s,
        }
    }

    /// runc's `events --stats` line: `{"type":"stats","id":…,"data":…}`.
    pub fn event_json(&self, id: &str) -> serde_json::Value {
        serde_json::json!({"type": "stats", "id": id, "data": self.detail})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_becomes_linux_resources() {
        let u = ResourceUpdate {
            memory_limit: Some(64 << 20),
            cpu_quota: Some(50_000),
            cpuset_cpus: Some("0".into()),
            pids_limit: Some(20),
            ..Default::default()
        };
        let r = u.to_resources();
        let m = r.memory().unwrap();
        assert_eq!(m.limit(), Some(64 << 20));
        assert_eq!(m.swap(), None);
        let c = r.cpu().clone().unwrap();
        assert_eq!(c.quota(), Some(50_000));
        assert_eq!(c.cpus().as_deref(), Some("0"));
        assert_eq!(r.pids().unwrap().limit(), 20);
        // Applied onto existing limits, the others stay.
        let mut base = ResourceUpdate {
            memory_swap: Some(1 << 30),
            cpu_shares: Some(512),
            ..Default::default()
        }
        .to_resources();
        u.apply_to(&mut base);
        let m = base.memory().unwrap();
        assert_eq!((m.limit(), m.swap()), (Some(64 << 20), Some(1 << 30)));
        assert_eq!(base.cpu().clone().unwrap().shares(), Some(512));
        assert!(ResourceUpdate::default().is_empty());
    }

    #[test]
    fn stats_summary() {
        let mut s = crate::cgroups::Stats::default();
        s.cpu.usage.total = 42;
        s.memory.usage.usage = 100;
        s.memory.usage.limit = 200;
        s.pids.current = 3;
        s.blkio.io_service_bytes_recursive = vec![
            crate::cgroups::BlkioEntry {
                major: 8,
                minor: 0,
                op: "Read".into(),
                value: 10,
            },
            crate::cgroups::BlkioEntry {
                major: 8,
                minor: 0,
                op: "Write".into(),
                value: 5,
            },
            crate::cgroups::BlkioEntry {
                major: 8,
                minor: 16,
                op: "Read".into(),
                value: 1,
            },
        ];
        let z = ZoneStats::from_cgroup(s, 2);
        assert_eq!(
            (
                z.cpu_usage_ns,
                z.memory_usage,
                z.memory_limit,
                z.pids_current
            ),
            (42, 100, 200, 3)
        );
        assert_eq!(
            (z.blkio_read_bytes, z.blkio_write_bytes, z.oom_kills),
            (11, 5, 2)
        );
        let ev = z.event_json("c1");
        assert_eq!(ev["type"], "stats");
        assert_eq!(ev["data"]["cpu"]["usage"]["total"], 42);
    }
}
