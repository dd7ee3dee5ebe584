"""``toolkit report DIR``: sum up the audit reports a fleet run brought back (one JSON per host)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit.audit import EXIT_FINDING, EXIT_INCONCLUSIVE, EXIT_PASS, AuditUsageError


def load_reports(root: Path) -> list[dict[str, Any]]:
    if not root.is_dir():
        raise AuditUsageError(f"{root}: not a directory")
    reports, errors = [], []
    for path in sorted(root.rglob("audit.json")):
        try:
            doc = json.loads(path.read_text())
            if doc.get("tool") != "toolkit audit" or "verdict" not in doc:
                raise ValueError("not a toolkit audit report")
        except (OSError, ValueError) as err:
            errors.append(f"{path}: {err}")
            continue
        doc["_path"] = str(path)
        reports.append(doc)
    if errors:
        raise AuditUsageError("; ".join(errors))
    if not reports:
        raise AuditUsageError(f"{root}: no audit.json found below it")
    return reports


def summarize(reports: list[dict[str, Any]]) -> dict[str, Any]:
    hosts = []
    by_control: dict[str, dict[str, int]] = {}
    names: dict[str, set[str]] = {}
    for r in reports:
        failing = [c["id"] for c in r["controls"] if c["status"] in ("fail", "inconclusive")]
        hosts.append(
            {
                "host": r["host"],
                "verdict": r["verdict"],
                "finished": r["finished"],
                "mode": r["mode"],
                "egress_flows": len(r["findings"]),
                "failing_controls": failing,
                "report": r["_path"],
            }
        )
        for c in r["controls"]:
            by_control.setdefault(c["id"], {}).setdefault(c["status"], 0)
            by_control[c["id"]][c["status"]] += 1
        for f in r["findings"]:
            for n in f["names"] or [f["remote_address"]]:
                names.setdefault(n, set()).add(r["host"])
    verdicts = [h["verdict"] for h in hosts]
    overall = "FAIL" if "FAIL" in verdicts else "INCONCLUSIVE" if "INCONCLUSIVE" in verdicts else "PASS"
    return {
        "verdict": overall,
        "exit_code": {"PASS": EXIT_PASS, "FAIL": EXIT_FINDING, "INCONCLUSIVE": EXIT_INCONCLUSIVE}[overall],
        "hosts": sorted(hosts, key=lambda h: h["host"]),
        "counts": {v: verdicts.count(v) for v in ("PASS", "FAIL", "INCONCLUSIVE")},
        "controls": dict(sorted(by_control.items())),
        "egress_names": {n: sorted(h) for n, h in sorted(names.items())},
    }
