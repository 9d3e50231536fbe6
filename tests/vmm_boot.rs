//! bulkhead-vmm boot data seen from the test guest and the host: command
//! line, memory map, ACPI tables and vCPU count, the DSDT as disassembled by
//! `iasl`, two monitors side by side, and refusals of bad input.

#[macro_use]
#[path = "support/vmm.rs"]
mod vmm;

use std::fs;
use std::path::Path;
use std::process::Command;

use vmm::{field, parse_num, run_vmm, Scratch, Vm, VmSpec};

/// Total RAM the guest reports in its `memmap` detail (`total=<n>`).
fn reported_total(detail: &str) -> u64 {
    let raw = field(detail, "total")
        .or_else(|| field(detail, "ram"))
        .unwrap_or_else(|| panic!("memmap detail has no total=: {detail:?}"));
    parse_num(raw).unwrap_or_else(|| panic!("memmap total {raw:?} is not a number"))
}

#[test]
fn command_line_memory_acpi_and_cpus_reach_the_guest() {
    require_kvm!();
    let dir = Scratch::new("bh-boot");
    let dsdt = dir.join("dsdt.aml");
    let cmdline = "checks=cmdline,memmap,acpi bulkhead.token=Zq7-41x path=/a/b,c:d";
    let mut vm = Vm::start(
        &VmSpec::guest(cmdline)
            .mem("256M")
            .vcpus(2)
            .arg("--rng")
            .arg("--dump-dsdt")
            .arg(dsdt.display().to_string()),
    );
    let r = vm.finish();
    r.assert_all_passed();

    // The command line arrives byte for byte.
    let got = r.ok("cmdline");
    assert!(
        got.contains(cmdline),
        "command line changed on the way: sent {cmdline:?}, guest saw {got:?}"
    );
    // The memory map adds up to --mem (the ACPI/EBDA holes are reserved,
    // not missing: the guest sums usable + reserved RAM below the top).
    let mm = r.ok("memmap");
    let total = reported_total(&mm);
    let mem = 256u64 << 20;
    assert!(
        total <= mem && total >= mem - (1 << 20),
        "guest sees {total} bytes of RAM for --mem 256M: {mm}"
    );
    // ACPI: tables parse and checksum (guest says ok) and the MADT has one
    // enabled LAPIC per vCPU.
    let acpi = r.ok("acpi");
    assert_eq!(field(&acpi, "cpus"), Some("2"), "acpi detail: {acpi}");

    // Host side: the DSDT the monitor generated disassembles cleanly.
    let aml = fs::read(&dsdt).unwrap_or_else(|e| panic!("--dump-dsdt wrote nothing: {e}"));
    assert_eq!(&aml[..4], b"DSDT", "not a DSDT");
    let out = Command::new("iasl")
        .args(["-d"])
        .arg(&dsdt)
        .current_dir(dir.path())
        .output()
        .expect("run iasl (acpica-tools)");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "iasl -d failed:\n{log}");
    assert!(!log.contains("Error"), "iasl reported errors:\n{log}");
    let dsl = fs::read_to_string(dir.join("dsdt.dsl")).expect("iasl wrote dsdt.dsl");
    assert!(dsl.contains("LNRO0005"), "no virtio-mmio device in:\n{dsl}");
    assert!(dsl.contains("PNP0501"), "no COM1 in:\n{dsl}");
    assert!(dsl.contains("_S5_"), "no \\_S5_ in:\n{dsl}");
}

#[test]
fn memory_above_the_3g_hole_is_all_there() {
    require_kvm!();
    let mut vm = Vm::start(&VmSpec::guest("checks=memmap").mem("3584M"));
    let r = vm.finish();
    r.assert_all_passed();
    let mm = r.ok("memmap");
    let total = reported_total(&mm);
    let mem = 3584u64 << 20;
    assert!(
        total <= mem && total >= mem - (1 << 20),
        "guest sees {total} bytes of RAM for --mem 3584M (split around the 3 GiB hole): {mm}"
    );
}

#[test]
fn four_vcpus_are_all_in_the_madt() {
    require_kvm!();
    let mut vm = Vm::start(&VmSpec::guest("checks=acpi").vcpus(4));
    let r = vm.finish();
    r.assert_all_passed();
    let acpi = r.ok("acpi");
    assert_eq!(field(&acpi, "cpus"), Some("4"), "acpi detail: {acpi}");
}

#[test]
fn two_monitors_run_side_by_side() {
    require_kvm!();
    let mut a = Vm::start(&VmSpec::guest("checks=cmdline,acpi who=first"));
    let mut b = Vm::start(&VmSpec::guest("checks=cmdline,acpi who=second").vcpus(2));
    assert_ne!(a.pid(), b.pid());
    let ra = a.finish();
    let rb = b.finish();
    ra.assert_all_passed();
    rb.assert_all_passed();
    assert!(ra.ok("cmdline").contains("who=first"));
    assert!(rb.ok("cmdline").contains("who=second"));
    assert_eq!(field(&ra.ok("acpi"), "cpus"), Some("1"));
    assert_eq!(field(&rb.ok("acpi"), "cpus"), Some("2"));
    assert!(!ra.text.contains("who=second") && !rb.text.contains("who=first"));
}

/// The first non-empty stderr line; asserts it is the only real line (clap's
/// "For more information" trailer aside) and that nothing panicked.
fn one_line_error(args: &[&str]) -> String {
    let out = run_vmm(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "bulkhead-vmm {args:?} succeeded; stderr: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "bulkhead-vmm {args:?} panicked: {stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| !l.starts_with("For more information") && !l.starts_with("Usage:"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "bulkhead-vmm {args:?}: expected a one-line error, got:\n{stderr}"
    );
    lines[0].to_string()
}

fn assert_names(line: &str, needles: &[&str]) {
    let lower = line.to_lowercase();
    assert!(
        needles.iter().any(|n| lower.contains(&n.to_lowercase())),
        "error {line:?} names none of {needles:?}"
    );
}

#[test]
fn bad_input_is_refused_with_a_one_line_error() {
    require_kvm!();
    let dir = Scratch::new("bh-bad");
    let guest = vmm::guest_elf();
    let guest = guest.to_str().expect("utf-8 path");

    // Missing kernel.
    let missing = dir.join("no-such-kernel");
    let l = one_line_error(&["--kernel", missing.to_str().unwrap(), "--serial", "none"]);
    assert_names(&l, &["no-such-kernel"]);

    // A kernel of random bytes: neither ELF nor bzImage.
    let junk = dir.join("random.bin");
    let mut bytes = vec![0u8; 64 * 1024];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .expect("random bytes");
    bytes[..4].copy_from_slice(b"JUNK");
    fs::write(&junk, &bytes).expect("write junk kernel");
    let l = one_line_error(&["--kernel", junk.to_str().unwrap(), "--serial", "none"]);
    assert_names(&l, &["random.bin"]);
    assert_names(&l, &["elf", "bzimage", "format", "kernel"]);

    // An initrd larger than guest memory.
    let big = dir.join("big.initrd");
    fs::File::create(&big)
        .and_then(|f| f.set_len(64 << 20))
        .expect("sparse initrd");
    let l = one_line_error(&[
        "--kernel",
        guest,
        "--initrd",
        big.to_str().unwrap(),
        "--mem",
        "32M",
        "--serial",
        "none",
    ]);
    assert_names(&l, &["initrd"]);

    // Too little memory.
    let l = one_line_error(&["--kernel", guest, "--mem", "1M", "--serial", "none"]);
    assert_names(&l, &["mem"]);

    // Zero vCPUs.
    let l = one_line_error(&["--kernel", guest, "--vcpus", "0", "--serial", "none"]);
    assert_names(&l, &["vcpu"]);

    // A disk that does not exist.
    let nodisk = dir.join("no-such-disk.img");
    let l = one_line_error(&[
        "--kernel",
        guest,
        "--disk",
        nodisk.to_str().unwrap(),
        "--serial",
        "none",
    ]);
    assert_names(&l, &["no-such-disk.img"]);

    // A TAP that does not exist is not created behind the user's back.
    let l = one_line_error(&[
        "--kernel",
        guest,
        "--net",
        "tap=bhnosuchtap0",
        "--serial",
        "none",
    ]);
    assert_names(&l, &["bhnosuchtap0"]);
    assert_names(&l, &["does not exist"]);
    assert!(
        !Path::new("/sys/class/net/bhnosuchtap0").exists(),
        "the monitor created the TAP"
    );

    // A TAP that cannot be opened: an existing interface that is not a TAP, `lo`.
    let l = one_line_error(&["--kernel", guest, "--net", "tap=lo", "--serial", "none"]);
    assert_names(&l, &["tap"]);
    assert!(
        l.split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| w == "lo"),
        "error {l:?} does not name the interface lo"
    );
}

#[test]
fn config_file_boots_the_guest_and_its_errors_name_the_json_path() {
    require_kvm!();
    let dir = Scratch::new("bh-config");
    let guest = vmm::guest_elf();
    let serial = dir.join("serial.log");
    let mut cfg = vmm_proto::VmConfig::new(&guest);
    cfg.cmdline = "checks=cmdline,acpi who=from-config".into();
    cfg.vcpus = 2;
    cfg.serial = vmm_proto::SerialSpec::File(serial.clone());
    let file = dir.join("vm.json");
    fs::write(&file, cfg.to_json().expect("JSON")).expect("write config");
    let f = file.to_str().expect("utf-8 path");
    let mut vm = Vm::start_raw(&["--config".to_string(), f.to_string()], false, false);
    vm.serial = serial;
    let r = vm.finish();
    r.assert_all_passed();
    assert!(r.ok("cmdline").contains("who=from-config"));
    assert_eq!(field(&r.ok("acpi"), "cpus"), Some("2"));

    // A misspelt field: one line naming the JSON path and the field.
    let bad = format!(
        r#"{{"kernel": {:?}, "disks": [{{"path": "/x", "ro": true}}]}}"#,
        guest.display().to_string()
    );
    fs::write(&file, bad).expect("write config");
    let l = one_line_error(&["--config", f]);
    assert_names(&l, &["disks[0]"]);
    assert_names(&l, &["unknown field `ro`"]);
    // A value that parses but cannot be used: the field and the accepted form.
    fs::write(
        &file,
        format!(
            r#"{{"kernel": {:?}, "vcpus": 0}}"#,
            guest.display().to_string()
        ),
    )
    .expect("write config");
    let l = one_line_error(&["--config", f]);
    assert_names(&l, &["invalid vcpus"]);
    assert_names(&l, &["expected 1 to 255"]);
    // --config excludes the flags.
    let l = one_line_error(&["--config", f, "--mem", "64M"]);
    assert_names(&l, &["--config", "cannot be used"]);
}
