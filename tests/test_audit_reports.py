"""Waivers and reports: JSON, JUnit, Prometheus textfile, HTML opened in headless Chromium, fleet."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from audit_support import control, report_of, run_toolkit
from conftest import require_binary
from scapy.all import DNS, DNSQR, IP, TCP, UDP, Ether, wrpcap

E = Ether()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> dict:
    """Two hosts' reports written by real runs: one with egress, one clean."""
    tmp = tmp_path_factory.mktemp("audrep")
    bad, good = tmp / "bad.pcap", tmp / "good.pcap"
    wrpcap(
        str(bad),
        [
            E
            / IP(src="192.0.2.5", dst="198.51.100.53")
            / UDP(sport=5000, dport=53)
            / DNS(qd=DNSQR(qname="stats.vllm.ai")),
            E / IP(src="192.0.2.5", dst="203.0.113.1") / TCP(sport=5001, dport=443, flags="S"),
        ],
    )
    wrpcap(str(good), [E / IP(src="127.0.0.1", dst="127.0.0.1") / TCP(sport=1, dport=2, flags="S")])
    out = tmp / "fleet"
    a = run_toolkit("audit", "--pcap", str(bad), "--host", "ws-01", "--out", str(out / "ws-01"))
    b = run_toolkit("audit", "--pcap", str(good), "--host", "ws-02", "--out", str(out / "ws-02"))
    assert (a.returncode, b.returncode) == (1, 0), (a.stderr, b.stderr)
    return {"dir": out, "bad": bad, "tmp": tmp}


def test_json_report_lists_every_finding_with_remote_address_and_names(fleet):
    r = json.loads((fleet["dir"] / "ws-01/audit.json").read_text())
    assert r["host"] == "ws-01" and r["verdict"] == "FAIL" and r["exit_code"] == 1
    assert {(f["remote_address"], tuple(f["names"])) for f in r["findings"]} == {
        ("198.51.100.53", ("stats.vllm.ai",)),
        ("203.0.113.1", ()),
    }
    assert r["dns_queries"] == ["stats.vllm.ai"]


def test_junit_has_one_test_case_per_control_with_failures_marked(fleet):
    root = ET.parse(fleet["dir"] / "ws-01/audit.junit.xml").getroot()
    suite = root.find("testsuite")
    cases = {c.get("name").split()[0]: c for c in suite.findall("testcase")}
    assert set(cases) == {"CAPTURE-001", "EGRESS-001", "LINK-001"}
    assert suite.get("tests") == "3" and suite.get("failures") == "1"
    assert "stats.vllm.ai" in cases["EGRESS-001"].find("failure").text


def test_prometheus_textfile_has_verdict_findings_and_timestamp_gauges(fleet):
    text = (fleet["dir"] / "ws-01/audit.prom").read_text()
    sample = re.compile(r'^[a-z_]+\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\} -?[0-9.e+]+$')
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    assert 'toolkit_audit_verdict{host="ws-01",verdict="fail"} 1' in text
    assert 'toolkit_audit_verdict{host="ws-01",verdict="pass"} 0' in text
    assert 'toolkit_audit_findings{host="ws-01",control="EGRESS-001",severity="critical"} 2' in text
    assert re.search(r'toolkit_audit_last_run_timestamp_seconds\{host="ws-01"\} 1[0-9]{9}\.[0-9]{3}', text)


def test_html_report_is_self_contained_and_renders_in_headless_chromium(fleet):
    chromium = require_binary("chromium")
    html = fleet["dir"] / "ws-01/audit.html"
    text = html.read_text()
    assert "stats.vllm.ai" in text and "EGRESS-001" in text
    assert not re.search(r"<script|<link|<img|@import|url\(|https?://", text)
    shot = fleet["tmp"] / "ws-01.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--window-size=1200,900",
                f"--screenshot={shot}",
                f"file://{html}",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 900)
    assert len(data) > 20_000  # a blank page compresses to a few KB; a rendered report does not


def test_fleet_report_sums_up_hosts_and_exits_with_the_worst_verdict(fleet):
    proc = run_toolkit("report", str(fleet["dir"]), "--json")
    assert proc.returncode == 1, proc.stderr
    s = json.loads(proc.stdout)
    assert s["counts"] == {"PASS": 1, "FAIL": 1, "INCONCLUSIVE": 0}
    assert [h["host"] for h in s["hosts"]] == ["ws-01", "ws-02"]
    assert s["egress_names"]["stats.vllm.ai"] == ["ws-01"]
    assert run_toolkit("report", str(fleet["tmp"] / "nothing-here")).returncode == 64


def _waivers(tmp: Path, expires: str, hosts: str = "ws-*", control_id: str = "EGRESS-001") -> Path:
    p = tmp / f"waivers-{expires}-{hosts.replace('*', 'x')}.yaml"
    p.write_text(
        f"schema: 1\nwaivers:\n  - control: {control_id}\n    hosts: '{hosts}'\n"
        "    justification: lab network test traffic\n    owner: secops@example.com\n"
        f"    expires: {expires}\n"
    )
    return p


def test_valid_waiver_turns_a_finding_into_waived_and_the_run_passes(fleet):
    future = (dt.date.today() + dt.timedelta(days=30)).isoformat()
    proc = run_toolkit(
        "audit",
        "--pcap",
        str(fleet["bad"]),
        "--host",
        "ws-07",
        "--json",
        "--waivers",
        str(_waivers(fleet["tmp"], future)),
    )
    assert proc.returncode == 0, proc.stderr
    c = control(report_of(proc), "EGRESS-001")
    assert c["status"] == "waived" and c["waiver"]["owner"] == "secops@example.com" and len(c["items"]) == 2
    # The same waiver does not cover a host outside its pattern.
    other = run_toolkit(
        "audit",
        "--pcap",
        str(fleet["bad"]),
        "--host",
        "build-1",
        "--json",
        "--waivers",
        str(_waivers(fleet["tmp"], future)),
    )
    assert other.returncode == 1


def test_expired_or_malformed_waiver_stops_the_run_at_once_with_exit_64(fleet):
    past = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    proc = run_toolkit("audit", "--pcap", str(fleet["bad"]), "--waivers", str(_waivers(fleet["tmp"], past)))
    assert proc.returncode == 64 and "expired on" in proc.stderr and proc.stdout == ""
    typo = run_toolkit(
        "audit",
        "--pcap",
        str(fleet["bad"]),
        "--waivers",
        str(_waivers(fleet["tmp"], "2999-01-01", control_id="EGRES-001")),
    )
    assert typo.returncode == 64 and "unknown control 'EGRES-001'" in typo.stderr
    no_date = fleet["tmp"] / "nodate.yaml"
    no_date.write_text("waivers:\n  - {control: EGRESS-001, justification: x, owner: y, expires: someday}\n")
    assert run_toolkit("audit", "--pcap", str(fleet["bad"]), "--waivers", str(no_date)).returncode == 64
