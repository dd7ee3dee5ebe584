"""Exact attribution through the Linux audit subsystem, for real: keyed auditctl rules, records
read from the kernel's audit multicast group, 200 short-lived processes in a namespace the test
creates, each making one TCP connection attempt to the peer namespace and exiting at once.

The agent runs in this machine's namespace (where the kernel multicasts audit records) and
captures inside the test's "host" namespace (--netns). Nothing is mocked."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.audit_support import PEER_V4, drop_pair, make_pair, quiet_static, toolkit_cmd

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("auditctl") is None, reason="auditctl (Debian auditd) not installed"),
]

# Each inner bash prints its pid, then opens a TCP connection to the peer (no listener there: the
# peer answers RST) and exits: a process that lives a few milliseconds.
SENDERS = "for i in $(seq {n}); do bash -c 'echo $$; exec 3<>/dev/tcp/{peer}/9' 2>/dev/null; done; true"


@pytest.fixture
def pair():
    p = make_pair("aad")
    yield p
    drop_pair(p)


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"agent exited early: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("agent never became ready")
        time.sleep(0.1)


def test_200_short_lived_senders_are_each_named_by_pid_and_exe_from_audit_records(pair, tmp_path):
    before = subprocess.run(["auditctl", "-l"], capture_output=True, text=True).stdout
    out = tmp_path / "out"
    ready = tmp_path / "ready"
    agent = subprocess.Popen(
        [
            *toolkit_cmd("audit-agent"),
            "--netns", f"/run/netns/{pair.host}",
            "--window", "20", "--windows", "1",
            "--out", str(out), "--textfile", str(tmp_path / "t.prom"),
            "--ready-file", str(ready), "--no-static", *quiet_static(tmp_path),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_file(ready, agent)
        senders = pair.run(pair.host, "bash", "-c", SENDERS.format(n=200, peer=PEER_V4), timeout=120)
        pids = {int(x) for x in senders.stdout.split()}
        assert len(pids) == 200, senders.stderr[-500:]
        _, err = agent.communicate(timeout=90)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, err[-2000:]
    report = json.loads((out / "audit.json").read_text())
    flows = [f for f in report["findings"] if f["remote_address"] == PEER_V4 and f["remote_port"] == 9]
    by_pid = {f["process"]["pid"]: f["process"] for f in flows if f["process"].get("method") == "auditd"}
    unattributed = [f for f in flows if f["process"].get("method") != "auditd"]
    missing = pids - set(by_pid)
    assert (len(flows), len(unattributed), sorted(missing)) == (200, 0, []), report["attribution"]
    assert {p["exe"] for p in by_pid.values()} == {"/usr/bin/bash"}
    assert {(p["uid"], p["user"], p["syscall"]) for p in by_pid.values()} == {(0, "root", "connect")}
    assert all("/dev/tcp/" in p["cmdline"] or p["cmdline"].startswith("bash") for p in by_pid.values())
    assert report["attribution"]["methods"] == {"auditd": 200}
    assert report["attribution"]["unattributed"] == 0 and report["attribution"]["audit_records_lost"] == 0
    assert report["verdict"] == "FAIL"
    # The agent removed exactly its own rules and left the rest as it found them.
    assert subprocess.run(["auditctl", "-l"], capture_output=True, text=True).stdout == before
