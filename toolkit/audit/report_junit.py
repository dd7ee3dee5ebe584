"""JUnit XML: one test case per control, which is what CI systems list and count."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any


def render_junit(report: dict[str, Any]) -> str:
    cases = report["controls"]
    suite = ET.Element(
        "testsuite",
        name="toolkit-audit",
        hostname=report["host"],
        timestamp=report["started"],
        tests=str(len(cases)),
        failures=str(sum(c["status"] == "fail" for c in cases)),
        errors=str(sum(c["status"] == "inconclusive" for c in cases)),
        skipped=str(sum(c["status"] in ("skip", "waived") for c in cases)),
    )
    props = ET.SubElement(suite, "properties")
    for key in ("verdict", "mode", "source"):
        ET.SubElement(props, "property", name=key, value=str(report[key]))
    for c in cases:
        case = ET.SubElement(suite, "testcase", classname=f"audit.{report['host']}", name=f"{c['id']} {c['title']}")
        text = c["detail"] + "".join(f"\n- {_item(i)}" for i in c["items"][:200])
        if c["status"] == "fail":
            ET.SubElement(case, "failure", message=c["detail"], type=c["severity"]).text = text
        elif c["status"] == "inconclusive":
            ET.SubElement(case, "error", message=c["detail"], type="inconclusive").text = text
        elif c["status"] in ("skip", "waived"):
            msg = c["detail"]
            if c["waiver"]:
                w = c["waiver"]
                msg = f"waived until {w['expires']} by {w['owner']}: {w['justification']} ({c['detail']})"
            ET.SubElement(case, "skipped", message=msg)
        else:
            ET.SubElement(case, "system-out").text = text
    root = ET.Element("testsuites", name="toolkit audit")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _item(i: dict[str, Any]) -> str:
    if "remote_address" in i:
        names = ",".join(i.get("names") or []) or "-"
        return (
            f"{i['protocol']} {i['local_address']}:{i['local_port']} -> "
            f"{i['remote_address']}:{i['remote_port']} "
            f"{i['direction']} names={names} packets={i['packets']}"
        )
    return ", ".join(f"{k}={v}" for k, v in i.items() if not isinstance(v, (dict, list)))
