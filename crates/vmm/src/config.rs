//! The monitor's command line (clap), a thin shell over
//! [`vmm_proto::VmConfig`]: the flags convert into a `VmConfig`
//! ([`Cli::flags_config`]), or `--config <file.json>` reads one
//! ([`Cli::load`]). The value types and their parsers live in `vmm-proto`
//! (so a supervisor can use them without KVM) and are re-exported here.

use std::path::PathBuf;

use clap::Parser;
use thiserror::Error;

pub use vmm_proto::config::{
    format_mac, parse_disk, parse_mac, parse_net, parse_serial, parse_size, parse_vsock, DiskSpec,
    JailConfig, NetSpec, ParseError, SerialSpec, ValidationError, VmConfig, VsockSpec,
};

/// A command-line value that cannot be parsed (the parsers' error).
pub type ConfigError = ParseError;

/// Why [`Cli::load`] could not produce a configuration.
#[derive(Debug, Error)]
pub enum CliError {
    #[error("cannot read --config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: vmm_proto::ConfigFileError,
    },
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

/// Every flag that describes the VM: mutually exclusive with `--config`.
const VM_FLAGS: [&str; 19] = [
    "kernel",
    "initrd",
    "cmdline",
    "mem",
    "vcpus",
    "serial",
    "disk",
    "net",
    "vsock",
    "rng",
    "api_sock",
    "dump_dsdt",
    "no_jail",
    "snapshot_dir",
    "id",
    "jail_dir",
    "jail_uid",
    "jail_gid",
    "restore",
];

/// Bulkhead's virtual machine monitor: one process runs one KVM virtual machine.
///
/// The VM is described either by the flags or by `--config <file.json>` (a
/// serialized `vmm_proto::VmConfig`), not both.
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
    /// The whole VM configuration as JSON (a serialized vmm_proto::VmConfig);
    /// excludes every other flag.
    #[arg(long, value_name = "FILE.json", conflicts_with_all = VM_FLAGS)]
    pub config: Option<PathBuf>,
    /// Guest kernel: an ELF with a PVH entry note (vmlinux, test guest) or a bzImage.
    #[arg(long, value_name = "PATH", required_unless_present_any = ["restore", "config"])]
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
    /// Directory for snapshots: kept writable inside the jail (and given to
    /// --jail-uid/--jail-gid); snapshot requests must name a directory inside
    /// it (required for snapshots unless --no-jail).
    #[arg(long, value_name = "DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// VM identifier, used for the jail directory name (default vmm-<pid>).
    #[arg(long, value_name = "NAME")]
    pub id: Option<String>,
    /// Directory under which the jail's root is created (<dir>/<id>/root).
    #[arg(long, value_name = "DIR", default_value = vmm_proto::config::DEFAULT_JAIL_DIR)]
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

impl Cli {
    /// The configuration the flags describe (ignores `--config`).
    pub fn flags_config(&self) -> VmConfig {
        VmConfig {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            memory_bytes: self.mem,
            vcpus: self.vcpus,
            serial: self.serial.clone(),
            disks: self.disk.clone(),
            nets: self.net.clone(),
            vsock: self.vsock.clone(),
            rng: self.rng,
            api_socket: self.api_sock.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            restore: self.restore.clone(),
            dump_dsdt: self.dump_dsdt.clone(),
            jail: JailConfig {
                enabled: !self.no_jail,
                id: self.id.clone(),
                dir: self.jail_dir.clone(),
                uid: self.jail_uid,
                gid: self.jail_gid,
            },
        }
    }

    /// `e` in the words of the command line: the flag instead of the JSON
    /// field when the configuration came from the flags.
    pub fn explain(&self, e: &ValidationError) -> String {
        if self.config.is_some() {
            return e.to_string();
        }
        let head = e.field.split(['.', '[']).next().unwrap_or("");
        let flag = match head {
            "kernel" => "--kernel",
            "initrd" => "--initrd",
            "cmdline" => "--cmdline",
            "memory_bytes" => "--mem",
            "vcpus" => "--vcpus",
            "serial" => "--serial",
            "disks" => "--disk",
            "nets" => "--net",
            "vsock" => "--vsock",
            "api_socket" => "--api-sock",
            "snapshot_dir" => "--snapshot-dir",
            "restore" => "--restore",
            "dump_dsdt" => "--dump-dsdt",
            "jail" if e.field == "jail.id" => "--id",
            "jail" => "--jail-dir",
            _ => return e.to_string(),
        };
        format!("invalid {flag}: {} (expected {})", e.problem, e.expected)
    }

    /// The VM's configuration: the `--config` file, else the flags. Not
    /// validated (see [`VmConfig::validate`]).
    pub fn load(&self) -> Result<VmConfig, CliError> {
        let Some(path) = &self.config else {
            return Ok(self.flags_config());
        };
        let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
            path: path.clone(),
            source,
        })?;
        VmConfig::from_json(&text).map_err(|source| CliError::Parse {
            path: path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn cli_converts_into_a_vm_config() {
        let cli = Cli::try_parse_from([
            "bulkhead-vmm",
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--cmdline",
            "console=ttyS0",
            "--mem",
            "64M",
            "--vcpus",
            "3",
            "--serial",
            "file:/s.log",
            "--disk",
            "/a,ro",
            "--net",
            "tap=t0,mac=02:00:00:00:00:07",
            "--vsock",
            "cid=9,uds=/v.sock",
            "--rng",
            "--api-sock",
            "/api.sock",
            "--snapshot-dir",
            "/snaps",
            "--dump-dsdt",
            "/dsdt.aml",
            "--id",
            "vm7",
            "--jail-dir",
            "/j",
            "--jail-uid",
            "200000",
            "--jail-gid",
            "200001",
        ])
        .expect("valid command line");
        let want = VmConfig {
            kernel: Some("/k".into()),
            initrd: Some("/i".into()),
            cmdline: "console=ttyS0".into(),
            memory_bytes: 64 << 20,
            vcpus: 3,
            serial: SerialSpec::File("/s.log".into()),
            disks: vec![DiskSpec {
                path: "/a".into(),
                read_only: true,
            }],
            nets: vec![NetSpec {
                tap: "t0".into(),
                mac: Some([2, 0, 0, 0, 0, 7]),
            }],
            vsock: Some(VsockSpec {
                cid: 9,
                uds: "/v.sock".into(),
            }),
            rng: true,
            api_socket: Some("/api.sock".into()),
            snapshot_dir: Some("/snaps".into()),
            restore: None,
            dump_dsdt: Some("/dsdt.aml".into()),
            jail: JailConfig {
                enabled: true,
                id: Some("vm7".into()),
                dir: "/j".into(),
                uid: 200000,
                gid: 200001,
            },
        };
        assert_eq!(cli.load().expect("flags"), want);
        want.validate().expect("valid");
        // The defaults of the flags are the defaults of the JSON form.
        let cli = Cli::try_parse_from(["bulkhead-vmm", "--kernel", "/k"]).unwrap();
        assert_eq!(cli.flags_config(), VmConfig::new("/k"));
        let cli = Cli::try_parse_from(["bulkhead-vmm", "--restore", "/snap", "--no-jail"]).unwrap();
        let cfg = cli.flags_config();
        assert_eq!(cfg.restore, Some("/snap".into()));
        assert!(!cfg.jail.enabled && cfg.kernel.is_none());
    }

    #[test]
    fn config_file_excludes_the_flags_and_names_json_paths() {
        let dir = std::env::temp_dir().join(format!("bulkhead-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vm.json");
        let mut cfg = VmConfig::new("/k");
        cfg.vcpus = 2;
        cfg.jail.uid = 200000;
        std::fs::write(&file, cfg.to_json().expect("config as JSON")).unwrap();
        let f = file.to_str().unwrap();
        let cli = Cli::try_parse_from(["bulkhead-vmm", "--config", f]).expect("--config alone");
        assert_eq!(cli.load().expect("loads"), cfg);
        for flag in [
            &["--kernel", "/k"][..],
            &["--mem", "64M"],
            &["--no-jail"],
            &["--restore", "/s"],
            &["--jail-uid", "5"],
        ] {
            let mut argv = vec!["bulkhead-vmm", "--config", f];
            argv.extend_from_slice(flag);
            let e = Cli::try_parse_from(&argv).expect_err("--config with a flag");
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{flag:?}: {e}"
            );
        }
        std::fs::write(&file, r#"{"kernel": "/k", "disks": [{"path": 5}]}"#).unwrap();
        let e = cli.load().unwrap_err();
        assert!(e.to_string().contains("disks[0].path"), "{e}");
        std::fs::write(&file, r#"{"kernel": "/k", "vcpu": 2}"#).unwrap();
        let e = cli.load().unwrap_err().to_string();
        assert!(e.contains("unknown field `vcpu`"), "{e}");
        let missing = Cli::try_parse_from(["bulkhead-vmm", "--config", "/nonexistent.json"])
            .unwrap()
            .load()
            .unwrap_err();
        assert!(matches!(missing, CliError::Read { .. }), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn validation_errors_speak_the_language_of_the_input() {
        let flags = Cli::try_parse_from(["bulkhead-vmm", "--kernel", "/k", "--mem", "1M"]).unwrap();
        let e = flags.flags_config().validate().unwrap_err();
        assert_eq!(e.field, "memory_bytes");
        let text = flags.explain(&e);
        assert!(
            text.starts_with("invalid --mem: 1 MiB is too small"),
            "{text}"
        );
        let flags =
            Cli::try_parse_from(["bulkhead-vmm", "--kernel", "/k", "--net", "tap=a"]).unwrap();
        let mut cfg = flags.flags_config();
        cfg.nets[0].tap = "a/b".into();
        let e = cfg.validate().unwrap_err();
        assert!(flags.explain(&e).starts_with("invalid --net: "), "{e}");
        cfg.nets.clear();
        cfg.jail.id = Some("no spaces".into());
        let e = cfg.validate().unwrap_err();
        assert!(flags.explain(&e).starts_with("invalid --id: "), "{e}");
        // From a file, the JSON field is the name.
        let file = Cli::try_parse_from(["bulkhead-vmm", "--config", "/vm.json"]).unwrap();
        assert!(file.explain(&e).starts_with("invalid jail.id: "), "{e}");
    }
}
