//! `bulkhead`: the operator's command line. A client of bulkheadd's REST API only: every
//! verb is a request to the daemon's socket. Data goes to stdout, messages to stderr;
//! exit status 0 on success, 1 on an error, 2 on a usage error, and `exec` returns the
//! command's own exit code.

mod client;
mod output;
mod stream;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use api::{InstanceKind, Source};
use clap::{CommandFactory, Parser, Subcommand};
use hyper::Method;

use client::Api;
use output::{print, Format};

const EXAMPLES: &str = "Examples:
  bulkhead create web --rootfs /srv/rootfs -c limits.memory=256MiB -c command='httpd -f -p 80'
  bulkhead start web
  bulkhead exec web -- ps
  bulkhead exec -t web -- sh
  bulkhead config set web limits.memory 512MiB
  bulkhead create vm1 --vm --kernel /boot/vmlinux --memory 256MiB --cpus 2 --start
  bulkhead list --format json";

#[derive(Parser, Debug)]
#[command(name = "bulkhead", version, about = "Manage Bulkhead zones and VMs through bulkheadd", after_help = EXAMPLES)]
struct Cli {
    /// The daemon's socket.
    #[arg(long, global = true, env = "BULKHEAD_SOCKET", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Output format of data.
    #[arg(long, global = true, value_enum, default_value = "table")]
    format: Format,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create an instance (a zone by default, a VM with --vm).
    #[command(
        after_help = "Examples:\n  bulkhead create web --rootfs /srv/web-root -c limits.memory=128MiB --start\n  bulkhead create db --bundle /srv/db-bundle\n  bulkhead create vm1 --vm --kernel /boot/vmlinux --cmdline console=ttyS0 --disk /srv/vm1.img"
    )]
    Create(CreateArgs),
    /// Create and start an instance (create --start).
    Launch(CreateArgs),
    /// List instances.
    #[command(alias = "ls")]
    List,
    /// Show an instance: configuration, status and live figures.
    Show { name: String },
    /// Start instances.
    Start {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stop instances: signal their init (a VM: power off), wait, then kill.
    #[command(
        after_help = "Examples:\n  bulkhead stop web\n  bulkhead stop web --timeout 5\n  bulkhead stop web --force"
    )]
    Stop {
        #[arg(required = true)]
        names: Vec<String>,
        /// Kill at once.
        #[arg(short, long)]
        force: bool,
        /// Seconds to wait before killing (default: boot.stop.timeout, 30).
        #[arg(short, long)]
        timeout: Option<u64>,
    },
    /// Restart instances.
    Restart {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(short, long)]
        force: bool,
        #[arg(short, long)]
        timeout: Option<u64>,
    },
    /// Freeze (pause) every process of instances.
    Freeze {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Thaw frozen instances.
    Unfreeze {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Delete instances (a running one only with --force).
    #[command(alias = "rm")]
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(short, long)]
        force: bool,
    },
    /// Rename a stopped instance.
    Rename { name: String, new_name: String },
    /// Run a command in an instance; exits with the command's exit code.
    #[command(
        after_help = "Examples:\n  bulkhead exec web -- cat /etc/hostname\n  bulkhead exec -t web -- sh\n  echo hi | bulkhead exec -i web -- cat\n  bulkhead exec --user 1000:1000 --env LANG=C web -- id"
    )]
    Exec {
        name: String,
        /// Allocate a terminal (and pass stdin).
        #[arg(short, long)]
        tty: bool,
        /// Pass stdin to the command.
        #[arg(short, long)]
        interactive: bool,
        /// Extra environment, KEY=VALUE.
        #[arg(short, long = "env")]
        env: Vec<String>,
        /// Working directory inside the instance.
        #[arg(long)]
        cwd: Option<String>,
        /// uid[:gid] inside the instance.
        #[arg(short, long)]
        user: Option<String>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Attach to an instance's console (detach with Ctrl-a q).
    Console { name: String },
    /// Print an instance's console log.
    Logs {
        name: String,
        /// Keep printing what is appended.
        #[arg(short, long)]
        follow: bool,
        /// Start at this time: RFC 3339, or seconds ago.
        #[arg(long)]
        since: Option<String>,
    },
    /// Read and change configuration keys.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Snapshots of an instance.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Print the daemon's events as they happen (one JSON object per line).
    Events {
        /// Only these types (lifecycle, operation), comma-separated.
        #[arg(long = "type")]
        kind: Option<String>,
    },
    /// Operations the daemon runs or ran.
    #[command(subcommand)]
    Operation(OperationCmd),
    /// Print a shell completion script.
    Completion { shell: clap_complete::Shell },
    /// Write man pages for bulkhead and each verb into a directory.
    Man { dir: PathBuf },
}

#[derive(clap::Args, Debug, Clone)]
struct CreateArgs {
    name: String,
    /// A directory to use as the zone's root file system.
    #[arg(long, conflicts_with_all = ["bundle", "vm"])]
    rootfs: Option<PathBuf>,
    /// An OCI bundle (config.json + root) as the zone's base.
    #[arg(long, conflicts_with = "vm")]
    bundle: Option<PathBuf>,
    /// Create a VM instead of a zone.
    #[arg(long)]
    vm: bool,
    /// VM: the guest kernel (sets vm.kernel).
    #[arg(long, requires = "vm")]
    kernel: Option<PathBuf>,
    /// VM: the kernel command line (sets vm.cmdline).
    #[arg(long, requires = "vm")]
    cmdline: Option<String>,
    /// VM: a disk, PATH[:ro] (sets vm.disk.N); repeatable.
    #[arg(long, requires = "vm")]
    disk: Vec<String>,
    /// Memory: the zone's cap or the VM's RAM (sets limits.memory).
    #[arg(long)]
    memory: Option<String>,
    /// CPUs (sets limits.cpu).
    #[arg(long)]
    cpus: Option<String>,
    /// Configuration keys, KEY=VALUE; repeatable.
    #[arg(short = 'c', long = "config")]
    config: Vec<String>,
    #[arg(long, default_value = "")]
    description: String,
    /// Start it once created.
    #[arg(long)]
    start: bool,
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Set keys: `set NAME KEY VALUE` or `set NAME KEY=VALUE...`.
    Set {
        name: String,
        #[arg(required = true, num_args = 1..)]
        pairs: Vec<String>,
    },
    /// Print one key's value.
    Get { name: String, key: String },
    /// Remove keys.
    Unset {
        name: String,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Print an instance's configuration.
    Show { name: String },
    /// The configuration keys this version knows.
    Keys {
        /// The docs page (docs/config-keys.md) instead of a table.
        #[arg(long)]
        markdown: bool,
    },
}

#[derive(Subcommand, Debug)]
enum SnapshotCmd {
    Create { name: String, snapshot: String },
    List { name: String },
    Restore { name: String, snapshot: String },
    Delete { name: String, snapshot: String },
}

#[derive(Subcommand, Debug)]
enum OperationCmd {
    List,
    Show {
        id: String,
    },
    Wait {
        id: String,
    },
    /// Cancel a running operation.
    Cancel {
        id: String,
    },
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                _ => 2,
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bulkhead: start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(run(cli)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bulkhead: {}", one_line(&e));
            1
        }
    };
    let _ = std::io::stdout().flush();
    // Exit at once: a pending read of stdin (exec, console) must not hold us.
    std::process::exit(code);
}

fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in e.chain() {
        let t = c.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
    }
    parts.join(": ")
}

fn kv(s: &str) -> Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("{s:?}: expected KEY=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

fn abs(p: &std::path::Path) -> Result<String> {
    let p = std::path::absolute(p).with_context(|| format!("{}", p.display()))?;
    Ok(p.display().to_string())
}

fn instance_path(name: &str) -> String {
    format!("/1.0/instances/{name}")
}

async fn run(cli: Cli) -> Result<i32> {
    let api = Api {
        socket: cli.socket.clone(),
    };
    let fmt = cli.format;
    match cli.cmd {
        Cmd::Create(a) => create(&api, a, false).await,
        Cmd::Launch(a) => create(&api, a, true).await,
        Cmd::List => {
            let v: Vec<api::Instance> = api.get("/1.0/instances?recursion=1").await?;
            print(fmt, &v, || {
                let mut rows = vec![
                    vec!["NAME", "KIND", "STATUS", "PID", "LAST EXIT", "CREATED"]
                        .into_iter()
                        .map(String::from)
                        .collect::<Vec<_>>(),
                ];
                for i in &v {
                    rows.push(vec![
                        i.name.clone(),
                        i.kind.to_string(),
                        i.status.to_string().to_uppercase(),
                        i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                        i.last_exit
                            .map(|p| p.to_string())
                            .unwrap_or_else(|| "-".into()),
                        i.created_at.chars().take(19).collect(),
                    ]);
                }
                rows
            })?;
            Ok(0)
        }
        Cmd::Show { name } => {
            let inst: api::Instance = api.get(&instance_path(&name)).await?;
            let state: api::InstanceState =
                api.get(&format!("{}/state", instance_path(&name))).await?;
            #[derive(serde::Serialize)]
            struct Shown<'a> {
                #[serde(flatten)]
                instance: &'a api::Instance,
                state: &'a api::InstanceState,
            }
            let shown = Shown {
                instance: &inst,
                state: &state,
            };
            print(fmt, &shown, || {
                let mut rows = vec![
                    vec!["name:".into(), inst.name.clone()],
                    vec!["kind:".into(), inst.kind.to_string()],
                    vec!["status:".into(), inst.status.to_string()],
                    vec!["source:".into(), source_text(&inst.source)],
                    vec!["created:".into(), inst.created_at.clone()],
                ];
                if !inst.description.is_empty() {
                    rows.push(vec!["description:".into(), inst.description.clone()]);
                }
                if let Some(p) = inst.pid {
                    rows.push(vec!["pid:".into(), p.to_string()]);
                }
                if let Some(c) = inst.last_exit {
                    rows.push(vec!["last exit:".into(), c.to_string()]);
                }
                if state.pid.is_some() {
                    rows.push(vec![
                        "cpu:".into(),
                        format!("{:.3} s", state.cpu_usage_ns as f64 / 1e9),
                    ]);
                    rows.push(vec![
                        "memory:".into(),
                        format!(
                            "{}{}",
                            human(state.memory_bytes),
                            state
                                .memory_limit_bytes
                                .map(|l| format!(" of {}", human(l)))
                                .unwrap_or_default()
                        ),
                    ]);
                    rows.push(vec![
                        "processes:".into(),
                        format!(
                            "{}{}",
                            state.processes,
                            state
                                .processes_limit
                                .map(|l| format!(" of {l}"))
                                .unwrap_or_default()
                        ),
                    ]);
                }
                for (k, v) in &inst.config {
                    rows.push(vec![format!("{k}:"), v.clone()]);
                }
                for (k, why) in &state.unenforced {
                    rows.push(vec!["not enforced:".into(), format!("{k}: {why}")]);
                }
                rows
            })?;
            Ok(0)
        }
        Cmd::Start { names } => states(&api, &names, api::Action::Start, None, false).await,
        Cmd::Stop {
            names,
            force,
            timeout,
        } => states(&api, &names, api::Action::Stop, timeout, force).await,
        Cmd::Restart {
            names,
            force,
            timeout,
        } => states(&api, &names, api::Action::Restart, timeout, force).await,
        Cmd::Freeze { names } => states(&api, &names, api::Action::Freeze, None, false).await,
        Cmd::Unfreeze { names } => states(&api, &names, api::Action::Unfreeze, None, false).await,
        Cmd::Delete { names, force } => {
            each(&names, |n| {
                let api = &api;
                async move {
                    let q = if force { "?force=1" } else { "" };
                    api.operation(
                        Method::DELETE,
                        &format!("{}{q}", instance_path(&n)),
                        None::<&()>,
                    )
                    .await
                    .map(|_| ())
                }
            })
            .await
        }
        Cmd::Rename { name, new_name } => {
            let body = api::InstanceRename { name: new_name };
            let _: (api::Instance, _) = api
                .call(Method::POST, &instance_path(&name), Some(&body), &[])
                .await?;
            Ok(0)
        }
        Cmd::Exec {
            name,
            tty,
            interactive,
            env,
            cwd,
            user,
            command,
        } => exec(&api, &name, tty, interactive, env, cwd, user, command).await,
        Cmd::Console { name } => {
            let mut io = api
                .upgrade(Method::GET, &format!("{}/console", instance_path(&name)))
                .await?;
            eprintln!("bulkhead: attached to {name}'s console; detach with Ctrl-a q");
            let raw = stream::RawMode::enter();
            let r = stream::relay(&mut io, true, true, true).await;
            drop(raw);
            r?;
            eprintln!("\r\nbulkhead: detached");
            Ok(0)
        }
        Cmd::Logs {
            name,
            follow,
            since,
        } => {
            let mut q = Vec::new();
            if follow {
                q.push("follow=1".to_string());
            }
            if let Some(s) = since {
                q.push(format!("since={s}"));
            }
            let path = format!("{}/logs?{}", instance_path(&name), q.join("&"));
            let resp = api.stream(&path).await?;
            copy_body(resp).await?;
            Ok(0)
        }
        Cmd::Config(c) => config(&api, fmt, c).await,
        Cmd::Snapshot(s) => snapshot(&api, fmt, s).await,
        Cmd::Events { kind } => {
            let path = match kind {
                Some(k) => format!("/1.0/events?type={k}"),
                None => "/1.0/events".to_string(),
            };
            let resp = api.stream(&path).await?;
            copy_body(resp).await?;
            Ok(0)
        }
        Cmd::Operation(o) => {
            match o {
                OperationCmd::List => {
                    let v: Vec<api::Operation> = api.get("/1.0/operations").await?;
                    print(fmt, &v, || {
                        let mut rows = vec![vec![
                            "ID".into(),
                            "STATUS".into(),
                            "CREATED".into(),
                            "DESCRIPTION".into(),
                        ]];
                        for o in &v {
                            rows.push(vec![
                                o.id.clone(),
                                o.status.to_string(),
                                o.created_at.chars().take(19).collect(),
                                o.description.clone(),
                            ]);
                        }
                        rows
                    })?;
                }
                OperationCmd::Show { id } => {
                    let o: api::Operation = api.get(&format!("/1.0/operations/{id}")).await?;
                    print(fmt, &o, || op_rows(&o))?;
                }
                OperationCmd::Wait { id } => {
                    let o = api.wait(&id, "waiting").await?;
                    print(fmt, &o, || op_rows(&o))?;
                }
                OperationCmd::Cancel { id } => {
                    let _: (serde_json::Value, _) = api
                        .call(
                            Method::DELETE,
                            &format!("/1.0/operations/{id}"),
                            None::<&()>,
                            &[],
                        )
                        .await?;
                }
            }
            Ok(0)
        }
        Cmd::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "bulkhead",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Cmd::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("write man pages to {}", dir.display()))?;
            Ok(0)
        }
    }
}

fn op_rows(o: &api::Operation) -> Vec<Vec<String>> {
    let mut rows = vec![
        vec!["id:".into(), o.id.clone()],
        vec!["status:".into(), o.status.to_string()],
        vec!["description:".into(), o.description.clone()],
        vec!["created:".into(), o.created_at.clone()],
        vec!["updated:".into(), o.updated_at.clone()],
    ];
    if let Some(e) = &o.err {
        rows.push(vec!["error:".into(), e.clone()]);
    }
    rows
}

fn source_text(s: &Source) -> String {
    match s {
        Source::Rootfs { path } => format!("rootfs {path}"),
        Source::Bundle { path } => format!("bundle {path}"),
        Source::None => "-".into(),
    }
}

fn human(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < 4 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// Runs `f` for each name; reports each failure and fails if any did.
async fn each<F, Fut>(names: &[String], f: F) -> Result<i32>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut failed = 0;
    for n in names {
        if let Err(e) = f(n.clone()).await {
            if names.len() == 1 {
                return Err(e);
            }
            eprintln!("bulkhead: {n}: {}", one_line(&e));
            failed += 1;
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// One state change for each of `names`.
async fn states(
    api: &Api,
    names: &[String],
    action: api::Action,
    timeout: Option<u64>,
    force: bool,
) -> Result<i32> {
    each(names, |n| state_change(api, n, action, timeout, force)).await
}

async fn state_change(
    api: &Api,
    name: String,
    action: api::Action,
    timeout: Option<u64>,
    force: bool,
) -> Result<()> {
    let body = api::StatePut {
        action,
        timeout,
        force,
    };
    api.operation(
        Method::PUT,
        &format!("{}/state", instance_path(&name)),
        Some(&body),
    )
    .await?;
    Ok(())
}

async fn create(api: &Api, a: CreateArgs, start: bool) -> Result<i32> {
    let mut config = BTreeMap::new();
    for c in &a.config {
        let (k, v) = kv(c)?;
        config.insert(k, v);
    }
    if let Some(m) = &a.memory {
        config.insert("limits.memory".into(), m.clone());
    }
    if let Some(c) = &a.cpus {
        config.insert("limits.cpu".into(), c.clone());
    }
    let (kind, source) = if a.vm {
        if let Some(k) = &a.kernel {
            config.insert("vm.kernel".into(), abs(k)?);
        }
        if let Some(c) = &a.cmdline {
            config.insert("vm.cmdline".into(), c.clone());
        }
        for (i, d) in a.disk.iter().enumerate() {
            let (p, ro) = match d.strip_suffix(":ro") {
                Some(p) => (p, ":ro"),
                None => (d.as_str(), ""),
            };
            config.insert(
                format!("vm.disk.{i}"),
                format!("{}{ro}", abs(std::path::Path::new(p))?),
            );
        }
        (InstanceKind::Vm, Source::None)
    } else if let Some(r) = &a.rootfs {
        (InstanceKind::Zone, Source::Rootfs { path: abs(r)? })
    } else if let Some(b) = &a.bundle {
        (InstanceKind::Zone, Source::Bundle { path: abs(b)? })
    } else {
        bail!("give the zone a root file system (--rootfs DIR or --bundle DIR), or use --vm");
    };
    let body = api::InstancesPost {
        name: a.name.clone(),
        kind,
        source,
        config,
        description: a.description,
        start: start || a.start,
    };
    api.operation(Method::POST, "/1.0/instances", Some(&body))
        .await?;
    Ok(0)
}

#[allow(clippy::too_many_arguments)]
async fn exec(
    api: &Api,
    name: &str,
    tty: bool,
    interactive: bool,
    env: Vec<String>,
    cwd: Option<String>,
    user: Option<String>,
    command: Vec<String>,
) -> Result<i32> {
    for e in &env {
        kv(e)?;
    }
    let (cols, rows) = if tty {
        stream::window_size().unwrap_or((80, 24))
    } else {
        (0, 0)
    };
    let post = api::ExecPost {
        command,
        env,
        cwd,
        user,
        tty,
        cols,
        rows,
    };
    let mut io = api
        .upgrade(Method::POST, &format!("{}/exec", instance_path(name)))
        .await?;
    use tokio::io::AsyncWriteExt;
    let mut line = serde_json::to_vec(&post)?;
    line.push(b'\n');
    io.write_all(&line).await?;
    if !tty && !interactive {
        io.write_all(&api::frame::encode(api::frame::FrameKind::StdinEof, &[]))
            .await?;
    }
    let raw = if tty {
        Some(stream::RawMode::enter())
    } else {
        None
    };
    let r = stream::relay(&mut io, false, tty, tty || interactive).await;
    drop(raw);
    match r? {
        stream::Ending::Exit(c) => Ok(c),
        stream::Ending::Detached => Ok(0),
    }
}

async fn copy_body(resp: hyper::Response<hyper::body::Incoming>) -> Result<()> {
    use http_body_util::BodyExt;
    let mut body = resp.into_body();
    let mut out = std::io::stdout();
    while let Some(f) = body.frame().await {
        let f = f?;
        if let Some(d) = f.data_ref() {
            if out.write_all(d).and_then(|_| out.flush()).is_err() {
                break; // stdout closed (| head): stop quietly
            }
        }
    }
    Ok(())
}

async fn config(api: &Api, fmt: Format, c: ConfigCmd) -> Result<i32> {
    match c {
        ConfigCmd::Keys { markdown } => {
            if markdown {
                print!("{}", api::config::docs_markdown());
                return Ok(0);
            }
            let keys: Vec<BTreeMap<&str, String>> = api::KEYS
                .iter()
                .map(|k| {
                    let mut m = BTreeMap::new();
                    m.insert("key", k.name.to_string());
                    m.insert("default", k.default.to_string());
                    m.insert("live", k.live.to_string());
                    m.insert("description", k.description.to_string());
                    m
                })
                .collect();
            print(fmt, &keys, || {
                let mut rows = vec![vec![
                    "KEY".into(),
                    "DEFAULT".into(),
                    "LIVE".into(),
                    "DESCRIPTION".into(),
                ]];
                for k in api::KEYS {
                    rows.push(vec![
                        k.name.into(),
                        if k.default.is_empty() {
                            "-".into()
                        } else {
                            k.default.into()
                        },
                        k.live.to_string(),
                        k.description.into(),
                    ]);
                }
                rows
            })?;
            Ok(0)
        }
        ConfigCmd::Show { name } => {
            let inst: api::Instance = api.get(&instance_path(&name)).await?;
            print(fmt, &inst.config, || {
                inst.config
                    .iter()
                    .map(|(k, v)| vec![format!("{k}:"), v.clone()])
                    .collect()
            })?;
            Ok(0)
        }
        ConfigCmd::Get { name, key } => {
            let inst: api::Instance = api.get(&instance_path(&name)).await?;
            match inst.config.get(&key) {
                Some(v) => println!("{v}"),
                None => {
                    if api::config::lookup(&key).is_none() {
                        bail!("unknown configuration key {key:?}");
                    }
                }
            }
            Ok(0)
        }
        ConfigCmd::Set { name, pairs } => {
            let mut patch = api::InstancePatch::default();
            if pairs.len() == 2 && !pairs[0].contains('=') {
                patch
                    .config
                    .insert(pairs[0].clone(), Some(pairs[1].clone()));
            } else {
                for p in &pairs {
                    let (k, v) = kv(p)?;
                    patch.config.insert(k, Some(v));
                }
            }
            let _: (api::Instance, _) = api
                .call(Method::PATCH, &instance_path(&name), Some(&patch), &[])
                .await?;
            Ok(0)
        }
        ConfigCmd::Unset { name, keys } => {
            let mut patch = api::InstancePatch::default();
            for k in keys {
                patch.config.insert(k, None);
            }
            let _: (api::Instance, _) = api
                .call(Method::PATCH, &instance_path(&name), Some(&patch), &[])
                .await?;
            Ok(0)
        }
    }
}

async fn snapshot(api: &Api, fmt: Format, s: SnapshotCmd) -> Result<i32> {
    match s {
        SnapshotCmd::Create { name, snapshot } => {
            let body = api::SnapshotPost { name: snapshot };
            api.operation(
                Method::POST,
                &format!("{}/snapshots", instance_path(&name)),
                Some(&body),
            )
            .await?;
        }
        SnapshotCmd::List { name } => {
            let v: Vec<api::Snapshot> = api
                .get(&format!("{}/snapshots", instance_path(&name)))
                .await?;
            print(fmt, &v, || {
                let mut rows = vec![vec![
                    "NAME".into(),
                    "CREATED".into(),
                    "TAKEN RUNNING".into(),
                ]];
                for s in &v {
                    rows.push(vec![
                        s.name.clone(),
                        s.created_at.chars().take(19).collect(),
                        s.stateful.to_string(),
                    ]);
                }
                rows
            })?;
        }
        SnapshotCmd::Restore { name, snapshot } => {
            api.operation(
                Method::POST,
                &format!("{}/snapshots/{snapshot}/restore", instance_path(&name)),
                None::<&()>,
            )
            .await?;
        }
        SnapshotCmd::Delete { name, snapshot } => {
            let _: (serde_json::Value, _) = api
                .call(
                    Method::DELETE,
                    &format!("{}/snapshots/{snapshot}", instance_path(&name)),
                    None::<&()>,
                    &[],
                )
                .await?;
        }
    }
    Ok(0)
}
