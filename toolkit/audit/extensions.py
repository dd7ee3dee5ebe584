"""Controls contributed by other parts of the toolkit, loaded only when asked for.

The egress guard (toolkit/guard.py, beside the egress_guard role) reads the nftables guard
back from the kernel and judges it as GUARD-001..003. ``toolkit audit --guard`` loads it here and
registers its controls and check, so the audit reports the guard beside what went over the wire.
It is opt-in: on a machine the guard was never provisioned on, GUARD-001 would fail by design.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.audit import controls
from toolkit.audit.controls import Control, Result

GUARD_CONTROLS = (
    Control(
        "GUARD-001",
        "Egress guard loaded and covering the AI service users",
        "high",
        "The nftables table of the egress_guard role is loaded, hooked on output, and covers every "
        "service user that exists here.",
    ),
    Control(
        "GUARD-002",
        "Egress attempts the guard blocked",
        "info",
        "What the guard dropped (counters and kernel log): the guard worked, shown apart from traffic that escaped.",
    ),
    Control(
        "GUARD-003",
        "Known phone-home names sinkholed",
        "medium",
        "Every phone-home name marked sinkhole in toolkit/data/phone_home.yaml resolves to nothing.",
    ),
)
# "blocked" means the guard stopped something before the wire: evidence that it works, never a
# failure, and reported apart from what escaped (EGRESS-001).
_STATUS = {"pass": "pass", "fail": "fail", "skip": "skip", "blocked": "blocked"}


def guard_results(findings: list[Any]) -> list[Result]:
    """GuardFinding records (control, status, title, detail, evidence) as audit results (pure)."""
    out: list[Result] = []
    for f in findings:
        status = _STATUS.get(f.status, "inconclusive")
        out.append(Result(f.control, status, f.detail, [f.evidence] if f.evidence else []))
    return out


def enable_guard(users: tuple[str, ...] = (), root: Path | None = None) -> None:
    """Register GUARD-00x and the check that reads the guard (toolkit.guard) from this machine's kernel.

    ``root`` other than / is a container's file system: its users and hosts file are judged."""
    from toolkit import guard

    for c in GUARD_CONTROLS:
        controls.register(c)
    kwargs: dict[str, Any] = {"users": users} if users else {}
    if root is not None and root != Path("/"):
        kwargs["root"] = root

    def check(context: dict[str, Any]) -> list[Result]:
        if context["mode"] != "live":
            return [
                Result(c.id, "skip", "offline audit: the guard is this machine's, not the capture's")
                for c in GUARD_CONTROLS
            ]
        return guard_results(guard.guard_findings(guard.collect_guard_state(**kwargs)))

    controls.register_check("egress_guard", check)
