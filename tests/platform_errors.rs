//! Bad input to the platform: each gets one clear line naming the problem, a non-zero
//! exit, and leaves no instance, directory, monitor, cgroup or row behind. Also the API's
//! own contract: 403 for users outside the socket's group, ETags, malformed bodies, a
//! client that disconnects mid-operation, and every route of the OpenAPI document served.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

use system_tests::platform::Platform;
use system_tests::{require_root, wait_for};

fn nothing_left(p: &Platform) {
    assert_eq!(p.json(&["list"]), serde_json::json!([]));
    let count = |d: std::path::PathBuf| system_tests::platform::entries(&d);
    assert_eq!(
        count(p.root().join("instances")),
        0,
        "instance directories left"
    );
    assert_eq!(
        count(p.run_dir().join("instances")),
        0,
        "monitor directories left"
    );
    assert_eq!(count(p.run_dir().join("zones")), 0, "zone state left");
    assert!(
        p.leftover_cgroups().is_empty(),
        "{:?}",
        p.leftover_cgroups()
    );
}

#[test]
fn bad_input_is_refused_with_one_line_and_nothing_is_left() {
    require_root!();
    let p = Platform::start();
    let root = p.rootfs("r");
    let r = root.to_str().unwrap();
    p.cli(&["create", "Web!", "--rootfs", r])
        .fails_with_one_line(&["instance name", "'W'"]);
    // A usage error is clap's (with its usage text) and exit status 2.
    let o = p.cli(&["create", "-web", "--rootfs", r]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("unexpected argument '-w'"), "{o:?}");
    p.cli(&["create", "web", "--rootfs", r, "-c", "limits.colour=red"])
        .fails_with_one_line(&["unknown configuration key", "limits.colour"]);
    p.cli(&["create", "web", "--rootfs", r, "-c", "limits.memory=12"])
        .fails_with_one_line(&["limits.memory", "1MiB"]);
    p.cli(&["create", "web", "--rootfs", r, "-c", "limits.memory=lots"])
        .fails_with_one_line(&["limits.memory", "64MiB"]);
    p.cli(&["create", "web", "--rootfs", r, "-c", "limits.cpu=0"])
        .fails_with_one_line(&["limits.cpu"]);
    p.cli(&[
        "create",
        "web",
        "--rootfs",
        r,
        "-c",
        "boot.restart=sometimes",
    ])
    .fails_with_one_line(&["boot.restart", "on-failure"]);
    p.cli(&[
        "create",
        "web",
        "--rootfs",
        r,
        "-c",
        "mount.data=relative:/data",
    ])
    .fails_with_one_line(&["mount.data"]);
    p.cli(&["create", "web", "--rootfs", "/no/such/root"])
        .fails_with_one_line(&["/no/such/root", "does not exist"]);
    p.cli(&["create", "web"]).fails_with_one_line(&["--rootfs"]);
    p.cli(&["create", "vm1", "--vm", "--kernel", "/no/such/kernel"])
        .fails_with_one_line(&["vm.kernel", "/no/such/kernel"]);
    p.cli(&["create", "vm1", "--vm"])
        .fails_with_one_line(&["vm.kernel"]);
    // A command that does not exist: the zone is created, the start fails, nothing runs.
    p.cli(&[
        "create",
        "web",
        "--rootfs",
        r,
        "-c",
        "command=/bin/no-such-init",
        "--start",
    ])
    .fails_with_one_line(&["no-such-init"]);
    assert_eq!(p.status("web"), "stopped");
    assert!(p.show("web")["pid"].is_null());
    p.cli(&["create", "web", "--rootfs", r])
        .fails_with_one_line(&["already exists"]);
    p.cli(&["delete", "web"]).ok();
    // Requests on an instance that does not exist (any more).
    for verb in [
        &["start", "web"][..],
        &["stop", "web"],
        &["exec", "web", "--", "true"],
        &["show", "web"],
        &["delete", "web"],
        &["config", "set", "web", "limits.memory", "1GiB"],
        &["logs", "web"],
    ] {
        p.cli(verb).fails_with_one_line(&["web", "not found"]);
    }
    p.cli(&["stop", "nosuch", "--force"])
        .fails_with_one_line(&["not found"]);
    nothing_left(&p);
    // The daemon is unreachable: a clear message, not a panic.
    let o = p
        .command()
        .env("BULKHEAD_SOCKET", "/nonexistent/x.sock")
        .args(["list"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        e.contains("cannot reach bulkheadd") && e.lines().count() == 1,
        "{e}"
    );
}

#[test]
fn api_contract_errors_etags_and_routes() {
    require_root!();
    let p = Platform::start();
    let root = p.rootfs("r");
    // Malformed JSON bodies and unknown fields are 400s that name the problem.
    let (code, body) = p.http("POST", "/1.0/instances", Some("{\"name\": \"x\""));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("malformed JSON"), "{body}");
    let (code, body) = p.http(
        "POST",
        "/1.0/instances",
        Some(r#"{"name":"x","source":{"type":"none"},"colour":1}"#),
    );
    assert_eq!(code, 400);
    assert!(body.contains("colour"), "{body}");
    let (code, _) = p.http("GET", "/1.0/nothing-here", None);
    assert_eq!(code, 404);
    // ETags: a stale If-Match is 412 and changes nothing.
    p.cli(&["create", "web", "--rootfs", root.to_str().unwrap()])
        .ok();
    let mut s = UnixStream::connect(p.socket()).unwrap();
    s.write_all(b"GET /1.0/instances/web HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).unwrap();
    let etag = resp
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("etag: ")
                .map(|v| v.trim().to_string())
        })
        .expect("an ETag header");
    p.cli(&["config", "set", "web", "limits.memory", "64MiB"])
        .ok();
    let put = r#"{"config":{"limits.memory":"32MiB"}}"#;
    let req = format!(
        "PUT /1.0/instances/web HTTP/1.1\r\nHost: b\r\nConnection: close\r\nIf-Match: {etag}\r\nContent-Length: {}\r\n\r\n{put}",
        put.len()
    );
    let mut s = UnixStream::connect(p.socket()).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 412"), "{resp}");
    assert_eq!(p.show("web")["config"]["limits.memory"], "64MiB");

    // Every route of the generated OpenAPI document is served (never 404/405 for the
    // route itself; instance routes are tried on a real instance).
    let (code, doc) = p.http("GET", "/1.0/openapi.json", None);
    assert_eq!(code, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (m, _) in methods.as_object().unwrap() {
            if m == "delete" || path.contains("{id}") && m != "get" {
                continue; // not destructive here
            }
            let concrete = path
                .replace("{name}", "web")
                .replace("{snapshot}", "nosnap")
                .replace("{id}", "noop");
            if concrete.ends_with("/events")
                || concrete.ends_with("/logs")
                || concrete.ends_with("/exec")
                || concrete.ends_with("/console")
            {
                continue; // streams; covered by their own tests
            }
            let (code, body) = p.http(&m.to_uppercase(), &concrete, Some("{}"));
            let route_missing = code == 405 || (code == 404 && body.contains("no route"));
            assert!(!route_missing, "{m} {path}: {code} {body}");
        }
    }
    p.cli(&["delete", "--force", "web"]).ok();
}

#[test]
fn users_outside_the_group_get_403_and_a_disconnecting_client_leaves_a_whole_instance() {
    require_root!();
    let p = Platform::start();
    // Open the socket's mode so that the daemon itself must refuse (not the file mode).
    std::fs::set_permissions(p.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let sock = p.socket();
    // An unprivileged client (Debian's python3 socket module, as uid 65534).
    let probe = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(b'GET /1.0/instances HTTP/1.1\\r\\nHost: b\\r\\nConnection: close\\r\\n\\r\\n')\nd=b''\nwhile True:\n    c=s.recv(4096)\n    if not c: break\n    d+=c\nprint(d.decode())";
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "/usr/bin/python3",
            "-c",
            probe,
        ])
        .arg(&sock)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("HTTP/1.1 403"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("/1.0/instances/"),
        "no data for a stranger: {text}"
    );

    // A client that sends a create-and-start and hangs up as soon as the operation is
    // accepted (the start still running). A client that hangs up before its request is
    // read creates nothing at all.
    let root = p.rootfs("gone");
    let body = format!(
        r#"{{"name":"gone","source":{{"type":"rootfs","path":"{}"}},"config":{{"command":"sleep 600"}},"start":true}}"#,
        root.display()
    );
    let mut s = UnixStream::connect(p.socket()).unwrap();
    s.write_all(
        format!(
            "POST /1.0/instances HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        std::io::Read::read_exact(&mut s, &mut b).unwrap();
        head.push(b[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 202"));
    drop(s);
    // The instance is whole: created and running (the operation is not tied to the
    // connection), and it deletes cleanly.
    wait_for("gone to run", || {
        let o = p.cli(&["--format", "json", "show", "gone"]);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).ok()?;
        (o.code == 0 && v["status"] == "running").then_some(())
    });
    p.cli(&["delete", "--force", "gone"]).ok();
    nothing_left(&p);
}
