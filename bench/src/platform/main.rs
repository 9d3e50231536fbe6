//! `platform`: the platform benchmarks of issue 7, Bulkhead next to LXD in one run.
//!
//! Starts a private bulkheadd (temporary state, run dir, socket and cgroup prefix) and, when
//! `lxd` is installed and gets ready in time, a private LXD (`LXD_DIR` in a temporary
//! directory, a `dir` pool, a profile with only a root disk, no network) with the same busybox
//! root imported as an image. Then, for each metric, it measures both (interleaved where the
//! metric allows it), and prints one table: Bulkhead, LXD, ratio Bulkhead/LXD, the issue's
//! goal. `exec` is also measured with `runc exec` and `podman exec` (runtime runc).
//!
//! Every zone, container, daemon and temporary directory is removed at the end, also when a
//! step fails or panics (guards with `Drop`). Prints figures only: no timing is asserted.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use system_tests::clients::{unmount_below, Podman};
use system_tests::platform::{daemon_bin, Platform};
use system_tests::{become_subreaper, build_busybox_rootfs, unique_id, Bundle};

mod bulkhead;
mod lxd;
mod measure;
mod runc_peer;

use bulkhead::Bulkhead;
use lxd::Lxd;
use measure::*;
use runc_peer::RuncZone;

#[derive(Parser, Debug)]
#[command(about = "Platform benchmarks (issue 7): Bulkhead next to LXD 5.0, in one run")]
struct Args {
    /// Small sizes everywhere (a smoke run of a minute or two).
    #[arg(long)]
    quick: bool,
    /// Do not start LXD (its columns say SKIPPED).
    #[arg(long)]
    no_lxd: bool,
    /// Samples for latencies (create+start, exec, list); zones for the idle-memory figure.
    #[arg(short = 'n', long)]
    n: Option<usize>,
    /// Zones defined (not running) for the `list` figure.
    #[arg(long)]
    defined: Option<usize>,
    /// LXD containers defined for its `lxc list` figure (each is a copy of the image).
    #[arg(long)]
    lxd_defined: Option<usize>,
    /// Target of the "how many idle zones at once" step.
    #[arg(long)]
    max: Option<usize>,
    /// Target of the same step for LXD (0: not run).
    #[arg(long)]
    lxd_max: Option<usize>,
    /// How long LXD may take to get ready, in seconds.
    #[arg(long, default_value_t = 60)]
    lxd_timeout: u64,
}

/// The command of every idle instance (Bulkhead zones; the LXD image's /sbin/init execs it).
const IDLE: &str = "sleep 1000000";

/// Stop adding zones when MemAvailable falls below this (or 10% of MemTotal, if larger).
const LOW_MEMORY_KIB: u64 = 1024 * 1024;

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("platform: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers

// ---------------------------------------------------------------------------------------
// The table

struct Row {
    metric: String,
    goal: String,
    bh: String,
    lxd: String,
    ratio: String,
}

fn ratio(b: Option<f64>, l: Option<f64>) -> String {
    match (b, l) {
        (Some(b), Some(l)) if l > 0.0 && b.is_finite() && l.is_finite() => {
            format!("{:.2}x", b / l)
        }
        _ => "-".into(),
    }
}

#[derive(Default)]
struct Samples {
    d: Vec<Duration>,
    fails: usize,
    last: Option<String>,
}
impl Samples {
    fn push(&mut self, r: Result<Duration, String>) {
        match r {
            Ok(d) => self.d.push(d),
            Err(e) => {
                self.fails += 1;
                self.last = Some(e);
            }
        }
    }
    fn show(&self) -> String {
        lat(&self.d, self.fails, &self.last)
    }
    fn median(&self) -> Option<f64> {
        (!self.d.is_empty()).then(|| pct_ms(&self.d, 50.0))
    }
}

// ---------------------------------------------------------------------------------------

fn run(args: Args) -> Result<()> {
    if !system_tests::is_root() {
        bail!("platform needs root");
    }
    if !Path::new("/bin/busybox").is_file() {
        bail!("/bin/busybox not found: install busybox-static");
    }
    become_subreaper();
    catch_stop_signals();
    let q = args.quick;
    let n = args.n.unwrap_or(if q { 5 } else { 40 }).max(1);
    let defined = args.defined.unwrap_or(if q { 50 } else { 1000 });
    let lxd_defined = args.lxd_defined.unwrap_or(if q { 10 } else { 100 });
    let max = args.max.unwrap_or(if q { 20 } else { 200 });
    let lxd_max = args.lxd_max.unwrap_or(if q { 5 } else { max.min(200) });
    let t_all = Instant::now();

    let mut bh = Bulkhead::start();
    let mut lxd: Result<Lxd, String> = if args.no_lxd {
        Err("--no-lxd".into())
    } else {
        let t0 = Instant::now();
        let r = Lxd::start(Duration::from_secs(args.lxd_timeout));
        eprintln!("LXD start+init+image import: {:.1?}", t0.elapsed());
        r
    };
    let skipped = |l: &Result<Lxd, String>| match l {
        Err(e) => format!("SKIPPED: LXD: {e}"),
        Ok(_) => String::new(),
    };
    if let Err(e) = &lxd {
        println!("SKIPPED: LXD: {e}");
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let pid = std::process::id();

    // 1. create+start, N in a row, interleaved (one Bulkhead zone, one LXD container).
    eprintln!("[1] create+start x{n}");
    let (mut b1, mut l1) = (Samples::default(), Samples::default());
    let (mut bnames, mut lnames) = (Vec::new(), Vec::new());
    let (mut btot, mut ltot) = (Duration::ZERO, Duration::ZERO);
    for i in 0..n {
        let bn = format!("b{pid}-{i}");
        let r = bh.create(&bn, true);
        if let Ok(d) = &r {
            btot += *d;
        }
        b1.push(r);
        bnames.push(bn);
        if let Ok(l) = &lxd {
            let ln = format!("c{i}");
            let r = l.launch(&ln);
            if let Ok(d) = &r {
                ltot += *d;
            }
            l1.push(r);
            lnames.push(ln);
        }
    }
    let per_s = |s: &Samples, tot: Duration| {
        (!s.d.is_empty()).then(|| s.d.len() as f64 / tot.as_secs_f64())
    };
    rows.push(Row {
        metric: format!("1. create+start latency, median / p90 (N={n})"),
        goal: "≤ 25 ms".into(),
        bh: b1.show(),
        lxd: if lxd.is_ok() {
            l1.show()
        } else {
            skipped(&lxd)
        },
        ratio: ratio(b1.median(), l1.median()),
    });
    let (bps, lps) = (per_s(&b1, btot), per_s(&l1, ltot));
    rows.push(Row {
        metric: "1. zones/s, creating N in a row (serial CLI calls)".into(),
        goal: "(25 ms each = 40/s)".into(),
        bh: bps.map(|x| format!("{x:.1}/s")).unwrap_or("-".into()),
        lxd: match (&lxd, lps) {
            (Ok(_), Some(x)) => format!("{x:.1}/s"),
            (Ok(_), None) => "-".into(),
            (Err(_), _) => skipped(&lxd),
        },
        ratio: ratio(bps, lps),
    });

    // 2. exec latency: bulkhead, lxc, runc, podman (runtime runc), interleaved.
    eprintln!("[2] exec true x{n}");
    let runc = RuncZone::start(false);
    let runc_sc = RuncZone::start(true);
    let podman = if system_tests::clients::have("podman") {
        let runc_path = ["/usr/sbin/runc", "/usr/bin/runc"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
        match runc_path {
            Some(rp) => {
                let pm = Podman::new(rp);
                let o = pm.run(&["-d"], &["sleep", "1000000"]);
                if o.code == 0 {
                    let id = o.stdout.trim().to_string();
                    Ok((pm, id))
                } else {
                    Err(format!(
                        "podman run -d: {}",
                        first_line(o.stderr.as_bytes())
                    ))
                }
            }
            None => Err("runc not installed".to_string()),
        }
    } else {
        Err("podman not installed".to_string())
    };
    let mut rs2 = Samples::default();
    let (mut b2, mut l2, mut r2, mut p2) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    if let Some(z) = bnames.first() {
        let _ = bh.exec_true(z); // warm
        for _ in 0..n * 2 {
            b2.push(bh.exec_true(z));
            if let (Ok(l), Some(c)) = (&lxd, lnames.first()) {
                l2.push(l.exec_true(c));
            }
            if let Ok(r) = &runc {
                r2.push(r.exec_true());
            }
            if let Ok(r) = &runc_sc {
                rs2.push(r.exec_true());
            }
            if let Ok((pm, id)) = &podman {
                p2.push(timed(&mut pm.cmd(&["exec", id, "true"])));
            }
        }
    }
    rows.push(Row {
        metric: format!("2. exec true latency, median / p90 (N={})", n * 2),
        goal: "≤ 5 ms".into(),
        bh: b2.show(),
        lxd: if lxd.is_ok() {
            l2.show()
        } else {
            skipped(&lxd)
        },
        ratio: ratio(b2.median(), l2.median()),
    });
    let rm = r2.median();
    let pmed = p2.median();
    rows.push(Row {
        metric: "2. exec peers: runc exec (no seccomp; zones' seccomp) | podman exec (runc)".into(),
        goal: String::new(),
        bh: format!(
            "runc: {}; runc+seccomp: {}",
            match &runc {
                Ok(_) => r2.show(),
                Err(e) => format!("SKIPPED: {e}"),
            },
            match &runc_sc {
                Ok(_) => rs2.show(),
                Err(e) => format!("SKIPPED: {e}"),
            }
        ),
        lxd: match &podman {
            Ok(_) => format!("podman: {}", p2.show()),
            Err(e) => format!("podman: SKIPPED: {e}"),
        },
        ratio: format!(
            "bh/runc {} bh/runc+seccomp {} bh/podman {}",
            ratio(b2.median(), rm),
            ratio(b2.median(), rs2.median()),
            ratio(b2.median(), pmed)
        ),
    });
    drop(runc);
    drop(runc_sc);
    drop(podman);

    // Clear step 1's instances.
    bh.delete(&bnames);
    if let Ok(l) = &lxd {
        l.delete(&lnames);
    }

    // 3. idle memory per zone: MemAvailable before/after N idle zones, one side at a time.
    eprintln!("[3] idle memory, {n} zones each");
    let mem = |create: &dyn Fn(usize) -> Result<Duration, String>| -> (Option<f64>, usize) {
        settle();
        let before = meminfo_kib("MemAvailable");
        let mut ok = 0;
        for i in 0..n {
            if create(i).is_ok() {
                ok += 1;
            }
        }
        settle();
        let after = meminfo_kib("MemAvailable");
        let per = (ok > 0).then(|| (before as f64 - after as f64) / ok as f64 / 1024.0);
        (per, ok)
    };
    let mon_rss = |pids: &[i32]| -> String {
        if pids.is_empty() {
            return "?".into();
        }
        let rss: Vec<u64> = pids.iter().filter_map(|p| proc_kib(*p, "VmRSS")).collect();
        let pss: Vec<u64> = pids.iter().filter_map(|p| proc_kib(*p, "Pss")).collect();
        let avg = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64 / 1024.0;
        let table = ppids();
        let trees: Vec<(u64, usize)> = pids.iter().map(|p| tree_pss_kib(*p, &table)).collect();
        let tree_kib = trees.iter().map(|t| t.0).sum::<u64>() as f64 / trees.len() as f64;
        let procs = trees.iter().map(|t| t.1).sum::<usize>() as f64 / trees.len() as f64;
        format!(
            "RSS {:.2}, PSS {:.2}; PSS of its tree ({procs:.0} procs) {:.2} MiB",
            avg(&rss),
            avg(&pss),
            tree_kib / 1024.0
        )
    };
    let mut mnames = Vec::new();
    let (bmem, bok) = mem(&|i| bh.create(&format!("m{pid}-{i}"), true));
    for i in 0..n {
        mnames.push(format!("m{pid}-{i}"));
    }
    let bmon = mon_rss(&bh.monitor_pids());
    let bdrss = bh
        .daemon_pid()
        .and_then(|p| proc_kib(p, "VmRSS"))
        .unwrap_or(0);
    bh.delete(&mnames);
    let (lmem, lmon, lok) = match &lxd {
        Ok(l) => {
            let (m, ok) = mem(&|i| l.launch(&format!("m{i}")));
            let mon = mon_rss(&l.monitor_pids());
            let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
            l.delete(&names);
            (m, mon, ok)
        }
        Err(_) => (None, skipped(&lxd), 0),
    };
    let fmt_mem = |m: Option<f64>, ok: usize| match m {
        Some(x) => format!("{x:.2} MiB/zone ({ok} zones)"),
        None => "failed".into(),
    };
    rows.push(Row {
        metric: "3. idle host memory per running zone (ΔMemAvailable/N)".into(),
        goal: "≤ 1 MiB".into(),
        bh: fmt_mem(bmem, bok),
        lxd: if lxd.is_ok() {
            fmt_mem(lmem, lok)
        } else {
            skipped(&lxd)
        },
        ratio: ratio(bmem, lmem),
    });
    rows.push(Row {
        metric: "3. per-zone monitor (avg MiB; LXD: [lxc monitor]) and its process tree".into(),
        goal: String::new(),
        bh: bmon,
        lxd: lmon,
        ratio: String::new(),
    });
    notes.push(format!(
        "daemon RSS with {n} running zones: bulkheadd {:.1} MiB",
        bdrss as f64 / 1024.0
    ));

    // 4. list latency with many defined instances.
    eprintln!("[4] list with {defined} defined (LXD: {lxd_defined})");
    let mut dnames = Vec::new();
    let t0 = Instant::now();
    let mut dfail = Samples::default();
    for i in 0..defined {
        let name = format!("d{pid}-{i}");
        let r = bh.create(&name, false);
        if r.is_err() {
            dfail.push(r);
        } else {
            dnames.push(name);
        }
    }
    let bdefine = t0.elapsed();
    let mut b4 = Samples::default();
    for _ in 0..n {
        b4.push(bh.list());
    }
    let bd_rss = bh
        .daemon_pid()
        .and_then(|p| proc_kib(p, "VmRSS"))
        .unwrap_or(0);
    notes.push(format!(
        "defining {} zones (create, no --start) took {:.1} s ({:.1} ms each){}",
        dnames.len(),
        bdefine.as_secs_f64(),
        bdefine.as_secs_f64() * 1e3 / defined.max(1) as f64,
        if dfail.fails > 0 {
            format!(
                "; {} failed: {}",
                dfail.fails,
                dfail.last.clone().unwrap_or_default()
            )
        } else {
            String::new()
        }
    ));
    let mut l4 = Samples::default();
    let mut ldn = Vec::new();
    if let Ok(l) = &lxd {
        let t0 = Instant::now();
        for i in 0..lxd_defined {
            let name = format!("d{i}");
            if l.init(&name).is_ok() {
                ldn.push(name);
            }
        }
        notes.push(format!(
            "LXD: defining {} containers (lxc init) took {:.1} s",
            ldn.len(),
            t0.elapsed().as_secs_f64()
        ));
        for _ in 0..n {
            l4.push(l.list());
        }
    }
    rows.push(Row {
        metric: format!(
            "4. list latency, median / p90 (Bulkhead {} defined, LXD {} defined)",
            dnames.len(),
            ldn.len()
        ),
        goal: "≤ 100 ms".into(),
        bh: b4.show(),
        lxd: if lxd.is_ok() {
            l4.show()
        } else {
            skipped(&lxd)
        },
        ratio: ratio(b4.median(), l4.median()),
    });
    let ld_rss = match &lxd {
        Ok(l) => l.daemon_pid().and_then(|p| proc_kib(p, "VmRSS")),
        Err(_) => None,
    };
    rows.push(Row {
        metric: "4. daemon RSS with those defined".into(),
        goal: String::new(),
        bh: format!("{:.1} MiB", bd_rss as f64 / 1024.0),
        lxd: match ld_rss {
            Some(k) => format!("{:.1} MiB (lxd)", k as f64 / 1024.0),
            None => skipped(&lxd),
        },
        ratio: ratio(Some(bd_rss as f64), ld_rss.map(|x| x as f64)),
    });
    bh.delete(&dnames);
    if let Ok(l) = &lxd {
        l.delete(&ldn);
    }

    // 5. daemon back after kill -9, with a few zones running.
    let k = n.min(10);
    eprintln!("[5] kill -9 daemon with {k} running");
    let knames: Vec<String> = (0..k).map(|i| format!("k{pid}-{i}")).collect();
    for z in &knames {
        let _ = bh.create(z, true);
    }
    let b5 = bh.restart_after_kill9();
    let b5run = bh.running();
    let (l5, l5run) = match &mut lxd {
        Ok(l) => {
            let names: Vec<String> = (0..k).map(|i| format!("k{i}")).collect();
            for z in &names {
                let _ = l.launch(z);
            }
            let r = l.kill9_restart();
            let run = l.running();
            l.delete(&names);
            (Some(r), Some(run))
        }
        Err(_) => (None, None),
    };
    bh.delete(&knames);
    let show5 = |r: &Result<Duration, String>, run: &Result<usize, String>| match r {
        Ok(d) => format!(
            "{:.0} ms ({} of {k} still running)",
            d.as_secs_f64() * 1e3,
            run.as_ref()
                .map(|x| x.to_string())
                .unwrap_or_else(|e| e.clone())
        ),
        Err(e) => format!("failed: {e}"),
    };
    let ms = |r: &Result<Duration, String>| r.as_ref().ok().map(|d| d.as_secs_f64());
    rows.push(Row {
        metric: "5. daemon answers `list` again after kill -9 + restart".into(),
        goal: String::new(),
        bh: show5(&b5, &b5run),
        lxd: match (&l5, &l5run) {
            (Some(r), Some(run)) => show5(r, run),
            _ => skipped(&lxd),
        },
        ratio: ratio(ms(&b5), l5.as_ref().and_then(ms)),
    });

    // 6. how many idle zones at once.
    eprintln!("[6] scale to {max} (LXD {lxd_max})");
    let scale = |target: usize,
                 create: &dyn Fn(usize) -> Result<Duration, String>,
                 exec: &dyn Fn(usize) -> Result<Duration, String>|
     -> (String, usize) {
        let t0 = Instant::now();
        let before = meminfo_kib("MemAvailable");
        let mut up = 0;
        let mut why = String::new();
        for i in 0..target {
            if low_memory() {
                why = format!(
                    "; stopped: MemAvailable {} MiB",
                    meminfo_kib("MemAvailable") / 1024
                );
                break;
            }
            match create(i) {
                Ok(_) => up += 1,
                Err(e) => {
                    why = format!("; stopped at #{i}: {e}");
                    break;
                }
            }
        }
        let tc = t0.elapsed();
        // A zone answers if one of 3 tries succeeds (first-try failures are reported too).
        let mut first_fail = 0;
        let answering = (0..up)
            .filter(|i| {
                if exec(*i).is_ok() {
                    return true;
                }
                first_fail += 1;
                (0..2).any(|_| exec(*i).is_ok())
            })
            .count();
        let used = before.saturating_sub(meminfo_kib("MemAvailable"));
        (
            format!(
                "{up}/{target} up in {:.1} s, {answering} answer exec ({first_fail} failed a first try), {:.0} MiB used = {:.2} MiB/zone{why}",
                tc.as_secs_f64(),
                used as f64 / 1024.0,
                used as f64 / 1024.0 / up.max(1) as f64
            ),
            up,
        )
    };
    let snames: Vec<String> = (0..max).map(|i| format!("s{pid}-{i}")).collect();
    let (b6, b6n) = scale(max, &|i| bh.create(&snames[i], true), &|i| {
        bh.exec_true(&snames[i])
    });
    let b6_daemon = bh
        .daemon_pid()
        .and_then(|p| proc_kib(p, "VmRSS"))
        .unwrap_or(0);
    let t_del = Instant::now();
    bh.delete(&snames);
    notes.push(format!(
        "scale: bulkheadd RSS with {b6n} running {:.1} MiB; deleting them took {:.1} s",
        b6_daemon as f64 / 1024.0,
        t_del.elapsed().as_secs_f64()
    ));
    let (l6, l6n) = match &lxd {
        Ok(l) if lxd_max > 0 => {
            let names: Vec<String> = (0..lxd_max).map(|i| format!("s{i}")).collect();
            let r = scale(lxd_max, &|i| l.launch(&names[i]), &|i| {
                l.exec_true(&names[i])
            });
            l.delete(&names);
            (r.0, Some(r.1))
        }
        Ok(_) => ("not run (--lxd-max 0)".into(), None),
        Err(_) => (skipped(&lxd), None),
    };
    rows.push(Row {
        metric: "6. idle zones running at once (target)".into(),
        goal: "1,000".into(),
        bh: b6,
        lxd: l6,
        ratio: match l6n {
            Some(x) if x > 0 => format!("{b6n} vs {x}"),
            _ => String::new(),
        },
    });

    // Table.
    let host = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!();
    println!(
        "platform benchmarks — {} CPUs, {} MiB RAM, kernel {} — total {:.0} s",
        std::thread::available_parallelism()
            .map(|x| x.get())
            .unwrap_or(0),
        meminfo_kib("MemTotal") / 1024,
        host.trim(),
        t_all.elapsed().as_secs_f64()
    );
    let w: BTreeMap<&str, usize> = [
        (
            "m",
            rows.iter()
                .map(|r| r.metric.chars().count())
                .max()
                .unwrap_or(0),
        ),
        (
            "b",
            rows.iter().map(|r| r.bh.chars().count()).max().unwrap_or(0),
        ),
        (
            "l",
            rows.iter()
                .map(|r| r.lxd.chars().count())
                .max()
                .unwrap_or(0),
        ),
    ]
    .into_iter()
    .collect();
    println!(
        "| {:<wm$} | {:<wb$} | {:<wl$} | ratio BH/LXD | goal |",
        "metric",
        "Bulkhead",
        "LXD 5.0",
        wm = w["m"],
        wb = w["b"],
        wl = w["l"]
    );
    println!(
        "|{}|{}|{}|---|---|",
        "-".repeat(w["m"] + 2),
        "-".repeat(w["b"] + 2),
        "-".repeat(w["l"] + 2)
    );
    for r in &rows {
        println!(
            "| {:<wm$} | {:<wb$} | {:<wl$} | {} | {} |",
            r.metric,
            r.bh,
            r.lxd,
            r.ratio,
            r.goal,
            wm = w["m"],
            wb = w["b"],
            wl = w["l"]
        );
    }
    for n in &notes {
        println!("- {n}");
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        println!("INTERRUPTED: the figures above are incomplete");
    }
    drop(lxd);
    drop(bh);
    Ok(())
}
