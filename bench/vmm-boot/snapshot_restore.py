#!/usr/bin/env python3
"""Snapshot and restore latency of bulkhead-vmm over its control socket.

Boots the test guest (`checks=tick`, it keeps running) with --mem MEM, pauses it,
times the `snapshot` request, stops it, then times `--restore` from process start
until the control socket answers and until the restored guest prints its next tick.
Also prints the memory file's size and allocated space and the restored monitor's RSS.
Run it against two builds to compare them (there is no peer with the same snapshot
API on this host). Needs root and /dev/kvm.

  python3 bench/vmm-boot/snapshot_restore.py [--vmm PATH] [--mem 1G]
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRIPLE = "x86_64-unknown-linux-gnu"


def request(path, obj):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall((json.dumps(obj) + "\n").encode())
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit(f"control socket {path} closed")
        reply += chunk
    s.close()
    return json.loads(reply)


def wait_for_socket(path, proc, timeout=30):
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"bulkhead-vmm exited with {proc.returncode}")
        if os.path.exists(path):
            try:
                return request(path, {"op": "describe"})
            except OSError:
                pass
        if time.time() > deadline:
            raise SystemExit(f"no control socket at {path}")
        time.sleep(0.0005)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmm", default=os.path.join(ROOT, "target", TRIPLE, "release", "bulkhead-vmm"))
    ap.add_argument("--guest", default=os.path.join(ROOT, "guest/target", TRIPLE, "release/bulkhead-guest"))
    ap.add_argument("--mem", default="1G")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bh-snapbench.")
    try:
        api1, api2, snap = (os.path.join(work, n) for n in ("api1.sock", "api2.sock", "snap"))
        s1, s2 = os.path.join(work, "s1"), os.path.join(work, "s2")
        vm = subprocess.Popen([a.vmm, "--kernel", a.guest, "--mem", a.mem,
                               "--cmdline", "checks=tick tick.count=1000000",
                               "--serial", "file:" + s1, "--api-sock", api1, "--no-jail"])
        wait_for_socket(api1, vm)
        time.sleep(1)
        request(api1, {"op": "pause"})
        t = time.monotonic()
        r = request(api1, {"op": "snapshot", "dir": snap})
        t_snap = time.monotonic() - t
        if not r.get("ok"):
            raise SystemExit(f"snapshot failed: {r}")
        request(api1, {"op": "stop"})
        vm.wait()
        st = os.stat(os.path.join(snap, "memory"))
        t = time.monotonic()
        vm = subprocess.Popen([a.vmm, "--restore", snap, "--serial", "file:" + s2,
                               "--api-sock", api2, "--no-jail"])
        wait_for_socket(api2, vm)
        t_api = time.monotonic() - t
        while b"tick" not in open(s2, "rb").read():
            if time.monotonic() - t > 60:
                raise SystemExit("the restored guest did not tick")
            time.sleep(0.0005)
        t_tick = time.monotonic() - t
        with open(f"/proc/{vm.pid}/status") as f:
            rss_kib = next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
        request(api2, {"op": "stop"})
        vm.wait()
        print(f"{a.vmm} --mem {a.mem}")
        print(f"  snapshot request            {t_snap * 1000:9.1f} ms")
        print(f"  memory file size/allocated  {st.st_size / 2**20:9.1f} / {st.st_blocks * 512 / 2**20:.2f} MiB")
        print(f"  restore: start -> API       {t_api * 1000:9.1f} ms")
        print(f"  restore: start -> next tick {t_tick * 1000:9.1f} ms")
        print(f"  restored monitor RSS        {rss_kib / 1024:9.1f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
