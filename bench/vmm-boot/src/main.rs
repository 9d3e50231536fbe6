//! `vmm-boot`: bulkhead-vmm against QEMU's microvm in one run, same test
//! guest, same memory size, runs interleaved (A B, B A, …) so drift on a
//! shared machine hits both alike.
//!
//! Measured per run, from just before the process is spawned:
//! - time to the guest's first serial byte on the monitor's stdout;
//! - time to power-off (the monitor process exits).
//!
//! Measured on a guest that keeps running (`checks=tick`): the monitor's
//! memory overhead = the sum of `Rss` over every mapping in
//! `/proc/<pid>/smaps` except the guest-memory mapping(s), recognised as
//! the mappings at least as large as 7/8 of the guest memory size (both
//! monitors map guest RAM as one big anonymous region; QEMU adds a little
//! alignment).
//!
//! Disk reads (`--blk-mib`, default 64): the guest reads a read-only virtio-blk disk of
//! pseudo-random data (in the host page cache) sequentially, 4 × 32 KiB requests in
//! flight, and reports the time it took by its own TSC (`checks=blkread`).
//!
//! Medians, min/max and the bulkhead/QEMU ratio are printed as
//! a table. Exits non-zero only on harness errors (a monitor that cannot be
//! started, a run without the guest's `done` line).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

/// Guest command line for the timed runs: the quick checks, then power-off.
const BOOT_CHECKS: &str = "checks=cmdline,memmap,acpi";
/// Guest command line for the memory runs: keeps running.
const TICK_CHECKS: &str = "checks=tick tick.count=1000000";
/// Hang guard for one run (not a measurement limit).
const HANG_GUARD: Duration = Duration::from_secs(120);

#[derive(Parser, Debug)]
#[command(about = "bulkhead-vmm vs QEMU microvm: boot time and memory overhead, side by side")]
struct Args {
    /// Runs per monitor (interleaved).
    #[arg(long, short = 'n', default_value_t = 20)]
    iterations: usize,
    /// Guest memory in MiB (same for both).
    #[arg(long, default_value_t = 128)]
    mem_mib: u64,
    /// bulkhead-vmm binary (default: next to this binary, then target/[x86_64-unknown-linux-gnu/]{release,debug}).
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// Extra argument for bulkhead-vmm (repeatable), e.g. --vmm-arg=--no-jail.
    #[arg(long, allow_hyphen_values = true)]
    vmm_arg: Vec<String>,
    /// QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Test guest ELF (default: guest/target/x86_64-unknown-linux-gnu/release/bulkhead-guest).
    #[arg(long)]
    guest: Option<PathBuf>,
    /// Memory samples per monitor.
    #[arg(long, default_value_t = 3)]
    mem_samples: usize,
    /// MiB the guest reads from a virtio-blk disk (`checks=blkread`), 0 to skip.
    #[arg(long, default_value_t = 64)]
    blk_mib: u64,
    /// Disk-read runs per monitor.
    #[arg(long, default_value_t = 3)]
    blk_runs: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Monitor {
    Bulkhead,
    Qemu,
}

impl Monitor {
    /// Run order of round `i`: A B, B A, … so drift hits both alike.
    fn interleaved(i: usize) -> [Monitor; 2] {
        if i.is_multiple_of(2) {
            [Monitor::Bulkhead, Monitor::Qemu]
        } else {
            [Monitor::Qemu, Monitor::Bulkhead]
        }
    }

    /// Index of this monitor's column in the per-monitor result arrays.
    fn slot(self) -> usize {
        usize::from(self == Monitor::Qemu)
    }

    fn name(self) -> &'static str {
        match self {
            Monitor::Bulkhead => "bulkhead-vmm",
            Monitor::Qemu => "qemu microvm",
        }
    }
}

struct Setup {
    vmm: PathBuf,
    vmm_args: Vec<String>,
    qemu: PathBuf,
    guest: PathBuf,
    mem_mib: u64,
    /// A read-only virtio-blk disk for both monitors (the disk-read runs).
    disk: Option<PathBuf>,
}

impl Setup {
    fn command(&self, m: Monitor, cmdline: &str) -> Command {
        match m {
            Monitor::Bulkhead => {
                let mut c = Command::new(&self.vmm);
                c.arg("--kernel")
                    .arg(&self.guest)
                    .args(["--mem", &format!("{}M", self.mem_mib), "--vcpus", "1"])
                    .args(["--serial", "stdout", "--cmdline", cmdline])
                    .args(&self.vmm_args);
                if let Some(d) = &self.disk {
                    c.arg("--disk").arg(format!("{},ro", d.display()));
                }
                c
            }
            Monitor::Qemu => {
                let mut c = Command::new(&self.qemu);
                c.args([
                    "-M",
                    "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=on",
                    "-enable-kvm",
                    "-cpu",
                    "host,-arch-capabilities",
                    "-m",
                    &self.mem_mib.to_string(),
                    "-nodefaults",
                    "-no-user-config",
                    "-nographic",
                    "-serial",
                    "stdio",
                    "-no-reboot",
                    "-kernel",
                ])
                .arg(&self.guest)
                .args(["-append", cmdline]);
                if let Some(d) = &self.disk {
                    // Same transport as bulkhead-vmm: virtio-mmio version 2, raw
                    // file through the host page cache (QEMU's default cache mode).
                    c.args(["-global", "virtio-mmio.force-legacy=false", "-drive"])
                        .arg(format!(
                            "id=d0,file={},format=raw,if=none,readonly=on",
                            d.display()
                        ))
                        .args(["-device", "virtio-blk-device,drive=d0"]);
                }
                c
            }
        }
    }

    fn spawn(&self, m: Monitor, cmdline: &str) -> Result<Child> {
        self.command(m, cmdline)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", m.name()))
    }
}

/// One timed run: (first serial byte, exit).
fn timed_run(s: &Setup, m: Monitor) -> Result<(Duration, Duration)> {
    let (first, exit, _) = run_guest(s, m, BOOT_CHECKS)?;
    Ok((first, exit))
}

/// One disk-read run: the guest's own timing of `checks=blkread`, in ms.
fn blk_run(s: &Setup, m: Monitor, mib: u64) -> Result<f64> {
    let (_, _, text) = run_guest(s, m, &format!("checks=blkread blkread.mib={mib}"))?;
    let line = text
        .lines()
        .find_map(|l| l.split_once("BULKHEAD-GUEST blkread ").map(|(_, r)| r))
        .with_context(|| format!("{}: no blkread result", m.name()))?;
    let us: f64 = line
        .strip_prefix("ok ")
        .and_then(|r| r.split_whitespace().find_map(|w| w.strip_prefix("us=")))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{}: blkread failed: {line}", m.name()))?;
    Ok(us / 1e3)
}

/// A disk image of `mib` MiB of pseudo-random bytes (so no layer can skip zero
/// blocks), read once so that both monitors find it in the page cache.
fn make_disk(mib: u64) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("bh-vmm-boot-disk-{}.img", std::process::id()));
    let mut f = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for c in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        std::io::Write::write_all(&mut f, &block)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    drop(f);
    std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(path)
}

/// Runs the guest with `cmdline` to power-off: (first serial byte, exit, stdout).
fn run_guest(s: &Setup, m: Monitor, cmdline: &str) -> Result<(Duration, Duration, String)> {
    let t0 = Instant::now();
    let mut child = s.spawn(m, cmdline)?;
    let mut out = child.stdout.take().context("stdout pipe")?;
    let mut err = child.stderr.take().context("stderr pipe")?;
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut first = None;
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if first.is_none() {
                        first = Some(t0.elapsed());
                        let _ = tx.send(());
                    }
                    all.extend_from_slice(&buf[..n]);
                }
            }
        }
        (first, all)
    });
    let err_reader = thread::spawn(move || {
        let mut e = String::new();
        let _ = err.read_to_string(&mut e);
        e
    });
    drop(rx);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if t0.elapsed() > HANG_GUARD {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not exit within {HANG_GUARD:?}", m.name());
        }
        thread::sleep(Duration::from_micros(200));
    };
    let exit = t0.elapsed();
    let (first, all) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    let stderr = err_reader.join().unwrap_or_default();
    let text = String::from_utf8_lossy(&all);
    if !text.contains("BULKHEAD-GUEST done") {
        bail!(
            "{} run ended ({status}) without the guest's done line; stdout: {:?}; stderr: {}",
            m.name(),
            text.chars().take(400).collect::<String>(),
            stderr.trim()
        );
    }
    let first = first.context("no serial output")?;
    Ok((first, exit, text.into_owned()))
}

/// Rss (KiB) of the monitor's own mappings and of guest memory.
fn smaps_split(pid: u32, guest_bytes: u64) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("read /proc/{pid}/smaps"))?;
    let (mut own, mut guest) = (0u64, 0u64);
    let mut is_guest = false;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                is_guest = b.saturating_sub(a) >= guest_bytes / 8 * 7;
                continue;
            }
        }
        if let Some(v) = line.strip_prefix("Rss:") {
            let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            if is_guest {
                guest += kib;
            } else {
                own += kib;
            }
        }
    }
    Ok((own, guest))
}

/// Starts a ticking guest, waits for its first tick, samples smaps, kills it.
fn memory_run(s: &Setup, m: Monitor) -> Result<(u64, u64)> {
    let mut child = s.spawn(m, TICK_CHECKS)?;
    let mut out = child.stdout.take().context("stdout pipe")?;
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    all.extend_from_slice(&buf[..n]);
                    // A tick line is `BULKHEAD-GUEST tick <n>` (not `tick FAIL …`).
                    let text = String::from_utf8_lossy(&all);
                    let ticking = text.lines().any(|l| {
                        l.split_once("BULKHEAD-GUEST tick ")
                            .is_some_and(|(_, n)| n.starts_with(|c: char| c.is_ascii_digit()))
                    });
                    if ticking {
                        let _ = tx.send(());
                    }
                }
            }
        }
        all
    });
    let ticked = rx.recv_timeout(HANG_GUARD).is_ok();
    let sample = if ticked {
        // Let the tick loop settle so the sample is steady state.
        thread::sleep(Duration::from_millis(300));
        let sample = smaps_split(child.id(), s.mem_mib << 20);
        match child.try_wait() {
            Ok(None) => sample,
            _ => Err(anyhow::anyhow!("guest stopped before the sample was taken")),
        }
    } else {
        Err(anyhow::anyhow!("guest never printed a tick"))
    };
    let _ = child.kill();
    let _ = child.wait();
    let all = reader.join().unwrap_or_default();
    sample.with_context(|| {
        format!(
            "{} memory run; serial: {:?}",
            m.name(),
            String::from_utf8_lossy(&all)
                .chars()
                .take(300)
                .collect::<String>()
        )
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The repository root: the nearest ancestor of this package that holds
/// `guest/Cargo.toml` (works whether this bin lives in its own package or in
/// `bench`).
fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|d| d.join("guest/Cargo.toml").is_file())
        .unwrap_or(here)
        .to_path_buf()
}

/// The target triple the workspace and the guest build for (.cargo/config.toml),
/// which puts cargo's output under `target/<triple>/<profile>`.
const GNU_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The guest's release build: `guest/target/<triple>/release/bulkhead-guest`, or
/// the plain `guest/target/release/…` of a build without an explicit target.
fn default_guest() -> PathBuf {
    let guest = repo_root().join("guest/target");
    let with_triple = guest.join(GNU_TARGET).join("release/bulkhead-guest");
    if with_triple.is_file() {
        return with_triple;
    }
    let plain = guest.join("release/bulkhead-guest");
    if plain.is_file() {
        plain
    } else {
        with_triple
    }
}

fn find_vmm(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let mut tried = vec![];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            tried.push(dir.join("bulkhead-vmm"));
        }
    }
    let root = repo_root();
    for t in ["target", "target-vmm"] {
        for p in ["release", "debug"] {
            // The workspace builds for an explicit target (.cargo/config.toml).
            tried.push(root.join(t).join(GNU_TARGET).join(p).join("bulkhead-vmm"));
            tried.push(root.join(t).join(p).join("bulkhead-vmm"));
        }
    }
    tried
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| format!("bulkhead-vmm not found (tried {tried:?}); pass --vmm"))
}

fn row(name: &str, unit: &str, b: f64, q: f64) {
    println!(
        "{name:<34} {:>12} {:>12} {:>8}",
        format!("{b:.2} {unit}"),
        format!("{q:.2} {unit}"),
        if q > 0.0 {
            format!("{:.2}", b / q)
        } else {
            "-".into()
        }
    );
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let guest = a.guest.clone().unwrap_or_else(default_guest);
    if !guest.is_file() {
        bail!(
            "test guest {} not found: build it with `(cd guest && cargo build --release)` or pass --guest",
            guest.display()
        );
    }
    let mut s = Setup {
        vmm: find_vmm(a.vmm.clone())?,
        vmm_args: a.vmm_arg.clone(),
        qemu: a.qemu.clone(),
        guest,
        mem_mib: a.mem_mib,
        disk: None,
    };
    eprintln!(
        "bulkhead-vmm: {}\nqemu: {}\nguest: {}\n{} interleaved runs each, {} MiB, 1 vCPU",
        s.vmm.display(),
        s.qemu.display(),
        s.guest.display(),
        a.iterations,
        a.mem_mib
    );

    let mut first = [vec![], vec![]];
    let mut exit = [vec![], vec![]];
    for i in 0..a.iterations {
        for m in Monitor::interleaved(i) {
            let (f, e) = timed_run(&s, m)?;
            let k = m.slot();
            first[k].push(f.as_secs_f64() * 1e3);
            exit[k].push(e.as_secs_f64() * 1e3);
        }
    }

    let mut own = [vec![], vec![]];
    let mut guest_rss = [vec![], vec![]];
    let mut mem_err: Option<String> = None;
    'samples: for i in 0..a.mem_samples {
        for m in Monitor::interleaved(i) {
            match memory_run(&s, m) {
                Ok((o, g)) => {
                    let k = m.slot();
                    own[k].push(o as f64 / 1024.0);
                    guest_rss[k].push(g as f64 / 1024.0);
                }
                Err(e) => {
                    mem_err = Some(format!("{e:#}"));
                    break 'samples;
                }
            }
        }
    }

    let mut blk_ms = [vec![], vec![]];
    let mut blk_err: Option<String> = None;
    if a.blk_mib > 0 && a.blk_runs > 0 {
        let disk = make_disk(a.blk_mib)?;
        s.disk = Some(disk.clone());
        'runs: for i in 0..a.blk_runs {
            for m in Monitor::interleaved(i) {
                match blk_run(&s, m, a.blk_mib) {
                    Ok(ms) => blk_ms[m.slot()].push(ms),
                    Err(e) => {
                        blk_err = Some(format!("{e:#}"));
                        break 'runs;
                    }
                }
            }
        }
        s.disk = None;
        let _ = std::fs::remove_file(&disk);
    }

    println!();
    println!(
        "bulkhead-vmm vs QEMU microvm — test guest, {} MiB, 1 vCPU, {} interleaved runs each",
        a.mem_mib, a.iterations
    );
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "metric (median)", "bulkhead", "qemu", "ratio"
    );
    let (mut bf, mut qf) = (first[0].clone(), first[1].clone());
    row(
        "start → first serial byte",
        "ms",
        median(&mut bf),
        median(&mut qf),
    );
    let (mut be, mut qe) = (exit[0].clone(), exit[1].clone());
    row(
        "start → power-off (exit)",
        "ms",
        median(&mut be),
        median(&mut qe),
    );
    match mem_err {
        None => {
            let (mut bo, mut qo) = (own[0].clone(), own[1].clone());
            row(
                "monitor RSS excl. guest RAM",
                "MiB",
                median(&mut bo),
                median(&mut qo),
            );
            let (mut bg, mut qg) = (guest_rss[0].clone(), guest_rss[1].clone());
            row(
                "guest RAM resident (info)",
                "MiB",
                median(&mut bg),
                median(&mut qg),
            );
        }
        Some(e) => println!("{:<34} n/a: {e}", "monitor RSS excl. guest RAM"),
    }
    let spread = |v: &[f64]| {
        let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        format!("{min:.1}–{max:.1} ms")
    };
    println!(
        "{:<34} {:>12} {:>12}",
        "power-off range (min–max)",
        spread(&exit[0]),
        spread(&exit[1])
    );
    if a.blk_mib > 0 && a.blk_runs > 0 {
        let name = format!("virtio-blk read {} MiB (guest)", a.blk_mib);
        match blk_err {
            None => {
                let (mut b, mut q) = (blk_ms[0].clone(), blk_ms[1].clone());
                row(&name, "ms", median(&mut b), median(&mut q));
            }
            Some(e) => println!("{name:<34} n/a: {e}"),
        }
    }
    println!("ratio = bulkhead / qemu (lower is better for bulkhead)");
    Ok(())
}
