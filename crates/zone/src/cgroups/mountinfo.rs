//! Finds the cgroup file systems of this host from `/proc/self/mountinfo`
//! (never from hard-coded mount points) and the caller's own cgroups from
//! `/proc/self/cgroup`, and decides which manager (v1 or v2) applies.

use std::path::{Path, PathBuf};

use super::util::{parse_err, read};
use super::CgroupError;

/// Controllers a v1 hierarchy may carry (other super options are flags).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
    "debug",
];

/// One mounted cgroup v1 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hierarchy {
    /// Where it is mounted, e.g. `/sys/fs/cgroup/cpu,cpuacct`.
    pub mount: PathBuf,
    /// The mount's root inside the hierarchy (mountinfo field 4).
    pub root: PathBuf,
    /// Controllers (and `name=...` for named hierarchies), as the kernel lists them.
    pub controllers: Vec<String>,
    /// The caller's cgroup in this hierarchy, relative to the hierarchy root.
    pub own: PathBuf,
}

pub(crate) enum Layout {
    /// v1 controllers are mounted (pure v1 or hybrid): use the v1 manager.
    V1(Vec<Hierarchy>),
    /// Only cgroup2 carries controllers.
    V2 { mount: PathBuf, own: PathBuf },
}

/// A parsed mountinfo line (only the fields needed here).
#[derive(Debug)]
pub(crate) struct MountLine {
    pub root: PathBuf,
    pub mount: PathBuf,
    pub fstype: String,
    pub super_opts: Vec<String>,
}

/// Undoes mountinfo's octal escapes (`\040` for space, etc.).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn parse_mountinfo(path: &Path, text: &str) -> Result<Vec<MountLine>, CgroupError> {
    let mut v = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields
            .iter()
            .position(|f| *f == "-")
            .ok_or_else(|| parse_err(path, line, "no \" - \" separator"))?;
        if fields.len() < sep + 4 || sep < 6 {
            return Err(parse_err(path, line, "too few fields"));
        }
        v.push(MountLine {
            root: PathBuf::from(unescape(fields[3])),
            mount: PathBuf::from(unescape(fields[4])),
            fstype: fields[sep + 1].to_string(),
            super_opts: fields[sep + 3].split(',').map(str::to_string).collect(),
        });
    }
    Ok(v)
}

/// One `/proc/self/cgroup` line: hierarchy id, controller list, path.
pub(crate) struct ProcCgroup {
    pub controllers: Vec<String>,
    pub path: PathBuf,
    pub v2: bool,
}

pub(crate) fn parse_proc_cgroup(path: &Path, text: &str) -> Result<Vec<ProcCgroup>, CgroupError> {
    let mut v = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.splitn(3, ':');
        let (id, ctrls, p) = match (it.next(), it.next(), it.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => return Err(parse_err(path, line, "expected \"id:controllers:path\"")),
        };
        v.push(ProcCgroup {
            controllers: ctrls
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            path: PathBuf::from(p),
            v2: id == "0" && ctrls.is_empty(),
        });
    }
    Ok(v)
}

/// A cgroup path from /proc/self/cgroup made relative to the hierarchy
/// root and then to the mount's root (when a sub-tree is mounted).
fn own_relative(proc_path: &Path, mount_root: &Path) -> PathBuf {
    let p = proc_path.strip_prefix("/").unwrap_or(proc_path);
    let r = mount_root.strip_prefix("/").unwrap_or(mount_root);
    match p.strip_prefix(r) {
        Ok(rest) if !r.as_os_str().is_empty() => rest.to_path_buf(),
        _ => p.to_path_buf(),
    }
}

fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

impl Layout {
    pub(crate) fn detect() -> Result<Layout, CgroupError> {
        let mi_path = Path::new("/proc/self/mountinfo");
        let mounts = parse_mountinfo(mi_path, &read(mi_path)?)?;
        let pc_path = Path::new("/proc/self/cgroup");
        let procs = parse_proc_cgroup(pc_path, &read(pc_path)?)?;
        // Only real cgroup2 file systems (statfs magic) count as v2 mounts.
        let mounts: Vec<MountLine> = mounts
            .into_iter()
            .filter(|m| m.fstype != "cgroup2" || is_cgroup2(&m.mount))
            .collect();
        Self::from_parts(&mounts, &procs)
    }

    pub(crate) fn from_parts(
        mounts: &[MountLine],
        procs: &[ProcCgroup],
    ) -> Result<Layout, CgroupError> {
        let mut hier: Vec<Hierarchy> = Vec::new();
        for m in mounts.iter().filter(|m| m.fstype == "cgroup") {
            let controllers: Vec<String> = m
                .super_opts
                .iter()
                .filter(|o| V1_CONTROLLERS.contains(&o.as_str()) || o.starts_with("name="))
                .cloned()
                .collect();
            if controllers.is_empty() || hier.iter().any(|h| same_set(&h.controllers, &controllers))
            {
                // Bind mounts of an already seen hierarchy.
                continue;
            }
            let own = procs
                .iter()
                .find(|p| !p.v2 && same_set(&p.controllers, &controllers))
                .map(|p| own_relative(&p.path, &m.root))
                .unwrap_or_default();
            hier.push(Hierarchy {
                mount: m.mount.clone(),
                root: m.root.clone(),
                controllers,
                own,
            });
        }
        let has_v1_controllers = hier
            .iter()
            .any(|h| h.controllers.iter().any(|c| !c.starts_with("name=")));
        if has_v1_controllers {
            return Ok(Layout::V1(hier));
        }
        if let Some(m) = mounts.iter().find(|m| m.fstype == "cgroup2") {
            let own = procs
                .iter()
                .find(|p| p.v2)
                .map(|p| own_relative(&p.path, &m.root))
                .unwrap_or_default();
            return Ok(Layout::V2 {
                mount: m.mount.clone(),
                own,
            });
        }
        Err(CgroupError::NoCgroupFs)
    }
}

fn is_cgroup2(mount: &Path) -> bool {
    nix::sys::statfs::statfs(mount)
        .map(|st| st.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// Mount point of the first cgroup2 file system, if any (for hybrid hosts).
pub fn cgroup2_mount() -> Result<Option<PathBuf>, CgroupError> {
    let mi_path = Path::new("/proc/self/mountinfo");
    let mounts = parse_mountinfo(mi_path, &read(mi_path)?)?;
    Ok(mounts
        .into_iter()
        .find(|m| m.fstype == "cgroup2" && is_cgroup2(&m.mount))
        .map(|m| m.mount))
}

/// The caller's own cgroup v2 path (relative to the hierarchy root).
pub(crate) fn own_cgroup_v2() -> Result<PathBuf, CgroupError> {
    let pc_path = Path::new("/proc/self/cgroup");
    let procs = parse_proc_cgroup(pc_path, &read(pc_path)?)?;
    Ok(procs
        .iter()
        .find(|p| p.v2)
        .map(|p| own_relative(&p.path, Path::new("/")))
        .unwrap_or_default())
}

#[cfg(test)]
mod unit {
    use super::*;

    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";
    const PROCS: &str =
        "9:name=systemd:/user.slice\n4:memory:/a/b\n2:cpu,cpuacct:/\n0::/user.slice/x\n";

    #[test]
    fn hybrid_uses_v1_with_comounted_hierarchies() {
        let p = Path::new("m");
        let mounts = parse_mountinfo(p, HYBRID).expect("parse mountinfo");
        let procs = parse_proc_cgroup(p, PROCS).expect("parse cgroup");
        match Layout::from_parts(&mounts, &procs).expect("layout") {
            Layout::V1(h) => {
                assert_eq!(h.len(), 3);
                assert_eq!(h[0].mount, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
                assert_eq!(h[0].controllers, vec!["cpu", "cpuacct"]);
                assert_eq!(h[0].own, PathBuf::from(""));
                assert_eq!(h[1].own, PathBuf::from("a/b"));
                assert_eq!(h[2].controllers, vec!["name=systemd"]);
                assert_eq!(h[2].own, PathBuf::from("user.slice"));
            }
            Layout::V2 { .. } => panic!("hybrid host must use the v1 manager"),
        }
    }

    #[test]
    fn pure_v2_and_escapes() {
        let p = Path::new("m");
        let text = "30 23 0:26 /sub /sys/fs/my\\040cgroup rw - cgroup2 cgroup2 rw\n";
        let mounts = parse_mountinfo(p, text).expect("parse");
        assert_eq!(mounts[0].mount, PathBuf::from("/sys/fs/my cgroup"));
        let procs = parse_proc_cgroup(p, "0::/sub/zone/x\n").expect("parse");
        match Layout::from_parts(&mounts, &procs).expect("layout") {
            Layout::V2 { mount, own } => {
                assert_eq!(mount, PathBuf::from("/sys/fs/my cgroup"));
                assert_eq!(own, PathBuf::from("zone/x"));
            }
            Layout::V1(_) => panic!("expected v2"),
        }
    }

    #[test]
    fn no_cgroupfs_is_an_error() {
        let p = Path::new("m");
        let mounts = parse_mountinfo(p, "1 0 0:1 / / rw - ext4 /dev/sda rw\n").expect("parse");
        assert!(matches!(
            Layout::from_parts(&mounts, &[]),
            Err(CgroupError::NoCgroupFs)
        ));
    }
}
