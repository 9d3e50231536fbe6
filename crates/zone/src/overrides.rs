//! Typed changes an `exec` makes to the process it starts (what runc's `exec` flags
//! do): environment, user, additional groups, capabilities, cwd, no_new_privs, tty.
//! A monitor builds an [`ExecOverrides`] directly; bulkhead-runc converts its flags.

use std::path::PathBuf;

use oci_spec::runtime::{Capability, LinuxCapabilitiesBuilder, Process};

/// Why an override cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideError {
    /// A user spelling that is not `uid[:gid]` in numbers.
    #[error("user {0:?}: expected uid[:gid] as numbers")]
    User(String),
    /// A capability name this runtime does not know.
    #[error("capability {0:?}: unknown capability")]
    Capability(String),
    /// An environment entry without '='.
    #[error("environment entry {0:?} is not of the form KEY=VALUE")]
    Env(String),
    /// The working directory is not absolute.
    #[error("cwd {0:?} is not an absolute path")]
    Cwd(PathBuf),
}

/// The user an exec'd process runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExecUser {
    pub uid: u32,
    /// The group; `None` means 0, as runc's `--user uid` does.
    pub gid: Option<u32>,
}

impl std::str::FromStr for ExecUser {
    type Err = OverrideError;
    /// `uid` or `uid:gid`, numbers only.
    fn from_str(s: &str) -> Result<Self, OverrideError> {
        let bad = || OverrideError::User(s.to_string());
        let (u, g) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let uid = u.parse().map_err(|_| bad())?;
        let gid = match g {
            Some(g) => Some(g.parse().map_err(|_| bad())?),
            None => None,
        };
        Ok(ExecUser { uid, gid })
    }
}

/// Parse a capability name: `NET_ADMIN`, `cap_net_admin` or `CAP_NET_ADMIN`.
pub fn parse_capability(name: &str) -> Result<Capability, OverrideError> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare.parse()
        .map_err(|_| OverrideError::Capability(name.to_string()))
}

/// Changes applied on top of a base process (the zone's own, from
/// [`crate::container::exec_base_process`], or one given whole).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecOverrides {
    /// `KEY=VALUE` entries; each replaces an entry with the same key.
    pub env: Vec<String>,
    /// Run as this user (and group).
    pub user: Option<ExecUser>,
    /// Replace the additional groups when not empty.
    pub additional_gids: Vec<u32>,
    /// Capabilities added to the bounding, effective and permitted sets.
    pub caps: Vec<Capability>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Set no_new_privileges (never clears it).
    pub no_new_privs: bool,
    /// Allocate a terminal (`Some(true)`) or not (`Some(false)`); `None` keeps the base's.
    pub tty: Option<bool>,
}

impl ExecOverrides {
    /// Apply every override to `p`.
    pub fn apply(&self, p: &mut Process) -> Result<(), OverrideError> {
        if let Some(t) = self.tty {
            p.set_terminal(Some(t));
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.is_absolute() {
                return Err(OverrideError::Cwd(cwd.clone()));
            }
            p.set_cwd(cwd.clone());
        }
        if !self.env.is_empty() {
            let mut env = p.env().clone().unwrap_or_default();
            for kv in &self.env {
                let Some((key, _)) = kv.split_once('=') else {
                    return Err(OverrideError::Env(kv.clone()));
                };
                env.retain(|x| x.split('=').next() != Some(key));
                env.push(kv.clone());
            }
            p.set_env(Some(env));
        }
        if let Some(u) = self.user {
            let user = p.user_mut();
            user.set_uid(u.uid);
            user.set_gid(u.gid.unwrap_or(0));
        }
        if !self.additional_gids.is_empty() {
            p.user_mut()
                .set_additional_gids(Some(self.additional_gids.clone()));
        }
        if self.no_new_privs {
            p.set_no_new_privileges(Some(true));
        }
        if !self.caps.is_empty() {
            let mut caps = p.capabilities().clone().unwrap_or_else(|| {
                LinuxCapabilitiesBuilder::default()
                    .build()
                    .unwrap_or_default()
            });
            let add = |set: &Option<oci_spec::runtime::Capabilities>| {
                let mut s = set.clone().unwrap_or_default();
                s.extend(self.caps.iter().copied());
                Some(s)
            };
            let (b, e, pm) = (
                add(caps.bounding()),
                add(caps.effective()),
                add(caps.permitted()),
            );
            caps.set_bounding(b);
            caps.set_effective(e);
            caps.set_permitted(pm);
            p.set_capabilities(Some(caps));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_spellings() {
        assert_eq!(
            "1000".parse::<ExecUser>().unwrap(),
            ExecUser {
                uid: 1000,
                gid: None
            }
        );
        assert_eq!(
            "1000:5".parse::<ExecUser>().unwrap(),
            ExecUser {
                uid: 1000,
                gid: Some(5)
            }
        );
        assert_eq!(
            "bob".parse::<ExecUser>().unwrap_err(),
            OverrideError::User("bob".into())
        );
        assert!("1:x".parse::<ExecUser>().is_err());
    }

    #[test]
    fn apply_to_a_process() {
        let mut p = Process::default();
        p.set_env(Some(vec!["A=1".into(), "B=2".into()]));
        let o = ExecOverrides {
            env: vec!["B=3".into(), "C=4".into()],
            user: Some(ExecUser {
                uid: 1000,
                gid: None,
            }),
            additional_gids: vec![10, 20],
            caps: vec![parse_capability("net_admin").unwrap()],
            cwd: Some("/tmp".into()),
            no_new_privs: true,
            tty: Some(false),
        };
        o.apply(&mut p).unwrap();
        assert_eq!(
            p.env().clone().unwrap(),
            vec!["A=1".to_string(), "B=3".into(), "C=4".into()]
        );
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 0));
        assert_eq!(p.user().additional_gids().clone().unwrap(), vec![10, 20]);
        assert_eq!(p.cwd(), &PathBuf::from("/tmp"));
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.terminal(), Some(false));
        let c = p.capabilities().clone().unwrap();
        for set in [c.bounding(), c.effective(), c.permitted()] {
            assert!(set.as_ref().unwrap().contains(&Capability::NetAdmin));
        }
        assert_eq!(
            parse_capability("CAP_BOGUS").unwrap_err(),
            OverrideError::Capability("CAP_BOGUS".into())
        );
        let bad = ExecOverrides {
            env: vec!["NOEQUALS".into()],
            ..Default::default()
        };
        assert_eq!(
            bad.apply(&mut p).unwrap_err(),
            OverrideError::Env("NOEQUALS".into())
        );
    }
}
