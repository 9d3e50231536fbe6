//! Zone snapshots with what storage gives today (a root directory, no copy-on-write pool
//! yet): a snapshot is a full copy of the zone's root (`cp -a --reflink=auto`, so it is
//! cheap on btrfs and xfs), taken with the zone frozen so the copy is consistent.
//! Restoring swaps the copy in with two renames on the root's own file system, so a crash
//! never leaves a half-restored root: the old root stays beside it until the swap is done.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use api::{InstanceKind, Snapshot, Source};
use hyper::StatusCode;

use crate::http::Body;
use crate::instances::{lock, Daemon};
use crate::ApiError;

type Resp = hyper::Response<Body>;

fn rootfs_of(d: &Daemon, name: &str) -> Result<(i64, PathBuf), ApiError> {
    let row = d.row(name)?;
    if row.kind == InstanceKind::Vm {
        return Err(ApiError::bad(format!(
            "snapshots of VM {name:?} are taken by its monitor; they are not available through the API yet"
        )));
    }
    let root = match &row.source {
        Source::Rootfs { path } => PathBuf::from(path),
        Source::Bundle { path } => {
            zone::spec::load_bundle(Path::new(path))
                .map_err(|e| ApiError::bad(format!("bundle {path}: {e}")))?
                .rootfs
        }
        Source::None => return Err(ApiError::bad("the instance has no root file system")),
    };
    Ok((row.id, root))
}

fn snap_dir(d: &Daemon, id: i64, snap: &str) -> PathBuf {
    d.paths.instance_dir(id).join("snapshots").join(snap)
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let out = std::process::Command::new("cp")
        .args(["-a", "--reflink=auto", "--"])
        .arg(from)
        .arg(to)
        .output()
        .map_err(|e| format!("run cp: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "copy {} to {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

pub async fn create(d: Arc<Daemon>, name: &str, snap: &str) -> Result<Resp, ApiError> {
    api::validate_name("snapshot", snap).map_err(ApiError::bad)?;
    let (id, root) = rootfs_of(&d, name)?;
    if lock(&d.store)
        .snapshots(id)
        .map_err(ApiError::internal)?
        .iter()
        .any(|s| s.name == snap)
    {
        return Err(ApiError::conflict(format!(
            "snapshot {snap:?} of {name:?} already exists"
        )));
    }
    let name = name.to_string();
    let snap = snap.to_string();
    let dd = d.clone();
    let op = d.ops.spawn(
        format!("Snapshotting instance {name} as {snap}"),
        vec![format!("/1.0/instances/{name}")],
        false,
        move |_| async move {
            let guard = dd.instance_lock(&name);
            let _g = guard.lock().await;
            let running = dd.is_running(&name);
            let frozen_by_us = running
                && dd.status_of(&name).0 == api::Status::Running
                && dd.call(id, monitor::Request::Freeze).await.is_ok();
            let dir = snap_dir(&dd, id, &snap);
            let target = dir.join("rootfs");
            let r = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| format!("create {}: {e}", dir.display()))?;
                    copy_tree(&root, &target)
                }
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            if frozen_by_us {
                let _ = dd.call(id, monitor::Request::Unfreeze).await;
            }
            if let Err(e) = r {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
            let s = Snapshot {
                name: snap.clone(),
                created_at: crate::ops::now_rfc3339(),
                stateful: running,
            };
            if let Err(e) = lock(&dd.store).add_snapshot(id, &s) {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.to_string());
            }
            dd.ops.lifecycle("instance-snapshot-created", &name);
            Ok(())
        },
    );
    Ok(crate::http::text(
        StatusCode::ACCEPTED,
        "application/json",
        serde_json::to_vec(&op).unwrap_or_default(),
    ))
}

pub async fn restore(d: Arc<Daemon>, name: &str, snap: &str) -> Result<Resp, ApiError> {
    let (id, root) = rootfs_of(&d, name)?;
    if !lock(&d.store)
        .snapshots(id)
        .map_err(ApiError::internal)?
        .iter()
        .any(|s| s.name == snap)
    {
        return Err(ApiError::not_found(format!(
            "snapshot {snap:?} of {name:?} not found"
        )));
    }
    if d.is_running(name) {
        return Err(ApiError::conflict(format!(
            "instance {name:?} is running; stop it before restoring"
        )));
    }
    let name = name.to_string();
    let snap = snap.to_string();
    let dd = d.clone();
    let op = d.ops.spawn(
        format!("Restoring instance {name} from {snap}"),
        vec![format!("/1.0/instances/{name}")],
        false,
        move |_| async move {
            let guard = dd.instance_lock(&name);
            let _g = guard.lock().await;
            if dd.is_running(&name) {
                return Err(format!(
                    "instance {name:?} started meanwhile; stop it first"
                ));
            }
            let src = snap_dir(&dd, id, &snap).join("rootfs");
            tokio::task::spawn_blocking(move || swap_in(&src, &root))
                .await
                .map_err(|e| e.to_string())??;
            dd.ops.lifecycle("instance-snapshot-restored", &name);
            Ok(())
        },
    );
    Ok(crate::http::text(
        StatusCode::ACCEPTED,
        "application/json",
        serde_json::to_vec(&op).unwrap_or_default(),
    ))
}

/// Copies `src` next to `root` (same file system), then swaps it in by renames.
fn swap_in(src: &Path, root: &Path) -> Result<(), String> {
    let parent = root.parent().ok_or("the root directory has no parent")?;
    let base = root
        .file_name()
        .ok_or("the root directory has no name")?
        .to_string_lossy()
        .to_string();
    let fresh = parent.join(format!(".{base}.bulkhead-restore"));
    let old = parent.join(format!(".{base}.bulkhead-old"));
    let _ = std::fs::remove_dir_all(&fresh);
    let _ = std::fs::remove_dir_all(&old);
    if let Err(e) = copy_tree(src, &fresh) {
        let _ = std::fs::remove_dir_all(&fresh);
        return Err(e);
    }
    std::fs::rename(root, &old).map_err(|e| format!("move {} aside: {e}", root.display()))?;
    if let Err(e) = std::fs::rename(&fresh, root) {
        let _ = std::fs::rename(&old, root);
        return Err(format!("move the restored root into place: {e}"));
    }
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

pub async fn delete(d: Arc<Daemon>, name: &str, snap: &str) -> Result<Resp, ApiError> {
    let row = d.row(name)?;
    let guard = d.instance_lock(name);
    let _g = guard.lock().await;
    if !lock(&d.store)
        .snapshots(row.id)
        .map_err(ApiError::internal)?
        .iter()
        .any(|s| s.name == snap)
    {
        return Err(ApiError::not_found(format!(
            "snapshot {snap:?} of {name:?} not found"
        )));
    }
    lock(&d.store)
        .delete_snapshot(row.id, snap)
        .map_err(ApiError::internal)?;
    let _ = std::fs::remove_dir_all(snap_dir(&d, row.id, snap));
    d.ops.lifecycle("instance-snapshot-deleted", name);
    Ok(crate::http::text(StatusCode::OK, "application/json", "{}"))
}
