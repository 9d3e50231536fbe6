//! Loading and validating an OCI bundle's `config.json`: type errors name the
//! JSON path of the offending value, semantic errors name the field and the
//! rule it breaks. Nothing here touches the system besides reading files.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Result, ZoneError};

/// A parsed and validated bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute bundle directory.
    pub dir: PathBuf,
    /// Absolute root file system path.
    pub rootfs: PathBuf,
    /// The parsed configuration.
    pub spec: Spec,
}

/// Remove capability names this runtime or kernel does not know from every set of
/// a `process` object, returning one warning per name: the runtime spec says an
/// unknown or unavailable capability is logged and does not fail creation.
pub fn drop_unknown_capabilities(process: &mut serde_json::Value) -> Vec<String> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    let mut warnings = Vec::new();
    let Some(sets) = process
        .get_mut("capabilities")
        .and_then(|c| c.as_object_mut())
    else {
        return warnings;
    };
    for (set, list) in sets.iter_mut() {
        let Some(list) = list.as_array_mut() else {
            continue;
        };
        list.retain(|name| {
            let Some(n) = name.as_str() else {
                return true; // a type error, reported by the parser
            };
            let known =
                serde_json::from_value::<oci_spec::runtime::Capability>(name.clone()).is_ok();
            let available = n
                .parse::<caps::Capability>()
                .map(|c| u32::from(c.index()) <= last)
                .unwrap_or(false);
            if known && available {
                return true;
            }
            let why = if known {
                "not available on this kernel"
            } else {
                "unknown"
            };
            warnings.push(format!(
                "process.capabilities.{set}: {n:?} is {why}; ignored"
            ));
            false
        });
    }
    warnings
}

/// Parse config.json text; errors read `config.json: <json path>: <problem>`.
/// Unknown capabilities are dropped with a `tracing` warning.
pub fn parse(text: &str) -> Result<Spec> {
    let mut owned = None;
    if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(text) {
        if let Some(p) = v.get_mut("process") {
            let warnings = drop_unknown_capabilities(p);
            if !warnings.is_empty() {
                for w in &warnings {
                    tracing::warn!("{w}");
                }
                owned = Some(v.to_string());
            }
        }
    }
    let text = owned.as_deref().unwrap_or(text);
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = strip_position(&e.inner().to_string());
        if path.is_empty() || path == "." {
            ZoneError::Spec(format!("config.json: {inner}"))
        } else {
            ZoneError::Spec(format!("config.json: {path}: {inner}"))
        }
    })
}

/// serde_json appends " at line L column C"; the JSON path is more useful.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(" column ") => msg[..i].to_string(),
        _ => msg.to_string(),
    }
}

/// Load `<bundle>/config.json` and validate it for `create`.
pub fn load_bundle(bundle: &Path) -> Result<Bundle> {
    let dir = if bundle.is_absolute() {
        bundle.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| ZoneError::io("getcwd", Path::new("."), e))?
            .join(bundle)
    };
    // Lexically clean ("/tmp/b/." → "/tmp/b"), like runc's filepath.Abs.
    let dir: PathBuf = dir.components().collect();
    let cfg = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg).map_err(|e| ZoneError::io("read", &cfg, e))?;
    let spec = parse(&text)?;
    let rootfs = validate(&spec, &dir)?;
    Ok(Bundle { dir, rootfs, spec })
}

fn is_new_ns(spec: &Spec, t: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .map(|ns| ns.iter().any(|n| n.typ() == t && n.path().is_none()))
        .unwrap_or(false)
}

fn has_ns(spec: &Spec, t: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .map(|ns| ns.iter().any(|n| n.typ() == t))
        .unwrap_or(false)
}

fn check_limit(field: &str, v: Option<i64>) -> Result<()> {
    match v {
        Some(x) if x < -1 => Err(ZoneError::Spec(format!(
            "config.json: {field}: {x} is negative (use -1 for unlimited)"
        ))),
        _ => Ok(()),
    }
}

/// Semantic validation; returns the absolute root file system path.
pub fn validate(spec: &Spec, bundle_dir: &Path) -> Result<PathBuf> {
    let e = |m: String| Err(ZoneError::Spec(format!("config.json: {m}")));
    let root = match spec.root() {
        Some(r) => r,
        None => return e("root: missing (the root file system is required)".into()),
    };
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle_dir.join(root.path())
    };
    match std::fs::metadata(&rootfs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return e(format!(
                "root.path: {} is not a directory",
                rootfs.display()
            ))
        }
        Err(err) => return e(format!("root.path: {}: {err}", rootfs.display())),
    }
    let process = match spec.process() {
        Some(p) => p,
        None => return e("process: missing (required to create a container)".into()),
    };
    validate_process(process).map_err(|m| ZoneError::Spec(format!("config.json: {m}")))?;

    if let Some(mounts) = spec.mounts() {
        for (i, m) in mounts.iter().enumerate() {
            if !m.destination().is_absolute() {
                return e(format!(
                    "mounts[{i}].destination: {:?} is not an absolute path",
                    m.destination()
                ));
            }
            if let Some(opts) = m.options() {
                crate::mounts::MountOptions::parse(opts).map_err(|m2| {
                    ZoneError::Spec(format!("config.json: mounts[{i}].options: {m2}"))
                })?;
            }
        }
    }

    let linux = spec.linux().clone().unwrap_or_default();
    let mut seen = HashSet::new();
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        if !seen.insert(ns.typ()) {
            return e(format!(
                "linux.namespaces[{i}]: duplicate namespace \"{}\"",
                ns.typ()
            ));
        }
        if let Some(p) = ns.path() {
            if !p.is_absolute() {
                return e(format!(
                    "linux.namespaces[{i}].path: {:?} is not an absolute path",
                    p
                ));
            }
            if let Err(err) = std::fs::metadata(p) {
                return e(format!(
                    "linux.namespaces[{i}].path: {}: {err}",
                    p.display()
                ));
            }
        }
    }
    let new_user = is_new_ns(spec, LinuxNamespaceType::User);
    let uidm = linux
        .uid_mappings()
        .as_ref()
        .map(|v| !v.is_empty())
        .unwrap_or(false);
    let gidm = linux
        .gid_mappings()
        .as_ref()
        .map(|v| !v.is_empty())
        .unwrap_or(false);
    if new_user && !uidm {
        return e("linux.uidMappings: required when a new user namespace is created".into());
    }
    if new_user && !gidm {
        return e("linux.gidMappings: required when a new user namespace is created".into());
    }
    if !new_user && uidm {
        return e("linux.uidMappings: set, but no new user namespace is requested".into());
    }
    if !new_user && gidm {
        return e("linux.gidMappings: set, but no new user namespace is requested".into());
    }
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty())
        && !has_ns(spec, LinuxNamespaceType::Uts)
    {
        return e("hostname: cannot set the hostname without a private UTS namespace".into());
    }
    if spec.domainname().as_deref().is_some_and(|h| !h.is_empty())
        && !has_ns(spec, LinuxNamespaceType::Uts)
    {
        return e("domainname: cannot set the domain name without a private UTS namespace".into());
    }
    if linux.time_offsets().as_ref().is_some_and(|t| !t.is_empty())
        && !is_new_ns(spec, LinuxNamespaceType::Time)
    {
        return e("linux.timeOffsets: set, but no new time namespace is requested".into());
    }
    if let Some(r) = linux.resources() {
        if let Some(m) = r.memory() {
            check_limit("linux.resources.memory.limit", m.limit())?;
            check_limit("linux.resources.memory.swap", m.swap())?;
            check_limit("linux.resources.memory.reservation", m.reservation())?;
        }
        if let Some(p) = r.pids() {
            check_limit("linux.resources.pids.limit", Some(p.limit()))?;
        }
    }
    if let Some(prop) = linux.rootfs_propagation() {
        if !matches!(
            prop.as_str(),
            "" | "private"
                | "rprivate"
                | "slave"
                | "rslave"
                | "shared"
                | "rshared"
                | "unbindable"
                | "runbindable"
        ) {
            return e(format!(
                "linux.rootfsPropagation: unknown propagation {prop:?}"
            ));
        }
    }
    if let Some(l) = linux.mount_label() {
        if !l.is_empty() {
            return e("linux.mountLabel: SELinux is not supported by bulkhead-runc".into());
        }
    }
    Ok(rootfs)
}

/// Validate a process object (also used by `exec --process`). Returns the
/// message without the "config.json: " prefix.
pub fn validate_process(p: &oci_spec::runtime::Process) -> std::result::Result<(), String> {
    match p.args() {
        Some(a) if !a.is_empty() => {}
        _ => return Err("process.args: must not be empty".into()),
    }
    if !p.cwd().is_absolute() {
        return Err(format!(
            "process.cwd: {:?} is not an absolute path",
            p.cwd()
        ));
    }
    if p.apparmor_profile()
        .as_deref()
        .is_some_and(|s| !s.is_empty())
    {
        return Err("process.apparmorProfile: AppArmor is not supported by bulkhead-runc".into());
    }
    if p.selinux_label().as_deref().is_some_and(|s| !s.is_empty()) {
        return Err("process.selinuxLabel: SELinux is not supported by bulkhead-runc".into());
    }
    if let Some(env) = p.env() {
        for (i, kv) in env.iter().enumerate() {
            if !kv.contains('=') {
                return Err(format!(
                    "process.env[{i}]: {kv:?} is not of the form KEY=VALUE"
                ));
            }
        }
    }
    let mut seen = HashSet::new();
    for r in p.rlimits().iter().flatten() {
        if !seen.insert(r.typ().to_string()) {
            return Err(format!("process.rlimits: duplicate limit {}", r.typ()));
        }
        if r.soft() > r.hard() {
            return Err(format!(
                "process.rlimits: {}: soft limit {} is above the hard limit {}",
                r.typ(),
                r.soft(),
                r.hard()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.2.0",
            "root": {"path": "/"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
        })
    }

    fn check(v: &serde_json::Value) -> std::result::Result<PathBuf, String> {
        let spec = parse(&v.to_string()).map_err(|e| e.to_string())?;
        validate(&spec, Path::new("/")).map_err(|e| e.to_string())
    }

    #[test]
    fn type_error_names_json_path() {
        let mut v = base();
        v["process"]["args"] = serde_json::json!("sh");
        let err = check(&v).unwrap_err();
        assert_eq!(
            err,
            "config.json: process.args: invalid type: string \"sh\", expected a sequence"
        );
    }

    #[test]
    fn valid_spec_passes() {
        assert_eq!(check(&base()).unwrap(), PathBuf::from("/"));
    }

    #[test]
    fn missing_root_dir() {
        let mut v = base();
        v["root"]["path"] = serde_json::json!("/nonexistent-bulkhead-root");
        let err = check(&v).unwrap_err();
        assert!(
            err.starts_with("config.json: root.path: /nonexistent-bulkhead-root: "),
            "{err}"
        );
        v["root"]["path"] = serde_json::json!("/etc/hostname");
        assert_eq!(
            check(&v).unwrap_err(),
            "config.json: root.path: /etc/hostname is not a directory"
        );
    }

    #[test]
    fn relative_cwd_rejected() {
        let mut v = base();
        v["process"]["cwd"] = serde_json::json!("tmp");
        assert_eq!(
            check(&v).unwrap_err(),
            "config.json: process.cwd: \"tmp\" is not an absolute path"
        );
    }

    #[test]
    fn duplicate_and_unknown_namespaces() {
        let mut v = base();
        v["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "pid"}]);
        assert_eq!(
            check(&v).unwrap_err(),
            "config.json: linux.namespaces[1]: duplicate namespace \"pid\""
        );
        v["linux"]["namespaces"] = serde_json::json!([{"type": "bogus"}]);
        let err = check(&v).unwrap_err();
        assert!(
            err.starts_with("config.json: linux.namespaces[0].type: unknown variant `bogus`"),
            "{err}"
        );
    }

    #[test]
    fn negative_memory_limit() {
        let mut v = base();
        v["linux"]["resources"] = serde_json::json!({"memory": {"limit": -5}});
        assert_eq!(
            check(&v).unwrap_err(),
            "config.json: linux.resources.memory.limit: -5 is negative (use -1 for unlimited)"
        );
        v["linux"]["resources"] = serde_json::json!({"memory": {"limit": -1}});
        assert!(check(&v).is_ok());
    }

    #[test]
    fn user_namespace_mappings() {
        let mut v = base();
        v["linux"]["namespaces"] = serde_json::json!([{"type": "user"}]);
        assert_eq!(
            check(&v).unwrap_err(),
            "config.json: linux.uidMappings: required when a new user namespace is created"
        );
        let mut v = base();
        v["linux"]["uidMappings"] =
            serde_json::json!([{"hostID": 1000, "containerID": 0, "size": 1}]);
        assert_eq!(
            check(&v).unwrap_err(),
            "config.json: linux.uidMappings: set, but no new user namespace is requested"
        );
    }

    #[test]
    fn missing_process_and_empty_args() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("process");
        assert_eq!(
            check(&v).unwrap_err(),
            "config.json: process: missing (required to create a container)"
        );
        let mut v = base();
        v["process"]["args"] = serde_json::json!([]);
        assert_eq!(
            check(&v).unwrap_err(),
            "config.json: process.args: must not be empty"
        );
    }

    #[test]
    fn hostname_needs_uts() {
        let mut v = base();
        v["hostname"] = serde_json::json!("zone1");
        assert_eq!(
            check(&v).unwrap_err(),
            "config.json: hostname: cannot set the hostname without a private UTS namespace"
        );
    }
}
