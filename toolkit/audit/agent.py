"""The continuous audit: back-to-back capture windows, a report per window, a textfile after each.

Each window is one ``run_audit`` live capture of ``window`` seconds (kernel BPF filter, start and
end probes, drop and blind-interface checks: a window that could not see everything is
INCONCLUSIVE). After every window the agent writes, each atomically (temp file + rename):

* ``OUT/windows/<UTC time>.json`` and ``.junit.xml``, keeping the last ``keep`` windows;
* ``OUT/audit.json`` / ``audit.junit.xml``: the last window, where ``toolkit report`` and
  playbooks/audit.yml look;
* the node_exporter textfile: the window's verdict and findings by control (report_prom), plus
  the agent's own series that prometheus/rules/toolkit_audit.rules.yml judges: the time of the last
  complete window and the window length (staleness), windows by verdict, packets sent vs seen per
  interface, guard drops, flows by attribution method.

Between two windows the capture is closed and reopened (a few milliseconds, measured and reported
as ``toolkit_audit_agent_gap_seconds``); packets in that gap are not seen, but the kernel's
interface counters of the next window do not cover it either, so the gap is stated, not hidden.

Exact attribution (auditd.py) runs for the agent's whole life, so a flow is matched to the
connect() that caused it even when the process exited before the window closed.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from threading import Event
from typing import Any

from toolkit.audit.attribution import user_name
from toolkit.audit.report_json import render_json, write_atomic
from toolkit.audit.report_junit import render_junit
from toolkit.audit.report_prom import VERDICTS, _esc, render_prom
from toolkit.audit.run import AuditOptions, run_audit

TEXTFILE_NAME = "toolkit_audit.prom"


@dataclass
class AgentOptions:
    audit: AuditOptions
    out_dir: Path
    window: float = 300.0
    keep: int = 288  # a day of 5-minute windows
    textfile: Path | None = None
    windows: int | None = None  # stop after this many (tests, benchmarks); None: until stopped
    exact: bool = True  # audit-subsystem attribution
    audit_uids: tuple[int, ...] = ()
    netns: Path | None = None  # capture in this network namespace (audit records are read from ours)


@dataclass
class AgentState:
    windows: Counter = field(default_factory=Counter)  # by verdict
    inconclusive: int = 0
    last_complete: float | None = None
    gap: float = 0.0
    exact: str = "off"  # auditd | unavailable: REASON | off
    # With exact on: whether processes started before the agent's rules are audited too.
    older_processes: str | None = None
    used_serials: set[int] = field(default_factory=set)
    reports: list[Path] = field(default_factory=list)


def window_name(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def prune(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` windows (names sort by time)."""
    stamps = sorted({p.name.split(".json")[0].split(".junit.xml")[0] for p in directory.glob("*Z.*")})
    removed = []
    for stamp in stamps[: max(0, len(stamps) - keep)]:
        for suffix in (".json", ".junit.xml"):
            p = directory / f"{stamp}{suffix}"
            if p.exists():
                p.unlink()
                removed.append(p)
    return removed


def render_textfile(report: dict[str, Any], state: AgentState, window: float) -> str:
    """The window's report as report_prom renders it, plus the agent's series (pure)."""
    host = _esc(report["host"])
    lines = [render_prom(report).rstrip("\n")]
    lines += [
        "# HELP toolkit_audit_agent_last_complete_window_timestamp_seconds End of the last complete window "
        "(0: none yet).",
        "# TYPE toolkit_audit_agent_last_complete_window_timestamp_seconds gauge",
        f'toolkit_audit_agent_last_complete_window_timestamp_seconds{{host="{host}"}} {state.last_complete or 0:.3f}',
        "# HELP toolkit_audit_agent_window_seconds Length of one audit window.",
        "# TYPE toolkit_audit_agent_window_seconds gauge",
        f'toolkit_audit_agent_window_seconds{{host="{host}"}} {window:g}',
        "# HELP toolkit_audit_agent_gap_seconds Time between the last two windows when nothing was captured.",
        "# TYPE toolkit_audit_agent_gap_seconds gauge",
        f'toolkit_audit_agent_gap_seconds{{host="{host}"}} {state.gap:.6f}',
        "# HELP toolkit_audit_agent_windows_total Windows closed since the agent started, by verdict.",
        "# TYPE toolkit_audit_agent_windows_total counter",
    ]
    lines += [
        f'toolkit_audit_agent_windows_total{{host="{host}",verdict="{v.lower()}"}} {state.windows.get(v, 0)}'
        for v in VERDICTS
    ]
    lines += [
        "# HELP toolkit_audit_agent_windows_inconclusive_total Windows that could not prove what they saw.",
        "# TYPE toolkit_audit_agent_windows_inconclusive_total counter",
        f'toolkit_audit_agent_windows_inconclusive_total{{host="{host}"}} {state.inconclusive}',
    ]
    stats = report["capture"]["stats"]
    sent = stats.get("interfaces_sent_packets") or {}
    seen = stats.get("interfaces_seen_sending")
    lines += [
        "# HELP toolkit_audit_interface_sent_packets Packets each interface sent in the last window (kernel counters).",
        "# TYPE toolkit_audit_interface_sent_packets gauge",
    ]
    lines += [
        f'toolkit_audit_interface_sent_packets{{host="{host}",interface="{_esc(n)}"}} {v}'
        for n, v in sorted(sent.items())
    ]
    if seen is not None and report["policy"]["networks"] and _loopback_only(report):
        # Comparable only under a loopback-only policy, where every packet sent off lo is a candidate.
        lines += [
            "# HELP toolkit_audit_interface_seen_packets Packets the capture saw each interface send (last window).",
            "# TYPE toolkit_audit_interface_seen_packets gauge",
        ]
        lines += [
            f'toolkit_audit_interface_seen_packets{{host="{host}",interface="{_esc(n)}"}} {seen.get(n, 0)}'
            for n in sorted(sent)
        ]
    drops = _guard_drops(report)
    if drops:
        lines += [
            "# HELP toolkit_guard_dropped_packets_total Packets the egress guard's nftables counters dropped.",
            "# TYPE toolkit_guard_dropped_packets_total counter",
        ]
        lines += [f'toolkit_guard_dropped_packets_total{{host="{host}",counter="{_esc(c)}"}} {n}' for c, n in drops]
    attribution = report.get("attribution") or {}
    methods = attribution.get("methods")
    if methods is not None:
        lines += [
            "# HELP toolkit_audit_attributed_flows Egress flows of the last window by attribution method.",
            "# TYPE toolkit_audit_attributed_flows gauge",
        ]
        for m in sorted({"auditd", "proc-net+fd-scan", *methods}):
            lines.append(f'toolkit_audit_attributed_flows{{host="{host}",method="{_esc(m)}"}} {methods.get(m, 0)}')
        lines.append(
            f'toolkit_audit_attributed_flows{{host="{host}",method="none"}} {attribution.get("unattributed", 0)}'
        )
    return "\n".join(lines) + "\n"


def _loopback_only(report: dict[str, Any]) -> bool:
    return set(report["policy"]["networks"]) <= {"127.0.0.0/8", "::1/128"}


def _guard_drops(report: dict[str, Any]) -> list[tuple[str, int]]:
    out = {}
    for c in report["controls"]:
        if c["id"] == "GUARD-002":
            for item in c["items"]:
                if "counter" in item and "packets" in item:
                    out[item["counter"]] = int(item["packets"])
    return sorted(out.items())


def _attribute(report: dict[str, Any], source, state: AgentState, names) -> None:
    from toolkit.audit.auditd import attribute_findings, wait_for_records

    wait_for_records(source)
    lost = source.lost()
    counts = attribute_findings(
        report["findings"], source.snapshot(), state.used_serials, lambda uid: user_name(uid, names), max(lost, 0)
    )
    for c in report["controls"]:
        if c["id"] == "EGRESS-001" and c["status"] in ("fail", "waived"):
            c["items"] = report["findings"]
    proc_stats = report.get("attribution") or {}
    report["attribution"] = {
        **counts,
        "exact": state.exact,
        "older_processes": state.older_processes,
        "proc_scan": proc_stats,
    }


def run_agent(
    opts: AgentOptions,
    stop: Event | None = None,
    on_window: Callable[[dict[str, Any], AgentState], None] | None = None,
) -> AgentState:
    """Close windows until ``stop`` is set (or ``opts.windows`` were closed)."""
    stop = stop or Event()
    state = AgentState()
    windows_dir = opts.out_dir / "windows"
    windows_dir.mkdir(parents=True, exist_ok=True)
    source = None
    names = None
    if opts.exact:
        from toolkit.audit.auditd import AuditSource, AuditUnavailable

        try:
            source = AuditSource(opts.audit.policy, opts.audit_uids)
            source.start()
            state.exact = "auditd"
            state.older_processes = (
                "audited"
                if source.older_processes_audited
                else "not audited: the audit subsystem was first enabled after they started "
                "(boot with audit=1 to audit every process); their flows fall back to /proc"
            )
        except AuditUnavailable as err:
            source = None
            state.exact = f"unavailable: {err}"
    if opts.netns is not None:
        from toolkit.audit.auditd import enter_netns

        enter_netns(opts.netns)
    try:
        last_end = None
        n = 0
        while not stop.is_set() and (opts.windows is None or n < opts.windows):
            started = time.time()
            if last_end is not None:
                state.gap = started - last_end
            report = run_audit(dataclasses.replace(opts.audit, duration=opts.window), stop)
            stats = report["capture"]["stats"]
            complete = report["capture"]["available"] and not stop.is_set() and not stats.get("interrupted")
            last_end = time.time()
            if source is not None:
                _attribute(report, source, state, names)
            elif report.get("attribution") is not None:
                report["attribution"] = {**report["attribution"], "exact": state.exact}
            report["window"] = {"index": n, "seconds": opts.window, "complete": complete, "gap_before": state.gap}
            state.windows[report["verdict"]] += 1
            if report["verdict"] == "INCONCLUSIVE":
                state.inconclusive += 1
            if complete:
                state.last_complete = last_end
            stamp = window_name(started)
            for path, text in (
                (windows_dir / f"{stamp}.json", render_json(report)),
                (windows_dir / f"{stamp}.junit.xml", render_junit(report)),
                (opts.out_dir / "audit.json", render_json(report)),
                (opts.out_dir / "audit.junit.xml", render_junit(report)),
            ):
                write_atomic(path, text, 0o640)
            state.reports.append(windows_dir / f"{stamp}.json")
            prune(windows_dir, opts.keep)
            if opts.textfile is not None:
                write_atomic(opts.textfile, render_textfile(report, state, opts.window))
            if on_window is not None:
                on_window(report, state)
            n += 1
    finally:
        if source is not None:
            source.stop()
    return state


__all__ = ["AgentOptions", "AgentState", "run_agent", "render_textfile", "prune", "TEXTFILE_NAME"]
