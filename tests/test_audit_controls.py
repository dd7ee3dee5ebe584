"""Controls, verdict and the registry other parts extend (pure functions, recorded inputs)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from toolkit.audit import controls
from toolkit.audit.controls import Control, Result, verdict
from toolkit.audit.extensions import GUARD_CONTROLS, guard_results
from toolkit.audit.pcap import CaptureResult
from toolkit.audit.run import capture_results


def test_verdict_finding_outranks_inconclusive_which_outranks_pass_and_info_never_fails():
    assert verdict([Result("EGRESS-001", "pass", ""), Result("LINK-001", "info", "")]) == ("PASS", 0)
    assert verdict([Result("CAPTURE-001", "inconclusive", ""), Result("EGRESS-001", "pass", "")]) == (
        "INCONCLUSIVE",
        2,
    )
    assert verdict([Result("CAPTURE-001", "inconclusive", ""), Result("EGRESS-001", "fail", "")]) == (
        "FAIL",
        1,
    )
    assert verdict([Result("EGRESS-001", "waived", ""), Result("LISTEN-001", "skip", "")]) == ("PASS", 0)


def test_recorded_kernel_drops_make_capture_inconclusive_and_egress_unproven():
    cap = CaptureResult(
        "live", "any", "not (...)", problems=["the kernel dropped 12 packet(s)"], stats={"kernel_dropped": 12}
    )
    by = {r.control: r for r in capture_results(cap, None)}
    assert by["CAPTURE-001"].status == "inconclusive"
    assert by["EGRESS-001"].status == "inconclusive"
    assert verdict(by.values())[0] == "INCONCLUSIVE"
    unavailable = {r.control: r.status for r in capture_results(None, "libpcap is not available")}
    assert unavailable == {"CAPTURE-001": "inconclusive", "EGRESS-001": "inconclusive", "LINK-001": "info"}


def test_registry_refuses_conflicting_redefinition_and_unknown_severity(monkeypatch):
    # On a copy of the registry: the test control must not outlive the test (docs/audit.md's
    # table is generated from the registry, and its test runs in the same process).
    monkeypatch.setattr(controls, "_REGISTRY", dict(controls._REGISTRY))
    controls.register(Control("TEST-901", "a test control", "low"))
    controls.register(Control("TEST-901", "a test control", "low"))  # same content: fine
    with pytest.raises(ValueError, match="already registered"):
        controls.register(Control("TEST-901", "something else", "low"))
    with pytest.raises(ValueError, match="unknown severity"):
        controls.register(Control("TEST-902", "x", "urgent"))


@dataclass(frozen=True)
class _GuardFinding:
    """Stands in for toolkit.guard.GuardFinding (same fields), which lives on the egress_guard
    branch; what is not exercised here is reading the real nftables state."""

    control: str
    status: str
    title: str
    detail: str
    evidence: dict = field(default_factory=dict)


def test_guard_findings_map_to_audit_results_with_blocked_as_evidence_not_failure():
    results = guard_results(
        [
            _GuardFinding("GUARD-001", "pass", "t", "loaded", {"table": "inet x"}),
            _GuardFinding("GUARD-002", "blocked", "t", "3 attempts by vllm", {"uid": 998}),
            _GuardFinding("GUARD-003", "fail", "t", "1 name still resolves"),
        ]
    )
    assert [(r.control, r.status) for r in results] == [
        ("GUARD-001", "pass"),
        ("GUARD-002", "blocked"),
        ("GUARD-003", "fail"),
    ]
    assert {c.id for c in GUARD_CONTROLS} == {"GUARD-001", "GUARD-002", "GUARD-003"}
    from toolkit.audit import controls

    # A blocked attempt is evidence that the guard works: alone it never fails the audit.
    assert controls.verdict(results[:2]) == ("PASS", 0)


def test_interface_that_sent_packets_the_capture_never_saw_is_named_as_blind():
    from toolkit.audit.liveness import blind_interfaces

    sent = {"lo": 500, "eth0": 12, "wlan0": 3, "ifb0": 9, "veth1": 0}
    seen = {"lo": 0, "eth0": 12, "wlan0": 0, "ifb0": 0, "veth1": 0}
    assert blind_interfaces(sent, seen) == ["wlan0"]
