//! `zone-lifecycle`: the OCI runtime lifecycle benchmark.
//!
//! For every available runtime (bulkhead-runc, runc, crun) it times N cycles of
//! create → start → wait (as child subreaper, `waitpid` on the `--pid-file` pid) → delete of
//! `/bin/true` in one busybox bundle, interleaving the runtimes in each iteration so they
//! share the machine's noise, then prints median and p90 per runtime and the ratio
//! bulkhead-runc / runc. It also finds, per runtime, the smallest memory limit under which a
//! zone still starts and runs `true` (binary search on `linux.resources.memory.limit`).
//! Exits non-zero only on harness errors (a runtime failing is a result, not an error).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde_json::json;
use system_tests::{become_subreaper, find_runtime, unique_id, Bundle};

#[derive(Parser, Debug)]
#[command(about = "Time create/start/wait/delete of a busybox zone per OCI runtime")]
struct Args {
    /// Lifecycle cycles per runtime.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// A runtime to measure as NAME=PATH (repeatable). Default: bulkhead-runc (next to this
    /// binary, $BULKHEAD_TEST_RUNTIME or $BULKHEAD_TARGET_DIR), runc and crun from PATH.
    #[arg(long = "runtime", value_name = "NAME=PATH")]
    runtimes: Vec<String>,
    /// Skip the minimum-memory search.
    #[arg(long)]
    no_memory: bool,
    /// Upper bound of the memory search, in KiB.
    #[arg(long, default_value_t = 256 * 1024)]
    memory_max_kib: u64,
}

/// One runtime under measurement.
struct Runtime {
    name: String,
    path: PathBuf,
    state_root: tempfile::TempDir,
    /// Why it is not measured (its own error), when it is not.
    skipped: Option<String>,
    samples: Vec<Duration>,
    failures: usize,
    last_error: Option<String>,
    min_memory_kib: Option<Result<(u64, Option<String>), String>>,
}

/// Consecutive successful cycles needed for a memory limit to count as "runs".
const PROBE_RUNS: usize = 3;

/// How long one zone may take to exit before the cycle counts as failed (hang guard only).
const CYCLE_GUARD: Duration = Duration::from_secs(60);

/// Wait for `pid` (adopted: we are a subreaper) with a hang guard; its exit code.
fn wait_pid(pid: i32) -> Result<i32, String> {
    let deadline = Instant::now() + CYCLE_GUARD;
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("waitpid({pid}): {e}")),
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::SIGKILL);
            return Err(format!(
                "zone init {pid} did not exit within {CYCLE_GUARD:?}"
            ));
        }
        // Short sleeps: the zone runs `true`, this poll is part of what we measure.
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// First non-empty line of a runtime's stderr, for one-line reports.
fn first_line(s: &[u8]) -> String {
    String::from_utf8_lossy(s)
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no message)")
        .trim()
        .to_string()
}

impl Runtime {
    fn rt(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.path);
        c.arg("--root").arg(self.state_root.path()).args(args);
        c.stdin(Stdio::null()).stdout(Stdio::null());
        c
    }

    /// One create → start → wait → delete cycle; its wall time, or the runtime's error.
    fn cycle(&self, bundle: &Path) -> Result<Duration, String> {
        let id = unique_id(&self.name);
        let pidfile = bundle.join(format!("{id}.pid"));
        // The zone's init inherits create's stdio and outlives it, so create's stderr goes
        // to a file (a pipe would not reach EOF until the zone exits).
        let errlog = bundle.join(format!("{id}.err"));
        let errfile =
            fs::File::create(&errlog).map_err(|e| format!("{}: {e}", errlog.display()))?;
        let t0 = Instant::now();
        let status = self
            .rt(&["create", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pidfile)
            .arg(&id)
            .stderr(errfile)
            .status()
            .map_err(|e| format!("cannot run {}: {e}", self.path.display()))?;
        let err = fs::read(&errlog).unwrap_or_default();
        let _ = fs::remove_file(&errlog);
        if !status.success() {
            let _ = self
                .rt(&["delete", "--force", &id])
                .stderr(Stdio::null())
                .status();
            return Err(format!("create: {}", first_line(&err)));
        }
        let pid: i32 = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| format!("create wrote no pid to {}", pidfile.display()))?;
        let _ = fs::remove_file(&pidfile);
        let o = self
            .rt(&["start", &id])
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            let _ = self
                .rt(&["delete", "--force", &id])
                .stderr(Stdio::null())
                .status();
            let _ = wait_pid(pid);
            return Err(format!("start: {}", first_line(&o.stderr)));
        }
        let code = wait_pid(pid)?;
        let o = self
            .rt(&["delete", &id])
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| e.to_string())?;
        let elapsed = t0.elapsed();
        if !o.status.success() {
            let _ = self
                .rt(&["delete", "--force", &id])
                .stderr(Stdio::null())
                .status();
            return Err(format!("delete: {}", first_line(&o.stderr)));
        }
        if code != 0 {
            return Err(format!("zone exited with status {code}"));
        }
        Ok(elapsed)
    }
}

fn default_runtimes() -> Vec<(String, Result<PathBuf, String>)> {
    let on_path = |name: &str| -> Result<PathBuf, String> {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| format!("{name} not found on PATH"))
    };
    vec![
        ("bulkhead-runc".to_string(), find_runtime()),
        ("runc".to_string(), on_path("runc")),
        ("crun".to_string(), on_path("crun")),
    ]
}

/// Percentile (nearest rank) of sorted samples, in milliseconds.
fn pct_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

/// Write `bundle`'s config with a memory limit of `kib` (and no swap beyond it).
fn set_memory(bundle: &mut Bundle, kib: Option<u64>) {
    match kib {
        Some(k) => {
            let bytes = (k * 1024) as i64;
            bundle.memory_limit(bytes);
            // cgroup v1 memsw / v2 swap.max: forbid swapping around the cap where the host
            // supports it (the runtime rejects a swap limit it cannot set).
            if Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
                || Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
            {
                bundle.set("/linux/resources/memory/swap", json!(bytes));
            }
        }
        None => {
            if let Some(r) = bundle.config["linux"]["resources"].as_object_mut() {
                r.remove("memory");
            }
        }
    }
    bundle.write();
}

/// Smallest memory limit (KiB, page granularity) under which `rt` still runs `true`.
/// Also returns the error seen just below it.
fn min_memory(
    rt: &Runtime,
    bundle: &mut Bundle,
    max_kib: u64,
) -> Result<(u64, Option<String>), String> {
    let mut below = None;
    // The predicate is noisy near the edge (what is charged depends on what the runtime
    // touched before joining the cgroup), so a limit counts only if PROBE_RUNS cycles in a
    // row succeed under it.
    let mut ok = |kib: u64| -> bool {
        set_memory(bundle, Some(kib));
        for _ in 0..PROBE_RUNS {
            if let Err(e) = rt.cycle(bundle.path()) {
                below = Some(e);
                return false;
            }
        }
        true
    };
    if !ok(max_kib) {
        return Err(format!("does not run even with {max_kib} KiB"));
    }
    // Invariant: fails at `lo` (or lo = 0), runs at `hi`.
    let (mut lo, mut hi) = (0u64, max_kib);
    while hi - lo > 4 {
        let mid = ((lo + hi) / 2) / 4 * 4;
        let mid = mid.max(lo + 4);
        if ok(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok((hi, below))
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever RUST_BACKTRACE says.
            eprintln!("zone-lifecycle: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    if !system_tests::is_root() {
        bail!("zone-lifecycle needs root (it creates namespaces and cgroups)");
    }
    if !Path::new("/bin/busybox").is_file() {
        bail!("/bin/busybox not found: install busybox-static");
    }
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    become_subreaper();

    let specs: Vec<(String, Result<PathBuf, String>)> = if args.runtimes.is_empty() {
        default_runtimes()
    } else {
        args.runtimes
            .iter()
            .map(|s| {
                let (n, p) = s
                    .split_once('=')
                    .with_context(|| format!("--runtime {s:?}: expected NAME=PATH"))?;
                Ok((n.to_string(), Ok(PathBuf::from(p))))
            })
            .collect::<Result<_>>()?
    };

    let mut bundle = Bundle::new();
    bundle.args(&["/bin/true"]);
    bundle.write();

    let mut rts = Vec::new();
    for (name, path) in specs {
        let state_root = tempfile::Builder::new()
            .prefix("bulkhead-bench-")
            .tempdir()
            .context("creating a runtime state dir")?;
        let (path, mut skipped) = match path {
            Ok(p) => (p, None),
            Err(e) => (PathBuf::new(), Some(e)),
        };
        let mut rt = Runtime {
            name,
            path,
            state_root,
            skipped: None,
            samples: Vec::new(),
            failures: 0,
            last_error: None,
            min_memory_kib: None,
        };
        // Probe once (also warms caches); a runtime that cannot run the bundle is skipped
        // with its own error (crun on hybrid cgroups, for instance).
        if skipped.is_none() {
            if let Err(e) = rt.cycle(bundle.path()) {
                skipped = Some(e);
            }
        }
        rt.skipped = skipped;
        rts.push(rt);
    }

    for i in 0..args.iterations {
        // Rotate the starting runtime so none always runs first.
        let n = rts.len();
        for k in 0..n {
            let rt = &mut rts[(i + k) % n];
            if rt.skipped.is_some() {
                continue;
            }
            match rt.cycle(bundle.path()) {
                Ok(d) => rt.samples.push(d),
                Err(e) => {
                    rt.failures += 1;
                    rt.last_error = Some(e);
                }
            }
        }
    }

    if !args.no_memory {
        for rt in rts.iter_mut().filter(|r| r.skipped.is_none()) {
            rt.min_memory_kib = Some(min_memory(rt, &mut bundle, args.memory_max_kib));
        }
        set_memory(&mut bundle, None);
    }

    println!(
        "zone lifecycle: create → start → wait → delete of /bin/true, {} iterations, \
         interleaved",
        args.iterations
    );
    println!(
        "{:<16} {:>9} {:>11} {:>11} {:>16}",
        "runtime", "ok", "median ms", "p90 ms", "min memory KiB"
    );
    let mut medians = std::collections::HashMap::new();
    for rt in &mut rts {
        if let Some(why) = &rt.skipped {
            println!("{}: SKIPPED: {why}", rt.name);
            continue;
        }
        rt.samples.sort();
        let (med, p90) = (pct_ms(&rt.samples, 50.0), pct_ms(&rt.samples, 90.0));
        medians.insert(rt.name.clone(), (med, p90));
        let mem = match &rt.min_memory_kib {
            None => "-".to_string(),
            Some(Ok((k, _))) => k.to_string(),
            Some(Err(e)) => format!("({e})"),
        };
        println!(
            "{:<16} {:>9} {:>11.2} {:>11.2} {:>16}",
            rt.name,
            format!("{}/{}", rt.samples.len(), args.iterations),
            med,
            p90,
            mem
        );
        if let Some(e) = &rt.last_error {
            println!("  {} failed cycles, last: {e}", rt.failures);
        }
        if let Some(Ok((_, Some(e)))) = &rt.min_memory_kib {
            println!("  just below its minimum memory: {e}");
        }
    }
    match (medians.get("bulkhead-runc"), medians.get("runc")) {
        (Some((bm, bp)), Some((rm, rp))) => println!(
            "ratio bulkhead-runc/runc: median {:.2}x, p90 {:.2}x (below 1 = bulkhead faster)",
            bm / rm,
            bp / rp
        ),
        _ => println!("ratio bulkhead-runc/runc: n/a (both must have run)"),
    }
    Ok(())
}
