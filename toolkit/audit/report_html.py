"""Self-contained HTML report: inline CSS only; no script, font, image or link to load."""

from __future__ import annotations

from html import escape
from typing import Any

from toolkit.audit.escape import visible

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;
color:#1d2330;background:#f5f6f8}
header{padding:20px 28px;color:#fff}
header.PASS{background:#1f7a3d}header.FAIL{background:#b3261e}
header.INCONCLUSIVE{background:#8a5a00}
header h1{margin:0 0 4px;font-size:26px}header p{margin:0;opacity:.9}
main{padding:16px 28px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;margin:0 0 16px;
padding:12px 16px}
h2{font-size:17px;margin:4px 0 10px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceef2;
vertical-align:top}th{background:#f0f2f5;font-weight:600}
.st{display:inline-block;min-width:88px;text-align:center;border-radius:4px;padding:1px 6px;
font-weight:600;color:#fff}
.pass{background:#1f7a3d}.fail{background:#b3261e}.inconclusive{background:#8a5a00}.skip{background:#7a8290}
.waived{background:#5b4bb7}.info{background:#2f6db5}.blocked{background:#17806d}
code{font:12px ui-monospace,monospace;background:#f0f2f5;padding:1px 3px;border-radius:3px;
word-break:break-all}
.muted{color:#6a7280}
td.addr code,td.t{white-space:nowrap}td.t{font-size:12px}
"""


def _e(v: Any) -> str:
    return escape(visible(v))


def render_html(report: dict[str, Any]) -> str:
    v = report["verdict"]
    stats = report["capture"]["stats"] or {}
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>toolkit audit: {_e(report['host'])} {_e(v)}</title><style>{CSS}</style></head><body>",
        f"<header class='{_e(v)}'><h1>{_e(v)} &mdash; {_e(report['host'])}</h1>",
        f"<p>{_e(report['mode'])} audit of {_e(report['source'])}, "
        f"{_e(report['started'])} to {_e(report['finished'])}"
        f" &middot; exit code {_e(report['exit_code'])}</p></header><main>",
        "<section><h2>Controls</h2><table><tr><th>Control</th><th>Severity</th><th>Status</th><th>Detail</th></tr>",
    ]
    for c in report["controls"]:
        detail = _e(c["detail"])
        if c.get("waiver"):
            w = c["waiver"]
            detail += (
                f"<br><span class='muted'>waived until {_e(w['expires'])} by {_e(w['owner'])}: "
                f"{_e(w['justification'])}</span>"
            )
        parts.append(
            f"<tr><td><b>{_e(c['id'])}</b><br>{_e(c['title'])}</td><td>{_e(c['severity'])}</td>"
            f"<td><span class='st {_e(c['status'])}'>{_e(c['status'])}</span></td><td>{detail}</td></tr>"
        )
    parts.append("</table></section>")
    findings = report["findings"]
    parts.append(f"<section><h2>Egress ({len(findings)} flow(s))</h2>")
    if findings:
        parts.append(
            "<table><tr><th>Proto</th><th>Local</th><th>Remote</th><th>Direction</th><th>Names</th>"
            "<th>Packets / bytes</th><th>First / last seen</th><th>Process</th></tr>"
        )
        for f in findings:
            proc = f.get("process") or {}
            who = (
                f"pid {_e(proc.get('pid'))} {_e(proc.get('user'))}<br><code>{_e(proc.get('cmdline'))}</code>"
                if proc.get("pid")
                else _e(proc.get("status", "n/a (offline)") if proc else "n/a")
            )
            parts.append(
                f"<tr><td>{_e(f['protocol'])}</td>"
                f"<td class='addr'><code>{_e(f['local_address'])}:{_e(f['local_port'])}</code></td>"
                f"<td class='addr'><code>{_e(f['remote_address'])}:{_e(f['remote_port'])}</code></td>"
                f"<td>{_e(f['direction'])}<br><span class='muted'>{_e(f['direction_evidence'])}</span></td>"
                f"<td>{'<br>'.join(_e(n) for n in f['names']) or '<span class=muted>none seen</span>'}</td>"
                f"<td>{_e(f['packets'])} / {_e(f['bytes'])}</td>"
                f"<td class='t'>{_e(f['first_seen'])}<br>{_e(f['last_seen'])}</td><td>{who}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append("<p>No packet beyond the allowed set.</p>")
    parts.append("</section>")
    ll = report["link_local"]
    parts.append(f"<section><h2>Link-local ({sum(x['packets'] for x in ll)} packet(s))</h2>")
    if ll:
        parts.append("<table><tr><th>Kind</th><th>Source</th><th>Destination</th><th>Packets</th></tr>")
        parts += [
            f"<tr><td>{_e(x['kind'])}</td><td><code>{_e(x['source'])}</code></td>"
            f"<td><code>{_e(x['destination'])}</code></td><td>{_e(x['packets'])}</td></tr>"
            for x in ll
        ]
        parts.append("</table>")
    else:
        parts.append("<p>None seen.</p>")
    parts.append("</section><section><h2>Capture</h2><table>")
    rows = [
        ("Filter", f"<code>{_e(report['capture']['bpf_filter'])}</code>"),
        ("Problems", "<br>".join(_e(p) for p in report["capture"]["problems"]) or "none"),
    ]
    rows += [(k, _e(v)) for k, v in stats.items()]
    if report.get("attribution"):
        rows += [("Attribution", _e(", ".join(f"{k}: {v}" for k, v in report["attribution"].items())))]
    rows += [("Policy", _e(", ".join(report["policy"]["networks"])))]
    parts += [f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows]
    parts.append("</table></section></main></body></html>\n")
    return "".join(parts)
