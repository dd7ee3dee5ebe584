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
        code = "import json; from toolkit.audit.capture import interface_counters as c; print(json.dumps(c()))"
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
