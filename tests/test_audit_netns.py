"""The audit entered into another network namespace with nsenter (as `toolkit sandbox` does):
unlike `ip netns exec`, nsenter leaves /sys as it was, so the audit must read its interface
counters from /proc/net/dev, which follows the namespace."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from conftest import REPO, require_binary, require_root

pytestmark = [pytest.mark.root]


def test_interface_counters_under_nsenter_are_the_namespaces_not_the_hosts():
    require_root()
    require_binary("nsenter")
    name = f"aud-ns-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"], check=True
        )
        code = "import json; from toolkit.audit.liveness import interface_counters as c; print(json.dumps(c()))"
        r = subprocess.run(
            ["nsenter", f"--net=/run/netns/{name}", "--", sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        )
        assert sorted(json.loads(r.stdout)) == ["lo", "probe0", "probe1"]
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_sent_vs_seen_flags_every_gap_beyond_the_tolerance_and_every_interface_it_cannot_count():
    """Pure: counters at the start and end, the rtnetlink record, and what the capture saw."""
    from toolkit.audit.liveness import LinkWatch, sent_vs_seen

    start = {
        "lo": {"ifindex": 1, "tx_packets": 10},
        "eth0": {"ifindex": 2, "tx_packets": 100},
        "wg0": {"ifindex": 3, "tx_packets": 5},
        "gone0": {"ifindex": 4, "tx_packets": 7},
    }
    end = {
        "lo": {"ifindex": 1, "tx_packets": 900},
        "eth0": {"ifindex": 2, "tx_packets": 153},
        "wg0": {"ifindex": 3, "tx_packets": 9},
        "new0": {"ifindex": 9, "tx_packets": 30},
    }
    watch = LinkWatch.__new__(LinkWatch)
    watch.appeared, watch.vanished = {9: "new0", 10: "brief0"}, {10: ("brief0", 12)}
    seen = {2: 3, 3: 4, 9: 30, 10: 0}
    rows = {r["interface"]: r for r in sent_vs_seen(start, end, watch, seen)}
    got = {n: (r["sent"], r["seen"], r["appeared"], r["vanished"], r["blind"]) for n, r in rows.items()}
    assert got == {
        "lo": (890, 0, False, False, False),  # allowed traffic only: never compared
        "eth0": (53, 3, False, False, True),  # the raw-socket case: 3 seen of 53 sent
        "wg0": (4, 4, False, False, False),
        "gone0": (None, 0, False, True, True),  # vanished, its last counters never read
        "new0": (30, 30, True, False, False),
        "brief0": (12, 0, True, True, True),  # made and deleted between two reads
    }
    # Without a per-interface count (not SLL2, not a single Ethernet interface): every sender is blind.
    assert [r["interface"] for r in sent_vs_seen(start, end, None, None) if r["blind"]] == [
        "eth0",
        "wg0",
        "gone0",
        "new0",
    ]
