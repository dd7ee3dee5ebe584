"""JUnit XML: one test case per control, which is what CI systems list and count.

Every string goes through ``visible()`` first: XML 1.0 cannot carry most control characters at
all (not even as character references), so a name holding one would make the file unreadable to
every CI system; made visible, the file stays well-formed and the reader still sees the bytes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from toolkit.audit.escape import visible, visible_lines


def render_junit(report: dict[str, Any]) -> str:
    cases = report["controls"]
    suite = ET.Element(
        "testsuite",
        name="toolkit-audit",
        hostname=visible(report["host"]),
        timestamp=visible(report["started"]),
        tests=str(len(cases)),
        failures=str(sum(c["status"] == "fail" for c in cases)),
        errors=str(sum(c["status"] == "inconclusive" for c in cases)),
        skipped=str(sum(c["status"] in ("skip", "waived") for c in cases)),
    )
    props = ET.SubElement(suite, "properties")
    for key in ("verdict", "mode", "source"):
        ET.SubElement(props, "property", name=key, value=visible(report[key]))
    for c in cases:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"audit.{visible(report['host'])}",
            name=visible(f"{c['id']} {c['title']}"),
        )
        detail = visible(c["detail"])
        text = visible_lines(c["detail"]) + "".join(f"\n- {visible(_item(i))}" for i in c["items"][:200])
        if c["status"] == "fail":
            ET.SubElement(case, "failure", message=detail, type=visible(c["severity"])).text = text
        elif c["status"] == "inconclusive":
            ET.SubElement(case, "error", message=detail, type="inconclusive").text = text
        elif c["status"] in ("skip", "waived"):
            msg = c["detail"]
            if c.get("waiver"):
                w = c["waiver"]
                msg = f"waived until {w['expires']} by {w['owner']}: {w['justification']} ({c['detail']})"
            ET.SubElement(case, "skipped", message=visible(msg))
        else:
            ET.SubElement(case, "system-out").text = text
    root = ET.Element("testsuites", name="toolkit audit")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _item(i: Any) -> str:
    if not isinstance(i, dict):
        return str(i)
    if "remote_address" in i:
        names = ",".join(map(str, i.get("names") or [])) or "-"
        return (
            f"{i.get('protocol')} {i.get('local_address')}:{i.get('local_port')} -> "
            f"{i.get('remote_address')}:{i.get('remote_port')} "
            f"{i.get('direction')} names={names} packets={i.get('packets')}"
        )
    return ", ".join(f"{k}={v}" for k, v in i.items() if not isinstance(v, (dict, list)))
