//! The instance configuration keys: one table ([`KEYS`]) with each key's type, default,
//! description, the kinds it applies to and whether it can change on a running instance.
//! The daemon validates every key through [`validate`]; `docs/config-keys.md` is generated
//! from the same table ([`docs_markdown`], checked by a test) so docs and code agree.

use std::collections::BTreeMap;

use crate::types::InstanceKind;

/// A configuration value that cannot be used; the message names the key and the form
/// that is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown configuration key {0:?} (see `bulkhead config keys` or docs/config-keys.md)")]
    UnknownKey(String),
    #[error("configuration key {key:?} does not apply to a {kind}")]
    WrongKind { key: String, kind: InstanceKind },
    #[error("invalid value {value:?} for {key}: expected {expected}")]
    Invalid {
        key: String,
        value: String,
        expected: String,
    },
    #[error("{key} cannot change while the instance is running; stop it first")]
    NotLive { key: String },
    #[error("missing configuration key {key}: {why}")]
    Missing { key: String, why: String },
}

/// The type of a key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// `true` or `false`.
    Bool,
    /// A size in bytes with an optional suffix: `64MiB`, `1GB`, `512M`, `4096`.
    Size,
    /// An integer in an inclusive range.
    Integer { min: u64, max: u64 },
    /// Zones: a CPU count (`2`) or a set of CPUs (`0-1,3`); VMs: a vCPU count.
    Cpu,
    /// A share of one CPU's time: `50%` or `25ms/100ms`.
    Allowance,
    /// `no`, `always`, `on-failure` or `on-failure:N`.
    Restart,
    /// `HOST_PATH:INSTANCE_PATH[:ro|:rw]`, both absolute.
    Mount,
    /// `PATH[:ro]`, absolute.
    Disk,
    /// An absolute host path.
    Path,
    /// A host name (a DNS label).
    Hostname,
    /// Free text.
    String,
}

impl KeyType {
    fn describe(self) -> &'static str {
        match self {
            KeyType::Bool => "true or false",
            KeyType::Size => "a size such as 64MiB, 512M, 1GB or a number of bytes",
            KeyType::Integer { .. } => "an integer",
            KeyType::Cpu => "a CPU count such as 2, or a CPU set such as 0-1,3",
            KeyType::Allowance => {
                "a percentage of one CPU such as 50%, or a quota such as 25ms/100ms"
            }
            KeyType::Restart => "no, always, on-failure or on-failure:N",
            KeyType::Mount => "HOST_PATH:INSTANCE_PATH[:ro|:rw] with absolute paths",
            KeyType::Disk => "an absolute PATH, optionally followed by :ro",
            KeyType::Path => "an absolute path",
            KeyType::Hostname => "a host name: letters, digits and '-', at most 63 characters",
            KeyType::String => "text",
        }
    }
}

/// One configuration key (or a family of keys when `name` ends in `.*`).
#[derive(Debug, Clone, Copy)]
pub struct KeyDef {
    pub name: &'static str,
    pub ty: KeyType,
    /// The value used when the key is unset ("" when there is none).
    pub default: &'static str,
    pub description: &'static str,
    /// Whether a change applies to a running instance.
    pub live: bool,
    pub zone: bool,
    pub vm: bool,
}

const fn key(
    name: &'static str,
    ty: KeyType,
    default: &'static str,
    live: bool,
    (zone, vm): (bool, bool),
    description: &'static str,
) -> KeyDef {
    KeyDef {
        name,
        ty,
        default,
        description,
        live,
        zone,
        vm,
    }
}

const ZONE: (bool, bool) = (true, false);
const VM: (bool, bool) = (false, true);
const BOTH: (bool, bool) = (true, true);

/// Every key the daemon accepts.
pub const KEYS: &[KeyDef] = &[
    key("limits.cpu", KeyType::Cpu, "", true, BOTH,
        "Zones: how many CPUs the zone may use (a count, enforced as a CFS quota) or which CPUs (a set, enforced with cpuset). VMs: the number of vCPUs (default 1; needs a restart)."),
    key("limits.cpu.allowance", KeyType::Allowance, "", true, ZONE,
        "A share of one CPU's time, as a percentage or as quota/period."),
    key("limits.memory", KeyType::Size, "", true, BOTH,
        "Zones: the memory cap (cgroup memory limit; changes apply live). VMs: guest RAM (default 128MiB; needs a restart)."),
    key("limits.processes", KeyType::Integer { min: 1, max: 4_194_304 }, "", true, ZONE,
        "The most processes and threads the zone may have at once (pids controller)."),
    key("limits.disk.read", KeyType::Size, "", true, ZONE,
        "Read bandwidth from the block device holding the zone's root, bytes per second."),
    key("limits.disk.write", KeyType::Size, "", true, ZONE,
        "Write bandwidth to the block device holding the zone's root, bytes per second."),
    key("environment.*", KeyType::String, "", true, ZONE,
        "An environment variable of the zone's init and of every exec (new execs see a change at once; init at its next start)."),
    key("mount.*", KeyType::Mount, "", false, ZONE,
        "A host directory bind-mounted into the zone, read-write unless :ro is given."),
    key("hostname", KeyType::Hostname, "", false, ZONE,
        "The zone's host name (default: the instance name)."),
    key("command", KeyType::String, "", false, ZONE,
        "The zone's init, as a shell-style word list (default: the bundle's process, or /sbin/init for a root directory)."),
    key("security.privileged", KeyType::Bool, "false", false, ZONE,
        "Run without a user namespace: the zone's root is the host's root. Off by default; each zone then gets its own range of 65536 host ids."),
    key("boot.autostart", KeyType::Bool, "false", true, BOTH,
        "Start the instance when the daemon starts."),
    key("boot.restart", KeyType::Restart, "no", true, BOTH,
        "Restart policy when the instance's init (or VM) exits by itself: no, always, or on-failure with an optional most-retries count; restarts back off from 1 s to 60 s."),
    key("boot.stop.timeout", KeyType::Integer { min: 0, max: 3600 }, "30", true, BOTH,
        "Seconds a graceful stop waits for the instance to end before killing it."),
    key("vm.kernel", KeyType::Path, "", false, VM,
        "The guest kernel (PVH ELF or bzImage)."),
    key("vm.cmdline", KeyType::String, "", false, VM,
        "The guest kernel command line."),
    key("vm.disk.*", KeyType::Disk, "", false, VM,
        "A virtio-blk disk backed by a host file or block device, read-only with :ro."),
    key("vm.rng", KeyType::Bool, "true", false, VM,
        "Attach a virtio entropy device."),
];

/// The definition of `key` (a family entry such as `environment.*` matches
/// `environment.FOO`).
pub fn lookup(key: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|d| match d.name.strip_suffix('*') {
        Some(prefix) => key.len() > prefix.len() && key.starts_with(prefix),
        None => d.name == key,
    })
}

/// Checks one key and value for an instance of `kind`.
pub fn validate(kind: InstanceKind, key: &str, value: &str) -> Result<(), ConfigError> {
    let def = lookup(key).ok_or_else(|| ConfigError::UnknownKey(key.to_string()))?;
    let applies = match kind {
        InstanceKind::Zone => def.zone,
        InstanceKind::Vm => def.vm,
    };
    if !applies {
        return Err(ConfigError::WrongKind {
            key: key.to_string(),
            kind,
        });
    }
    let invalid = |expected: &str| ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    };
    let ty = def.ty;
    let ok = match ty {
        KeyType::Bool => parse_bool(value).is_some(),
        KeyType::Size => match parse_size(value) {
            Some(0) => return Err(invalid("a size larger than 0")),
            Some(n) if key == "limits.memory" && n < 1 << 20 => {
                return Err(invalid("at least 1MiB"))
            }
            Some(_) => true,
            None => false,
        },
        KeyType::Integer { min, max } => match value.parse::<u64>() {
            Ok(n) if n >= min && n <= max => true,
            _ => return Err(invalid(&format!("an integer from {min} to {max}"))),
        },
        KeyType::Cpu => match (kind, parse_cpu(value)) {
            (InstanceKind::Vm, Some(CpuLimit::Count(n))) if (1..=64).contains(&n) => true,
            (InstanceKind::Vm, _) => return Err(invalid("a vCPU count from 1 to 64")),
            (InstanceKind::Zone, Some(_)) => true,
            (InstanceKind::Zone, None) => false,
        },
        KeyType::Allowance => parse_allowance(value).is_some(),
        KeyType::Restart => parse_restart(value).is_some(),
        KeyType::Mount => parse_mount(value).is_some(),
        KeyType::Disk => parse_disk(value).is_some(),
        KeyType::Path => value.starts_with('/'),
        KeyType::Hostname => crate::names::validate_name("host", value).is_ok(),
        KeyType::String => {
            if key == "command" {
                split_words(value).is_some_and(|w| !w.is_empty())
            } else {
                !value.contains('\0')
            }
        }
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(ty.describe()))
    }
}

/// Checks a whole configuration.
pub fn validate_all(
    kind: InstanceKind,
    config: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (k, v) in config {
        validate(kind, k, v)?;
    }
    if kind == InstanceKind::Vm && !config.contains_key("vm.kernel") {
        return Err(ConfigError::Missing {
            key: "vm.kernel".into(),
            why: "a VM needs a guest kernel".into(),
        });
    }
    Ok(())
}

/// The keys whose change cannot apply to a running instance, among those that differ.
pub fn not_live_changes(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    kind: InstanceKind,
) -> Vec<String> {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .filter(|k| {
            let live = lookup(k).is_some_and(|d| d.live);
            // A VM's CPUs and memory are its hardware: they change at the next start.
            let vm_hw = kind == InstanceKind::Vm && k.starts_with("limits.");
            !live || vm_hw
        })
        .cloned()
        .collect()
}

pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// `64MiB`, `64MB`, `64M`, `1G`, `512k`, `4096` → bytes (binary multiples; `MB` is taken
/// as MiB as Docker and Incus's `limits.memory` users expect). None when malformed.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let body = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (digits, shift) = match body.chars().last()? {
        'k' => (&body[..body.len() - 1], 10),
        'm' => (&body[..body.len() - 1], 20),
        'g' => (&body[..body.len() - 1], 30),
        't' => (&body[..body.len() - 1], 40),
        _ => (body, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// A zone's CPU limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuLimit {
    Count(u32),
    /// A cpuset list such as `0-1,3`.
    Set(String),
}

pub fn parse_cpu(s: &str) -> Option<CpuLimit> {
    if let Ok(n) = s.parse::<u32>() {
        return (n >= 1).then_some(CpuLimit::Count(n));
    }
    let valid = !s.is_empty()
        && s.split(',').all(|part| {
            let mut it = part.splitn(2, '-');
            let a = it.next().and_then(|x| x.parse::<u32>().ok());
            match (a, it.next()) {
                (Some(_), None) => true,
                (Some(a), Some(b)) => b.parse::<u32>().is_ok_and(|b| b >= a),
                _ => false,
            }
        });
    valid.then(|| CpuLimit::Set(s.to_string()))
}

/// `50%` → (50000, 100000); `25ms/100ms` → (25000, 100000): (quota µs, period µs).
pub fn parse_allowance(s: &str) -> Option<(u64, u64)> {
    if let Some(p) = s.strip_suffix('%') {
        let p: u64 = p.parse().ok()?;
        return (1..=100_000).contains(&p).then_some((p * 1000, 100_000));
    }
    let (q, per) = s.split_once('/')?;
    let ms = |x: &str| x.strip_suffix("ms")?.parse::<u64>().ok();
    let (q, per) = (ms(q)?, ms(per)?);
    (q >= 1 && (1..=1000).contains(&per)).then_some((q * 1000, per * 1000))
}

/// A restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    No,
    Always,
    /// Restart after a non-zero exit, at most this many times in a row (None: no limit).
    OnFailure(Option<u32>),
}

pub fn parse_restart(s: &str) -> Option<RestartPolicy> {
    match s {
        "no" | "" => Some(RestartPolicy::No),
        "always" => Some(RestartPolicy::Always),
        "on-failure" => Some(RestartPolicy::OnFailure(None)),
        _ => {
            let n = s.strip_prefix("on-failure:")?.parse::<u32>().ok()?;
            (n >= 1).then_some(RestartPolicy::OnFailure(Some(n)))
        }
    }
}

/// A host directory mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: String,
    pub destination: String,
    pub readonly: bool,
}

pub fn parse_mount(s: &str) -> Option<MountSpec> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, ro) = match parts.as_slice() {
        [a, b] => (*a, *b, false),
        [a, b, "ro"] => (*a, *b, true),
        [a, b, "rw"] => (*a, *b, false),
        _ => return None,
    };
    let abs = |p: &str| p.starts_with('/') && !p.split('/').any(|c| c == "..");
    (abs(src) && abs(dst)).then(|| MountSpec {
        source: src.into(),
        destination: dst.into(),
        readonly: ro,
    })
}

/// A VM disk: (path, read_only).
pub fn parse_disk(s: &str) -> Option<(String, bool)> {
    let (p, ro) = match s.strip_suffix(":ro") {
        Some(p) => (p, true),
        None => (s, false),
    };
    (p.starts_with('/') && !p.contains(',')).then(|| (p.to_string(), ro))
}

/// Splits a command line into words: whitespace separates, single and double quotes
/// group, a backslash escapes the next character. None on an unterminated quote.
pub fn split_words(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => cur.push(chars.next()?),
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                cur.push(chars.next()?);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return None;
    }
    if in_word {
        words.push(cur);
    }
    Some(words)
}

/// The docs page of keys (`docs/config-keys.md`), generated from [`KEYS`].
pub fn docs_markdown() -> String {
    let mut s = String::from(
        "# Instance configuration keys\n\n\
         Generated from `crates/api/src/config.rs` (`KEYS`); a test fails when this page and \
         the table differ. Regenerate with `bulkhead config keys --markdown > docs/config-keys.md`.\n\n\
         Set keys with `bulkhead create NAME -c KEY=VALUE` or `bulkhead config set NAME KEY VALUE`. \
         Invalid values are refused with a message naming the key; a key marked *live: no* \
         cannot change while the instance runs. A limit the host cannot enforce (a missing \
         cgroup controller) is reported in `bulkhead show NAME` under `unenforced`.\n\n\
         | key | applies to | type | default | live | description |\n\
         |---|---|---|---|---|---|\n",
    );
    for d in KEYS {
        let kinds = match (d.zone, d.vm) {
            (true, true) => "zone, vm",
            (true, false) => "zone",
            _ => "vm",
        };
        let live = if d.vm && !d.zone && d.name.starts_with("limits.") {
            "no"
        } else if d.live {
            "yes"
        } else {
            "no"
        };
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} |\n",
            d.name,
            kinds,
            d.ty.describe(),
            if d.default.is_empty() {
                "—"
            } else {
                d.default
            },
            live,
            d.description
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_validate_with_messages_that_name_the_key() {
        let z = InstanceKind::Zone;
        validate(z, "limits.memory", "64MiB").unwrap();
        validate(z, "limits.cpu", "0-1,3").unwrap();
        validate(z, "limits.cpu", "2").unwrap();
        validate(z, "environment.FOO", "bar").unwrap();
        validate(z, "mount.data", "/srv/data:/data:ro").unwrap();
        validate(z, "boot.restart", "on-failure:3").unwrap();
        validate(z, "command", "sh -c 'sleep 5'").unwrap();
        let e = validate(z, "limits.memory", "lots")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.memory") && e.contains("64MiB"), "{e}");
        let e = validate(z, "limits.memory", "12").unwrap_err().to_string();
        assert!(e.contains("1MiB"), "{e}");
        let e = validate(z, "limits.colour", "red").unwrap_err().to_string();
        assert!(
            e.contains("unknown configuration key \"limits.colour\""),
            "{e}"
        );
        let e = validate(z, "vm.kernel", "/k").unwrap_err().to_string();
        assert!(e.contains("does not apply to a zone"), "{e}");
        assert!(validate(z, "environment.", "x").is_err());
        assert!(validate(z, "mount.x", "rel:/data").is_err());
        assert!(validate(z, "mount.x", "/a/../etc:/data").is_err());
        assert!(validate(z, "limits.processes", "0").is_err());
        assert!(validate(z, "command", "sh -c 'oops").is_err());
        let v = InstanceKind::Vm;
        validate(v, "limits.cpu", "2").unwrap();
        assert!(validate(v, "limits.cpu", "0-1").is_err());
        let mut c = BTreeMap::new();
        c.insert("limits.memory".to_string(), "64MiB".to_string());
        assert!(validate_all(v, &c)
            .unwrap_err()
            .to_string()
            .contains("vm.kernel"));
    }

    #[test]
    fn parsers() {
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_allowance("50%"), Some((50_000, 100_000)));
        assert_eq!(parse_allowance("25ms/100ms"), Some((25_000, 100_000)));
        assert_eq!(parse_allowance("0%"), None);
        assert_eq!(
            parse_restart("on-failure"),
            Some(RestartPolicy::OnFailure(None))
        );
        assert_eq!(parse_restart("on-failure:0"), None);
        assert_eq!(parse_disk("/d.img:ro"), Some(("/d.img".into(), true)));
        assert_eq!(
            split_words(r#"sh -c "echo 'a b'" x\ y"#).unwrap(),
            vec!["sh", "-c", "echo 'a b'", "x y"]
        );
    }

    #[test]
    fn live_changes() {
        let mut a = BTreeMap::new();
        a.insert("limits.memory".to_string(), "64MiB".to_string());
        let mut b = a.clone();
        b.insert("limits.memory".into(), "128MiB".into());
        assert!(not_live_changes(&a, &b, InstanceKind::Zone).is_empty());
        assert_eq!(
            not_live_changes(&a, &b, InstanceKind::Vm),
            vec!["limits.memory"]
        );
        b.insert("hostname".into(), "x".into());
        assert_eq!(
            not_live_changes(&a, &b, InstanceKind::Zone),
            vec!["hostname"]
        );
    }

    #[test]
    fn docs_page_is_generated_from_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/config-keys.md");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert_eq!(
            on_disk,
            docs_markdown(),
            "docs/config-keys.md is stale: regenerate it with `bulkhead config keys --markdown > docs/config-keys.md`"
        );
    }
}
