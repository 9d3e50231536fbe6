//! After pivot_root: masked and read-only paths, each resolved inside the root and
//! checked to sit on the file system it should (procfs, sysfs) before it is covered, the
//! real `/dev/null` as the mask, procfs files opened for writing through checked
//! descriptors (runc's 2025 CVE family), and the read-only root.

use super::*;

/// The file system type (statfs magic) of an open descriptor.
pub fn fs_magic(fd: &OwnedFd) -> Result<i64> {
    let s = nix::sys::statfs::fstatfs(fd).ctx(|| "fstatfs")?;
    Ok(s.filesystem_type().0 as i64)
}

/// Resolve the destination of a `proc` or `sysfs` mount: it must be a plain
/// directory inside the root, reached without any symlink (CVE-2019-16884,
/// CVE-2025-52565 family: a symlinked `/proc` would put procfs, and with it
/// every mask, wherever the link points — e.g. into a volume the zone controls).
pub(super) fn ordinary_dir(root: &OwnedFd, dest: &Path, typ: &str) -> Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_DIRECTORY)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let comps = rel_components(dest);
    if comps.iter().any(|c| c == Path::new("..")) {
        return Err(ZoneError::Msg(format!(
            "{typ} must be mounted on ordinary directory ({} contains \"..\")",
            dest.display()
        )));
    }
    let rel: PathBuf = if comps.is_empty() {
        PathBuf::from(".")
    } else {
        comps.iter().collect()
    };
    let refuse = |e: Errno| {
        ZoneError::Msg(format!(
            "{typ} must be mounted on ordinary directory: {} is a symlink or not a directory ({e})",
            dest.display()
        ))
    };
    match openat2(root.as_fd(), &rel, how) {
        Ok(fd) => Ok(fd),
        Err(Errno::ENOENT) => {
            // Missing: create it (symlinks met on the way are refused below).
            resolve_in_root(root, dest, Create::Dir)?;
            openat2(root.as_fd(), &rel, how).map_err(refuse)
        }
        Err(e @ (Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV)) => Err(refuse(e)),
        Err(e) => Err(ZoneError::sys(
            format!("resolve {} in the root", dest.display()),
            e,
        )),
    }
}

/// The file systems a masked or read-only path may be on: procfs below
/// `/proc`, sysfs (or the zone's cgroup mounts) below `/sys`, anything else
/// elsewhere.
pub(super) fn expected_fs(p: &Path) -> Option<(&'static str, &'static [i64])> {
    if p.starts_with("/proc") {
        Some(("procfs", &[PROC_SUPER_MAGIC]))
    } else if p.starts_with("/sys") {
        Some((
            "sysfs",
            &[SYSFS_MAGIC, CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC],
        ))
    } else {
        None
    }
}

/// Open a masked/read-only target inside the root `/` (no escape through
/// symlinks or magic links) and check it is on the file system it must be on,
/// so a mask can never land in a volume the zone controls. `None`: absent.
pub(super) fn open_target(root: &OwnedFd, list: &str, p: &str) -> Result<Option<OwnedFd>> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(ZoneError::Spec(format!(
            "linux.{list}: {p:?} is not an absolute path"
        )));
    }
    let rel: PathBuf = rel_components(path).iter().collect();
    if rel.as_os_str().is_empty() {
        return Err(ZoneError::Spec(format!("linux.{list}: cannot use \"/\"")));
    }
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(root.as_fd(), &rel, how) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(None),
        Err(e) => return Err(ZoneError::sys(format!("linux.{list}: resolve {p}"), e)),
    };
    if let Some((name, magics)) = expected_fs(path) {
        let m = fs_magic(&fd)?;
        if !magics.contains(&m) {
            return Err(ZoneError::Msg(format!(
                "linux.{list}: {p} is not on {name} (file system magic {m:#x}); refusing to apply it elsewhere"
            )));
        }
    }
    Ok(Some(fd))
}

/// Open a file below `/proc` of the current root for writing: resolved inside
/// the root without any symlink, checked with fstatfs to be on procfs, then
/// reopened for writing through its descriptor.
pub fn open_procfs_file_for_write(path: &Path) -> Result<std::fs::File> {
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| "open /")?;
    let rel: PathBuf = rel_components(path).iter().collect();
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let fd = openat2(root.as_fd(), &rel, how).ctx(|| format!("open {}", path.display()))?;
    let m = fs_magic(&fd)?;
    if m != PROC_SUPER_MAGIC {
        return Err(ZoneError::Msg(format!(
            "{} is not on procfs (file system magic {m:#x})",
            path.display()
        )));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(fd_path(&fd))
        .map_err(|e| ZoneError::io("open for writing", path, e))
}

/// The zone's `/dev/null`, checked to be the real null device (char 1:3) before
/// it is bind-mounted over masked files (CVE-2025-31133: a /dev/null replaced by
/// a symlink or another file would make the "mask" a bind of that file).
pub(super) fn real_dev_null(root: &OwnedFd) -> Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let fd = openat2(root.as_fd(), "dev/null", how).ctx(|| "open /dev/null in the zone")?;
    let st = nix::sys::stat::fstat(&fd).ctx(|| "stat /dev/null")?;
    let is_chr = st.st_mode & libc::S_IFMT == libc::S_IFCHR;
    if !is_chr || st.st_rdev != nix::sys::stat::makedev(1, 3) {
        return Err(ZoneError::Msg(
            "maskedPaths: /dev/null in the zone is not the null device (char 1:3); refusing to mask with it"
                .into(),
        ));
    }
    Ok(fd)
}

/// After pivot_root: read-only paths, masked paths, read-only root. Every
/// target is resolved inside the root and checked with fstatfs, and mounts
/// go through the resolved descriptors, never a second path lookup.
pub fn finish_rootfs(spec: &oci_spec::runtime::Spec) -> Result<()> {
    let linux = spec.linux().clone().unwrap_or_default();
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| "open /")?;
    for p in linux.readonly_paths().iter().flatten() {
        let Some(fd) = open_target(&root, "readonlyPaths", p)? else {
            continue;
        };
        let fdp = fd_path(&fd);
        mnt(
            Some(fdp.as_path()),
            &fdp,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            &|| format!("bind read-only path {p}"),
        )?;
        // The descriptor still names the covered dentry: reopen to reach the
        // new bind mount (checked again) and remount that read-only.
        let Some(top) = open_target(&root, "readonlyPaths", p)? else {
            return Err(ZoneError::Msg(format!("readonlyPaths: {p} vanished")));
        };
        let tp = fd_path(&top);
        let fl = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_REC
            | locked_flags(&tp);
        mnt(None, &tp, None, fl, None, &|| {
            format!("remount {p} read-only")
        })?;
    }
    let mut null: Option<OwnedFd> = None;
    for p in linux.masked_paths().iter().flatten() {
        let Some(fd) = open_target(&root, "maskedPaths", p)? else {
            continue;
        };
        let st = nix::sys::stat::fstat(&fd).ctx(|| format!("stat masked path {p}"))?;
        let target = fd_path(&fd);
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            mnt(
                Some(Path::new("tmpfs")),
                &target,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
                &|| format!("mask {p}"),
            )?;
        } else {
            if null.is_none() {
                null = Some(real_dev_null(&root)?);
            }
            let src = null.as_ref().map(fd_path).unwrap_or_default();
            mnt(
                Some(src.as_path()),
                &target,
                None,
                MsFlags::MS_BIND,
                None,
                &|| format!("mask {p}"),
            )?;
        }
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        let fl = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | locked_flags(Path::new("/"));
        mnt(None, Path::new("/"), None, fl, None, &|| {
            "remount / read-only".into()
        })?;
    }
    Ok(())
}
