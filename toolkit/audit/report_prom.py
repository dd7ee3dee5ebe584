"""Prometheus textfile for node_exporter's textfile collector: the last run's state as gauges.

Write it with ``write_atomic`` into the collector directory (e.g. /var/lib/prometheus/node-exporter):
node_exporter reads every *.prom there, so a fleet's audit state lands on existing dashboards.
"""

from __future__ import annotations

from typing import Any

from toolkit.audit.escape import visible

VERDICTS = ("PASS", "FAIL", "INCONCLUSIVE")
STATUSES = ("pass", "fail", "inconclusive", "skip", "waived", "info", "blocked")


def _esc(value: Any) -> str:
    """A label value: made visible (no control characters in a dashboard), then quoted per the
    text exposition format (backslash, double quote and newline escaped)."""
    return visible(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_prom(report: dict[str, Any]) -> str:
    host = _esc(report["host"])
    lines = [
        "# HELP toolkit_audit_verdict Verdict of the last toolkit audit run (1 for the current verdict).",
        "# TYPE toolkit_audit_verdict gauge",
    ]
    lines += [
        f'toolkit_audit_verdict{{host="{host}",verdict="{v.lower()}"}} {int(report["verdict"] == v)}' for v in VERDICTS
    ]
    lines += [
        "# HELP toolkit_audit_exit_code Exit code of the last run (0 pass, 1 finding, 2 inconclusive).",
        "# TYPE toolkit_audit_exit_code gauge",
        f'toolkit_audit_exit_code{{host="{host}"}} {report["exit_code"]}',
        "# HELP toolkit_audit_last_run_timestamp_seconds When the last run finished (Unix time).",
        "# TYPE toolkit_audit_last_run_timestamp_seconds gauge",
        f'toolkit_audit_last_run_timestamp_seconds{{host="{host}"}} {report["timestamp"]:.3f}',
        "# HELP toolkit_audit_findings Findings per control in the last run (flows, listeners, units...).",
        "# TYPE toolkit_audit_findings gauge",
    ]
    for c in report["controls"]:
        n = len(c["items"]) if c["status"] in ("fail", "waived") else 0
        lines.append(
            f'toolkit_audit_findings{{host="{host}",control="{_esc(c["id"])}",severity="{_esc(c["severity"])}"}} {n}'
        )
    lines += [
        "# HELP toolkit_audit_control_status Status of each control in the last run (1: current status).",
        "# TYPE toolkit_audit_control_status gauge",
    ]
    for c in report["controls"]:
        for s in STATUSES:
            lines.append(
                f'toolkit_audit_control_status{{host="{host}",control="{_esc(c["id"])}",status="{s}"}} '
                f"{int(c['status'] == s)}"
            )
    stats = report["capture"]["stats"]
    lines += [
        "# HELP toolkit_audit_egress_flows Flows beyond the allowed set in the last run.",
        "# TYPE toolkit_audit_egress_flows gauge",
        f'toolkit_audit_egress_flows{{host="{host}"}} {len(report["findings"])}',
        "# HELP toolkit_audit_capture_dropped_packets Packets the kernel dropped during the last capture.",
        "# TYPE toolkit_audit_capture_dropped_packets gauge",
        f'toolkit_audit_capture_dropped_packets{{host="{host}"}} '
        f"{int(stats.get('kernel_dropped', 0) or 0) + int(stats.get('interface_dropped', 0) or 0)}",
    ]
    return "\n".join(lines) + "\n"
