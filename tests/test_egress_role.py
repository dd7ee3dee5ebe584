"""The egress_guard role run by ansible-playbook inside a network namespace the test creates.

``ip netns exec`` puts the whole run (and every nft it calls) in a fresh namespace, and every path
the role writes is pointed into tmp_path, so the host's own ruleset and files are never touched.
This host has no systemd as PID 1: the restore timer, the boot unit and the units' IP filters are
skipped here (the role says so) and exercised by the molecule scenario instead.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_binary, require_root
from egress_support import (
    PEER_ADDR,
    PEER_ADDR2,
    REPO,
    SERVICE_USERS,
    attempt,
    delete_pair,
    make_pair,
    nsx,
    render_ruleset,
    tcp_listener,
    throwaway_users,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

PLAYBOOK = """
- name: Apply the egress guard
  hosts: localhost
  connection: local
  gather_facts: true
  roles:
    - role: egress_guard
"""


@pytest.fixture(scope="module")
def users() -> Iterator[dict[str, int]]:
    require_root()
    require_binary("nft")
    with throwaway_users(SERVICE_USERS) as uids:
        yield uids


@pytest.fixture
def ws() -> Iterator[str]:
    require_root()
    pair = make_pair()
    try:
        yield pair.ws
    finally:
        delete_pair(pair)


def _vars(tmp: Path, **extra: Any) -> dict[str, Any]:
    v = {
        "egress_guard_users": list(SERVICE_USERS),
        "egress_guard_config_dir": str(tmp / "etc"),
        "egress_guard_state_dir": str(tmp / "state"),
        "egress_guard_sinkhole_hosts_file": str(tmp / "hosts"),
    }
    v.update(extra)
    return v


def _play(
    ns: str, tmp: Path, variables: dict[str, Any], *args: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    (tmp / "play.yml").write_text(PLAYBOOK)
    (tmp / "vars.json").write_text(json.dumps(variables))
    bindir = Path(sys.executable).parent
    env = {
        "PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin",
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
        "HOME": str(tmp),
        **(extra_env or {}),
    }
    cmd = [
        "ip",
        "netns",
        "exec",
        ns,
        str(bindir / "ansible-playbook"),
        "-i",
        "localhost,",
        "-e",
        f"@{tmp / 'vars.json'}",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        str(tmp / "play.yml"),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp)


def _recap(out: str) -> dict[str, int]:
    m = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out)
    assert m, out[-2000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups()), strict=True))


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ({"cidr": "198.51.100.0/33", "proto": "tcp", "ports": [443]}, "prefix length out of range"),
        ({"cidr": "mirror.example", "proto": "tcp", "ports": [443]}, "a name, not an address"),
        ({"cidr": "198.51.100.7", "proto": "tcp", "ports": [70000]}, "port out of range"),
        ({"cidr": "198.51.100.7", "proto": "icmp"}, "protocol not offered"),
        ({"cidr": "192.0.2.0/24\n", "proto": "any"}, "trailing newline (a YAML block scalar)"),
        ({"cidr": "198.51.100.7", "proto": "tcp", "ports": [True]}, "a bool for a port"),
        ({"cidr": "198.51.100.7", "comment": 'x" accept'}, "a quote ending the nft string"),
        ({"cidr": "198.51.100.7", "comment": "x\u2028y"}, "a unicode line separator"),
    ],
)
def test_malformed_allowlist_entry_is_refused_before_anything_is_loaded(
    ws: str, users: dict[str, int], tmp_path: Path, entry: dict[str, Any], why: str
) -> None:
    proc = _play(ws, tmp_path, _vars(tmp_path, egress_guard_mode="host_wide", egress_guard_allowlist=[entry]))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, why
    assert "egress_guard_allowlist" in out or "allowlist" in out, out[-3000:]
    assert nsx(ws, "nft", "list", "tables").stdout.strip() == ""
    assert not (tmp_path / "etc" / "egress_guard.nft").exists()
    assert not (tmp_path / "hosts").exists()


def test_controller_address_with_a_trailing_newline_is_refused_before_anything_is_loaded(
    ws: str, users: dict[str, int], tmp_path: Path
) -> None:
    variables = _vars(tmp_path, egress_guard_mode="host_wide", egress_guard_controller_address="203.0.113.2\n")
    proc = _play(ws, tmp_path, variables)
    assert proc.returncode != 0
    assert "the controller address '203.0.113.2\\n' holds the control character '\\n'" in proc.stdout, proc.stdout[
        -3000:
    ]
    assert nsx(ws, "nft", "list", "tables").stdout.strip() == ""
    assert not (tmp_path / "etc" / "egress_guard.nft").exists()


def test_role_loads_the_template_rendering_blocks_service_users_and_is_idempotent(
    ws: str, users: dict[str, int], tmp_path: Path
) -> None:
    first = _play(ws, tmp_path, _vars(tmp_path))
    assert first.returncode == 0, first.stdout[-3000:]
    assert _recap(first.stdout)["changed"] > 0
    # One source: what Ansible rendered is what plain jinja2 renders from the same template.
    rendered = (tmp_path / "etc" / "egress_guard.nft").read_text()
    assert rendered == render_ruleset([(n, users[n]) for n in SERVICE_USERS])
    assert "systemd is not running here" in first.stdout + first.stderr

    assert attempt(ws, "egress-t-vllm", "udp", PEER_ADDR, 9) == "EPERM"
    hosts = (tmp_path / "hosts").read_text()
    assert "0.0.0.0 stats.vllm.ai" in hosts and ":: us.i.posthog.com" in hosts
    assert "pypi.org" not in hosts  # the developer still needs the package registry

    second = _play(ws, tmp_path, _vars(tmp_path))
    assert second.returncode == 0, second.stdout[-3000:]
    assert _recap(second.stdout)["changed"] == 0

    # Drift: someone deletes the table; the next run notices and loads it again.
    nsx(ws, "nft", "delete", "table", "inet", "toolkit_egress_guard")
    third = _play(ws, tmp_path, _vars(tmp_path))
    assert _recap(third.stdout)["changed"] > 0
    assert nsx(ws, "nft", "list", "table", "inet", "toolkit_egress_guard", check=False).returncode == 0

    gone = _play(ws, tmp_path, _vars(tmp_path, egress_guard_state="absent"))
    assert gone.returncode == 0, gone.stdout[-3000:]
    assert nsx(ws, "nft", "list", "tables").stdout.strip() == ""
    assert not (tmp_path / "etc").exists() and not (tmp_path / "state").exists()
    assert "egress_guard" not in (tmp_path / "hosts").read_text()
    assert attempt(ws, "egress-t-vllm", "udp", PEER_ADDR, 9) == "sent"


def test_check_mode_shows_the_ruleset_diff_and_loads_nothing(ws: str, users: dict[str, int], tmp_path: Path) -> None:
    proc = _play(ws, tmp_path, _vars(tmp_path), "--check", "--diff")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert f"+\t\tmeta skuid {users['egress-t-vllm']} counter" in proc.stdout
    assert "table inet toolkit_egress_guard would be loaded" in proc.stdout
    assert nsx(ws, "nft", "list", "tables").stdout.strip() == ""
    assert not (tmp_path / "etc" / "egress_guard.nft").exists()


def test_role_in_host_wide_mode_allows_the_allowlist_and_the_controller_it_detects(
    users: dict[str, int], tmp_path: Path
) -> None:
    pair = make_pair()
    servers = [
        tcp_listener(pair.peer, PEER_ADDR, 8080),
        tcp_listener(pair.peer, PEER_ADDR, 8081),
        tcp_listener(pair.peer, PEER_ADDR2, 8080),
    ]
    try:
        allow = [{"cidr": f"{PEER_ADDR}/32", "proto": "tcp", "ports": [8080], "comment": "model mirror"}]
        variables = _vars(
            tmp_path,
            egress_guard_mode="host_wide",
            egress_guard_allowlist=allow,
            egress_guard_users=[*SERVICE_USERS, "egress-t-nobody"],
            egress_guard_missing_users="skip",
        )
        # As if the controller connected over SSH from 203.0.113.2: the role must keep it reachable.
        proc = _play(pair.ws, tmp_path, variables, extra_env={"SSH_CLIENT": f"{PEER_ADDR2} 50000 22"})
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert "egress-t-nobody do not exist and are not guarded" in proc.stdout
        assert attempt(pair.ws, None, "tcp", PEER_ADDR, 8080) == "connected"  # allowlisted
        assert attempt(pair.ws, None, "tcp", PEER_ADDR2, 8080) == "connected"  # the controller
        assert attempt(pair.ws, None, "tcp", PEER_ADDR, 8081) == "ECONNREFUSED"  # neither
        assert attempt(pair.ws, "egress-t-vllm", "tcp", PEER_ADDR, 8080) == "ECONNREFUSED"
    finally:
        for s in servers:
            s.kill()
            s.wait()
        delete_pair(pair)
