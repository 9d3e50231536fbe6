//! The zone's root file system, built inside its own mount namespace: mount
//! option parsing, secure resolution of destinations inside the root (openat2
//! RESOLVE_IN_ROOT, so symlinks cannot escape), the spec's mounts, a minimal
//! /dev, devices, cgroup mounts, pivot_root, masked and read-only paths.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{mknodat, Mode, SFlag};

use crate::error::{Result, SysContext, ZoneError};

mod masks;

pub use masks::*;

/// Parsed `options` of one mount entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for mount(2).
    pub flags: MsFlags,
    /// Propagation changes applied after the mount, in order.
    pub propagation: Vec<MsFlags>,
    /// Everything else, joined with ',' as the data argument.
    pub data: Vec<String>,
    /// "bind" or "rbind" was given.
    pub bind: bool,
    /// "rbind" was given.
    pub recursive: bool,
}

impl MountOptions {
    /// Parse options as mount(8) does; unknown options become file system data.
    pub fn parse<S: AsRef<str>>(opts: &[S]) -> std::result::Result<Self, String> {
        let mut o = MountOptions {
            flags: MsFlags::empty(),
            propagation: Vec::new(),
            data: Vec::new(),
            bind: false,
            recursive: false,
        };
        for opt in opts {
            let opt = opt.as_ref();
            let (set, clear) = match opt {
                "defaults" => (MsFlags::empty(), MsFlags::empty()),
                "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
                "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
                "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
                "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
                "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
                "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
                "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
                "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
                "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
                "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
                "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
                "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
                "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
                "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
                "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
                "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
                "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
                "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
                "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
                "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
                "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
                "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
                "lazytime" => (MsFlags::MS_LAZYTIME, MsFlags::empty()),
                "nolazytime" => (MsFlags::empty(), MsFlags::MS_LAZYTIME),
                "silent" => (MsFlags::MS_SILENT, MsFlags::empty()),
                "loud" => (MsFlags::empty(), MsFlags::MS_SILENT),
                "bind" => {
                    o.bind = true;
                    (MsFlags::MS_BIND, MsFlags::empty())
                }
                "rbind" => {
                    o.bind = true;
                    o.recursive = true;
                    (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
                }
                "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
                | "unbindable" | "runbindable" => {
                    o.propagation
                        .push(propagation_flags(opt).unwrap_or(MsFlags::MS_PRIVATE));
                    continue;
                }
                // Runtime hints that are not mount(2) options.
                "tmpcopyup" | "notmpcopyup" | "copy-symlink" => continue,
                "idmap" | "ridmap" => {
                    return Err(format!(
                        "option {opt:?}: id-mapped mounts are not supported"
                    ))
                }
                _ if opt.is_empty() => return Err("empty mount option".into()),
                _ => {
                    o.data.push(opt.to_string());
                    continue;
                }
            };
            o.flags.insert(set);
            o.flags.remove(clear);
        }
        Ok(o)
    }

    /// The data string for mount(2), if any.
    pub fn data_string(&self) -> Option<String> {
        (!self.data.is_empty()).then(|| self.data.join(","))
    }
}

/// Flags for a propagation word ("rslave" → MS_SLAVE|MS_REC).
pub fn propagation_flags(s: &str) -> Option<MsFlags> {
    Some(match s {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// What to create when a destination is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Fail with ENOENT.
    Nothing,
    /// Create directories all the way.
    Dir,
    /// Create parent directories and an empty regular file.
    File,
}

fn how() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// The components of `p` relative to the root ("/a/../b" keeps ".." — the
/// kernel clamps it at the root under RESOLVE_IN_ROOT).
fn rel_components(p: &Path) -> Vec<PathBuf> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect()
}

/// Resolve `path` inside the directory `root` as if `root` were "/": symlinks
/// (absolute or with "..") cannot leave it. Missing components are created as
/// asked. Returns an O_PATH descriptor of the result.
pub fn resolve_in_root(root: &OwnedFd, path: &Path, create: Create) -> Result<OwnedFd> {
    resolve_depth(root, path, create, 0)
}

fn resolve_depth(root: &OwnedFd, path: &Path, create: Create, depth: u32) -> Result<OwnedFd> {
    if depth > 40 {
        return Err(ZoneError::sys(
            format!("resolve {} in the root", path.display()),
            Errno::ELOOP,
        ));
    }
    let comps = rel_components(path);
    let full: PathBuf = if comps.is_empty() {
        PathBuf::from(".")
    } else {
        comps.iter().collect()
    };
    match openat2(root.as_fd(), &full, how()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) if create != Create::Nothing => {}
        Err(e) => {
            return Err(ZoneError::sys(
                format!("resolve {} in the root", path.display()),
                e,
            ))
        }
    }
    // Walk from the root, creating what is missing; each prefix is resolved
    // again from the root so that a symlink planted on the way stays inside.
    let mut prefix = PathBuf::new();
    let mut parent = openat2(root.as_fd(), ".", how()).ctx(|| "open root")?;
    for (i, c) in comps.iter().enumerate() {
        prefix.push(c);
        match openat2(root.as_fd(), &prefix, how()) {
            Ok(fd) => {
                parent = fd;
                continue;
            }
            Err(Errno::ENOENT) => {}
            Err(e) => {
                return Err(ZoneError::sys(
                    format!("resolve {} in the root", prefix.display()),
                    e,
                ))
            }
        }
        let last = i + 1 == comps.len();
        let name = c.as_path();
        let r = if last && create == Create::File {
            mknodat(
                parent.as_fd(),
                name,
                SFlag::S_IFREG,
                Mode::from_bits_truncate(0o755),
                0,
            )
        } else {
            nix::sys::stat::mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o755))
        };
        match r {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                // A dangling symlink: create its target, still inside the root.
                if let Ok(target) = nix::fcntl::readlinkat(parent.as_fd(), name) {
                    let target = PathBuf::from(target);
                    let mut next = if target.is_absolute() {
                        target
                    } else {
                        let mut p = PathBuf::from("/");
                        p.push(prefix.parent().unwrap_or(Path::new("")));
                        p.push(target);
                        p
                    };
                    for rest in &comps[i + 1..] {
                        next.push(rest);
                    }
                    return resolve_depth(root, &next, create, depth + 1);
                }
            }
            Err(e) => {
                return Err(ZoneError::sys(
                    format!("create {} in the root", prefix.display()),
                    e,
                ))
            }
        }
        parent = openat2(root.as_fd(), &prefix, how())
            .map_err(|e| ZoneError::sys(format!("resolve {} in the root", prefix.display()), e))?;
    }
    Ok(parent)
}

/// "/proc/self/fd/N" for a descriptor, to hand to mount(2).
pub fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn mnt(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    what: &dyn Fn() -> String,
) -> Result<()> {
    mount(src, target, fstype, flags, data).map_err(|e| ZoneError::sys(what(), e))
}

/// Mount a new instance of the special file system `fstype` (named `source`)
/// at `dest`, resolved inside `root` and created as a directory when missing.
fn mount_special(
    root: &OwnedFd,
    dest: &str,
    (source, fstype): (&str, &str),
    flags: MsFlags,
    data: &str,
) -> Result<()> {
    let fd = resolve_in_root(root, Path::new(dest), Create::Dir)?;
    mnt(
        Some(Path::new(source)),
        &fd_path(&fd),
        Some(fstype),
        flags,
        Some(data),
        &|| format!("mount {fstype} on {dest}"),
    )
}

/// Apply `extra` flags to the bind mount already at `dest` (inside `root`):
/// flags on a bind mount take effect only through a remount, which must keep
/// the flags the kernel has locked.
fn remount_bind(
    root: &OwnedFd,
    dest: &Path,
    extra: MsFlags,
    what: &dyn Fn() -> String,
) -> Result<()> {
    let fd = resolve_in_root(root, dest, Create::Nothing)?;
    let p = fd_path(&fd);
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra | locked_flags(&p);
    mnt(None, &p, None, flags, None, what)
}

/// Flags a bind remount must keep (locked in a user namespace).
fn locked_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let mut f = MsFlags::empty();
    if let Ok(s) = statvfs(path) {
        let fl = s.flags();
        for (a, b) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if fl.contains(a) {
                f |= b;
            }
        }
    }
    f
}

/// Inputs for building the root file system.
pub struct RootfsConfig<'a> {
    pub spec: &'a oci_spec::runtime::Spec,
    pub rootfs: &'a Path,
    /// The zone has its own user namespace (no mknod: bind host devices).
    pub in_userns: bool,
    /// Host directories of the zone's cgroup, for `cgroup` mounts.
    pub cgroup_sources: Vec<(PathBuf, String)>,
}

const DEFAULT_DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Make `/` private/slave, bind the root onto itself and mount everything.
/// Runs in the zone's (new) mount namespace, before pivot_root.
pub fn prepare_rootfs(cfg: &RootfsConfig) -> Result<()> {
    let linux = cfg.spec.linux().clone().unwrap_or_default();
    let prop = linux
        .rootfs_propagation()
        .as_deref()
        .and_then(propagation_flags)
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
        &|| "make / rslave".into(),
    )?;
    mnt(
        Some(cfg.rootfs),
        cfg.rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
        &|| format!("bind {} onto itself", cfg.rootfs.display()),
    )?;
    // A shared or unbindable root is set after pivot_root (apply_root_propagation):
    // pivot_root refuses a shared new root (EINVAL), and setting it here would also
    // propagate into the host's peer group.
    if prop.contains(MsFlags::MS_PRIVATE) {
        mnt(None, cfg.rootfs, None, prop, None, &|| {
            "set rootfsPropagation".into()
        })?;
    }
    let root = nix::fcntl::open(
        cfg.rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("open {}", cfg.rootfs.display()))?;

    let mounts = cfg.spec.mounts().clone().unwrap_or_default();
    let dest_is = |d: &str| mounts.iter().any(|m| m.destination() == Path::new(d));
    let dev_bind = mounts.iter().any(|m| {
        m.destination() == Path::new("/dev")
            && (m.typ().as_deref() == Some("bind")
                || m.options()
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind"))
    });
    if !dest_is("/dev") {
        mount_special(
            &root,
            "/dev",
            ("tmpfs", "tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            "mode=755,size=65536k",
        )?;
    }
    for (i, m) in mounts.iter().enumerate() {
        mount_entry(cfg, &root, m).map_err(|e| {
            ZoneError::Msg(format!("mounts[{i}] ({}): {e}", m.destination().display()))
        })?;
    }
    if !dev_bind {
        if !dest_is("/dev/pts") {
            mount_special(
                &root,
                "/dev/pts",
                ("devpts", "devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                "newinstance,ptmxmode=0666,mode=0620",
            )?;
        }
        if !dest_is("/dev/shm") {
            mount_special(
                &root,
                "/dev/shm",
                ("shm", "tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
                "mode=1777,size=65536k",
            )?;
        }
        for (name, major, minor) in DEFAULT_DEVICES {
            make_device(
                cfg,
                &root,
                &format!("/dev/{name}"),
                SFlag::S_IFCHR,
                *major,
                *minor,
                0o666,
                0,
                0,
            )?;
        }
        let dev = resolve_in_root(&root, Path::new("/dev"), Create::Nothing)?;
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
        ] {
            // /proc/kcore is linked only when present, as runc does; we skip it.
            match nix::unistd::symlinkat(target, dev.as_fd(), link) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(ZoneError::sys(format!("symlink /dev/{link}"), e)),
            }
        }
    }
    for d in linux.devices().iter().flatten() {
        use oci_spec::runtime::LinuxDeviceType as T;
        let kind = match d.typ() {
            T::C | T::U => SFlag::S_IFCHR,
            T::B => SFlag::S_IFBLK,
            T::P => SFlag::S_IFIFO,
            T::A => continue,
        };
        make_device(
            cfg,
            &root,
            &d.path().to_string_lossy(),
            kind,
            d.major() as u64,
            d.minor() as u64,
            d.file_mode().unwrap_or(0o666),
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn make_device(
    cfg: &RootfsConfig,
    root: &OwnedFd,
    path: &str,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<()> {
    let p = Path::new(path);
    let parent = resolve_in_root(root, p.parent().unwrap_or(Path::new("/")), Create::Dir)?;
    let name = p
        .file_name()
        .ok_or_else(|| ZoneError::Msg(format!("device path {path:?} has no file name")))?;
    // An existing node (e.g. from a bind-mounted /dev) is replaced.
    let _ = nix::unistd::unlinkat(
        parent.as_fd(),
        name,
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    );
    if cfg.in_userns {
        // mknod is not allowed in a user namespace: bind the host's node.
        match mknodat(
            parent.as_fd(),
            name,
            SFlag::S_IFREG,
            Mode::from_bits_truncate(0o644),
            0,
        ) {
            // Still there: a mount point (a spec mount); the host's node goes on top.
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(ZoneError::sys(format!("create {path}"), e)),
        }
        let fd = resolve_in_root(root, p, Create::Nothing)?;
        mnt(
            Some(p),
            &fd_path(&fd),
            None,
            MsFlags::MS_BIND,
            None,
            &|| format!("bind host {path}"),
        )?;
        return Ok(());
    }
    let dev = nix::sys::stat::makedev(major, minor);
    let perm = Mode::from_bits_truncate(mode & 0o7777);
    match mknodat(parent.as_fd(), name, kind, perm, dev) {
        Ok(()) => {}
        // A mount point the unlink above could not remove (a spec mount at
        // that path): kept, as runc does. Masks check /dev/null themselves.
        Err(Errno::EEXIST) => return Ok(()),
        Err(e) => return Err(ZoneError::sys(format!("mknod {path}"), e)),
    }
    let fd = resolve_in_root(root, p, Create::Nothing)?;
    let fdp = fd_path(&fd);
    // mknod honours the umask; set the exact mode and owner.
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &fdp,
        perm,
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .ctx(|| format!("chmod {path}"))?;
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &fdp,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        nix::fcntl::AtFlags::empty(),
    )
    .ctx(|| format!("chown {path}"))?;
    Ok(())
}

fn mount_entry(cfg: &RootfsConfig, root: &OwnedFd, m: &oci_spec::runtime::Mount) -> Result<()> {
    let opts =
        MountOptions::parse(m.options().as_deref().unwrap_or(&[])).map_err(ZoneError::Msg)?;
    let typ = m.typ().clone().unwrap_or_default();
    let bind = opts.bind || typ == "bind";
    let dest = m.destination();
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(cfg, root, dest, &opts);
    }
    if bind {
        let src = m
            .source()
            .clone()
            .ok_or_else(|| ZoneError::Msg("bind mount without a source".into()))?;
        let meta = std::fs::metadata(&src).map_err(|e| ZoneError::io("stat", &src, e))?;
        let create = if meta.is_dir() {
            Create::Dir
        } else {
            Create::File
        };
        let fd = resolve_in_root(root, dest, create)?;
        let mut flags = MsFlags::MS_BIND;
        if opts.recursive {
            flags |= MsFlags::MS_REC;
        }
        mnt(Some(&src), &fd_path(&fd), None, flags, None, &|| {
            format!("bind {}", src.display())
        })?;
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            // Flags on a bind mount take effect only through a remount.
            remount_bind(root, dest, extra, &|| "remount bind with options".into())?;
        }
        apply_propagation(root, dest, &opts)?;
        return Ok(());
    }
    let fd = if typ == "proc" || typ == "sysfs" {
        ordinary_dir(root, dest, &typ)?
    } else {
        resolve_in_root(root, dest, Create::Dir)?
    };
    let src = m.source().clone().unwrap_or_else(|| PathBuf::from(&typ));
    let data = opts.data_string();
    let flags = opts.flags;
    let target = fd_path(&fd);
    match mount(
        Some(&src),
        &target,
        Some(typ.as_str()),
        flags,
        data.as_deref(),
    ) {
        Ok(()) => {}
        // sysfs cannot be mounted in a user namespace that does not own the
        // network namespace: bind the host's /sys instead, as runc does.
        Err(Errno::EPERM) if typ == "sysfs" && cfg.in_userns => {
            mnt(
                Some(Path::new("/sys")),
                &target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
                &|| "bind /sys".into(),
            )?;
            remount_bind(root, dest, flags & MsFlags::MS_RDONLY, &|| {
                "remount /sys".into()
            })?;
        }
        Err(e) => {
            return Err(ZoneError::sys(
                format!(
                    "mount {} (type {typ}, data {:?})",
                    src.display(),
                    data.unwrap_or_default()
                ),
                e,
            ))
        }
    }
    apply_propagation(root, dest, &opts)
}

fn apply_propagation(root: &OwnedFd, dest: &Path, opts: &MountOptions) -> Result<()> {
    if opts.propagation.is_empty() {
        return Ok(());
    }
    let fd = resolve_in_root(root, dest, Create::Nothing)?;
    for p in &opts.propagation {
        mnt(None, &fd_path(&fd), None, *p, None, &|| {
            "set mount propagation".into()
        })?;
    }
    Ok(())
}

/// cgroup mounts: cgroup2 for a unified hierarchy; on v1/hybrid hosts a tmpfs
/// with the zone's own hierarchies bind-mounted (read-only when asked).
fn mount_cgroup(
    cfg: &RootfsConfig,
    root: &OwnedFd,
    dest: &Path,
    opts: &MountOptions,
) -> Result<()> {
    let fd = resolve_in_root(root, dest, Create::Dir)?;
    let flags = opts.flags
        & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME);
    let ro = opts.flags.contains(MsFlags::MS_RDONLY);
    let ro_flag = if ro {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    let only_v2 = cfg.cgroup_sources.len() == 1 && cfg.cgroup_sources[0].1.is_empty();
    if only_v2 {
        // Bind the zone's own cgroup2 directory: the init is not yet in its
        // cgroup namespace here, so a fresh cgroup2 mount would show the
        // host's whole tree.
        let host = &cfg.cgroup_sources[0].0;
        mnt(
            Some(host.as_path()),
            &fd_path(&fd),
            None,
            MsFlags::MS_BIND,
            None,
            &|| format!("bind cgroup {}", host.display()),
        )?;
        return remount_bind(root, dest, flags | ro_flag, &|| "remount cgroup2".into());
    }
    if cfg.cgroup_sources.is_empty() {
        return mnt(
            Some(Path::new("cgroup2")),
            &fd_path(&fd),
            Some("cgroup2"),
            flags | ro_flag,
            None,
            &|| "mount cgroup2".into(),
        );
    }
    mnt(
        Some(Path::new("tmpfs")),
        &fd_path(&fd),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
        &|| "mount tmpfs for cgroups".into(),
    )?;
    for (host, name) in &cfg.cgroup_sources {
        let name = if name.is_empty() {
            "unified"
        } else {
            name.as_str()
        };
        let sub = dest.join(name);
        let fd = resolve_in_root(root, &sub, Create::Dir)?;
        let p = fd_path(&fd);
        mnt(
            Some(host),
            &p,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            &|| format!("bind cgroup {}", host.display()),
        )?;
        remount_bind(root, &sub, flags | ro_flag, &|| {
            format!("remount cgroup {name}")
        })?;
        // Co-mounted controllers ("cpu,cpuacct") get one symlink per name.
        if name.contains(',') {
            let dir = resolve_in_root(root, dest, Create::Nothing)?;
            for part in name.split(',') {
                let _ = nix::unistd::symlinkat(name, dir.as_fd(), part);
            }
        }
    }
    if ro {
        let fd = resolve_in_root(root, dest, Create::Nothing)?;
        let p = fd_path(&fd);
        mnt(
            None,
            &p,
            None,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            Some("mode=755"),
            &|| "remount cgroup tmpfs read-only".into(),
        )?;
    }
    Ok(())
}

/// Bind the PTY slave `slave` over /dev/console inside the root.
pub fn mount_console(rootfs: &Path, slave: &Path) -> Result<()> {
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("open {}", rootfs.display()))?;
    let fd = resolve_in_root(&root, Path::new("/dev/console"), Create::File)?;
    mnt(
        Some(slave),
        &fd_path(&fd),
        None,
        MsFlags::MS_BIND,
        None,
        &|| "bind /dev/console".into(),
    )
}

/// Enter the root: pivot_root (or MS_MOVE + chroot with `no_pivot`) and drop
/// the old root.
pub fn enter_root(rootfs: &Path, no_pivot: bool) -> Result<()> {
    nix::unistd::chdir(rootfs).ctx(|| format!("chdir {}", rootfs.display()))?;
    if no_pivot {
        mnt(
            Some(rootfs),
            Path::new("/"),
            None,
            MsFlags::MS_MOVE,
            None,
            &|| "move root".into(),
        )?;
        nix::unistd::chroot(".").ctx(|| "chroot")?;
    } else {
        nix::unistd::pivot_root(".", ".").ctx(|| "pivot_root")?;
        // The old root is stacked under the new one at "."; keep unmount
        // events from reaching the host, then detach it.
        mnt(
            None,
            Path::new("."),
            None,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None,
            &|| "make old root rslave".into(),
        )?;
        umount2(".", MntFlags::MNT_DETACH).ctx(|| "unmount old root")?;
    }
    nix::unistd::chdir("/").ctx(|| "chdir /")
}

/// Enter the root file system of a zone without a mount namespace: chroot(2)
/// into it (there is no private mount tree to pivot).
pub fn enter_root_without_mount_ns(rootfs: &Path) -> Result<()> {
    nix::unistd::chdir(rootfs).ctx(|| format!("chdir {}", rootfs.display()))?;
    nix::unistd::chroot(".").ctx(|| "chroot")?;
    nix::unistd::chdir("/").ctx(|| "chdir /")
}

/// Apply a `shared` or `unbindable` `linux.rootfsPropagation` to the zone's root
/// mount, once inside it (after [`enter_root`]); `private` and `slave` were set by
/// [`prepare_rootfs`].
pub fn apply_root_propagation(spec: &oci_spec::runtime::Spec) -> Result<()> {
    let Some(prop) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().clone())
        .as_deref()
        .and_then(propagation_flags)
    else {
        return Ok(());
    };
    if prop.contains(MsFlags::MS_SHARED) || prop.contains(MsFlags::MS_UNBINDABLE) {
        mnt(None, Path::new("/"), None, prop, None, &|| {
            "set rootfsPropagation".into()
        })?;
    }
    Ok(())
}

/// statfs(2) magic numbers of the file systems masks may land on.
pub const PROC_SUPER_MAGIC: i64 = 0x9fa0;
pub const SYSFS_MAGIC: i64 = 0x6265_6572;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// A path as a C string (paths from the spec never contain NUL after serde).
pub fn cpath(p: &Path) -> Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| ZoneError::Msg(format!("path {:?} contains a NUL byte", p)))
}

/// Device number of a path (for tests and checks).
pub fn rdev_of(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.rdev())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn option_parsing() {
        let o = MountOptions::parse(&["nosuid", "strictatime", "mode=755", "size=65536k"]).unwrap();
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data_string().as_deref(), Some("mode=755,size=65536k"));
        assert!(!o.bind);
        let o = MountOptions::parse(&["rbind", "ro", "rprivate", "nodev", "rw"]).unwrap();
        assert!(o.bind && o.recursive);
        assert_eq!(
            o.flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_NODEV
        );
        assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        assert!(o.data.is_empty());
        let o = MountOptions::parse(&["noatime", "atime", "suid", "nosuid"]).unwrap();
        assert_eq!(o.flags, MsFlags::MS_NOSUID);
        assert!(MountOptions::parse(&["idmap"]).is_err());
        assert_eq!(
            propagation_flags("rslave"),
            Some(MsFlags::MS_SLAVE | MsFlags::MS_REC)
        );
        assert_eq!(propagation_flags("bogus"), None);
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bh-mounts-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn real(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
    }

    #[test]
    fn symlinks_cannot_escape_the_root() {
        let base = tmpdir("escape");
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // Absolute and relative symlinks that point out of the root.
        std::os::unix::fs::symlink("/", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("etc/up")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
        let rfd =
            nix::fcntl::open(&root, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();

        let fd = resolve_in_root(&rfd, Path::new("/abs/etc"), Create::Nothing).unwrap();
        assert_eq!(real(&fd), root.join("etc"));
        let fd = resolve_in_root(&rfd, Path::new("/etc/up/etc"), Create::Nothing).unwrap();
        assert_eq!(real(&fd), root.join("etc"));
        let fd = resolve_in_root(&rfd, Path::new("/../../etc"), Create::Nothing).unwrap();
        assert_eq!(real(&fd), root.join("etc"));
        // Creating through an escaping symlink lands inside the root.
        let fd = resolve_in_root(&rfd, Path::new("/out/new/dir"), Create::Dir).unwrap();
        assert_eq!(
            real(&fd),
            root.join(outside.strip_prefix("/").unwrap())
                .join("new/dir")
        );
        assert!(!outside.join("new").exists());
        let fd = resolve_in_root(&rfd, Path::new("/abs/tmp/file"), Create::File).unwrap();
        assert_eq!(real(&fd), root.join("tmp/file"));
        assert!(root.join("tmp/file").is_file());
        assert!(resolve_in_root(&rfd, Path::new("/missing"), Create::Nothing).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
