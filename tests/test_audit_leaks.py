"""Reports do not leak: secrets in command lines redacted, report files 0640, and a policy that
allows everything is refused unless flagged, then reported as a finding (POLICY-001)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from audit_support import control, quiet_static, report_of, run_toolkit, sh
from conftest import require_root
from scapy.all import IP, TCP, Ether, wrpcap

from toolkit.audit.attribution import REDACTED, process_info, redact_argv

R = REDACTED


def test_secret_values_are_redacted_in_both_option_forms_headers_env_words_and_urls():
    cases = [
        (["psql", "--db-password=hunter2", "--host", "db"], ["psql", f"--db-password={R}", "--host", "db"]),
        (["vllm", "--api-key", "sk-1", "--port", "8000"], ["vllm", "--api-key", R, "--port", "8000"]),
        (["x", "--hf-token", "--port", "1"], ["x", "--hf-token", "--port", "1"]),  # a flag, no value
        (["x", "--client_secret=abc", "--SECRET", "s"], ["x", f"--client_secret={R}", "--SECRET", R]),
        (["curl", "-H", "Authorization: Bearer abc.def"], ["curl", "-H", f"Authorization: {R}"]),
        (["curl", "--header=authorization: Basic Zm9v"], ["curl", f"--header=authorization: {R}"]),
        (["curl", "https://u:p@ss@example.com/x"], ["curl", f"https://{R}@example.com/x"]),
        (["curl", "http://example.com/@x"], ["curl", "http://example.com/@x"]),  # a path, not userinfo
        (["env", "DB_PASSWORD=pw", "HF_TOKEN=t", "PORT=1"], ["env", f"DB_PASSWORD={R}", f"HF_TOKEN={R}", "PORT=1"]),
        (
            ["sh", "-c", "app --api-key k1 --password=p2 --port 1"],
            ["sh", "-c", f"app --api-key {R} --password={R} --port 1"],
        ),
    ]
    assert [redact_argv(argv) for argv, _ in cases] == [want for _, want in cases]


def test_a_real_process_command_line_is_read_redacted_from_proc():
    p = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "--db-password=hunter2", "--api-key", "sk-live-9"]
    )
    try:
        # Until exec() the child's /proc holds the forked pytest (or nothing): read it once exec is done.
        deadline = time.time() + 10
        while b"sk-live-9" not in Path(f"/proc/{p.pid}/cmdline").read_bytes() and time.time() < deadline:
            time.sleep(0.05)
        info = process_info(p.pid)
    finally:
        p.kill()
        p.wait()
    assert info["cmdline"].endswith(f"--db-password={R} --api-key {R}"), info
    assert "hunter2" not in info["cmdline"] and "sk-live-9" not in info["cmdline"]


@pytest.mark.root
def test_listener_process_in_the_reports_is_redacted_and_report_files_are_0640(tmp_path):
    """A real listener beyond loopback, in a namespace the test made, owned by a process with a
    password in its argv: LISTEN-001 names the process in audit.json and audit.html, redacted."""
    require_root()
    ns = f"aud-leak-{uuid.uuid4().hex[:4]}"
    sh("ip", "netns", "add", ns)
    listener = None
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        code = "import socket,time; s=socket.socket(); s.bind(('0.0.0.0', 18123)); s.listen(); time.sleep(60)"
        listener = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code, "--db-password=hunter2", "--token", "t0k"]
        )
        for _ in range(100):
            if ":46CB " in sh("ip", "netns", "exec", ns, "cat", "/proc/net/tcp").stdout:
                break
            time.sleep(0.05)
        pcap = tmp_path / "lo.pcap"
        wrpcap(str(pcap), [Ether() / IP(src="127.0.0.1", dst="127.0.0.1") / TCP(sport=1, dport=2)])
        out = tmp_path / "out"
        proc = run_toolkit("audit", "--pcap", str(pcap), "--static", *quiet_static(tmp_path), "--out", str(out), ns=ns)
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
        sh("ip", "netns", "del", ns, check=False)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads((out / "audit.json").read_text())
    (item,) = control(doc, "LISTEN-001")["items"]
    assert (item["address"], item["port"]) == ("0.0.0.0", 18123)
    assert item["process"]["cmdline"].endswith(f"--db-password={R} --token {R}")
    for name in ("audit.json", "audit.html", "audit.junit.xml", "audit.prom"):
        text = (out / name).read_text()
        assert "hunter2" not in text and "t0k" not in text, name
        assert oct((out / name).stat().st_mode & 0o777) == "0o640", name
    assert oct(out.stat().st_mode & 0o777) == "0o750"


def _pcap(tmp_path):
    p = tmp_path / "egress.pcap"
    wrpcap(str(p), [Ether() / IP(src="192.0.2.5", dst="203.0.113.1") / TCP(sport=5001, dport=443, flags="S")])
    return p


def test_policy_allowing_everything_is_refused_without_the_flag(tmp_path):
    for nets in ('["0.0.0.0/0"]', '["::/0"]', '["0.0.0.0/1", "128.0.0.0/1"]'):
        policy = tmp_path / "p.yaml"
        policy.write_text(f"schema: 1\nallow:\n  networks: {nets}\n")
        proc = run_toolkit("audit", "--pcap", str(_pcap(tmp_path)), "--policy", str(policy))
        assert proc.returncode == 64 and proc.stdout == "", (nets, proc.stderr)
        assert "set allow_everything: true" in proc.stderr and "Traceback" not in proc.stderr


def test_policy_allowing_everything_with_the_flag_runs_and_fails_policy_001_unless_waived(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("schema: 1\nallow_everything: true\nallow:\n  networks: [0.0.0.0/0]\n")
    proc = run_toolkit("audit", "--pcap", str(_pcap(tmp_path)), "--policy", str(policy), "--json")
    r = report_of(proc)
    assert proc.returncode == 1 and r["verdict"] == "FAIL"
    assert control(r, "POLICY-001")["status"] == "fail"
    assert control(r, "EGRESS-001")["status"] == "pass"  # the policy hid the flow: hence the finding
    assert r["policy"]["allow_everything"] is True
    waivers = tmp_path / "w.yaml"
    expires = (dt.date.today() + dt.timedelta(days=7)).isoformat()
    waivers.write_text(
        "schema: 1\nwaivers:\n  - {control: POLICY-001, hosts: '*', justification: lab capture of a LAN,"
        f" owner: secops@example.com, expires: {expires}}}\n"
    )
    waived = run_toolkit("audit", "--pcap", str(_pcap(tmp_path)), "--policy", str(policy), "--waivers", str(waivers))
    assert waived.returncode == 0, waived.stderr
    narrow = tmp_path / "n.yaml"
    narrow.write_text("schema: 1\nallow:\n  networks: [10.0.0.0/8]\n")
    r = report_of(run_toolkit("audit", "--pcap", str(_pcap(tmp_path)), "--policy", str(narrow), "--json"))
    assert "POLICY-001" not in [c["id"] for c in r["controls"]] and r["verdict"] == "FAIL"
