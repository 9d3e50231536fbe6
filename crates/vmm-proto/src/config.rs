//! [`VmConfig`]: everything one `bulkhead-vmm` process needs to start a VM,
//! as a serde value (`bulkhead-vmm --config <file.json>`) and as what the
//! command line converts into; the pure value types and parsers of its parts
//! (sizes, serial, disk, net, vsock specifications); and
//! [`VmConfig::validate`], the checks that need no host.
//!
//! Checks that need the host (files exist, host memory, KVM limits) are the
//! monitor's (`vmm::vm`).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Smallest guest memory the monitor accepts.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Most vCPUs the machine model has APIC IDs for.
pub const MAX_VCPUS: u32 = 255;
/// virtio-mmio slots (GSIs 5–23).
pub const MAX_VIRTIO_DEVICES: usize = 19;
/// Guest memory when none is given (128 MiB).
pub const DEFAULT_MEMORY: u64 = 128 << 20;
/// The jail's base directory when none is given.
pub const DEFAULT_JAIL_DIR: &str = "/run/bulkhead/jail";
/// Longest Unix socket path (`sun_path` holds 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// A command-line value that cannot be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("invalid size {0:?}: expected a number with an optional K, M, G or T suffix (e.g. 128M, 1G)")]
    Size(String),
    #[error("invalid --serial {0:?}: expected stdout, pty, none, file:<path> or socket:<path>")]
    Serial(String),
    #[error("invalid --disk {0:?}: expected <path>[,ro]")]
    Disk(String),
    #[error("invalid --net {0:?}: expected tap=<name>[,mac=xx:xx:xx:xx:xx:xx]")]
    Net(String),
    #[error("invalid MAC address {0:?}: expected six hex bytes separated by ':'")]
    Mac(String),
    #[error("invalid --vsock {0:?}: expected cid=<n>,uds=<path> with n >= 3")]
    Vsock(String),
}

/// Parses `128M`, `1G`, `512k`, `4096`, `2GiB` into bytes.
pub fn parse_size(s: &str) -> Result<u64, ParseError> {
    let err = || ParseError::Size(s.to_string());
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, shift) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 10),
        Some('m') => (&body[..body.len() - 1], 20),
        Some('g') => (&body[..body.len() - 1], 30),
        Some('t') => (&body[..body.len() - 1], 40),
        _ => (body, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let n: u64 = digits.parse().map_err(|_| err())?;
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

/// Where the guest's COM1 output goes. JSON: `"stdout"`, `"pty"`, `"none"`,
/// `{"file": "/path"}`, `{"socket": "/path"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialSpec {
    /// Our stdout; input from stdin when it is a terminal.
    #[default]
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// A Unix socket the monitor listens on; one client at a time gets output
    /// and sends input.
    Socket(PathBuf),
    /// A new pseudo-terminal; its path (`/dev/pts/N`) is printed on stderr
    /// and reported by `describe`.
    Pty,
    /// Discarded.
    None,
}

/// The `--serial` spelling of the backend (what [`parse_serial`] reads).
impl fmt::Display for SerialSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SerialSpec::Stdout => write!(f, "stdout"),
            SerialSpec::File(p) => write!(f, "file:{}", p.display()),
            SerialSpec::Socket(p) => write!(f, "socket:{}", p.display()),
            SerialSpec::Pty => write!(f, "pty"),
            SerialSpec::None => write!(f, "none"),
        }
    }
}

/// Parses the `--serial` spelling: `stdout`, `pty`, `none`, `file:<path>`,
/// `socket:<path>`.
pub fn parse_serial(s: &str) -> Result<SerialSpec, ParseError> {
    let err = || ParseError::Serial(s.to_string());
    match s {
        "stdout" => Ok(SerialSpec::Stdout),
        "none" => Ok(SerialSpec::None),
        "pty" => Ok(SerialSpec::Pty),
        _ => {
            if let Some(p) = s.strip_prefix("file:") {
                if p.is_empty() {
                    return Err(err());
                }
                Ok(SerialSpec::File(PathBuf::from(p)))
            } else if let Some(p) = s.strip_prefix("socket:") {
                if p.is_empty() {
                    return Err(err());
                }
                Ok(SerialSpec::Socket(PathBuf::from(p)))
            } else {
                Err(err())
            }
        }
    }
}

/// A virtio-blk backing file or block device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

/// Parses the `--disk` spelling: `<path>[,ro]`.
pub fn parse_disk(s: &str) -> Result<DiskSpec, ParseError> {
    let err = || ParseError::Disk(s.to_string());
    let mut parts = s.split(',');
    let path = parts.next().filter(|p| !p.is_empty()).ok_or_else(err)?;
    let path = path.strip_prefix("path=").unwrap_or(path);
    let mut read_only = false;
    for opt in parts {
        match opt {
            "ro" | "readonly" | "ro=on" => read_only = true,
            "rw" | "ro=off" => read_only = false,
            _ => return Err(err()),
        }
    }
    if path.is_empty() {
        return Err(err());
    }
    Ok(DiskSpec {
        path: PathBuf::from(path),
        read_only,
    })
}

/// A virtio-net device on an existing host TAP interface. JSON:
/// `{"tap": "tap0", "mac": "02:00:00:00:00:01"}` (`mac` optional).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    pub tap: String,
    #[serde(default, with = "mac_text", skip_serializing_if = "Option::is_none")]
    pub mac: Option<[u8; 6]>,
}

/// Parses `xx:xx:xx:xx:xx:xx`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], ParseError> {
    let err = || ParseError::Mac(s.to_string());
    let mut mac = [0u8; 6];
    let mut n = 0;
    for part in s.split(':') {
        if n == 6 || part.len() != 2 {
            return Err(err());
        }
        mac[n] = u8::from_str_radix(part, 16).map_err(|_| err())?;
        n += 1;
    }
    if n != 6 {
        return Err(err());
    }
    Ok(mac)
}

/// `02:00:00:00:00:01`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// MAC addresses as their usual text in JSON.
mod mac_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mac: &Option<[u8; 6]>, s: S) -> Result<S::Ok, S::Error> {
        match mac {
            Some(m) => s.serialize_str(&super::format_mac(m)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 6]>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| super::parse_mac(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Parses the `--net` spelling: `tap=<name>[,mac=<mac>]`.
pub fn parse_net(s: &str) -> Result<NetSpec, ParseError> {
    let err = || ParseError::Net(s.to_string());
    let mut tap = None;
    let mut mac = None;
    for opt in s.split(',') {
        let (k, v) = opt.split_once('=').ok_or_else(err)?;
        match k {
            "tap" if tap_name_ok(v) => tap = Some(v.to_string()),
            "mac" => mac = Some(parse_mac(v)?),
            _ => return Err(err()),
        }
    }
    Ok(NetSpec {
        tap: tap.ok_or_else(err)?,
        mac,
    })
}

/// Linux limits interface names to 15 bytes (IFNAMSIZ - 1), without `/`.
fn tap_name_ok(v: &str) -> bool {
    !v.is_empty() && v.len() <= 15 && !v.contains('/') && !v.contains('\0')
}

/// A virtio-vsock device with a Unix-socket backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockSpec {
    /// The guest's CID (3 or more; not `u32::MAX`).
    pub cid: u32,
    /// Host clients connect here; guest connections to host port P go to
    /// `<uds>_P`.
    pub uds: PathBuf,
}

/// Parses the `--vsock` spelling: `cid=<n>,uds=<path>`.
pub fn parse_vsock(s: &str) -> Result<VsockSpec, ParseError> {
    let err = || ParseError::Vsock(s.to_string());
    let mut cid = None;
    let mut uds = None;
    for opt in s.split(',') {
        let (k, v) = opt.split_once('=').ok_or_else(err)?;
        match k {
            "cid" => {
                let n: u32 = v.parse().map_err(|_| err())?;
                if !cid_ok(n) {
                    return Err(err());
                }
                cid = Some(n)
            }
            "uds" if !v.is_empty() => uds = Some(PathBuf::from(v)),
            _ => return Err(err()),
        }
    }
    Ok(VsockSpec {
        cid: cid.ok_or_else(err)?,
        uds: uds.ok_or_else(err)?,
    })
}

/// CIDs 0-2 are reserved (hypervisor, local, host); u32::MAX is VMADDR_CID_ANY.
fn cid_ok(n: u32) -> bool {
    n >= 3 && n != u32::MAX
}

/// How the monitor confines itself once the VM is set up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JailConfig {
    /// Confine the monitor (mount namespace, seccomp, no capabilities,
    /// `uid`/`gid`). Default true.
    pub enabled: bool,
    /// VM identifier, used for the jail directory name: 1–64 characters of
    /// `[A-Za-z0-9_-]` (default `vmm-<pid>`).
    pub id: Option<String>,
    /// Directory under which the jail's root is created (`<dir>/<id>/root`,
    /// on a private tmpfs). Absolute. Default `/run/bulkhead/jail`.
    pub dir: PathBuf,
    /// User the jailed monitor runs as (0 keeps root, without capabilities).
    /// A supervisor gives each VM its own unprivileged uid.
    pub uid: u32,
    /// Group the jailed monitor runs as.
    pub gid: u32,
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig {
            enabled: true,
            id: None,
            dir: PathBuf::from(DEFAULT_JAIL_DIR),
            uid: 0,
            gid: 0,
        }
    }
}

/// Everything one monitor process needs. JSON (`bulkhead-vmm --config`),
/// unknown fields refused; only `kernel` (or `restore`) is required:
///
/// ```json
/// {"kernel": "/boot/vmlinux", "cmdline": "console=ttyS0", "memory_bytes": 268435456,
///  "vcpus": 2, "serial": {"file": "/run/vm1/serial.log"},
///  "disks": [{"path": "/var/lib/vm1/root.img", "read_only": false}],
///  "nets": [{"tap": "tap-vm1", "mac": "02:00:00:00:00:01"}],
///  "vsock": {"cid": 3, "uds": "/run/vm1/vsock.sock"}, "rng": true,
///  "api_socket": "/run/vm1/api.sock", "snapshot_dir": "/var/lib/vm1/snapshots",
///  "jail": {"id": "vm1", "uid": 200000, "gid": 200000}}
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: an ELF with a PVH entry note or a bzImage. Required
    /// unless `restore` is set (the snapshot holds the kernel).
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk, loaded at the top of low RAM.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// Guest memory in bytes: at least 16 MiB, a multiple of 4 KiB
    /// (ignored on restore: the snapshot's size is used).
    #[serde(default = "default_memory")]
    pub memory_bytes: u64,
    /// vCPUs, 1 to 255 (ignored on restore).
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// COM1 backend.
    #[serde(default)]
    pub serial: SerialSpec,
    /// virtio-blk devices, in slot order.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// virtio-net devices, after the disks.
    #[serde(default)]
    pub nets: Vec<NetSpec>,
    /// A virtio-vsock device, after the nets.
    #[serde(default)]
    pub vsock: Option<VsockSpec>,
    /// A virtio-rng device, last.
    #[serde(default)]
    pub rng: bool,
    /// The control socket (newline-delimited JSON, see [`crate::protocol`]).
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
    /// Directory snapshots may be written below; kept writable inside the
    /// jail (and given to the jail's uid). Snapshots of a jailed VM need it.
    #[serde(default)]
    pub snapshot_dir: Option<PathBuf>,
    /// Start from this snapshot directory instead of booting `kernel`
    /// (devices must be given again, in the same order).
    #[serde(default)]
    pub restore: Option<PathBuf>,
    /// Write the generated DSDT (AML) here before the guest starts.
    #[serde(default)]
    pub dump_dsdt: Option<PathBuf>,
    /// Confinement.
    #[serde(default)]
    pub jail: JailConfig,
}

fn default_memory() -> u64 {
    DEFAULT_MEMORY
}
fn default_vcpus() -> u32 {
    1
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            memory_bytes: DEFAULT_MEMORY,
            vcpus: 1,
            serial: SerialSpec::default(),
            disks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            rng: false,
            api_socket: None,
            snapshot_dir: None,
            restore: None,
            dump_dsdt: None,
            jail: JailConfig::default(),
        }
    }
}

/// A [`VmConfig`] value that cannot be used: which field, what is wrong with
/// it, and the form that is accepted.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("invalid {field}: {problem} (expected {expected})")]
pub struct ValidationError {
    /// The field's path in the JSON form, e.g. `memory_bytes`, `disks[1].path`.
    pub field: String,
    pub problem: String,
    /// The accepted form.
    pub expected: &'static str,
}

fn invalid(
    field: impl Into<String>,
    problem: impl Into<String>,
    expected: &'static str,
) -> ValidationError {
    ValidationError {
        field: field.into(),
        problem: problem.into(),
        expected,
    }
}

/// A `VmConfig` that cannot be read from JSON: where in the document and why.
#[derive(Debug, Error)]
#[error("{path}: {message}")]
pub struct ConfigFileError {
    /// JSON path of the offending value (`.` for the document itself).
    pub path: String,
    pub message: String,
}

impl VmConfig {
    /// A configuration that boots `kernel` with the defaults.
    pub fn new(kernel: impl Into<PathBuf>) -> VmConfig {
        VmConfig {
            kernel: Some(kernel.into()),
            ..VmConfig::default()
        }
    }

    /// Reads a configuration from JSON; errors name the JSON path
    /// (`disks[0].read_only: invalid type: …`).
    pub fn from_json(text: &str) -> Result<VmConfig, ConfigFileError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let cfg: VmConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigFileError {
                path,
                message: e.into_inner().to_string(),
            }
        })?;
        Ok(cfg)
    }

    /// The JSON form (what [`VmConfig::from_json`] reads). Fails only for a
    /// path that is not UTF-8, which JSON cannot carry.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// Number of virtio-mmio devices (slots) this configuration asks for.
    pub fn virtio_devices(&self) -> usize {
        self.disks.len()
            + self.nets.len()
            + usize::from(self.vsock.is_some())
            + usize::from(self.rng)
    }

    /// Checks everything that needs no host: sizes, counts, spellings, path
    /// forms. The first problem found is returned.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.restore.is_none() {
            match &self.kernel {
                None => {
                    return Err(invalid(
                        "kernel",
                        "missing",
                        "the path of an ELF (PVH) or bzImage kernel, unless `restore` is set",
                    ))
                }
                Some(k) => path_ok("kernel", k)?,
            }
            if self.memory_bytes < MIN_MEMORY {
                return Err(invalid(
                    "memory_bytes",
                    format!(
                        "{} MiB is too small: the minimum is {} MiB",
                        self.memory_bytes >> 20,
                        MIN_MEMORY >> 20
                    ),
                    "bytes, at least 16 MiB and a multiple of 4 KiB",
                ));
            }
            if self.memory_bytes & 0xfff != 0 {
                return Err(invalid(
                    "memory_bytes",
                    format!("{} is not a multiple of 4 KiB", self.memory_bytes),
                    "bytes, at least 16 MiB and a multiple of 4 KiB",
                ));
            }
            if self.vcpus == 0 {
                return Err(invalid("vcpus", "must be at least 1", "1 to 255"));
            }
            if self.vcpus > MAX_VCPUS {
                return Err(invalid(
                    "vcpus",
                    format!(
                        "{} exceeds the 255 APIC IDs of this machine model",
                        self.vcpus
                    ),
                    "1 to 255",
                ));
            }
        }
        if let Some(r) = &self.restore {
            path_ok("restore", r)?;
        }
        if let Some(i) = &self.initrd {
            path_ok("initrd", i)?;
        }
        if self.cmdline.contains('\0') {
            return Err(invalid(
                "cmdline",
                "contains a NUL byte",
                "a kernel command line without NUL bytes",
            ));
        }
        match &self.serial {
            SerialSpec::File(p) => path_ok("serial.file", p)?,
            SerialSpec::Socket(p) => socket_path_ok("serial.socket", p)?,
            _ => {}
        }
        for (i, d) in self.disks.iter().enumerate() {
            path_ok(&format!("disks[{i}].path"), &d.path)?;
        }
        for (i, n) in self.nets.iter().enumerate() {
            if !tap_name_ok(&n.tap) {
                return Err(invalid(
                    format!("nets[{i}].tap"),
                    format!("{:?} is not an interface name", n.tap),
                    "an existing TAP interface's name: 1-15 bytes, no '/'",
                ));
            }
        }
        if let Some(v) = &self.vsock {
            if !cid_ok(v.cid) {
                return Err(invalid(
                    "vsock.cid",
                    format!("{} is reserved", v.cid),
                    "a guest CID from 3 to 4294967294",
                ));
            }
            socket_path_ok("vsock.uds", &v.uds)?;
        }
        let n = self.virtio_devices();
        if n > MAX_VIRTIO_DEVICES {
            return Err(invalid(
                "disks",
                format!("{n} virtio devices requested; at most {MAX_VIRTIO_DEVICES} fit"),
                "at most 19 disks, nets, vsock and rng together",
            ));
        }
        if let Some(p) = &self.api_socket {
            socket_path_ok("api_socket", p)?;
        }
        if let Some(p) = &self.snapshot_dir {
            path_ok("snapshot_dir", p)?;
        }
        if let Some(p) = &self.dump_dsdt {
            path_ok("dump_dsdt", p)?;
        }
        if self.jail.enabled {
            if let Some(id) = &self.jail.id {
                let ok = !id.is_empty()
                    && id.len() <= 64
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !ok {
                    return Err(invalid(
                        "jail.id",
                        format!("{id:?} is not a jail id"),
                        "1-64 characters of A-Z a-z 0-9 _ -",
                    ));
                }
            }
            let d = &self.jail.dir;
            if !d.is_absolute() || d.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(invalid(
                    "jail.dir",
                    format!("{} is not an absolute path without ..", d.display()),
                    "an absolute directory path without `..`",
                ));
            }
        }
        Ok(())
    }
}

fn path_ok(field: &str, p: &Path) -> Result<(), ValidationError> {
    if p.as_os_str().is_empty() {
        return Err(invalid(field, "is empty", "a path"));
    }
    if std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()).contains(&0) {
        return Err(invalid(field, "contains a NUL byte", "a path"));
    }
    Ok(())
}

fn socket_path_ok(field: &str, p: &Path) -> Result<(), ValidationError> {
    path_ok(field, p)?;
    let len = p.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(invalid(
            field,
            format!("{len} bytes is too long for a Unix socket"),
            "a socket path of at most 107 bytes",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64MB"), Ok(64 << 20));
        for bad in [
            "",
            "M",
            "12X",
            "-1M",
            "1.5G",
            "99999999999999999999",
            "20000000T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn serial_specs() {
        assert_eq!(parse_serial("stdout"), Ok(SerialSpec::Stdout));
        assert_eq!(parse_serial("none"), Ok(SerialSpec::None));
        assert_eq!(parse_serial("pty"), Ok(SerialSpec::Pty));
        for spelling in ["stdout", "none", "pty", "file:/tmp/x", "socket:/run/s"] {
            assert_eq!(parse_serial(spelling).unwrap().to_string(), spelling);
        }
        assert_eq!(
            parse_serial("file:/tmp/x"),
            Ok(SerialSpec::File("/tmp/x".into()))
        );
        assert_eq!(
            parse_serial("socket:/run/s"),
            Ok(SerialSpec::Socket("/run/s".into()))
        );
        for bad in ["", "file:", "socket:", "tty", "File:/x"] {
            assert!(parse_serial(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn disk_specs() {
        assert_eq!(
            parse_disk("/d.img"),
            Ok(DiskSpec {
                path: "/d.img".into(),
                read_only: false
            })
        );
        assert_eq!(
            parse_disk("/d.img,ro"),
            Ok(DiskSpec {
                path: "/d.img".into(),
                read_only: true
            })
        );
        for bad in ["", ",ro", "/d.img,bogus", "path="] {
            assert!(parse_disk(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn net_specs() {
        assert_eq!(
            parse_net("tap=tap0"),
            Ok(NetSpec {
                tap: "tap0".into(),
                mac: None
            })
        );
        assert_eq!(
            parse_net("tap=t1,mac=02:00:00:aa:BB:0f"),
            Ok(NetSpec {
                tap: "t1".into(),
                mac: Some([2, 0, 0, 0xaa, 0xbb, 0x0f])
            })
        );
        for bad in [
            "",
            "tap0",
            "tap=",
            "mac=02:00:00:00:00:01",
            "tap=a,mac=1:2:3:4:5:6",
            "tap=a,mac=02:00:00:00:00",
            "tap=a,mac=02:00:00:00:00:00:00",
            "tap=abcdefghijklmnop",
            "tap=a,color=red",
        ] {
            assert!(parse_net(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn vsock_specs() {
        assert_eq!(
            parse_vsock("cid=3,uds=/tmp/v.sock"),
            Ok(VsockSpec {
                cid: 3,
                uds: "/tmp/v.sock".into()
            })
        );
        for bad in [
            "",
            "cid=2,uds=/x",
            "cid=3",
            "uds=/x",
            "cid=x,uds=/x",
            "cid=3,uds=",
        ] {
            assert!(parse_vsock(bad).is_err(), "{bad} accepted");
        }
    }

    fn full() -> VmConfig {
        VmConfig {
            kernel: Some("/k".into()),
            initrd: Some("/i".into()),
            cmdline: "console=ttyS0".into(),
            memory_bytes: 256 << 20,
            vcpus: 2,
            serial: SerialSpec::Socket("/run/s.sock".into()),
            disks: vec![
                DiskSpec {
                    path: "/a".into(),
                    read_only: true,
                },
                DiskSpec {
                    path: "/b".into(),
                    read_only: false,
                },
            ],
            nets: vec![NetSpec {
                tap: "t0".into(),
                mac: Some([2, 0, 0, 0, 0, 0xab]),
            }],
            vsock: Some(VsockSpec {
                cid: 5,
                uds: "/v".into(),
            }),
            rng: true,
            api_socket: Some("/run/api.sock".into()),
            snapshot_dir: Some("/snaps".into()),
            restore: None,
            dump_dsdt: None,
            jail: JailConfig {
                enabled: true,
                id: Some("vm1".into()),
                dir: "/run/j".into(),
                uid: 200000,
                gid: 200001,
            },
        }
    }

    #[test]
    fn serde_round_trip_and_spelling() {
        let cfg = full();
        cfg.validate().expect("valid");
        let text = cfg.to_json().expect("UTF-8 paths");
        assert_eq!(VmConfig::from_json(&text).expect("parses"), cfg);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["serial"], serde_json::json!({"socket": "/run/s.sock"}));
        assert_eq!(v["nets"][0]["mac"], "02:00:00:00:00:ab");
        assert_eq!(v["jail"]["uid"], 200000);
        for (spec, json) in [
            (SerialSpec::Stdout, r#""stdout""#),
            (SerialSpec::Pty, r#""pty""#),
            (SerialSpec::None, r#""none""#),
            (SerialSpec::File("/f".into()), r#"{"file":"/f"}"#),
        ] {
            assert_eq!(serde_json::to_string(&spec).unwrap(), json);
            assert_eq!(serde_json::from_str::<SerialSpec>(json).unwrap(), spec);
        }
    }

    #[test]
    fn defaults_fill_a_minimal_document() {
        let cfg = VmConfig::from_json(r#"{"kernel": "/k"}"#).expect("parses");
        assert_eq!(cfg, VmConfig::new("/k"));
        assert_eq!(cfg.memory_bytes, 128 << 20);
        assert_eq!(cfg.vcpus, 1);
        assert_eq!(cfg.serial, SerialSpec::Stdout);
        assert!(cfg.jail.enabled);
        assert_eq!(cfg.jail.dir, PathBuf::from("/run/bulkhead/jail"));
        let cfg = VmConfig::from_json(r#"{"kernel": "/k", "jail": {"uid": 7}}"#).unwrap();
        assert!(cfg.jail.enabled && cfg.jail.uid == 7 && cfg.jail.gid == 0);
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let e = VmConfig::from_json(r#"{"kernel": "/k", "memroy": 5}"#).unwrap_err();
        assert!(e.message.contains("unknown field `memroy`"), "{e}");
        let e = VmConfig::from_json(r#"{"kernel": "/k", "disks": [{"path": "/a", "ro": true}]}"#)
            .unwrap_err();
        assert!(e.to_string().starts_with("disks[0]"), "{e}");
        assert!(e.message.contains("unknown field `ro`"), "{e}");
        let e = VmConfig::from_json(r#"{"kernel": "/k", "jail": {"uid": "x"}}"#).unwrap_err();
        assert_eq!(e.path, "jail.uid", "{e}");
        let e = VmConfig::from_json(r#"{"kernel": "/k", "nets": [{"tap": "t", "mac": "zz"}]}"#)
            .unwrap_err();
        assert_eq!(e.path, "nets[0].mac", "{e}");
        let e = VmConfig::from_json(r#"{"kernel": "/k", "serial": "tty"}"#).unwrap_err();
        assert_eq!(e.path, "serial", "{e}");
    }

    #[test]
    fn each_validation_error_names_its_field() {
        type Edit = fn(&mut VmConfig);
        let cases: Vec<(Edit, &str, &str)> = vec![
            (|c| c.kernel = None, "kernel", "missing"),
            (|c| c.kernel = Some("".into()), "kernel", "empty"),
            (|c| c.memory_bytes = 1 << 20, "memory_bytes", "too small"),
            (
                |c| c.memory_bytes = (64 << 20) + 1,
                "memory_bytes",
                "multiple of 4 KiB",
            ),
            (|c| c.vcpus = 0, "vcpus", "at least 1"),
            (|c| c.vcpus = 256, "vcpus", "exceeds"),
            (|c| c.initrd = Some("".into()), "initrd", "empty"),
            (|c| c.cmdline = "a\0b".into(), "cmdline", "NUL"),
            (
                |c| c.serial = SerialSpec::File("".into()),
                "serial.file",
                "empty",
            ),
            (
                |c| c.serial = SerialSpec::Socket(format!("/{}", "s".repeat(120)).into()),
                "serial.socket",
                "too long",
            ),
            (|c| c.disks[1].path = "".into(), "disks[1].path", "empty"),
            (
                |c| c.nets[0].tap = "a/b".into(),
                "nets[0].tap",
                "interface name",
            ),
            (
                |c| c.nets[0].tap = "x".repeat(16),
                "nets[0].tap",
                "interface name",
            ),
            (
                |c| c.vsock.as_mut().unwrap().cid = 2,
                "vsock.cid",
                "reserved",
            ),
            (
                |c| c.vsock.as_mut().unwrap().uds = "".into(),
                "vsock.uds",
                "empty",
            ),
            (
                |c| {
                    c.disks = vec![
                        DiskSpec {
                            path: "/d".into(),
                            read_only: false
                        };
                        19
                    ]
                },
                "disks",
                "at most 19",
            ),
            (|c| c.api_socket = Some("".into()), "api_socket", "empty"),
            (
                |c| c.snapshot_dir = Some("".into()),
                "snapshot_dir",
                "empty",
            ),
            (|c| c.dump_dsdt = Some("".into()), "dump_dsdt", "empty"),
            (|c| c.restore = Some("".into()), "restore", "empty"),
            (
                |c| c.jail.id = Some("a b".into()),
                "jail.id",
                "not a jail id",
            ),
            (|c| c.jail.dir = "rel".into(), "jail.dir", "absolute"),
            (|c| c.jail.dir = "/a/../b".into(), "jail.dir", "absolute"),
        ];
        for (edit, field, problem) in cases {
            let mut c = full();
            edit(&mut c);
            let e = c.validate().expect_err(field);
            assert_eq!(e.field, field, "{e}");
            assert!(e.problem.contains(problem), "{field}: {e}");
            assert!(e.to_string().contains("expected"), "{e}");
        }
        // Restoring needs no kernel, and its memory and vCPUs come from the snapshot.
        let mut c = full();
        c.kernel = None;
        c.vcpus = 0;
        c.restore = Some("/snap".into());
        c.validate().expect("restore config");
        // Unjailed: the jail's id and dir are not looked at.
        let mut c = full();
        c.jail.enabled = false;
        c.jail.dir = "rel".into();
        c.validate().expect("unjailed config");
    }
}
