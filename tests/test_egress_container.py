"""Container mode under the guard: the unit's `podman run --user UID:GID` puts the server on the
vllm user's uid, which the guard's `meta skuid` rule matches.

The container is started by host podman with the exact `--user` value the vllm role rendered
into its unit, on the network namespace of a workstation the test creates (the unit uses
`--network host`; the namespace stands in for the host's network so nothing real is touched).
Not exercised: the official vLLM image (no registry here; the test image's python3 sends instead),
the unit itself under systemd (molecule covers units; this host has no systemd as PID 1), GPUs.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_root
from egress_support import PEER_ADDR, SERVICE_USERS, Pair, delete_pair, load, make_pair, render_ruleset, throwaway_users
from roles_molecule import IMAGE, require_podman_image
from test_roles_render import _chat_plan, exec_start, render_vllm_units

pytestmark = [pytest.mark.root, pytest.mark.podman]

_SEND = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "try:\n s.sendto(b'x', ('%s', 9)); print('sent')\n"
    "except OSError as e:\n print(e.strerror)"
)


@pytest.fixture
def pair() -> Iterator[Pair]:
    require_root()
    require_podman_image()
    p = make_pair()
    try:
        yield p
    finally:
        delete_pair(p)


def _podman_send(ws: str, user: str | None) -> str:
    cmd = ["podman", "run", "--rm", "--network", f"ns:/run/netns/{ws}"]
    if user:
        cmd += ["--user", user]
    cmd += [IMAGE, "/usr/bin/python3", "-c", _SEND % PEER_ADDR]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_container_mode_server_runs_as_the_vllm_uid_and_the_guard_blocks_it(pair: Pair, tmp_path: Path) -> None:
    with throwaway_users(SERVICE_USERS) as uids:
        vllm_user = SERVICE_USERS[0]
        gid = int(subprocess.run(["id", "-g", vllm_user], capture_output=True, text=True, check=True).stdout)
        getent = {vllm_user: ["x", str(uids[vllm_user]), str(gid), "", "/var/lib/vllm", "/usr/sbin/nologin"]}
        units = render_vllm_units(
            tmp_path,
            _chat_plan(),
            vllm_install_method="container",
            vllm_user=vllm_user,
            ansible_facts={"os_family": "Debian", "getent_passwd": getent},
        )
        m = re.search(r" --user (\S+) ", exec_start(units["vllm-chat"]))
        assert m and m.group(1) == f"{uids[vllm_user]}:{gid}", exec_start(units["vllm-chat"])

        # Without the guard the container reaches the peer; without --user it is root, whom the
        # service-users guard does not cover: the reason the unit pins the uid.
        assert _podman_send(pair.ws, m.group(1)) == "sent"
        load(pair.ws, render_ruleset([(n, uids[n]) for n in SERVICE_USERS]), tmp_path)
        assert _podman_send(pair.ws, None) == "sent"
        assert _podman_send(pair.ws, m.group(1)) == "Operation not permitted"
        counters = json.loads(
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    pair.ws,
                    "nft",
                    "-j",
                    "list",
                    "counter",
                    "inet",
                    "toolkit_egress_guard",
                    f"blocked_uid_{uids[vllm_user]}",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        (counter,) = [it["counter"] for it in counters["nftables"] if "counter" in it]
        assert counter["packets"] == 1
