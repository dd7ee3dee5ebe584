"""``toolkit report`` over forged reports, and every report writer over hostile names.

The base report comes from a real offline run (run_audit over a pcap written with scapy); the
forgeries are what a broken, hand-edited or malicious host could bring back. The fuzz test over every
writer is in test_audit_fuzz.py.
"""

from __future__ import annotations

import copy
import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from audit_support import run_toolkit
from conftest import require_binary
from scapy.all import DNS, DNSQR, IP, TCP, UDP, Ether, wrpcap

from toolkit.audit.fleet import load_reports, summarize
from toolkit.audit.policy import default_policy
from toolkit.audit.report_json import render_json
from toolkit.audit.report_junit import render_junit
from toolkit.audit.report_prom import render_prom
from toolkit.audit.run import AuditOptions, run_audit


def real_reports(tmp: Path) -> dict:
    """A FAIL and a PASS report from real offline runs over scapy-written captures."""
    bad, good = tmp / "bad.pcap", tmp / "good.pcap"
    wrpcap(
        str(bad),
        [
            Ether()
            / IP(src="192.0.2.5", dst="198.51.100.53")
            / UDP(sport=5000, dport=53)
            / DNS(qd=DNSQR(qname="stats.vllm.ai")),
            Ether() / IP(src="192.0.2.5", dst="203.0.113.1") / TCP(sport=5001, dport=443, flags="S"),
        ],
    )
    wrpcap(str(good), [Ether() / IP(src="127.0.0.1", dst="127.0.0.1") / TCP(sport=1, dport=2, flags="S")])
    out = {}
    for name, pcap in (("fail", bad), ("pass", good)):
        doc = run_audit(AuditOptions(policy=default_policy(), pcap=pcap, static=False, host=f"ws-{name}"))
        out[name] = json.loads(render_json(doc))
    assert (out["fail"]["verdict"], out["pass"]["verdict"]) == ("FAIL", "PASS")
    return out


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict:
    return real_reports(tmp_path_factory.mktemp("fleetrep"))


def _fleet(tmp: Path, docs: dict[str, object]) -> dict:
    for host, doc in docs.items():
        d = tmp / host
        d.mkdir(parents=True)
        (d / "audit.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return summarize(load_reports(tmp))


def _forgeries(reports: dict) -> dict[str, tuple[object, str]]:
    ok = reports["pass"]
    f = reports["fail"]

    def edit(base, **kw):
        d = copy.deepcopy(base)
        for k, v in kw.items():
            if v is _DEL:
                d.pop(k)
            else:
                d[k] = v
        return d

    pass_with_findings = edit(f, verdict="PASS", exit_code=0)
    pass_with_findings["controls"] = [c for c in pass_with_findings["controls"] if c["id"] != "CAPTURE-001"]
    for c in pass_with_findings["controls"]:
        c["status"] = "pass" if c["id"] == "EGRESS-001" else c["status"]
    return {
        "lower": (edit(f, verdict="fail"), "verdict 'fail' is not one of PASS, FAIL, INCONCLUSIVE"),
        "null": (edit(ok, verdict=None), "verdict None is not one of PASS, FAIL, INCONCLUSIVE"),
        "unknown": (edit(ok, verdict="OK"), "verdict 'OK' is not one of PASS, FAIL, INCONCLUSIVE"),
        "no-verdict": (edit(ok, verdict=_DEL), "verdict None is not one of PASS, FAIL, INCONCLUSIVE"),
        "no-controls": (edit(ok, controls=_DEL), "controls missing or empty"),
        "no-findings": (edit(ok, findings=_DEL), "findings missing or malformed"),
        "no-host": (edit(ok, host=_DEL), "host missing or not a string"),
        "exit-mismatch": (edit(ok, exit_code=1), "exit_code 1 does not match verdict PASS"),
        "contradicts": (edit(f, verdict="PASS", exit_code=0), "verdict PASS contradicts its controls (they say FAIL)"),
        "pass-findings": (
            pass_with_findings,
            "verdict PASS but 2 egress finding(s) listed and EGRESS-001 not waived",
        ),
        "bad-status": (
            edit(ok, controls=[{**ok["controls"][0], "status": "PASS"}, *ok["controls"][1:]]),
            "control 1 malformed (id, status, severity, items)",
        ),
        "not-json": ('{"tool": "toolkit audit", "verdict": "PA', "cannot read: "),
        "array": ("[1, 2]", "not a JSON object"),
        "other-tool": (edit(ok, tool="other"), "not a toolkit audit report (no tool: toolkit audit)"),
        "schema-2": (edit(ok, schema=2), "unsupported schema 2"),
    }


_DEL = object()


def test_each_forged_report_makes_its_host_inconclusive_with_the_reason(tmp_path, reports):
    for n, (name, (doc, reason)) in enumerate(_forgeries(reports).items()):
        if isinstance(doc, dict) and "host" in doc:
            doc["host"] = name
        s = _fleet(tmp_path / str(n), {"ws-good": reports["pass"], name: doc})
        host = next(h for h in s["hosts"] if h["report"].endswith(f"/{name}/audit.json"))
        assert host["verdict"] == "INCONCLUSIVE", (name, host)
        assert any(p.startswith(reason) for p in host["problems"]), (name, host["problems"])
        assert s["verdict"] == "INCONCLUSIVE" and s["exit_code"] == 2, name
        good = next(h for h in s["hosts"] if h["host"] == "ws-pass")
        assert (good["verdict"], good["problems"]) == ("PASS", [])


def test_honest_reports_are_taken_at_their_word_and_a_waived_pass_may_list_findings(tmp_path, reports):
    waived = copy.deepcopy(reports["fail"])
    for c in waived["controls"]:
        if c["id"] == "EGRESS-001":
            c["status"] = "waived"
    waived.update(verdict="PASS", exit_code=0, host="ws-waived")
    s = _fleet(tmp_path, {"a": reports["pass"], "b": reports["fail"], "c": waived})
    assert [(h["host"], h["verdict"], h["problems"]) for h in s["hosts"]] == [
        ("ws-fail", "FAIL", []),
        ("ws-pass", "PASS", []),
        ("ws-waived", "PASS", []),
    ]
    assert (s["verdict"], s["exit_code"], s["counts"]) == ("FAIL", 1, {"PASS": 2, "FAIL": 1, "INCONCLUSIVE": 0})


def test_two_reports_for_one_host_cannot_pass(tmp_path, reports):
    s = _fleet(tmp_path, {"x": reports["pass"], "y": reports["pass"]})
    assert [h["verdict"] for h in s["hosts"]] == ["INCONCLUSIVE", "INCONCLUSIVE"]
    assert s["verdict"] == "INCONCLUSIVE"


def test_cli_report_over_forged_and_hostile_reports_names_hosts_and_never_crashes(tmp_path, reports):
    hostile = copy.deepcopy(reports["fail"])
    hostile["host"] = "ws-[/]-\x1b[8mhidden\x1b[0m"
    hostile["findings"][0]["names"] = ["[/]evil[bold].example", "\x1b]0;title\x07x.example"]
    lower = dict(copy.deepcopy(reports["pass"]), verdict="fail", host="ws-lower")
    for n, doc in enumerate((hostile, lower)):
        (tmp_path / str(n)).mkdir()
        (tmp_path / str(n) / "audit.json").write_text(json.dumps(doc))
    proc = run_toolkit("report", str(tmp_path))
    assert proc.returncode == 1, proc.stderr  # the hostile one is an honest FAIL
    assert "Traceback" not in proc.stderr and "\x1b" not in proc.stdout
    assert "ws-lower: verdict 'fail' is not one of PASS, FAIL, INCONCLUSIVE" in proc.stdout
    assert "[/]evil[bold].example" in proc.stdout and "\\x1b]0;title\\x07x.example" in proc.stdout
    js = run_toolkit("report", str(tmp_path), "--json")
    s = json.loads(js.stdout)
    assert js.returncode == 1 and s["egress_names"]["[/]evil[bold].example"] == [hostile["host"]]


def test_junit_and_prometheus_from_a_hostile_name_pass_their_real_validators(tmp_path, reports):
    """promtool (Prometheus' own parser) and xmllint-free ElementTree read what a name with ESC,
    NUL, a quote, a newline and markup produces."""
    promtool = require_binary("promtool")
    doc = copy.deepcopy(reports["fail"])
    doc["host"] = 'ws"\n\x00\x1b[8m[/]'
    text = render_prom(doc)
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert "error" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
    assert 'toolkit_audit_exit_code{host="ws\\"\\\\x0a\\\\x00\\\\x1b[8m[/]"} 1' in text
    suite = ET.fromstring(render_junit(doc).encode()).find("testsuite")
    assert suite.get("hostname") == 'ws"\\x0a\\x00\\x1b[8m[/]'


def test_audit_cli_with_markup_and_escape_sequences_in_a_dns_name_prints_them_visibly(tmp_path):
    """A DNS query on the wire for a name holding rich markup and an SGR 8 (invisible text)
    sequence: the terminal summary shows it escaped, JSON keeps it exactly, nothing crashes."""
    name = "a[/]b\x1b[8m.evil.example"
    pcap = tmp_path / "dns.pcap"
    wrpcap(
        str(pcap),
        [
            Ether()
            / IP(src="192.0.2.5", dst="198.51.100.53")
            / UDP(sport=5000, dport=53)
            / DNS(qd=DNSQR(qname=name.encode()))
        ],
    )
    term = run_toolkit("audit", "--pcap", str(pcap), env={"COLUMNS": "250"})
    assert term.returncode == 1 and "Traceback" not in term.stderr, term.stderr
    assert "\x1b" not in term.stdout and "EGRESS-001" in term.stdout
    js = run_toolkit("audit", "--pcap", str(pcap), "--json")
    assert js.returncode == 1 and "Traceback" not in js.stderr and "\x1b" not in js.stderr, js.stderr
    names = [n for f in json.loads(js.stdout)["findings"] for n in f["names"]]
    assert any("[/]" in n for n in names), names
    shown = [n for n in names if "[/]" in n][0]
    assert shown.replace("\\", "\\\\").replace("\x1b", "\\x1b") in term.stdout
