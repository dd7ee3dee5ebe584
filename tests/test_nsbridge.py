"""toolkit/sandbox/nsbridge.py, ssh's ProxyCommand into a podman host: a byte-exact stdio bridge to loopback only.
Run here in the test's own network namespace (the fleet runs it under nsenter --net)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

from toolkit.sandbox.ssh import NSBRIDGE


def test_bridge_carries_bytes_both_ways_and_passes_the_half_close_on():
    srv = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            data = b""
            while chunk := conn.recv(65536):  # until the bridge half-closes after stdin's EOF
                data += chunk
            got.append(data)
            conn.sendall(b"reply:" + data[::-1])

    t = threading.Thread(target=serve)
    t.start()
    payload = bytes(range(256)) * 1000
    r = subprocess.run(
        [sys.executable, str(NSBRIDGE), "127.0.0.1", str(srv.getsockname()[1])],
        input=payload,
        capture_output=True,
        timeout=30,
    )
    t.join(10)
    srv.close()
    assert r.returncode == 0, r.stderr
    assert got == [payload]
    assert r.stdout == b"reply:" + payload[::-1]


def test_bridge_refuses_anything_but_a_loopback_address():
    for target in ("192.0.2.1", "10.0.0.1", "localhost", "::ffff:10.0.0.1"):
        r = subprocess.run([sys.executable, str(NSBRIDGE), target, "22"], capture_output=True, text=True, timeout=30)
        assert (r.returncode, r.stdout) == (2, ""), target
        assert r.stderr == f"nsbridge.py: {target!r} is not a loopback address\n"


def test_container_mode_refuses_a_bad_name_and_a_container_that_is_not_running():
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(NSBRIDGE), "--container", *args], capture_output=True, text=True, timeout=60
        )

    r = run("-x;rm", "127.0.0.1", "22")
    assert (r.returncode, r.stderr) == (2, "nsbridge.py: '-x;rm' is not a container name\n")
    r = run("tk-no-such-container", "10.0.0.1", "22")
    assert (r.returncode, r.stderr) == (2, "nsbridge.py: '10.0.0.1' is not a loopback address\n")
    r = run("tk-no-such-container", "127.0.0.1", "22")
    assert r.returncode == 1 and r.stderr.startswith("nsbridge.py: "), r.stderr
