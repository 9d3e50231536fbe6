//! Turns an instance's configuration into what its monitor runs: the OCI runtime spec of
//! a zone (typed, through oci-spec; written as the bundle's config.json) and the resource
//! updates a live configuration change needs. Also finds which limits this host's
//! cgroups cannot enforce.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use api::config::{parse_allowance, parse_cpu, parse_mount, parse_size, split_words, CpuLimit};
use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxIdMappingBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxResources, MountBuilder, RootBuilder, Spec,
};

/// First host id of the per-zone id ranges (each zone gets 65536 ids from here on).
pub const IDMAP_BASE: u32 = 1_000_000;
pub const IDMAP_SIZE: u32 = 65536;

/// The host uid that zone root maps to for instance `id`.
pub fn host_root_id(id: i64) -> u32 {
    IDMAP_BASE + (id as u32 % 30_000) * IDMAP_SIZE
}

/// The environment an instance's processes get: a default PATH and TERM, the bundle's
/// variables, then `environment.*` keys, then `extra` (later ones win per name).
pub fn environment(
    base: &[String],
    config: &BTreeMap<String, String>,
    extra: &[String],
) -> Vec<String> {
    let mut env: Vec<String> = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "TERM=xterm".into(),
    ];
    for kv in base.iter().cloned().chain(overrides(config, extra)) {
        let key = kv.split('=').next().unwrap_or("").to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(kv);
    }
    env
}

/// The variables an instance sets over an image's or bundle's own: its `environment.*`
/// keys, then `extra` (in that order; a later one of the same name wins).
pub fn overrides(config: &BTreeMap<String, String>, extra: &[String]) -> Vec<String> {
    config
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("environment.").map(|n| format!("{n}={v}")))
        .chain(extra.iter().cloned())
        .collect()
}

/// The zone's OCI spec. `base` is the bundle's config.json for a bundle source.
pub fn zone_spec(
    id: i64,
    name: &str,
    rootfs: &Path,
    base: Option<Spec>,
    config: &BTreeMap<String, String>,
    cgroups_path: &str,
) -> Result<Spec> {
    let from_bundle = base.is_some();
    let mut spec = base.unwrap_or_default();
    spec.set_root(Some(
        RootBuilder::default()
            .path(rootfs.to_path_buf())
            .readonly(false)
            .build()?,
    ));
    spec.set_hostname(Some(
        config
            .get("hostname")
            .cloned()
            .unwrap_or_else(|| name.to_string()),
    ));
    let mut process = spec.process().clone().unwrap_or_default();
    if let Some(cmd) = config.get("command") {
        let words = split_words(cmd).context("command: unterminated quote")?;
        process.set_args(Some(words));
    } else if !from_bundle {
        process.set_args(Some(vec!["/sbin/init".into()]));
    }
    process.set_terminal(Some(true));
    let base_env = process.env().clone().unwrap_or_default();
    process.set_env(Some(environment(&base_env, config, &[])));
    if !from_bundle {
        // runc's default set, without inheritable and ambient capabilities (CVE-2022-29162).
        let set: std::collections::HashSet<Capability> = [
            Capability::AuditWrite,
            Capability::Kill,
            Capability::NetBindService,
            Capability::Chown,
            Capability::DacOverride,
            Capability::Fowner,
            Capability::Fsetid,
            Capability::Setgid,
            Capability::Setuid,
            Capability::Setpcap,
            Capability::NetRaw,
            Capability::SysChroot,
            Capability::Mknod,
            Capability::Setfcap,
        ]
        .into_iter()
        .collect();
        process.set_capabilities(Some(
            LinuxCapabilitiesBuilder::default()
                .bounding(set.clone())
                .effective(set.clone())
                .permitted(set)
                .inheritable(std::collections::HashSet::new())
                .ambient(std::collections::HashSet::new())
                .build()?,
        ));
        process.set_no_new_privileges(Some(true));
    }
    spec.set_process(Some(process));

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (k, v) in config {
        if k.starts_with("mount.") {
            let m = parse_mount(v).with_context(|| format!("{k}: invalid mount {v:?}"))?;
            if !Path::new(&m.source).is_dir() {
                bail!("{k}: host directory {} does not exist", m.source);
            }
            let mut opts = vec!["rbind".to_string(), "nosuid".into(), "nodev".into()];
            if m.readonly {
                opts.push("ro".into());
            }
            mounts.push(
                MountBuilder::default()
                    .destination(PathBuf::from(&m.destination))
                    .typ("bind")
                    .source(PathBuf::from(&m.source))
                    .options(opts)
                    .build()?,
            );
        }
    }
    spec.set_mounts(Some(mounts));

    let privileged = config
        .get("security.privileged")
        .and_then(|v| api::config::parse_bool(v))
        .unwrap_or(false);
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut ns = linux.namespaces().clone().unwrap_or_default();
    let mut want = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Cgroup,
    ];
    if !privileged {
        want.push(LinuxNamespaceType::User);
        let host = host_root_id(id);
        let map = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(host)
            .size(IDMAP_SIZE)
            .build()?;
        linux.set_uid_mappings(Some(vec![map]));
        linux.set_gid_mappings(Some(vec![map]));
    }
    for t in want {
        if !ns.iter().any(|n| n.typ() == t) {
            ns.push(LinuxNamespaceBuilder::default().typ(t).build()?);
        }
    }
    linux.set_namespaces(Some(ns));
    if linux.seccomp().is_none() {
        linux.set_seccomp(Some(zone::seccomp::default_profile()));
    }
    linux.set_cgroups_path(Some(PathBuf::from(cgroups_path)));
    let rootfs_dev = block_device_of(rootfs);
    linux.set_resources(Some(resources(config, rootfs_dev)?));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// The cgroup resources of a zone's `limits.*` keys.
pub fn resources(
    config: &BTreeMap<String, String>,
    disk: Option<(i64, i64)>,
) -> Result<LinuxResources> {
    Ok(update_of(config, disk).to_oci()?)
}

/// The limits of `config` as a monitor update (unset keys stay None).
pub fn update_of(
    config: &BTreeMap<String, String>,
    disk: Option<(i64, i64)>,
) -> monitor::ResourceUpdate {
    let mut u = monitor::ResourceUpdate {
        memory_limit: config
            .get("limits.memory")
            .and_then(|v| parse_size(v))
            .map(|n| n as i64),
        pids_limit: config
            .get("limits.processes")
            .and_then(|v| v.parse::<i64>().ok()),
        ..Default::default()
    };
    match config.get("limits.cpu").and_then(|v| parse_cpu(v)) {
        Some(CpuLimit::Count(n)) => {
            u.cpu_quota = Some(n as i64 * 100_000);
            u.cpu_period = Some(100_000);
        }
        Some(CpuLimit::Set(s)) => u.cpus = Some(s),
        None => {}
    }
    if let Some((q, p)) = config
        .get("limits.cpu.allowance")
        .and_then(|v| parse_allowance(v))
    {
        u.cpu_quota = Some(q as i64);
        u.cpu_period = Some(p);
    }
    if let Some((major, minor)) = disk {
        u.read_bps = config
            .get("limits.disk.read")
            .and_then(|v| parse_size(v))
            .map(|n| (major, minor, n));
        u.write_bps = config
            .get("limits.disk.write")
            .and_then(|v| parse_size(v))
            .map(|n| (major, minor, n));
    }
    u
}

/// A live change's update: the new values, and "no limit" for limits that were removed.
pub fn live_update(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    disk: Option<(i64, i64)>,
) -> monitor::ResourceUpdate {
    let mut u = update_of(new, disk);
    let removed = |k: &str| old.contains_key(k) && !new.contains_key(k);
    if removed("limits.memory") {
        u.memory_limit = Some(-1);
    }
    if removed("limits.processes") {
        u.pids_limit = Some(-1);
    }
    if (removed("limits.cpu") || removed("limits.cpu.allowance")) && u.cpu_quota.is_none() {
        u.cpu_quota = Some(-1);
    }
    if let Some((major, minor)) = disk {
        if removed("limits.disk.read") {
            u.read_bps = Some((major, minor, 0));
        }
        if removed("limits.disk.write") {
            u.write_bps = Some((major, minor, 0));
        }
    }
    u
}

/// The whole-disk block device (major, minor) holding `path`, if it is on one.
pub fn block_device_of(path: &Path) -> Option<(i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(dev) as i64, libc::minor(dev) as i64);
    if major == 0 {
        return None; // tmpfs, overlayfs, btrfs subvolumes: no single block device
    }
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if sys.join("partition").exists() {
        // Throttling applies to whole disks: use the partition's parent.
        let parent = std::fs::canonicalize(&sys).ok()?.parent()?.join("dev");
        let text = std::fs::read_to_string(parent).ok()?;
        let (a, b) = text.trim().split_once(':')?;
        return Some((a.parse().ok()?, b.parse().ok()?));
    }
    sys.exists().then_some((major, minor))
}

/// Limits in `config` that this host cannot enforce, key → reason.
pub fn unenforced(
    config: &BTreeMap<String, String>,
    rootfs: Option<&Path>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let need = [
        ("limits.memory", "memory"),
        ("limits.processes", "pids"),
        ("limits.cpu.allowance", "cpu"),
        ("limits.disk.read", "io"),
        ("limits.disk.write", "io"),
    ];
    for (key, ctrl) in need {
        if config.contains_key(key) && !controller_available(ctrl) {
            out.insert(
                key.to_string(),
                format!("the {ctrl} cgroup controller is not available on this host"),
            );
        }
    }
    if let Some(v) = config.get("limits.cpu") {
        let ctrl = if matches!(parse_cpu(v), Some(CpuLimit::Set(_))) {
            "cpuset"
        } else {
            "cpu"
        };
        if !controller_available(ctrl) {
            out.insert(
                "limits.cpu".into(),
                format!("the {ctrl} cgroup controller is not available on this host"),
            );
        }
    }
    for key in ["limits.disk.read", "limits.disk.write"] {
        if config.contains_key(key)
            && !out.contains_key(key)
            && rootfs.and_then(block_device_of).is_none()
        {
            out.insert(
                key.into(),
                "the zone's root is not on a block device".into(),
            );
        }
    }
    out
}

/// Whether a cgroup controller can be used: on a v1 or hybrid host its hierarchy is
/// mounted; on a pure v2 host it is listed in the root's cgroup.controllers.
pub fn controller_available(ctrl: &str) -> bool {
    let v1 = match ctrl {
        "io" => "blkio",
        c => c,
    };
    if Path::new("/sys/fs/cgroup").join(v1).join("tasks").exists()
        || Path::new("/sys/fs/cgroup")
            .join(v1)
            .join("cgroup.procs")
            .exists()
            && !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    {
        return true;
    }
    std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .map(|s| s.split_whitespace().any(|c| c == ctrl))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_layers() {
        let mut c = BTreeMap::new();
        c.insert("environment.A".to_string(), "2".to_string());
        let env = environment(&["A=1".into(), "B=1".into()], &c, &["B=3".into()]);
        assert!(env.contains(&"A=2".to_string()));
        assert!(env.contains(&"B=3".to_string()));
        assert!(env.iter().any(|e| e.starts_with("PATH=")));
        assert_eq!(env.iter().filter(|e| e.starts_with("A=")).count(), 1);
    }

    #[test]
    fn zone_spec_maps_keys() {
        let mut c = BTreeMap::new();
        c.insert("limits.memory".to_string(), "64MiB".to_string());
        c.insert("limits.cpu".to_string(), "2".to_string());
        c.insert("command".to_string(), "sleep 100".to_string());
        let s = zone_spec(3, "web", Path::new("/tmp"), None, &c, "bulkhead/bh3").unwrap();
        assert_eq!(s.hostname().as_deref(), Some("web"));
        let p = s.process().as_ref().unwrap();
        assert_eq!(
            p.args().as_ref().unwrap(),
            &vec!["sleep".to_string(), "100".into()]
        );
        let caps = p.capabilities().as_ref().unwrap();
        assert!(caps.inheritable().as_ref().unwrap().is_empty());
        let l = s.linux().as_ref().unwrap();
        let r = l.resources().as_ref().unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(200_000));
        assert_eq!(
            l.uid_mappings().as_ref().unwrap()[0].host_id(),
            host_root_id(3)
        );
        assert!(l.seccomp().is_some());
    }
}
