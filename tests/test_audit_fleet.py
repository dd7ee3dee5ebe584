"""``toolkit report`` over forged reports, and every report writer over hostile names.

The base report comes from a real offline run (run_audit over a pcap written with scapy); the
forgeries are what a broken, hand-edited or malicious host could bring back. The fuzz test feeds
arbitrary text (hypothesis) into the fields that come from packets or hosts (host, DNS names,
details) and parses every output back with a real parser.
"""

from __future__ import annotations

import copy
import io
import json
import re
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from audit_support import run_toolkit
from conftest import require_binary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from scapy.all import DNS, DNSQR, IP, TCP, UDP, Ether, wrpcap

from toolkit.audit.escape import visible
from toolkit.audit.fleet import load_reports, summarize
from toolkit.audit.policy import default_policy
from toolkit.audit.report_html import render_html
from toolkit.audit.report_json import render_json
from toolkit.audit.report_junit import render_junit
from toolkit.audit.report_prom import render_prom
from toolkit.audit.run import AuditOptions, run_audit
from toolkit.commands.audit import _fleet_summary, _summary


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("fleetrep")
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


# ---------------------------------------------------------------------------------------------
# Every writer over arbitrary names.


class _Strict(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


_LABEL = r'[a-z_]+="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
_SAMPLE = re.compile(rf"[a-z_]+\{{{_LABEL}(?:,{_LABEL})*\}} -?[0-9.e+]+")
_XML10 = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_text = st.text(st.characters(exclude_categories=()), max_size=40)  # surrogates too


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(host=_text, names=st.lists(_text, min_size=1, max_size=3), detail=_text)
def test_every_writer_survives_arbitrary_names_and_its_output_parses_back(reports, host, names, detail):
    doc = copy.deepcopy(reports["fail"])
    doc["host"] = host
    doc["findings"][0]["names"] = names
    doc["dns_queries"] = names
    for c in doc["controls"]:
        c["detail"] = detail
        for i in c["items"]:
            if "names" in i:
                i["names"] = names
    # JSON keeps every name exactly.
    back = json.loads(render_json(doc))
    assert back["host"] == host and back["findings"][0]["names"] == names
    # JUnit: well-formed XML 1.0 that ElementTree parses.
    junit = render_junit(doc)
    assert not _XML10.search(junit)
    suite = ET.fromstring(junit.encode()).find("testsuite")
    assert suite.get("tests") == str(len(doc["controls"])) and suite.get("hostname") == visible(host)
    # HTML: parses, no control character reaches the page, no tag comes from the data.
    html = render_html(doc)
    p = _Strict()
    p.feed(html)
    p.close()
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", html)
    assert visible(host) in "".join(p.text) and visible(names[0]) in "".join(p.text)
    assert "script" not in p.tags and set(p.tags) <= {
        "html", "head", "meta", "title", "style", "body", "header", "h1", "p", "main", "section", "h2",
        "table", "tr", "th", "td", "b", "br", "span", "code",
    }  # fmt: skip
    # Prometheus: every line a comment or a well-formed sample.
    prom = render_prom(doc)
    for line in prom.splitlines():
        assert line.startswith("# ") or _SAMPLE.fullmatch(line), line
    label = re.search(r'^toolkit_audit_exit_code\{host="((?:[^"\\]|\\.)*)"\} 1$', prom, re.M).group(1)
    assert re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), label) == visible(host)
    # Terminal: renders, and nothing from the data becomes an escape sequence or markup.
    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=False, color_system=None)
    _summary(doc, console)
    out = buf.getvalue()
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", out)
    fleet = {
        "verdict": "FAIL",
        "counts": {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 0},
        "hosts": [
            {
                "host": host,
                "verdict": "FAIL",
                "egress_flows": 1,
                "failing_controls": [],
                "finished": detail,
                "problems": [detail],
                "report": "x",
            }
        ],
        "egress_names": {n: [host] for n in names},
    }
    buf = io.StringIO()
    _fleet_summary(fleet, Console(file=buf, width=200, force_terminal=False, color_system=None))
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", buf.getvalue())


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
    assert suite.get("hostname") == "ws\"\\x0a\\x00\\x1b[8m[/]"


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
