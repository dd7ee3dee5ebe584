"""``toolkit report DIR``: sum up the audit reports a fleet run brought back (one JSON per host).

A strict reader: a report is evidence only if it is whole and consistent. A file that is not a
toolkit audit report, a verdict that is not exactly PASS, FAIL or INCONCLUSIVE, a verdict or exit
code the report's own controls contradict, a PASS that lists egress (with EGRESS-001 not waived),
missing or mistyped keys: that host is INCONCLUSIVE, named with the reason, so the fleet can never
PASS on a report nobody can trust. Nothing in a report can make this raise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit.audit import EXIT_FINDING, EXIT_INCONCLUSIVE, EXIT_PASS, AuditUsageError
from toolkit.audit.controls import SEVERITIES, STATUSES

VERDICTS = ("PASS", "FAIL", "INCONCLUSIVE")
EXIT_OF = {"PASS": EXIT_PASS, "FAIL": EXIT_FINDING, "INCONCLUSIVE": EXIT_INCONCLUSIVE}


def load_reports(root: Path) -> list[dict[str, Any]]:
    """Every audit.json below root, parsed (or with ``_error`` when it cannot be), with ``_path``."""
    if not root.is_dir():
        raise AuditUsageError(f"{root}: not a directory")
    reports = []
    for path in sorted(root.rglob("audit.json")):
        entry: dict[str, Any]
        try:
            doc = json.loads(path.read_bytes())
            entry = {"doc": doc}
        except (OSError, ValueError, RecursionError) as err:
            entry = {"_error": f"cannot read: {str(err).splitlines()[0] if str(err) else type(err).__name__}"}
        entry["_path"] = str(path)
        reports.append(entry)
    if not reports:
        raise AuditUsageError(f"{root}: no audit.json found below it")
    return reports


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_report(doc: Any) -> list[str]:
    """Why this document cannot be taken at its word (empty: it can)."""
    if not isinstance(doc, dict):
        return ["not a JSON object"]
    if doc.get("tool") != "toolkit audit":
        return ["not a toolkit audit report (no tool: toolkit audit)"]
    problems = []
    if doc.get("schema") != 1 or not _int(doc.get("schema")):
        problems.append(f"unsupported schema {doc.get('schema')!r}")
    for key in ("host", "finished", "mode"):
        if not _str(doc.get(key)) or not doc.get(key):
            problems.append(f"{key} missing or not a string")
    verdict = doc.get("verdict")
    if verdict not in VERDICTS:
        problems.append(f"verdict {verdict!r} is not one of PASS, FAIL, INCONCLUSIVE")
    elif doc.get("exit_code") != EXIT_OF[verdict] or not _int(doc.get("exit_code")):
        problems.append(f"exit_code {doc.get('exit_code')!r} does not match verdict {verdict}")
    controls = doc.get("controls")
    good_controls = []
    if not isinstance(controls, list) or not controls:
        problems.append("controls missing or empty")
    else:
        for n, c in enumerate(controls):
            if not (
                isinstance(c, dict)
                and _str(c.get("id"))
                and c.get("status") in STATUSES
                and c.get("severity") in SEVERITIES
                and isinstance(c.get("items", []), list)
            ):
                problems.append(f"control {n + 1} malformed (id, status, severity, items)")
            else:
                good_controls.append(c)
    findings = doc.get("findings")
    if not isinstance(findings, list) or not all(
        isinstance(f, dict)
        and _str(f.get("remote_address"))
        and isinstance(f.get("names"), list)
        and all(_str(n) for n in f["names"])
        for f in findings
    ):
        problems.append("findings missing or malformed")
        findings = []
    by_id = {c["id"]: c for c in good_controls}
    egress = by_id.get("EGRESS-001")
    if egress is None:
        problems.append("no EGRESS-001 control")
    if verdict in VERDICTS and len(good_controls) == len(controls or []) and controls:
        implied = _implied_verdict(good_controls)
        if implied != verdict:
            problems.append(f"verdict {verdict} contradicts its controls (they say {implied})")
    if findings and verdict == "PASS" and (egress or {}).get("status") != "waived":
        problems.append(f"verdict PASS but {len(findings)} egress finding(s) listed and EGRESS-001 not waived")
    return problems


def _implied_verdict(controls: list[dict[str, Any]]) -> str:
    """controls.verdict over the report's own statuses and severities."""
    if any(c["status"] == "fail" and c["severity"] != "info" for c in controls):
        return "FAIL"
    if any(c["status"] == "inconclusive" for c in controls):
        return "INCONCLUSIVE"
    return "PASS"


def summarize(reports: list[dict[str, Any]]) -> dict[str, Any]:
    hosts = []
    by_control: dict[str, dict[str, int]] = {}
    names: dict[str, set[str]] = {}
    for entry in reports:
        path = entry["_path"]
        doc = entry.get("doc")
        problems = [entry["_error"]] if "_error" in entry else check_report(doc)
        ok_doc = doc if isinstance(doc, dict) else {}
        # The playbook fetches into <dir>/<host>/audit.json: that names a host whose report cannot.
        host = ok_doc.get("host") if _str(ok_doc.get("host")) and ok_doc.get("host") else Path(path).parent.name
        controls = [c for c in ok_doc.get("controls") or [] if isinstance(c, dict)] if not problems else []
        findings = ok_doc.get("findings") if not problems else []
        verdict = "INCONCLUSIVE" if problems else ok_doc["verdict"]
        hosts.append(
            {
                "host": host,
                "verdict": verdict,
                "finished": ok_doc.get("finished") if _str(ok_doc.get("finished")) else None,
                "mode": ok_doc.get("mode") if _str(ok_doc.get("mode")) else None,
                "egress_flows": len(findings),
                "failing_controls": [c["id"] for c in controls if c["status"] in ("fail", "inconclusive")],
                "problems": problems,
                "report": path,
            }
        )
        for c in controls:
            by_control.setdefault(c["id"], {}).setdefault(c["status"], 0)
            by_control[c["id"]][c["status"]] += 1
        for f in findings:
            for n in f["names"] or [f["remote_address"]]:
                names.setdefault(n, set()).add(host)
    seen: dict[str, list[dict[str, Any]]] = {}
    for h in hosts:
        seen.setdefault(h["host"], []).append(h)
    for host, same in seen.items():
        if len(same) > 1:  # two reports for one host: which one is the truth is unknown
            for h in same:
                others = [o["report"] for o in same if o is not h]
                h["problems"].append(f"host {host} also reported by {', '.join(others)}")
                if h["verdict"] != "FAIL":
                    h["verdict"] = "INCONCLUSIVE"
    verdicts = [h["verdict"] for h in hosts]
    overall = "FAIL" if "FAIL" in verdicts else "INCONCLUSIVE" if "INCONCLUSIVE" in verdicts else "PASS"
    return {
        "verdict": overall,
        "exit_code": EXIT_OF[overall],
        "hosts": sorted(hosts, key=lambda h: (h["host"], h["report"])),
        "counts": {v: verdicts.count(v) for v in VERDICTS},
        "controls": dict(sorted(by_control.items())),
        "egress_names": {n: sorted(h) for n, h in sorted(names.items())},
    }
