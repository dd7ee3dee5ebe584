"""One audit run: capture (or read), static checks, extra registered checks, waivers, verdict.

Returns the report document every renderer (JSON, JUnit, Prometheus, HTML, terminal) works from.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from threading import Event
from typing import Any

# continue_checks and model_checks register the CONTINUE-00x and MODEL-00x controls.
from toolkit.audit import continue_checks, controls, model_checks  # noqa: F401
from toolkit.audit.controls import Result
from toolkit.audit.live import live_capture
from toolkit.audit.pcap import CaptureResult, CaptureUnavailable, offline_capture
from toolkit.audit.policy import Policy
from toolkit.audit.static_checks import StaticInputs, run_static_checks
from toolkit.audit.waivers import Waiver, apply_waivers
from toolkit.passwd import read_passwd

continue_checks.enable()  # CONTINUE-00x: Continue's drift from what the continue role writes

SCHEMA = 1


@dataclass
class AuditOptions:
    policy: Policy
    pcap: Path | None = None
    duration: float | None = 30.0
    interface: str = "any"
    static: bool = True
    static_inputs: StaticInputs = field(default_factory=StaticInputs)
    waivers: list[Waiver] = field(default_factory=list)
    host: str = field(default_factory=socket.gethostname)
    buffer_kib: int = 32768
    attribute: bool = True
    ready_file: Path | None = None


def _user_names(root: Path) -> dict[int, str] | None:
    """uid -> name of the audited root's own users; None for this machine (its NSS is asked)."""
    if root == Path("/"):
        return None
    # reversed: where names share a uid, the first one listed wins, as getpwuid answers.
    return {uid: name for name, uid in reversed(read_passwd(root).items())}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def capture_results(cap: CaptureResult | None, unavailable: str | None) -> list[Result]:
    """CAPTURE-001, EGRESS-001 and LINK-001 from what the capture saw (pure)."""
    if cap is None:
        reason = unavailable or "no capture"
        return [
            Result("CAPTURE-001", "inconclusive", reason),
            Result("EGRESS-001", "inconclusive", f"nothing captured: {reason}"),
            Result("LINK-001", "info", "nothing captured"),
        ]
    out = []
    if cap.problems:
        out.append(Result("CAPTURE-001", "inconclusive", "; ".join(cap.problems)))
    else:
        s = cap.stats
        detail = (
            (
                f"live on {s.get('interface')} for {s.get('seconds')} s, probes seen {s.get('probes_seen')}, "
                f"kernel drops {s.get('kernel_dropped', 0)}"
            )
            if cap.mode == "live"
            else (f"read {cap.source}: {s.get('candidate_packets')} candidate packet(s)")
        )
        out.append(Result("CAPTURE-001", "pass", detail))
    flows = [f.to_dict() for f in cap.flows]
    if flows:
        named = sorted({n for f in cap.flows for n in f.names})
        detail = f"{len(flows)} flow(s) beyond the allowed set"
        if named:
            detail += f"; names: {', '.join(named[:8])}" + (" ..." if len(named) > 8 else "")
        out.append(Result("EGRESS-001", "fail", detail, flows))
    elif cap.problems:
        out.append(Result("EGRESS-001", "inconclusive", "none seen, but the capture was incomplete"))
    else:
        out.append(Result("EGRESS-001", "pass", "no packet beyond the allowed set"))
    total = sum(x["packets"] for x in cap.link_local)
    kinds = sorted({x["kind"] for x in cap.link_local})
    out.append(
        Result(
            "LINK-001",
            "info",
            f"{total} link-local packet(s): {', '.join(kinds)}" if total else "no link-local packet",
            cap.link_local,
        )
    )
    return out


def run_audit(opts: AuditOptions, stop: Event | None = None, progress=None) -> dict[str, Any]:
    started = time.time()
    cap: CaptureResult | None = None
    unavailable = None
    try:
        if opts.pcap is not None:
            cap = offline_capture(opts.pcap, opts.policy)
        else:

            def on_live() -> None:
                if opts.ready_file is not None:
                    opts.ready_file.write_text(f"{os.getpid()}\n")

            cap = live_capture(
                opts.policy,
                opts.duration,
                opts.interface,
                stop,
                opts.buffer_kib,
                progress,
                attribute=opts.attribute,
                on_live=on_live,
                user_names=_user_names(opts.static_inputs.root),
            )
    except CaptureUnavailable as err:
        unavailable = str(err)
    results = capture_results(cap, unavailable)
    if opts.static:
        results += run_static_checks(opts.static_inputs)
    context = {"host": opts.host, "mode": "offline" if opts.pcap else "live", "options": opts}
    for name, check in controls.extra_checks():
        try:
            results += list(check(context))
        except Exception as err:  # a broken plug-in check must not hide the rest of the audit
            results.append(Result(name, "inconclusive", f"check {name} failed: {err}"))
    apply_waivers(results, opts.waivers, opts.host)
    verdict, code = controls.verdict(results)
    reg = controls.known()
    control_docs = []
    for r in results:
        c = reg.get(r.control)
        control_docs.append(
            {
                "id": r.control,
                "title": c.title if c else r.control,
                "severity": c.severity if c else "high",
                "status": r.status,
                "detail": r.detail,
                "items": r.items,
                "waiver": r.waiver,
            }
        )
    return {
        "schema": SCHEMA,
        "tool": "toolkit audit",
        "host": opts.host,
        "started": _iso(started),
        "finished": _iso(time.time()),
        "timestamp": time.time(),
        "mode": "offline" if opts.pcap else "live",
        "source": str(opts.pcap) if opts.pcap else opts.interface,
        "verdict": verdict,
        "exit_code": code,
        "policy": opts.policy.to_dict(),
        "capture": {
            "available": cap is not None,
            "unavailable_reason": unavailable,
            "bpf_filter": cap.bpf_filter if cap else None,
            "stats": cap.stats if cap else {},
            "problems": cap.problems if cap else [unavailable],
        },
        "controls": control_docs,
        "findings": [f.to_dict() for f in cap.flows] if cap else [],
        "link_local": cap.link_local if cap else [],
        "dns_queries": cap.dns_queries if cap else [],
        "attribution": cap.attribution if cap else None,
        "waivers": [w.to_dict() for w in opts.waivers],
    }


__all__ = ["AuditOptions", "run_audit", "capture_results"]
