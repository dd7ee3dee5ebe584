"""Helpers for the egress guard tests: render the role's own template, build namespaces, send.

The ruleset has one source, roles/egress_guard/templates/egress_guard.nft.j2. Ansible renders it in
the role; these helpers render the same file with plain jinja2 and the role's defaults, so the
kernel tests load exactly what the role would load.
"""

from __future__ import annotations

import contextlib
import pwd
import secrets
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

REPO = Path(__file__).resolve().parent.parent
ROLE = REPO / "roles" / "egress_guard"
TEMPLATE = "egress_guard.nft.j2"

# Addresses inside the namespaces the tests create (documentation ranges only).
WS_ADDR, PEER_ADDR = "198.51.100.1", "198.51.100.2"
WS_ADDR2, PEER_ADDR2 = "203.0.113.1", "203.0.113.2"

# The clients run as throwaway system users, who cannot read a venv or pyenv under /root:
# the distribution's interpreter is world-readable.
SYSTEM_PYTHON = "/usr/bin/python3"


def _safe_values() -> Any:
    """The collection's safe_values filter plugin, the code the roles validate with."""
    import importlib.util

    path = REPO / "plugins" / "filter" / "safe_values.py"
    spec = importlib.util.spec_from_file_location("safe_values", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


safe_values = _safe_values()


def role_defaults() -> dict[str, Any]:
    return yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())


def render_ruleset(uids: list[tuple[str, int]], **overrides: Any) -> str:
    """The role's template rendered with its defaults, the given (user, uid) pairs and overrides,
    with the same whitespace settings Ansible's template module uses (trim_blocks)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROLE / "templates"),
        trim_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    variables = role_defaults()
    variables.update(
        _egress_guard_uids=[{"name": n, "uid": u} for n, u in uids],
        _egress_guard_controller="",
    )
    variables.update(overrides)
    # What validate.yml sets from the inputs (the same filters; a hostile value raises here too).
    variables.setdefault("_egress_guard_allowlist", safe_values.nft_allowlist(variables["egress_guard_allowlist"]))
    variables.setdefault(
        "_egress_guard_sinkhole_addresses",
        [safe_values.safe_cidr(a) for a in variables["egress_guard_sinkhole_addresses"]],
    )
    return env.get_template(TEMPLATE).render(**variables)


def sh(*cmd: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, **kw)


def nsx(ns: str, *cmd: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *cmd, check=check, **kw)


@dataclass
class Pair:
    """Two namespaces joined by a veth: ``ws`` (the workstation) and ``peer`` (the outside)."""

    ws: str
    peer: str


def make_pair() -> Pair:
    tag = secrets.token_hex(3)
    pair = Pair(ws=f"egr-ws-{tag}", peer=f"egr-pe-{tag}")
    sh("ip", "netns", "add", pair.ws)
    sh("ip", "netns", "add", pair.peer)
    veth_ws, veth_peer = f"egrw{tag}", f"egrp{tag}"
    sh(
        "ip",
        "link",
        "add",
        veth_ws,
        "netns",
        pair.ws,
        "type",
        "veth",
        "peer",
        "name",
        veth_peer,
        "netns",
        pair.peer,
    )
    for ns, dev, a1, a2 in (
        (pair.ws, veth_ws, WS_ADDR, WS_ADDR2),
        (pair.peer, veth_peer, PEER_ADDR, PEER_ADDR2),
    ):
        nsx(ns, "ip", "addr", "add", f"{a1}/24", "dev", dev)
        nsx(ns, "ip", "addr", "add", f"{a2}/24", "dev", dev)
        nsx(ns, "ip", "link", "set", dev, "up")
        nsx(ns, "ip", "link", "set", "lo", "up")
    return pair


def delete_pair(pair: Pair) -> None:
    for ns in (pair.ws, pair.peer):
        sh("ip", "netns", "del", ns, check=False)


def load(ns: str, ruleset: str, tmp: Path) -> None:
    path = tmp / f"guard-{secrets.token_hex(3)}.nft"
    path.write_text(ruleset)
    nsx(ns, "nft", "-c", "-f", str(path))
    nsx(ns, "nft", "-f", str(path))


# A tiny client run as a given user inside the workstation namespace. It prints one word:
# "sent" / "connected", "EPERM" (the guard refused it), or the errno name of any other failure.
_CLIENT = textwrap.dedent(
    """
    import errno, socket, sys
    proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        if proto == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"egress-guard-test", (host, port))
            print("sent")
        else:
            s = socket.create_connection((host, port), timeout=3)
            print("connected")
    except OSError as err:
        print(errno.errorcode.get(err.errno, str(err)))
    """
)


def attempt(ns: str, user: str | None, proto: str, host: str, port: int) -> str:
    """Send from namespace ``ns`` as ``user`` (None: root); returns the client's one word."""
    cmd = ["ip", "netns", "exec", ns]
    if user:
        cmd += ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
    cmd += [SYSTEM_PYTHON, "-c", _CLIENT, proto, host, str(port)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20, env={"PATH": "/usr/sbin:/usr/bin"})
    assert not proc.stderr, proc.stderr
    return proc.stdout.strip()


def tcp_listener(ns: str, host: str, port: int) -> subprocess.Popen:
    """A TCP listener in ``ns`` that accepts forever (killed by the caller)."""
    code = (
        "import socket,sys\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(({host!r},{port})); s.listen(16); print('ready', flush=True)\n"
        "while True:\n  c,_=s.accept(); c.close()\n"
    )
    proc = subprocess.Popen(["ip", "netns", "exec", ns, SYSTEM_PYTHON, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


SERVICE_USERS = ("egress-t-vllm", "egress-t-ollama")
OTHER_USER = "egress-t-dev"


@contextlib.contextmanager
def throwaway_users(names: tuple[str, ...] = (*SERVICE_USERS, OTHER_USER)) -> Iterator[dict[str, int]]:
    """System users standing in for the vllm and ollama service users (and a developer);
    the ones this created are removed afterwards."""
    created = []
    try:
        for name in names:
            try:
                pwd.getpwnam(name)
            except KeyError:
                sh("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name)
                created.append(name)
        yield {name: pwd.getpwnam(name).pw_uid for name in names}
    finally:
        for name in created:
            sh("userdel", name, check=False)
