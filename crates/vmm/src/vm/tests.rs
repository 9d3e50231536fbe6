//! Real tiny VMs through the builder: power-off, reset, vCPUs, the control socket,
//! serial backends, snapshots and restores, bad input.

use super::*;
use crate::config::Cli;
use crate::testkernel::{pvh_elf, Ending};
use clap::Parser;
use std::fs::File;
use std::io::Write;
use vmm_proto::{Client, VmState};

/// Runs the VM the command line describes; its exit code.
fn run(cli: Cli) -> Result<i32> {
    Ok(run_vm(cli)?.exit_code())
}

/// Runs the VM the command line describes; why it stopped.
fn run_vm(cli: Cli) -> Result<ExitReason> {
    super::run(&cli.flags_config())
}

fn kvm_available() -> bool {
    if Kvm::new().is_err() {
        println!("SKIPPED: /dev/kvm cannot be opened");
        return false;
    }
    true
}

/// Runs the monitor with `args` in this process, on a thread of its own.
fn spawn_vm(args: Vec<String>) -> std::thread::JoinHandle<Result<i32>> {
    std::thread::spawn(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run(cli(&a))
    })
}

/// Arguments for a 32 MiB, unjailed VM with a control socket.
fn small_vm_args(kernel: &Path, serial: &str, api: &Path) -> Vec<String> {
    [
        "--kernel",
        &kernel.display().to_string(),
        "--mem",
        "32M",
        "--serial",
        serial,
        "--api-sock",
        &api.display().to_string(),
        "--no-jail",
    ]
    .map(String::from)
    .to_vec()
}

/// Arguments that restore the snapshot in `dir` with an entropy device,
/// serial output to `out` and a control socket at `api`.
fn restore_args(dir: &str, out: &Path, api: &Path) -> Vec<String> {
    [
        "--restore",
        dir,
        "--rng",
        "--serial",
        &format!("file:{}", out.display()),
        "--api-sock",
        &api.display().to_string(),
        "--no-jail",
    ]
    .map(String::from)
    .to_vec()
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("bulkhead-vm-{}-{name}", std::process::id()))
}

fn cli(args: &[&str]) -> Cli {
    let mut v = vec!["bulkhead-vmm"];
    v.extend_from_slice(args);
    Cli::try_parse_from(v).expect("valid test command line")
}

fn boot(name: &str, ending: Ending, extra: &[&str]) -> (i32, String) {
    let k = tmp(&format!("{name}.elf"));
    std::fs::write(&k, pvh_elf(b"BULKHEAD-TEST hello\n", ending)).unwrap();
    let out = tmp(&format!("{name}.serial"));
    let _ = std::fs::remove_file(&out);
    let serial = format!("file:{}", out.display());
    let mut args = vec![
        "--kernel",
        k.to_str().unwrap(),
        "--mem",
        "32M",
        "--serial",
        serial.as_str(),
        "--no-jail",
    ];
    args.extend_from_slice(extra);
    let code = run(cli(&args)).expect("VM runs");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&k);
    let _ = std::fs::remove_file(&out);
    (code, text)
}

#[test]
fn pvh_guest_prints_and_powers_off() {
    if !kvm_available() {
        return;
    }
    let (code, text) = boot("poweroff", Ending::PowerOff, &[]);
    assert_eq!(text, "BULKHEAD-TEST hello\n");
    assert_eq!(code, 0);
}

#[test]
fn builder_boots_from_a_vm_config() {
    if !kvm_available() {
        return;
    }
    let k = tmp("builder.elf");
    std::fs::write(&k, pvh_elf(b"BULKHEAD-TEST built\n", Ending::PowerOff)).unwrap();
    let out = tmp("builder.serial");
    let _ = std::fs::remove_file(&out);
    let mut cfg = VmConfig::new(&k);
    cfg.memory_bytes = 32 << 20;
    cfg.serial = SerialSpec::File(out.clone());
    cfg.rng = true;
    cfg.jail.enabled = false;
    // `boot` ignores a restore source; `restore` needs a real snapshot.
    cfg.restore = Some(tmp("no-such-snapshot"));
    let e = Vm::restore(&cfg, &tmp("no-such-snapshot"))
        .err()
        .expect("no snapshot");
    assert!(format!("{e:#}").contains("state.json"), "{e:#}");
    let vm = Vm::boot(&cfg).expect("boot");
    assert_eq!(vm.devices().len(), 1);
    assert_eq!(vm.devices()[0].kind, DeviceKind::Rng);
    assert_eq!(vm.serial_path(), Some(out.as_path()));
    assert_eq!(vm.config().restore, None);
    assert_eq!(vm.run().expect("runs"), ExitReason::PowerOff);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "BULKHEAD-TEST built\n"
    );
    // Invalid configurations never reach KVM: the field is named.
    cfg.vcpus = 0;
    cfg.restore = None;
    let e = Vm::boot(&cfg).err().expect("0 vCPUs");
    assert!(e.to_string().contains("invalid vcpus"), "{e}");
    for p in [&k, &out] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn multi_vcpu_guest_powers_off() {
    if !kvm_available() {
        return;
    }
    let (code, text) = boot("smp", Ending::PowerOff, &["--vcpus", "4"]);
    assert_eq!(text, "BULKHEAD-TEST hello\n");
    assert_eq!(code, 0);
}

#[test]
fn i8042_reset_stops_with_code_2() {
    if !kvm_available() {
        return;
    }
    let (code, text) = boot("reset", Ending::I8042Reset, &[]);
    assert_eq!(text, "BULKHEAD-TEST hello\n");
    assert_eq!(code, 2);
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let k = tmp("bad.bin");
    std::fs::write(&k, [0x42u8; 8192]).unwrap();
    let ks = k.to_str().unwrap();
    let e = run(cli(&["--kernel", ks, "--mem", "8M", "--no-jail"])).unwrap_err();
    assert!(e.to_string().contains("too small"), "{e}");
    let e = run(cli(&["--kernel", ks, "--vcpus", "0", "--no-jail"])).unwrap_err();
    assert!(e.to_string().contains("at least 1"), "{e}");
    let e = run(cli(&["--kernel", "/nonexistent/k", "--no-jail"])).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = run(cli(&[
        "--kernel",
        ks,
        "--disk",
        "/nonexistent/d.img",
        "--no-jail",
    ]))
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("disk /nonexistent/d.img does not exist"),
        "{e}"
    );
    let e = run(cli(&["--kernel", ks, "--mem", "100000G", "--no-jail"])).unwrap_err();
    assert!(e.to_string().contains("exceeds the host"), "{e}");
    if kvm_available() {
        let e = run(cli(&["--kernel", ks, "--vcpus", "100000", "--no-jail"])).unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
        let e = run(cli(&["--kernel", ks, "--no-jail", "--serial", "none"])).unwrap_err();
        assert!(
            format!("{e:#}").contains("neither an ELF image with a PVH entry nor a bzImage"),
            "{e:#}"
        );
        // An initrd bigger than guest memory.
        let good = tmp("good.elf");
        std::fs::write(&good, pvh_elf(b"x", Ending::PowerOff)).unwrap();
        let big = tmp("big.initrd");
        let f = File::create(&big).unwrap();
        f.set_len(40 << 20).unwrap();
        let e = run(cli(&[
            "--kernel",
            good.to_str().unwrap(),
            "--initrd",
            big.to_str().unwrap(),
            "--mem",
            "32M",
            "--serial",
            "none",
            "--no-jail",
        ]))
        .unwrap_err();
        assert!(format!("{e:#}").contains("does not fit"), "{e:#}");
        let _ = std::fs::remove_file(&good);
        let _ = std::fs::remove_file(&big);
    }
    let _ = std::fs::remove_file(&k);
}

/// Bound on each control request in these tests (a hang guard, not a speed check).
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn request(stream: &mut UnixStream, line: &str) -> serde_json::Value {
    use std::io::BufRead;
    writeln!(stream, "{line}").unwrap();
    let mut r = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut resp = String::new();
    r.read_line(&mut resp).unwrap();
    serde_json::from_str(&resp).unwrap()
}

#[test]
fn control_socket_describe_pause_resume_stop() {
    if !kvm_available() {
        return;
    }
    let k = tmp("api.elf");
    std::fs::write(&k, pvh_elf(b"up\n", Ending::Halt)).unwrap();
    let sock = tmp("api.sock");
    let ks = k.to_str().unwrap().to_string();
    let ss = sock.to_str().unwrap().to_string();
    let vm = std::thread::spawn(move || {
        run(cli(&[
            "--kernel",
            &ks,
            "--mem",
            "32M",
            "--vcpus",
            "2",
            "--serial",
            "none",
            "--rng",
            "--api-sock",
            &ss,
            "--no-jail",
        ]))
    });
    let mut s = loop {
        if let Ok(s) = UnixStream::connect(&sock) {
            break s;
        }
        assert!(
            !vm.is_finished(),
            "VM ended before its control socket came up"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // What is not a request gets a typed error, and the connection stays.
    let bad = request(&mut s, r#"{"op":"fly"}"#);
    assert_eq!(bad["ok"], false);
    assert_eq!(bad["kind"], "bad_request");
    assert!(bad["error"]
        .as_str()
        .unwrap()
        .contains("unknown variant `fly`"));
    let bad = request(&mut s, "not json");
    assert_eq!(bad["ok"], false);
    assert_eq!(request(&mut s, r#"{"op":"describe"}"#)["state"], "running");
    drop(s);
    // One client at a time: the typed client gets the socket next.
    let mut c = Client::connect_retry(&sock, TIMEOUT).expect("connect");
    let d = c.describe().expect("describe");
    assert_eq!(d.state, VmState::Running);
    assert_eq!((d.vcpus, d.memory), (2, 32 << 20));
    assert_eq!(
        d.devices,
        vec![DeviceInfo {
            slot: 0,
            kind: DeviceKind::Rng,
            base: 0xD000_0000,
            gsi: 5
        }]
    );
    assert_eq!((d.serial.as_str(), d.serial_path.as_ref()), ("none", None));
    assert!(!d.jailed);
    assert_eq!(d.pid, std::process::id());
    assert_eq!(c.pause().expect("pause").state, VmState::Paused);
    assert_eq!(c.describe().expect("describe").state, VmState::Paused);
    assert_eq!(c.resume().expect("resume").state, VmState::Running);
    // The halted test kernel ignores the power button: shutdown falls
    // back to a hard stop after the timeout.
    let sd = c.shutdown(1).expect("shutdown");
    assert!(!sd.graceful, "{sd:?}");
    assert_eq!(sd.state, VmState::Stopped);
    let code = vm.join().unwrap().unwrap();
    assert_eq!(code, 0);
    let _ = std::fs::remove_file(&k);
    let _ = std::fs::remove_file(&sock);
}

fn wait_for(path: &Path, what: &str, vm: &std::thread::JoinHandle<Result<i32>>) -> String {
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        assert!(!vm.is_finished(), "VM ended before printing {what:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A typed client of the VM's control socket, once it is up.
fn client(sock: &Path, vm: &std::thread::JoinHandle<Result<i32>>) -> Client {
    let s = connect(sock, vm);
    drop(s);
    Client::connect_retry(sock, TIMEOUT).expect("connect")
}

fn connect(sock: &Path, vm: &std::thread::JoinHandle<Result<i32>>) -> UnixStream {
    loop {
        if let Ok(s) = UnixStream::connect(sock) {
            return s;
        }
        assert!(
            !vm.is_finished(),
            "VM ended before its control socket came up"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn snapshot_and_restore_continue_the_guest() {
    if !kvm_available() {
        return;
    }
    let k = tmp("snap.elf");
    std::fs::write(&k, pvh_elf(b"BULKHEAD-TEST hello\n", Ending::Dots)).unwrap();
    let dir = tmp("snapdir");
    let _ = std::fs::remove_dir_all(&dir);
    let (sock1, out1) = (tmp("snap1.sock"), tmp("snap1.serial"));
    let (sock2, out2) = (tmp("snap2.sock"), tmp("snap2.serial"));
    let _ = std::fs::remove_file(&out1);
    let _ = std::fs::remove_file(&out2);
    let args1: Vec<String> = vec![
        "--kernel".into(),
        k.display().to_string(),
        "--mem".into(),
        "32M".into(),
        "--vcpus".into(),
        "2".into(),
        "--rng".into(),
        "--serial".into(),
        format!("file:{}", out1.display()),
        "--api-sock".into(),
        sock1.display().to_string(),
        "--no-jail".into(),
    ];
    let vm1 = spawn_vm(args1);
    wait_for(&out1, "hello\n.", &vm1);
    let mut c = client(&sock1, &vm1);
    let d = dir.display().to_string();
    match c.snapshot(&dir) {
        Err(vmm_proto::ClientError::Api { source, .. }) => {
            assert_eq!(source.kind, vmm_proto::ErrorKind::NotPaused, "{source}")
        }
        other => panic!("snapshot of a running VM must be refused: {other:?}"),
    }
    assert_eq!(c.pause().expect("pause").state, VmState::Paused);
    let snap = c.snapshot(&dir).expect("snapshot");
    assert_eq!(snap.dir, dir);
    c.stop().expect("stop");
    assert_eq!(vm1.join().unwrap().unwrap(), 0);
    let meta = std::fs::metadata(dir.join("memory")).unwrap();
    assert_eq!(meta.len(), 32 << 20);
    // Sparse: the tiny guest touched a few pages; untouched memory is holes.
    let written = snap.memory_bytes_written;
    assert!(written > 0 && written < 4 << 20, "{snap:?}");
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 8 << 20,
        "memory file is not sparse: {} blocks",
        std::os::unix::fs::MetadataExt::blocks(&meta)
    );
    assert!(!dir.join("memory.tmp").exists() && !dir.join("state.json.tmp").exists());

    let args2 = restore_args(&d, &out2, &sock2);
    let vm2 = spawn_vm(args2);
    // The restored guest continues its loop: dots, no new greeting.
    let text = wait_for(&out2, "...", &vm2);
    assert!(
        !text.contains("hello"),
        "restored guest started over: {text:?}"
    );
    let mut c = client(&sock2, &vm2);
    let desc = c.describe().expect("describe");
    assert_eq!((desc.vcpus, desc.memory), (2, 32 << 20));
    // The restored VM runs on a copy-on-write mapping of `memory`; a new
    // snapshot into the same directory replaces the file (rename), never
    // truncates it under the running guest, which carries on.
    assert_eq!(c.pause().expect("pause").state, VmState::Paused);
    c.snapshot(&dir).expect("second snapshot");
    let before = std::fs::read(&out2).unwrap().len();
    assert_eq!(c.resume().expect("resume").state, VmState::Running);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read(&out2).unwrap().len() < before + 3 {
        assert!(
            std::time::Instant::now() < deadline && !vm2.is_finished(),
            "the restored guest stopped after a snapshot into its own directory"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    c.stop().expect("stop");
    assert_eq!(vm2.join().unwrap().unwrap(), 0);
    // And that second snapshot restores too.
    let _ = std::fs::remove_file(&out2);
    let args3 = restore_args(&d, &out2, &sock2);
    let vm3 = spawn_vm(args3);
    let text = wait_for(&out2, "...", &vm3);
    assert!(!text.contains("hello"), "{text:?}");
    client(&sock2, &vm3).stop().expect("stop");
    assert_eq!(vm3.join().unwrap().unwrap(), 0);

    // A device list that does not match the snapshot is refused.
    let e = run(cli(&["--restore", &d, "--serial", "none", "--no-jail"])).unwrap_err();
    assert!(format!("{e:#}").contains("virtio devices"), "{e:#}");
    for p in [&k, &sock1, &sock2, &out1, &out2] {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sse_guest_runs_or_reports_the_emulation_failure() {
    if !kvm_available() {
        return;
    }
    let k = tmp("sse.elf");
    std::fs::write(&k, crate::testkernel::sse_probe()).unwrap();
    let out = tmp("sse.serial");
    let _ = std::fs::remove_file(&out);
    let serial = format!("file:{}", out.display());
    let r = run_vm(cli(&[
        "--kernel",
        k.to_str().unwrap(),
        "--mem",
        "32M",
        "--serial",
        &serial,
        "--no-jail",
    ]));
    let text = std::fs::read(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&k);
    let _ = std::fs::remove_file(&out);
    if cpu::host_is_pvm() {
        // kvm_pvm cannot execute SSE: the monitor must stop with the
        // instruction bytes, not hang or run on.
        let reason = r.unwrap();
        assert_eq!(
            reason,
            ExitReason::Error(
                "vcpu 0: unhandled emulation failure at RIP 0x100020: bytes 66 0f 6e c0 66 0f d4 c0 66 0f 7e c1 66 ba f8".into()
            )
        );
        assert_eq!(reason.exit_code(), 1);
        assert!(text.is_empty(), "{text:?}");
    } else {
        assert_eq!(r.unwrap(), ExitReason::PowerOff);
        assert_eq!(text, [0x82]);
    }
}

#[test]
fn serial_pty_carries_output_and_input() {
    if !kvm_available() {
        return;
    }
    let k = tmp("spty.elf");
    std::fs::write(&k, pvh_elf(b"ready\n", Ending::Echo)).unwrap();
    let api = tmp("spty-api.sock");
    let args = small_vm_args(&k, "pty", &api);
    let vm = spawn_vm(args);
    let mut c = client(&api, &vm);
    let desc = c.describe().expect("describe");
    let path = desc
        .serial
        .strip_prefix("pty:")
        .unwrap_or_else(|| panic!("describe has no pty: {desc:?}"))
        .to_string();
    assert_eq!(desc.serial_path, Some(PathBuf::from(&path)));
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {path}: {e}"));
    // Output written before anyone opened the terminal waited in its buffer.
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !got.ends_with(b"ready\n") {
        let n = tty.read(&mut buf).unwrap();
        assert!(n > 0, "pty closed");
        got.extend_from_slice(&buf[..n]);
    }
    // Input reaches the guest's UART, which echoes it: raw mode both ways,
    // and a paste longer than the 64-byte FIFO arrives whole.
    let paste: Vec<u8> = (0..300u32)
        .map(|i| {
            if i % 50 == 49 {
                b'\n'
            } else {
                b' ' + (i % 90) as u8
            }
        })
        .chain(*b"\r\n")
        .collect();
    std::io::Write::write_all(&mut tty, &paste).unwrap();
    got.clear();
    while got.len() < paste.len() {
        let n = tty.read(&mut buf).unwrap();
        assert!(n > 0, "pty closed");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, paste);
    assert_eq!(c.stop().expect("stop").state, VmState::Stopped);
    assert_eq!(vm.join().unwrap().unwrap(), 0);
    for p in [&k, &api] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn serial_socket_streams_output_to_a_client() {
    if !kvm_available() {
        return;
    }
    let k = tmp("ssock.elf");
    std::fs::write(&k, pvh_elf(b"hi\n", Ending::Dots)).unwrap();
    let (ser, api) = (tmp("ser.sock"), tmp("ser-api.sock"));
    let args = small_vm_args(&k, &format!("socket:{}", ser.display()), &api);
    let vm = spawn_vm(args);
    let mut client = connect(&ser, &vm);
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.iter().filter(|&&b| b == b'.').count() < 10 {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "serial socket closed");
        got.extend_from_slice(&buf[..n]);
    }
    // Output produced before the client connected is dropped; what
    // arrives is the guest's loop.
    assert!(got.iter().all(|&b| b == b'.' || b"hi\n".contains(&b)));
    self::client(&api, &vm).stop().expect("stop");
    assert_eq!(vm.join().unwrap().unwrap(), 0);
    for p in [&k, &ser, &api] {
        let _ = std::fs::remove_file(p);
    }
}
