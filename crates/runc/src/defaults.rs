//! Built-in documents: the `features` JSON (runtime-spec features.md) and the
//! default `config.json` written by `spec`.

use oci_spec::runtime::{LinuxSeccomp, Spec};

/// runtime-spec features document.
pub fn features() -> serde_json::Value {
    let mut caps: Vec<String> = caps::all().into_iter().map(|c| c.to_string()).collect();
    caps.sort();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "lazytime",
            "loud", "mand", "noatime", "nodev", "nodiratime", "noexec", "nolazytime", "nomand",
            "norelatime", "nostrictatime", "nosuid", "private", "rbind", "relatime", "remount",
            "ro", "rprivate", "rshared", "rslave", "runbindable", "rw", "shared", "silent",
            "slave", "strictatime", "suid", "sync", "tmpcopyup", "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": zone::seccomp::supported_actions(),
                "operators": zone::seccomp::supported_operators(),
                "archs": zone::seccomp::supported_archs(),
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": false}}
        },
        "annotations": {
            "io.github.bulkhead.runc.version": env!("CARGO_PKG_VERSION")
        }
    })
}

/// A runc-like default configuration with the default seccomp profile.
pub fn default_spec(rootless: bool) -> Spec {
    let mut spec = if rootless {
        Spec::rootless(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    } else {
        Spec::default()
    };
    spec.set_version("1.2.0".into());
    spec.set_hostname(Some("bulkhead".into()));
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(true));
        p.set_args(Some(vec!["sh".into()]));
        p.set_no_new_privileges(Some(true));
        // CVE-2022-29162: like runc since 1.1.2, no inheritable and no ambient
        // capabilities by default (oci-spec's default fills all five sets), so a
        // non-root `exec -u` user gets nothing across execve.
        if let Some(c) = p.capabilities().clone() {
            let mut c = c;
            c.set_inheritable(None);
            c.set_ambient(None);
            p.set_capabilities(Some(c));
        }
    }
    if let Some(l) = spec.linux_mut() {
        let profile: LinuxSeccomp = zone::seccomp::default_profile();
        l.set_seccomp(Some(profile));
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_is_valid_for_a_bundle() {
        let spec = default_spec(false);
        let text = serde_json::to_string(&spec).unwrap();
        let back = zone::spec::parse(&text).unwrap();
        assert_eq!(
            back.process().as_ref().unwrap().args().as_ref().unwrap(),
            &vec!["sh".to_string()]
        );
        assert!(back.linux().as_ref().unwrap().seccomp().is_some());
        let caps = back
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        assert!(caps.inheritable().as_ref().is_none_or(|s| s.is_empty()));
        assert!(caps.ambient().as_ref().is_none_or(|s| s.is_empty()));
        assert!(caps.bounding().as_ref().is_some_and(|s| !s.is_empty()));
        let dir = std::env::temp_dir().join(format!("bh-spec-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        assert_eq!(
            zone::spec::validate(&back, &dir).unwrap(),
            dir.join("rootfs")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn features_shape() {
        let f = features();
        assert_eq!(f["ociVersionMax"], "1.2.0");
        assert_eq!(f["linux"]["cgroup"]["systemd"], false);
        assert!(f["linux"]["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "CAP_SYS_ADMIN"));
    }
}
