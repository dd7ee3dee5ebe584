"""Controls: stable IDs and severities, a registry other parts extend, and the run's verdict.

A control is a statement that holds or not on a host ("no packet beyond loopback"). Every check
produces ``Result`` records for control IDs; reports are keyed by ID so that hosts and runs can be
compared. Other parts of the toolkit add their own controls with ``register`` and their own checks
with ``register_check`` (the egress guard adds GUARD-00x this way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from toolkit.audit import EXIT_FINDING, EXIT_INCONCLUSIVE, EXIT_PASS

SEVERITIES = ("critical", "high", "medium", "low", "info")
# pass: holds; fail: does not hold; inconclusive: could not be decided (fails closed);
# skip: not applicable on this host; waived: failed but accepted by a valid waiver;
# info: reported for the record, never changes the verdict.
STATUSES = ("pass", "fail", "inconclusive", "skip", "waived", "info", "blocked")


@dataclass(frozen=True)
class Control:
    id: str
    title: str
    severity: str
    description: str = ""


@dataclass
class Result:
    """One control's outcome on one host; ``items`` are the individual findings behind it."""

    control: str
    status: str
    detail: str
    items: list[dict[str, Any]] = field(default_factory=list)
    waiver: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_REGISTRY: dict[str, Control] = {}
# A check takes the audit context (a dict: host name, options, paths) and returns results.
Check = Callable[[dict[str, Any]], Iterable[Result]]
_CHECKS: list[tuple[str, Check]] = []


def register(control: Control) -> Control:
    """Add a control; registering the same ID twice with different content is a programming error."""
    if control.severity not in SEVERITIES:
        raise ValueError(f"{control.id}: unknown severity {control.severity!r}")
    old = _REGISTRY.get(control.id)
    if old is not None and old != control:
        raise ValueError(f"control {control.id} is already registered differently")
    _REGISTRY[control.id] = control
    return control


def register_check(name: str, check: Check) -> None:
    """Add an extra check run by every audit (after the capture and the static checks)."""
    if all(n != name for n, _ in _CHECKS):
        _CHECKS.append((name, check))


def extra_checks() -> list[tuple[str, Check]]:
    return list(_CHECKS)


def get(control_id: str) -> Control:
    try:
        return _REGISTRY[control_id]
    except KeyError:
        raise KeyError(f"unknown control {control_id}") from None


def known() -> dict[str, Control]:
    return dict(sorted(_REGISTRY.items()))


for _c in (
    Control(
        "CAPTURE-001",
        "The capture saw everything it should have",
        "critical",
        "Capture started with privilege and libpcap, saw its own loopback probes at start and end, "
        "the kernel dropped no packet, and every interface that sent packets was seen sending.",
    ),
    Control(
        "EGRESS-001",
        "No packet beyond loopback (or the policy's allowed networks)",
        "critical",
        "Any IP packet with an end outside the allowed set is a finding, named by DNS, SNI or HTTP Host.",
    ),
    Control(
        "LINK-001",
        "Link-local protocol traffic (ARP, NDP, IGMP/MLD, DHCP) reported",
        "info",
        "Shown under its own heading: never dropped silently, never a pass by omission.",
    ),
    Control(
        "LISTEN-001",
        "No listener beyond loopback",
        "high",
        "TCP listening and bound UDP sockets from /proc/net/{tcp,tcp6,udp,udp6} on a non-loopback address.",
    ),
    Control(
        "CONFIG-001",
        "Continue talks only to local models",
        "high",
        "No Continue model with a non-local apiBase or a cloud provider.",
    ),
    Control(
        "TELEMETRY-001",
        "Continue anonymous telemetry off",
        "medium",
        "allowAnonymousTelemetry is false in the Continue config and sharedConfig of globalContext.json.",
    ),
    Control("TELEMETRY-002", "VS Code telemetry off", "medium", 'telemetry.telemetryLevel is "off".'),
    Control(
        "TELEMETRY-003",
        "vLLM units opt out of usage stats and the hub",
        "medium",
        "Every systemd unit that runs vLLM sets the opt-out variables in toolkit/data/audit_checks.yaml.",
    ),
    Control(
        "TELEMETRY-004",
        "Ollama units local-only and cloud off",
        "medium",
        "Every systemd unit that runs Ollama binds 127.0.0.1 and disables cloud models.",
    ),
):
    register(_c)


def verdict(results: Iterable[Result]) -> tuple[str, int]:
    """PASS, FAIL or INCONCLUSIVE and the exit code. A real finding outranks an incomplete
    capture (what was seen did leave); an incomplete capture outranks a pass (fail closed)."""
    results = list(results)
    failing = [r for r in results if r.status == "fail" and _REGISTRY.get(r.control, _INFO).severity != "info"]
    if failing:
        return "FAIL", EXIT_FINDING
    if any(r.status == "inconclusive" for r in results):
        return "INCONCLUSIVE", EXIT_INCONCLUSIVE
    return "PASS", EXIT_PASS


_INFO = Control("?", "?", "high")
