"""Helpers for the audit tests: two network namespaces joined by a veth pair, and the CLI.

"host" is the audited workstation, "peer" stands for the rest of the world: addresses from the
documentation ranges (198.51.100.0/24, 2001:db8:100::/64), all inside namespaces the test created.
Nothing is ever sent to an address outside them.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST_V4, PEER_V4 = "198.51.100.1", "198.51.100.2"
HOST_V6, PEER_V6 = "2001:db8:100::1", "2001:db8:100::2"


def sh(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


@dataclass
class NetPair:
    host: str
    peer: str

    def run(self, ns: str, *args: str, **kw) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *args, **kw)

    def popen(self, ns: str, *args: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", ns, *args], **kw)


def make_pair(tag: str) -> NetPair:
    """Create aud-<tag>-h and aud-<tag>-p joined by veth, v4 and v6, peer as default route."""
    short = secrets.token_hex(2)
    pair = NetPair(f"aud-{tag}-{short}-h", f"aud-{tag}-{short}-p")
    for ns in (pair.host, pair.peer):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    vh, vp = f"audh{short}", f"audp{short}"
    sh("ip", "link", "add", vh, "netns", pair.host, "type", "veth", "peer", "name", vp, "netns", pair.peer)
    for ns, dev, v4, v6 in ((pair.host, vh, HOST_V4, HOST_V6), (pair.peer, vp, PEER_V4, PEER_V6)):
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.accept_dad=0")
        sh("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
        sh("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
        sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", pair.host, "route", "add", "default", "via", PEER_V4)
    sh("ip", "-n", pair.host, "-6", "route", "add", "default", "via", PEER_V6)
    pair.veth_host = vh  # type: ignore[attr-defined]
    return pair


def drop_pair(pair: NetPair) -> None:
    for ns in (pair.host, pair.peer):
        sh("ip", "netns", "del", ns, check=False)
        etc = Path("/etc/netns") / ns
        if etc.is_dir():
            for f in etc.iterdir():
                f.unlink()
            etc.rmdir()


def toolkit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "toolkit", *args]


def run_toolkit(*args: str, ns: str | None = None, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
    cmd = toolkit_cmd(*args)
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})}
    )


def report_of(proc: subprocess.CompletedProcess) -> dict:
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON report (rc {proc.returncode}): {proc.stderr[-2000:]}") from None


def control(report: dict, cid: str) -> dict:
    return next(c for c in report["controls"] if c["id"] == cid)


# Static-check inputs that point at empty places, so a capture test judges only the capture.
def quiet_static(tmp: Path) -> list[str]:
    (tmp / "homes").mkdir(exist_ok=True)
    (tmp / "units").mkdir(exist_ok=True)
    return ["--home", str(tmp / "homes"), "--unit-dir", str(tmp / "units")]
