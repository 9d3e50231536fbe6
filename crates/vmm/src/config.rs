//! The monitor's command line (clap) and the parsers for its values: sizes,
//! serial, disk, net and vsock specifications. Everything here is pure and
//! unit-tested; checks that need the host (files, KVM limits) live in `vm`.

use std::path::PathBuf;

use clap::Parser;
use thiserror::Error;

/// A command-line value that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
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
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let err = || ConfigError::Size(s.to_string());
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

/// Where the guest's COM1 output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialSpec {
    /// Our stdout; input from stdin when it is a terminal.
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// A Unix socket we listen on; one client at a time gets output and
    /// sends input.
    Socket(PathBuf),
    /// A new pseudo-terminal; its path (`/dev/pts/N`) is printed on stderr
    /// and reported by `describe`.
    Pty,
    /// Discarded.
    None,
}

/// The `--serial` spelling of the backend (what [`parse_serial`] reads).
impl std::fmt::Display for SerialSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SerialSpec::Stdout => write!(f, "stdout"),
            SerialSpec::File(p) => write!(f, "file:{}", p.display()),
            SerialSpec::Socket(p) => write!(f, "socket:{}", p.display()),
            SerialSpec::Pty => write!(f, "pty"),
            SerialSpec::None => write!(f, "none"),
        }
    }
}

pub fn parse_serial(s: &str) -> Result<SerialSpec, ConfigError> {
    let err = || ConfigError::Serial(s.to_string());
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

/// A virtio-blk backing file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub read_only: bool,
}

pub fn parse_disk(s: &str) -> Result<DiskSpec, ConfigError> {
    let err = || ConfigError::Disk(s.to_string());
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

/// A virtio-net device on a host TAP interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    pub tap: String,
    pub mac: Option<[u8; 6]>,
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], ConfigError> {
    let err = || ConfigError::Mac(s.to_string());
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

pub fn parse_net(s: &str) -> Result<NetSpec, ConfigError> {
    let err = || ConfigError::Net(s.to_string());
    let mut tap = None;
    let mut mac = None;
    for opt in s.split(',') {
        let (k, v) = opt.split_once('=').ok_or_else(err)?;
        match k {
            // Linux limits interface names to 15 bytes (IFNAMSIZ - 1).
            "tap" if !v.is_empty() && v.len() <= 15 && !v.contains('/') => {
                tap = Some(v.to_string())
            }
            "mac" => mac = Some(parse_mac(v)?),
            _ => return Err(err()),
        }
    }
    Ok(NetSpec {
        tap: tap.ok_or_else(err)?,
        mac,
    })
}

/// A virtio-vsock device with a Unix-socket backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockSpec {
    pub cid: u32,
    pub uds: PathBuf,
}

pub fn parse_vsock(s: &str) -> Result<VsockSpec, ConfigError> {
    let err = || ConfigError::Vsock(s.to_string());
    let mut cid = None;
    let mut uds = None;
    for opt in s.split(',') {
        let (k, v) = opt.split_once('=').ok_or_else(err)?;
        match k {
            // CIDs 0-2 are reserved (hypervisor, local, host); u32::MAX is VMADDR_CID_ANY.
            "cid" => {
                let n: u32 = v.parse().map_err(|_| err())?;
                if n < 3 || n == u32::MAX {
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

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}
fn serial_arg(s: &str) -> Result<SerialSpec, String> {
    parse_serial(s).map_err(|e| e.to_string())
}
fn disk_arg(s: &str) -> Result<DiskSpec, String> {
    parse_disk(s).map_err(|e| e.to_string())
}
fn net_arg(s: &str) -> Result<NetSpec, String> {
    parse_net(s).map_err(|e| e.to_string())
}
fn vsock_arg(s: &str) -> Result<VsockSpec, String> {
    parse_vsock(s).map_err(|e| e.to_string())
}

/// Bulkhead's virtual machine monitor: one process runs one KVM virtual machine.
///
/// Exit status: 0 when the guest powered off (or a `stop`/`shutdown` request
/// over the control socket ended it), 2 when the guest requested a reset or
/// triple-faulted, 1 on any error (bad arguments, host failures, a guest
/// the monitor cannot run).
///
/// virtio-mmio slot order (slot i at 0xD0000000 + i*0x1000, GSI 5+i):
/// all --disk in order, then all --net, then --vsock, then --rng.
#[derive(Parser, Debug, Clone)]
#[command(name = "bulkhead-vmm", version, about, long_about)]
pub struct Cli {
    /// Guest kernel: an ELF with a PVH entry note (vmlinux, test guest) or a bzImage.
    #[arg(long, value_name = "PATH", required_unless_present = "restore")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk, loaded at the top of low RAM.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STRING", default_value = "")]
    pub cmdline: String,
    /// Guest memory size, e.g. 128M, 1G (at least 16M).
    #[arg(long, value_name = "SIZE", value_parser = size_arg, default_value = "128M")]
    pub mem: u64,
    /// Number of vCPUs (1 to KVM's maximum).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u32,
    /// COM1 backend: stdout (input from stdin when it is a terminal),
    /// pty (a new pseudo-terminal, path printed on stderr), file:<path>,
    /// socket:<path> (we listen; one client at a time), none.
    #[arg(long, value_name = "SPEC", value_parser = serial_arg, default_value = "stdout")]
    pub serial: SerialSpec,
    /// virtio-blk disk backed by a raw image file or a block device (opened exclusively): <path>[,ro]. Repeatable.
    #[arg(long, value_name = "PATH[,ro]", value_parser = disk_arg)]
    pub disk: Vec<DiskSpec>,
    /// virtio-net device on an existing TAP interface: tap=<name>[,mac=<mac>]. Repeatable.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]", value_parser = net_arg)]
    pub net: Vec<NetSpec>,
    /// virtio-vsock device: cid=<guest cid>,uds=<host Unix socket path>.
    #[arg(long, value_name = "cid=N,uds=PATH", value_parser = vsock_arg)]
    pub vsock: Option<VsockSpec>,
    /// virtio-rng (entropy) device.
    #[arg(long)]
    pub rng: bool,
    /// Control socket (JSON lines): describe, pause, resume, shutdown, stop, snapshot.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// Write the generated DSDT (AML) to this file before the guest starts.
    #[arg(long, value_name = "PATH")]
    pub dump_dsdt: Option<PathBuf>,
    /// Do not confine the monitor (no mount namespace, seccomp or privilege drop).
    #[arg(long)]
    pub no_jail: bool,
    /// Directory for snapshots: kept writable inside the jail; snapshot
    /// requests must name a directory inside it (required for snapshots
    /// unless --no-jail).
    #[arg(long, value_name = "DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// VM identifier, used for the jail directory name (default vmm-<pid>).
    #[arg(long, value_name = "NAME")]
    pub id: Option<String>,
    /// Directory under which the jail's root is created (<dir>/<id>/root).
    #[arg(long, value_name = "DIR", default_value = "/run/bulkhead/jail")]
    pub jail_dir: PathBuf,
    /// User the jailed monitor runs as (0 keeps root, without capabilities).
    #[arg(long, value_name = "UID", default_value_t = 0)]
    pub jail_uid: u32,
    /// Group the jailed monitor runs as.
    #[arg(long, value_name = "GID", default_value_t = 0)]
    pub jail_gid: u32,
    /// Start from a snapshot directory written by the `snapshot` request
    /// (the kernel and memory come from the snapshot; devices must be given
    /// again, in the same order).
    #[arg(long, value_name = "DIR")]
    pub restore: Option<PathBuf>,
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

    #[test]
    fn cli_parses_a_full_line() {
        let cli = Cli::try_parse_from([
            "bulkhead-vmm",
            "--kernel",
            "/k",
            "--mem",
            "256M",
            "--vcpus",
            "2",
            "--disk",
            "/a,ro",
            "--disk",
            "/b",
            "--net",
            "tap=t0",
            "--vsock",
            "cid=5,uds=/v",
            "--rng",
            "--serial",
            "none",
        ])
        .expect("valid command line");
        assert_eq!(cli.mem, 256 << 20);
        assert_eq!(cli.vcpus, 2);
        assert_eq!(cli.disk.len(), 2);
        assert!(cli.disk[0].read_only);
        assert!(cli.rng);
        assert_eq!(cli.serial, SerialSpec::None);
        assert!(Cli::try_parse_from(["bulkhead-vmm", "--mem", "1G"]).is_err());
        assert!(Cli::try_parse_from(["bulkhead-vmm", "--kernel", "/k", "--mem", "lots"]).is_err());
    }
}
