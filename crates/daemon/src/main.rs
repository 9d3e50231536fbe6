//! `bulkheadd`: Bulkhead's daemon. Serves the REST API on a Unix socket, keeps state in
//! SQLite, and drives every instance through its own monitor process, so that stopping,
//! upgrading or killing the daemon never stops a zone or a VM. See docs/platform.md.

mod http;
mod instances;
mod metrics;
mod ops;
mod snapshots;
mod spec;
mod store;
mod streams;
mod vm;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hyper::StatusCode;

/// An error answer of the API: an HTTP status and a message naming the problem.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn not_found(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, m)
    }
    pub fn conflict(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, m)
    }
    pub fn precondition(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PRECONDITION_FAILED, m)
    }
    pub fn unavailable(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m)
    }
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "bulkheadd",
    version,
    about = "Bulkhead daemon: zones and VMs behind a REST API"
)]
struct Args {
    /// Persistent state: database, bundles, console logs, snapshots.
    #[arg(long, env = "BULKHEAD_ROOT", default_value = "/var/lib/bulkhead")]
    root: PathBuf,
    /// Runtime state: the API socket and the monitors' directories.
    #[arg(
        long = "run-dir",
        env = "BULKHEAD_RUN_DIR",
        default_value = "/run/bulkhead"
    )]
    run_dir: PathBuf,
    /// The API socket (default: RUN_DIR/bulkhead.sock).
    #[arg(long, env = "BULKHEAD_SOCKET")]
    socket: Option<PathBuf>,
    /// Group allowed to use the socket besides root (mode 0660). Ignored if it does not exist.
    #[arg(long, default_value = "bulkhead")]
    group: String,
    /// cgroup path prefix of zones; relative paths nest under the monitor's own cgroup.
    #[arg(
        long = "cgroup-parent",
        env = "BULKHEAD_CGROUP_PARENT_PREFIX",
        default_value = "bulkhead"
    )]
    cgroup_parent: String,
    /// The monitor binary (default: bulkhead-monitor next to bulkheadd).
    #[arg(long = "monitor-bin", env = "BULKHEAD_MONITOR")]
    monitor_bin: Option<PathBuf>,
    /// The VM monitor binary (default: bulkhead-vmm next to bulkheadd).
    #[arg(long = "vmm-bin", env = "BULKHEAD_VMM")]
    vmm_bin: Option<PathBuf>,
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("find bulkheadd's own path")?;
    Ok(exe.with_file_name(name))
}

/// The gid of a group in /etc/group. (The binary is static: glibc's NSS lookups
/// (getgrnam) cannot load their modules in it, so the file is read directly.)
fn group_gid(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// Tells systemd (Type=notify) that the daemon is ready, when started by it.
fn sd_notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let p = path.to_string_lossy().to_string();
    if let Some(abs) = p.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes()) {
            let _ = sock.send_to_addr(msg.as_bytes(), &addr);
        }
    } else {
        let _ = sock.send_to(msg.as_bytes(), &p);
    }
}

fn bind(socket: &Path, gid: Option<u32>) -> Result<tokio::net::UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    if socket.exists() {
        // Another daemon answering there is an error; a stale socket is replaced.
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            bail!("another bulkheadd is listening on {}", socket.display());
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("remove stale {}", socket.display()))?;
    }
    let l = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("bind {}", socket.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
    if let Some(g) = gid {
        nix::unistd::chown(socket, None, Some(nix::unistd::Gid::from_raw(g)))
            .with_context(|| format!("chown {}", socket.display()))?;
    }
    Ok(l)
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BULKHEAD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = run(args) {
        eprintln!("bulkheadd: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bulkheadd must run as root (it creates namespaces, cgroups and VMs)");
    }
    std::fs::create_dir_all(&args.root)
        .with_context(|| format!("create {}", args.root.display()))?;
    std::fs::create_dir_all(&args.run_dir)
        .with_context(|| format!("create {}", args.run_dir.display()))?;
    let paths = instances::Paths {
        root: args.root.clone(),
        run: args.run_dir.clone(),
        monitor_bin: match args.monitor_bin {
            Some(p) => p,
            None => sibling("bulkhead-monitor")?,
        },
        vmm_bin: match args.vmm_bin {
            Some(p) => p,
            None => sibling("bulkhead-vmm")?,
        },
        cgroup_parent: args.cgroup_parent.clone(),
    };
    if !paths.monitor_bin.is_file() {
        bail!(
            "monitor binary {} not found (use --monitor-bin)",
            paths.monitor_bin.display()
        );
    }
    let store = store::Store::open(&args.root.join("bulkhead.db"))?;
    let socket = args
        .socket
        .unwrap_or_else(|| args.run_dir.join("bulkhead.sock"));
    let gid = group_gid(&args.group);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async move {
        let listener = bind(&socket, gid)?;
        let d = instances::Daemon::new(paths, store);
        d.adopt().await;
        tracing::info!("listening on {}", socket.display());
        sd_notify("READY=1");
        let server = tokio::spawn(http::serve(d.clone(), listener, http::Access { gid }));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = server => {}
        }
        // Instances keep running under their monitors; a new daemon re-adopts them.
        sd_notify("STOPPING=1");
        tracing::info!("stopping; instances keep running");
        let _ = std::fs::remove_file(&socket);
        Ok::<(), anyhow::Error>(())
    })
}
