//! Measuring: running commands with a bound and timing them, /proc figures (MemAvailable,
//! RSS, PSS of a process tree) and percentiles.

use super::*;

pub(super) fn first_line(s: &[u8]) -> String {
    String::from_utf8_lossy(s)
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no message)")
        .trim()
        .to_string()
}

/// Set when SIGINT, SIGTERM or SIGHUP arrives: measurements stop (every timed call fails at
/// once), the remaining steps run through quickly, and the cleanup at the end still runs.
pub(super) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Blocks the stop signals in this thread (threads spawned later inherit the mask) and
/// waits for them on a helper thread. Children get an empty mask from `Command`.
pub(super) fn catch_stop_signals() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(sig);
    }
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || loop {
        if let Ok(sig) = set.wait() {
            eprintln!("platform: {sig}: stopping and cleaning up");
            INTERRUPTED.store(true, Ordering::SeqCst);
        }
    });
}

/// Runs `c` with stdin/stdout closed; its wall time, or its first stderr line.
pub(super) fn timed(c: &mut Command) -> Result<Duration, String> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err("interrupted".into());
    }
    let t0 = Instant::now();
    let o = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {c:?}: {e}"))?;
    let d = t0.elapsed();
    if !o.status.success() {
        return Err(format!(
            "exit {}: {}",
            system_tests::exit_code(o.status),
            first_line(&o.stderr)
        ));
    }
    Ok(d)
}

/// Runs `c`; its stdout, or its first stderr line.
pub(super) fn output(c: &mut Command) -> Result<String, String> {
    let o = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {c:?}: {e}"))?;
    if !o.status.success() {
        return Err(first_line(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Waits for `child` at most `t`; kills it after that.
pub(super) fn wait_child(child: &mut Child, t: Duration) {
    let deadline = Instant::now() + t;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `c` with a time limit (cleanup paths: never hang).
pub(super) fn run_bounded(c: &mut Command, t: Duration) {
    if let Ok(mut child) = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        wait_child(&mut child, t);
    }
}

pub(super) fn meminfo_kib(field: &str) -> u64 {
    fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// A field of /proc/PID/status (or smaps_rollup for `Pss`), in KiB.
pub(super) fn proc_kib(pid: i32, field: &str) -> Option<u64> {
    let file = if field.starts_with("Pss") {
        "smaps_rollup"
    } else {
        "status"
    };
    fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// Parent pid of every process.
pub(super) fn ppids() -> Vec<(i32, i32)> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // "pid (comm) S ppid ...": comm may hold spaces, so split after the last ')'.
            let Ok(st) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            if let Some(pp) = st
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<i32>().ok())
            {
                v.push((pid, pp));
            }
        }
    }
    v
}

/// Sum of PSS (KiB) of `root` and all its descendants, and how many processes that is.
pub(super) fn tree_pss_kib(root: i32, table: &[(i32, i32)]) -> (u64, usize) {
    let mut todo = vec![root];
    let (mut kib, mut n) = (0, 0);
    while let Some(p) = todo.pop() {
        kib += proc_kib(p, "Pss").unwrap_or(0);
        n += 1;
        todo.extend(table.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
    }
    (kib, n)
}

/// Lets freed memory settle before reading MemAvailable.
pub(super) fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_millis(1500));
}

pub(super) fn low_memory() -> bool {
    let floor = LOW_MEMORY_KIB.max(meminfo_kib("MemTotal") / 10);
    meminfo_kib("MemAvailable") < floor
}

/// Percentile (nearest rank) of samples, in milliseconds.
pub(super) fn pct_ms(samples: &[Duration], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort();
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1].as_secs_f64() * 1e3
}

/// "median / p90 ms" of samples, with failures if any.
pub(super) fn lat(samples: &[Duration], fails: usize, last: &Option<String>) -> String {
    let mut s = if samples.is_empty() {
        "failed".to_string()
    } else {
        format!(
            "{:.1} / {:.1} ms",
            pct_ms(samples, 50.0),
            pct_ms(samples, 90.0)
        )
    };
    if fails > 0 {
        s.push_str(&format!(
            " ({fails} failed: {})",
            last.as_deref().unwrap_or("?")
        ));
    }
    s
}
