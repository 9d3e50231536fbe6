//! `bulkhead-runc`: a runc-compatible command line (as called by podman via
//! conmon and by containerd via go-runc) over the `zone` library. Owns flag
//! parsing, error reporting (stderr and `--log` in text or JSON lines) and the
//! foreground parts of `run`/`exec` (signal forwarding, PTY relay, waiting).

mod defaults;
mod foreground;
mod stderr_log;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use zone::container::{self, CreateOpts, ExecOpts};

#[derive(Parser, Debug)]
#[command(
    name = "bulkhead-runc",
    disable_version_flag = true,
    about = "OCI runtime for Bulkhead zones"
)]
struct Cli {
    /// Root directory for container state.
    #[arg(long, global = true, default_value = zone::state::DEFAULT_ROOT)]
    root: PathBuf,
    /// Log file (errors are also written here).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Debug logging.
    #[arg(long, global = true)]
    debug: bool,
    /// Use the systemd cgroup driver (not supported).
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Rootless mode: auto, true or false.
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    rootless: Option<String>,
    /// Path to criu (accepted, unused).
    #[arg(long, global = true)]
    criu: Option<String>,
    /// Print the version.
    #[arg(short = 'v', long = "version")]
    version: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Args, Debug, Clone)]
struct CreateArgs {
    /// Container id.
    id: String,
    /// Bundle directory.
    #[arg(short = 'b', long, default_value = ".")]
    bundle: PathBuf,
    /// Unix socket that receives the pty master.
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// File to write the init's pid to.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Use MS_MOVE + chroot instead of pivot_root.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Do not create a session keyring (accepted; keyrings are not touched).
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// Number of extra fds (from 3) passed to the init.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a container.
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Create and start a container, wait for it unless --detach.
    Run {
        #[command(flatten)]
        c: CreateArgs,
        /// Return after start.
        #[arg(short = 'd', long)]
        detach: bool,
        /// Keep the container after it exits (accepted for compatibility).
        #[arg(long)]
        keep: bool,
    },
    /// Print the state of a container.
    State { id: String },
    /// Send a signal to a container.
    Kill {
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
        /// Signal every process in the container.
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// Delete a container.
    Delete {
        id: String,
        /// Kill a running container first.
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Run a process in a running container.
    Exec(ExecArgs),
    /// Processes running in a container.
    Ps {
        id: String,
        #[arg(short = 'f', long, default_value = "table")]
        format: String,
        /// Arguments for ps(1).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// List containers.
    List {
        #[arg(short = 'f', long, default_value = "table")]
        format: String,
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Freeze a container.
    Pause { id: String },
    /// Thaw a container.
    Resume { id: String },
    /// Resource usage statistics and events.
    Events {
        id: String,
        #[arg(long)]
        stats: bool,
        #[arg(long, default_value = "5s")]
        interval: String,
    },
    /// Change resource limits of a running container.
    Update(UpdateArgs),
    /// Features of this runtime (JSON).
    Features,
    /// Write a default config.json.
    Spec {
        #[arg(short = 'b', long, default_value = ".")]
        bundle: PathBuf,
    },
}

#[derive(Args, Debug)]
struct ExecArgs {
    id: String,
    /// Process JSON (runtime-spec "process").
    #[arg(short = 'p', long)]
    process: Option<PathBuf>,
    #[arg(short = 't', long)]
    tty: bool,
    #[arg(short = 'd', long)]
    detach: bool,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long)]
    cwd: Option<PathBuf>,
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    #[arg(short = 'u', long)]
    user: Option<String>,
    #[arg(short = 'g', long = "additional-gids")]
    additional_gids: Vec<u32>,
    #[arg(short = 'c', long = "cap")]
    cap: Vec<String>,
    #[arg(long = "no-new-privs")]
    no_new_privs: bool,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    #[arg(long = "process-label")]
    process_label: Option<String>,
    #[arg(long)]
    apparmor: Option<String>,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Args, Debug)]
struct UpdateArgs {
    id: String,
    /// LinuxResources JSON file, or "-" for stdin.
    #[arg(short = 'r', long)]
    resources: Option<String>,
    #[arg(long)]
    memory: Option<String>,
    #[arg(long = "memory-swap")]
    memory_swap: Option<String>,
    #[arg(long = "memory-reservation")]
    memory_reservation: Option<String>,
    #[arg(long = "cpu-shares")]
    cpu_shares: Option<u64>,
    #[arg(long = "cpu-quota")]
    cpu_quota: Option<i64>,
    #[arg(long = "cpu-period")]
    cpu_period: Option<u64>,
    #[arg(long = "cpuset-cpus")]
    cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    cpuset_mems: Option<String>,
    #[arg(long = "pids-limit")]
    pids_limit: Option<i64>,
}

struct Logger {
    file: Option<PathBuf>,
    json: bool,
}

impl Logger {
    fn log(&self, level: &str, msg: &str) {
        let Some(p) = &self.file else { return };
        let time = zone::state::now_rfc3339();
        let line = if self.json {
            serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
        } else {
            format!("time={time:?} level={level} msg={msg:?}")
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                std::process::exit(0);
            }
            if e.kind() == ErrorKind::MissingRequiredArgument {
                let argv: Vec<String> = std::env::args().skip(1).collect();
                if let Some(msg) = missing_args_message(&argv) {
                    eprintln!("bulkhead-runc: {msg}");
                    std::process::exit(1);
                }
            }
            let msg = e.to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("bulkhead-runc: {first}");
            std::process::exit(1);
        }
    };
    stderr_log::StderrLog::install(cli.debug);
    let logger = Logger {
        file: cli.log.clone(),
        json: cli.log_format == "json",
    };
    match run(cli, &logger) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg = one_line_error(&e);
            logger.log("error", &msg);
            eprintln!("bulkhead-runc: {msg}");
            std::process::exit(1);
        }
    }
}

/// runc's one-line shape for a command given too few arguments:
/// `"start" requires exactly 1 argument(s)`. `argv` is without the program name.
fn missing_args_message(argv: &[String]) -> Option<String> {
    // Global options that take a value (the value is not the command).
    const VALUED: &[&str] = &["--root", "--log", "--log-format", "--criu"];
    let mut it = argv.iter();
    let cmd = loop {
        let a = it.next()?;
        if VALUED.contains(&a.as_str()) {
            it.next();
        } else if !a.starts_with('-') {
            break a.as_str();
        }
    };
    let rule = match cmd {
        "exec" | "kill" | "ps" => "a minimum of 1",
        "create" | "start" | "run" | "state" | "delete" | "pause" | "resume" | "events"
        | "update" => "exactly 1",
        _ => return None,
    };
    Some(format!("{cmd:?} requires {rule} argument(s)"))
}

/// The error and its causes on one line, outermost first. Library errors
/// already quote their OS error in their own message, so a cause whose text
/// the line already holds is not repeated.
fn one_line_error(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        // std's io::Error text ends in " (os error N)"; libraries quote it without.
        let core = text.split(" (os error ").next().unwrap_or(&text);
        if msg.contains(core) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg
}

fn run(mut cli: Cli, logger: &Logger) -> Result<i32> {
    if cli.version {
        println!("bulkhead-runc version {}", env!("CARGO_PKG_VERSION"));
        println!("spec: 1.2.0");
        return Ok(0);
    }
    if cli.systemd_cgroup {
        bail!("systemd cgroup driver is not supported; use cgroupfs");
    }
    if let Some(r) = &cli.rootless {
        if !matches!(r.as_str(), "auto" | "true" | "false") {
            bail!("--rootless: invalid value {r:?} (use auto, true or false)");
        }
    }
    if cli.log_format != "text" && cli.log_format != "json" {
        bail!(
            "--log-format: invalid value {:?} (use text or json)",
            cli.log_format
        );
    }
    let root = cli.root.clone();
    let Some(cmd) = cli.cmd.take() else {
        bail!("no command given (try --help)");
    };
    if cli.debug {
        logger.log("debug", &format!("command: {cmd:?}"));
    }
    if matches!(cmd, Cmd::Create(_) | Cmd::Run { .. } | Cmd::Exec(_)) {
        zone::hardening::ensure_sealed_exe().context("CVE-2019-5736 protection")?;
    }
    match cmd {
        Cmd::Create(c) => {
            container::create(&create_opts(&root, &c, false))?;
            Ok(0)
        }
        Cmd::Start { id } => {
            container::start(&root, &id)?;
            Ok(0)
        }
        Cmd::Run { c, detach, keep: _ } => foreground::run(&root, &c, detach),
        Cmd::State { id } => {
            let v = container::state(&root, &id)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        Cmd::Kill { id, signal, all } => {
            let sig = zone::signal::parse_signal(&signal).map_err(|e| anyhow!(e))?;
            container::kill(&root, &id, sig, all)?;
            Ok(0)
        }
        Cmd::Delete { id, force } => {
            container::delete(&root, &id, force)?;
            Ok(0)
        }
        Cmd::Exec(e) => exec(&root, e),
        Cmd::Ps {
            id,
            format,
            ps_args,
        } => ps(&root, &id, &format, &ps_args),
        Cmd::List { format, quiet } => list(&root, &format, quiet),
        Cmd::Pause { id } => {
            container::pause(&root, &id)?;
            Ok(0)
        }
        Cmd::Resume { id } => {
            container::resume(&root, &id)?;
            Ok(0)
        }
        Cmd::Events {
            id,
            stats,
            interval,
        } => events(&root, &id, stats, &interval),
        Cmd::Update(u) => update(&root, u),
        Cmd::Features => {
            println!("{}", serde_json::to_string_pretty(&defaults::features())?);
            Ok(0)
        }
        Cmd::Spec { bundle } => {
            let rootless = cli.rootless.as_deref() == Some("true");
            let p = bundle.join("config.json");
            if p.exists() {
                bail!("{} already exists; remove it first", p.display());
            }
            let spec = defaults::default_spec(rootless);
            let text = serde_json::to_string_pretty(&spec)?;
            std::fs::write(&p, text + "\n").with_context(|| format!("write {}", p.display()))?;
            Ok(0)
        }
    }
}

fn create_opts(root: &Path, c: &CreateArgs, keep_console: bool) -> CreateOpts {
    let _ = c.no_new_keyring;
    CreateOpts {
        root: root.to_path_buf(),
        id: c.id.clone(),
        bundle: c.bundle.clone(),
        console_socket: c.console_socket.clone(),
        pid_file: c.pid_file.clone(),
        no_pivot: c.no_pivot,
        preserve_fds: c.preserve_fds,
        keep_console,
        stdio: None,
    }
}

fn exec(root: &Path, e: ExecArgs) -> Result<i32> {
    if e.process_label.as_deref().is_some_and(|s| !s.is_empty()) {
        bail!("--process-label: SELinux is not supported by bulkhead-runc");
    }
    if e.apparmor.as_deref().is_some_and(|s| !s.is_empty()) {
        bail!("--apparmor: AppArmor is not supported by bulkhead-runc");
    }
    let mut process = if let Some(p) = &e.process {
        let mut text =
            std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
        if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&text) {
            let warnings = zone::spec::drop_unknown_capabilities(&mut v);
            if !warnings.is_empty() {
                for w in &warnings {
                    tracing::warn!("{w}");
                }
                text = v.to_string();
            }
        }
        let de = &mut serde_json::Deserializer::from_str(&text);
        let proc: oci_spec::runtime::Process =
            serde_path_to_error_deserialize(de).map_err(|err| anyhow!("{}: {err}", p.display()))?;
        proc
    } else {
        if e.command.is_empty() {
            bail!("exec: a command is required (or --process)");
        }
        let mut base = container::exec_base_process(root, &e.id)?;
        base.set_args(Some(e.command.clone()));
        base
    };
    let overrides = exec_overrides(&e)?;
    overrides
        .apply(&mut process)
        .map_err(|err| anyhow!("{}", cli_wording(&err)))?;
    let tty = process.terminal().unwrap_or(false);
    let keep_console = tty && e.console_socket.is_none() && !e.detach;
    let opts = ExecOpts {
        root: root.to_path_buf(),
        id: e.id.clone(),
        process,
        console_socket: e.console_socket.clone(),
        pid_file: e.pid_file.clone(),
        preserve_fds: e.preserve_fds,
        keep_console,
        stdio: None,
    };
    let spawned = container::exec(&opts)?;
    if e.detach {
        return Ok(0);
    }
    foreground::wait_foreground(spawned)
}

/// `exec`'s flags as the library's typed overrides. `--tty` with `--process` only turns a
/// terminal on; without `--process` it decides either way (runc's behaviour).
fn exec_overrides(e: &ExecArgs) -> Result<container::ExecOverrides> {
    let user = match &e.user {
        Some(u) => Some(
            u.parse::<container::ExecUser>()
                .map_err(|err| anyhow!("{}", cli_wording(&err)))?,
        ),
        None => None,
    };
    let caps = e
        .cap
        .iter()
        .map(|c| container::parse_capability(c).map_err(|err| anyhow!("{}", cli_wording(&err))))
        .collect::<Result<Vec<_>>>()?;
    Ok(container::ExecOverrides {
        env: e.env.clone(),
        user,
        additional_gids: e.additional_gids.clone(),
        caps,
        cwd: e.cwd.clone(),
        no_new_privs: e.no_new_privs,
        tty: if e.process.is_some() {
            e.tty.then_some(true)
        } else {
            Some(e.tty)
        },
    })
}

/// A library override error in the words of the flag that carried it.
fn cli_wording(e: &container::OverrideError) -> String {
    use container::OverrideError as E;
    match e {
        E::User(_) => format!("--user: {e}"),
        E::Capability(_) => format!("--cap: {e}"),
        E::Env(_) => format!("--env: {e}"),
        E::Cwd(_) => format!("--cwd: {e}"),
    }
}

fn serde_path_to_error_deserialize<'de, D, T>(d: D) -> std::result::Result<T, String>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    serde_path_to_error::deserialize(d).map_err(|e| {
        let inner = e.inner().to_string();
        let inner = match inner.rfind(" at line ") {
            Some(i) => inner[..i].to_string(),
            None => inner,
        };
        let path = e.path().to_string();
        if path.is_empty() || path == "." {
            inner
        } else {
            format!("{path}: {inner}")
        }
    })
}

fn ps(root: &Path, id: &str, format: &str, ps_args: &[String]) -> Result<i32> {
    let pids = container::pids(root, id)?;
    match format {
        "json" => {
            println!("{}", serde_json::to_string(&pids)?);
            Ok(0)
        }
        "table" => {
            let args: Vec<String> = if ps_args.is_empty() {
                vec!["-ef".into()]
            } else {
                ps_args.to_vec()
            };
            let out = std::process::Command::new("ps")
                .args(&args)
                .output()
                .context("run ps")?;
            if !out.status.success() {
                bail!(
                    "ps {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or("");
            let col = header
                .split_whitespace()
                .position(|h| h == "PID")
                .ok_or_else(|| anyhow!("ps output has no PID column"))?;
            println!("{header}");
            for l in lines {
                if let Some(p) = l
                    .split_whitespace()
                    .nth(col)
                    .and_then(|x| x.parse::<i32>().ok())
                {
                    if pids.contains(&p) {
                        println!("{l}");
                    }
                }
            }
            Ok(0)
        }
        f => bail!("invalid format {f:?} (use table or json)"),
    }
}

fn list(root: &Path, format: &str, quiet: bool) -> Result<i32> {
    let all = container::list(root)?;
    if quiet {
        for v in &all {
            println!("{}", v.id);
        }
        return Ok(0);
    }
    match format {
        "json" => println!("{}", serde_json::to_string(&all)?),
        "table" => {
            let rows: Vec<[String; 6]> = all
                .iter()
                .map(|v| {
                    [
                        v.id.clone(),
                        v.pid.to_string(),
                        v.status.to_string(),
                        v.bundle.display().to_string(),
                        v.created.clone(),
                        v.owner.clone(),
                    ]
                })
                .collect();
            let head = ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(String::from);
            let mut w = [0usize; 6];
            for r in std::iter::once(&head).chain(rows.iter()) {
                for (i, c) in r.iter().enumerate() {
                    w[i] = w[i].max(c.len());
                }
            }
            for r in std::iter::once(&head).chain(rows.iter()) {
                let mut line = String::new();
                for (i, c) in r.iter().enumerate() {
                    if i == 5 {
                        line.push_str(c);
                    } else {
                        line.push_str(&format!("{c:<width$}", width = w[i] + 3));
                    }
                }
                println!("{}", line.trim_end());
            }
        }
        f => bail!("invalid format {f:?} (use table or json)"),
    }
    Ok(0)
}

fn parse_interval(s: &str) -> Result<std::time::Duration> {
    let bad = || anyhow!("--interval {s:?}: expected a duration such as 5s, 500ms or 1m");
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| (&s[..i], &s[i..]))
        .unwrap_or((s, "s"));
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if secs <= 0.0 {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn events(root: &Path, id: &str, stats: bool, interval: &str) -> Result<i32> {
    if stats {
        println!("{}", container::stats_event(root, id)?);
        return Ok(0);
    }
    let every = parse_interval(interval)?;
    let (st, sd) = container::load(root, id)?;
    let mut ooms = container::stats(root, id).map(|s| s.oom_kills).unwrap_or(0);
    loop {
        if st.status(&sd) == zone::state::Status::Stopped {
            return Ok(0);
        }
        match container::stats(root, id) {
            Ok(s) => {
                if s.oom_kills > ooms {
                    println!("{}", serde_json::json!({"type": "oom", "id": id}));
                    ooms = s.oom_kills;
                }
                println!("{}", s.event_json(id));
            }
            Err(e) => tracing::warn!("stats: {e}"),
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(every);
    }
}

/// "512m", "1G", "1024", "-1" → bytes.
fn parse_size(s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: i64 = num.parse().map_err(|_| anyhow!("invalid size {s:?}"))?;
    n.checked_mul(mul)
        .ok_or_else(|| anyhow!("size {s:?} is too large"))
}

fn update(root: &Path, u: UpdateArgs) -> Result<i32> {
    let mut r = match &u.resources {
        Some(src) => {
            let text = if src == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .context("read resources from stdin")?;
                s
            } else {
                std::fs::read_to_string(src).with_context(|| format!("read {src}"))?
            };
            let de = &mut serde_json::Deserializer::from_str(&text);
            serde_path_to_error_deserialize::<_, oci_spec::runtime::LinuxResources>(de)
                .map_err(|e| anyhow!("--resources: {e}"))?
        }
        None => oci_spec::runtime::LinuxResources::default(),
    };
    let size = |v: &Option<String>| v.as_deref().map(parse_size).transpose();
    let flags = container::ResourceUpdate {
        memory_limit: size(&u.memory)?,
        memory_swap: size(&u.memory_swap)?,
        memory_reservation: size(&u.memory_reservation)?,
        cpu_shares: u.cpu_shares,
        cpu_quota: u.cpu_quota,
        cpu_period: u.cpu_period,
        cpuset_cpus: u.cpuset_cpus.clone(),
        cpuset_mems: u.cpuset_mems.clone(),
        pids_limit: u.pids_limit,
    };
    // The flags win over the same fields of --resources, as in runc.
    flags.apply_to(&mut r);
    container::update(root, &u.id, &r)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_line_does_not_repeat_causes() {
        let io = std::io::Error::from_raw_os_error(libc::EBUSY);
        let inner = zone::ZoneError::io(
            "writing 1 to /x/memory.limit_in_bytes",
            std::path::Path::new("/x"),
            io,
        );
        let e = anyhow::Error::new(inner).context("create");
        let line = one_line_error(&e);
        assert_eq!(line.matches("busy").count(), 1, "{line}");
        assert!(line.starts_with("create: writing 1"), "{line}");
    }

    #[test]
    fn missing_argument_messages_are_runc_shaped() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            missing_args_message(&v(&["start"])).as_deref(),
            Some("\"start\" requires exactly 1 argument(s)")
        );
        assert_eq!(
            missing_args_message(&v(&["--root", "/x", "delete", "--force"])).as_deref(),
            Some("\"delete\" requires exactly 1 argument(s)")
        );
        assert_eq!(
            missing_args_message(&v(&["exec"])).as_deref(),
            Some("\"exec\" requires a minimum of 1 argument(s)")
        );
        assert_eq!(missing_args_message(&v(&["--debug"])), None);
    }

    #[test]
    fn sizes_and_intervals() {
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("-1").unwrap(), -1);
        assert!(parse_size("abc").is_err());
        assert_eq!(
            parse_interval("5s").unwrap(),
            std::time::Duration::from_secs(5)
        );
        assert_eq!(
            parse_interval("250ms").unwrap(),
            std::time::Duration::from_millis(250)
        );
        assert_eq!(
            parse_interval("2").unwrap(),
            std::time::Duration::from_secs(2)
        );
        assert!(parse_interval("x").is_err());
    }

    #[test]
    fn cli_parses_runc_style_invocations() {
        let c = Cli::try_parse_from([
            "bulkhead-runc",
            "--root",
            "/run/x",
            "--log",
            "/tmp/l.json",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "--console-socket",
            "/s",
            "c1",
        ])
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/run/x"));
        match c.cmd {
            Some(Cmd::Create(a)) => {
                assert_eq!(a.id, "c1");
                assert_eq!(a.bundle, PathBuf::from("/b"));
            }
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from(["bulkhead-runc", "exec", "-t", "c1", "sh", "-c", "echo hi"])
            .unwrap();
        match c.cmd {
            Some(Cmd::Exec(e)) => assert_eq!(e.command, vec!["sh", "-c", "echo hi"]),
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from(["bulkhead-runc", "kill", "--all", "c1", "9"]).unwrap();
        assert!(matches!(c.cmd, Some(Cmd::Kill { all: true, .. })));
        let c = Cli::try_parse_from(["bulkhead-runc", "--rootless=auto", "list", "-q"]).unwrap();
        assert_eq!(c.rootless.as_deref(), Some("auto"));
    }
}
