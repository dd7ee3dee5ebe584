"""Container mode under systemd: the vllm role's container units, exactly as rendered, started by
systemd 252 inside a privileged systemd container (the project's test image) with rootless podman
4.3 + runc installed in it, as a vllm system user without subordinate uids, with the role's
storage.conf.

It proves, for the units as a whole (not only their `podman run` words, which
tests/test_egress_container.py runs on this host): each unit becomes active (its ExecStartPost
waits for /health), /health answers on 127.0.0.1 with the --host/--port the unit passed after the
image, the listener and every process of the unit are the vllm uid, a second unit of the same user
starts beside the first, `systemd-analyze security` scores the installed unit at the figure
docs/roles.md records (or better), the send beyond loopback is refused (by IPAddressDeny, which
this privileged container's systemd enforces, and then by the guard's `meta skuid` rule alone,
after a control run without either sent), and stop/start/stop work, leaving nothing of the user.

Not exercised: the official vLLM image (no registry here: a static stand-in server is the image),
GPUs (`--device nvidia.com/gpu=all`, DevicePolicy=closed), the role's own install tasks (the test
lays out what install_container.yml and user.yml make).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, require, require_root
from egress_support import render_ruleset
from roles_molecule import IMAGE, require_podman_image
from test_egress_container import _storage_conf
from test_roles_render import CHAT_ARGS, _chat_plan, render_vllm_units

pytestmark = [pytest.mark.root, pytest.mark.podman]

# Measured with this test (docs/roles.md, the container unit table): it fails if the score regresses.
EXPOSURE_LIMIT = 1.8
STANDIN = "localhost/toolkit-vllm-standin:unit-test"
PEER = "198.51.100.2"  # in a network namespace the test makes inside the systemd container
KEY = "k-unit-test"

# The stand-in server, a static binary (the image holds nothing else): the server's --host/--port
# (the last occurrence wins, as with argparse), one UDP send beyond loopback at start, then every
# HTTP request answered "<uid> <send result> <key> <host>:<port>".
_STANDIN_C = r"""
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
static void term(int s) { (void)s; _exit(0); }
int main(int argc, char **argv) {
    const char *host = "", *key = getenv("VLLM_API_KEY");
    int port = 0;
    for (int i = 1; i + 1 < argc; i++) {
        if (!strcmp(argv[i], "--host")) host = argv[++i];
        else if (!strcmp(argv[i], "--port")) port = atoi(argv[++i]);
    }
    signal(SIGTERM, term); /* pid 1 of its namespace: without a handler SIGTERM is ignored */
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(9)};
    inet_pton(AF_INET, "PEER_ADDR", &peer.sin_addr);
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    char res[128];
    snprintf(res, sizeof res, "%s", sendto(u, "x", 1, 0, (void *)&peer, sizeof peer) == 1 ? "sent" : strerror(errno));
    for (char *c = res; *c; c++) if (*c == ' ') *c = '_';
    char body[512];
    snprintf(body, sizeof body, "%d %s %s %s:%d", (int)getuid(), res, key ? key : "None", host, port);
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &me.sin_addr) != 1) return 2;
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (void *)&me, sizeof me) || listen(s, 16)) return 3;
    for (;;) {
        int c = accept(s, 0, 0);
        char buf[4096];
        if (c < 0) continue;
        if (read(c, buf, sizeof buf) > 0)
            dprintf(c, "HTTP/1.0 200 OK\r\nContent-Length: %zu\r\n\r\n%s", strlen(body), body);
        close(c);
    }
}
""".replace("PEER_ADDR", PEER)

# podman 4.3 and runc from the host's apt cache when it has them (the host runs bookworm too; `dpkg
# --force-depends` skips only podman's network stack, which `--network host` does not use), else
# from the Debian registry.
_PODMAN_DEBS = (
    "podman conmon runc golang-github-containers-common golang-github-containers-image"
    " libgpgme11 libsubid4 libglib2.0-0"
)
_INSTALL_PODMAN = f"""
for i in $(seq 120); do
  case $(systemctl is-system-running 2>/dev/null) in running|degraded) break;; esac; sleep 0.5; done
set -- ; for p in {_PODMAN_DEBS}; do
  f=$(ls /var/cache/apt/archives/"$p"_*.deb 2>/dev/null | sort -V | tail -1); [ -n "$f" ] || {{ set -- ; break; }}
  set -- "$@" "$f"; done
if [ $# -eq 8 ]; then dpkg -i --force-depends "$@" >/tmp/apt.log 2>&1; command -v podman >/dev/null && exit 0; fi
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman runc \\
  >/tmp/apt.log 2>&1 || {{ tail -20 /tmp/apt.log; exit 1; }}
"""

_CONTAINERS_CONF = '[engine]\nruntime = "runc"\n[containers]\ndefault_ulimits = []\n'


def _podman(*args: str, check: bool = True, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=timeout, **kw)


@pytest.fixture
def host() -> Iterator[str]:
    """A privileged systemd container with podman, a vllm system user and the stand-in image in its storage."""
    require_root()
    require_podman_image()
    name = "tk-vllm-ctr-unit"
    _podman("rm", "-f", "-t", "0", name, check=False)
    ctx = Path(tempfile.mkdtemp(prefix="vllm-standin-", dir="/var/tmp"))
    # vllm's home (its rootless image storage) on the host's disk: overlay cannot stack on the
    # container's own overlay root.
    (ctx / "home").mkdir()
    try:
        _podman(
            "run", "-d", "--name", name, "--privileged", "--systemd=always",
            "-v", "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro",
            # apt takes the host's cached packages when they are the same version (the host runs bookworm too)
            "-v", "/var/cache/apt/archives:/var/cache/apt/archives:ro",
            "-v", f"{ctx / 'home'}:/var/lib/vllm",
            IMAGE,
        )  # fmt: skip
        inst = _podman("exec", name, "sh", "-c", _INSTALL_PODMAN, check=False, timeout=400)
        out = (inst.stdout + inst.stderr)[-1500:]
        require(inst.returncode == 0, f"needs podman's Debian packages in the container: {out}")
        setup = f"""set -e
printf '%s' '{_CONTAINERS_CONF}' > /etc/containers/containers.conf
groupadd --system vllm && useradd --system --gid vllm --home-dir /var/lib/vllm --shell /usr/sbin/nologin vllm
install -d -o vllm -g vllm -m 0750 /var/lib/vllm
install -d -o vllm -g vllm -m 0700 /var/lib/vllm/.config/containers
install -d -m 0755 /etc/vllm /var/lib/toolkit/hf /usr/local/libexec
install -m 0600 /dev/null /etc/vllm/api-key.env && echo VLLM_API_KEY={KEY} > /etc/vllm/api-key.env
ip netns add tk-peer && ip link add tk-v0 type veth peer name tk-v1 netns tk-peer
ip addr add 198.51.100.1/24 dev tk-v0 && ip link set tk-v0 up
ip -n tk-peer addr add {PEER}/24 dev tk-v1 && ip -n tk-peer link set tk-v1 up
"""
        _podman("exec", name, "sh", "-c", setup)
        conf = "/var/lib/vllm/.config/containers/storage.conf"
        _podman("exec", "-i", name, "sh", "-c", f"cat > {conf}", input=_storage_conf())
        _podman("exec", name, "chown", "-R", "vllm:vllm", "/var/lib/vllm")
        _podman("cp", str(REPO / "roles/vllm/files/vllm-wait-health"), f"{name}:/usr/local/libexec/vllm-wait-health")
        # The stand-in image, built in the container and imported into the vllm user's storage as
        # install_container.yml pulls the real one (private run dir, the pause process killed after).
        _podman("exec", "-i", name, "sh", "-c", "cat > /tmp/standin.c", input=_STANDIN_C)
        load = (
            "set -e; mkdir -p /tmp/rootfs; gcc -static -O2 -o /tmp/rootfs/standin /tmp/standin.c;"
            ' d=$(mktemp -d) && chown vllm: "$d" && tar -C /tmp/rootfs -c . | runuser -u vllm --'
            ' env XDG_RUNTIME_DIR="$d" HOME=/var/lib/vllm podman import -q'
            f" --change 'ENTRYPOINT [\"/standin\"]' - {STANDIN} >/dev/null; rc=$?;"
            ' [ -f "$d/libpod/tmp/pause.pid" ] && kill "$(cat "$d/libpod/tmp/pause.pid")"; rm -rf "$d"; exit $rc'
        )
        loaded = _podman("exec", name, "sh", "-c", load, check=False)
        assert loaded.returncode == 0, loaded.stderr[-2000:]
        yield name
    finally:
        _podman("rm", "-f", "-t", "0", name, check=False)
        subprocess.run(["rm", "-rf", str(ctx)], check=False)


def _sh(name: str, cmd: str, check: bool = True) -> str:
    return _podman("exec", name, "sh", "-c", cmd, check=check).stdout.strip()


def _start(name: str, unit: str = "vllm-chat") -> None:
    r = _podman("exec", name, "systemctl", "start", unit, check=False, timeout=200)
    state = _sh(name, f"systemctl is-active {unit}", check=False)
    log = _sh(name, f"journalctl -u {unit} --no-pager -n 40", check=False)
    assert r.returncode == 0 and state == "active", f"rc {r.returncode}, state {state}:\n{r.stderr}\n{log}"


def _stop(name: str, unit: str = "vllm-chat") -> None:
    _podman("exec", name, "systemctl", "stop", unit, timeout=120)
    state = _sh(name, f"systemctl is-active {unit}", check=False)
    log = _sh(name, f"journalctl -u {unit} --no-pager -n 30", check=False)
    assert state == "inactive", f"state {state}:\n{log}"


def _health(name: str) -> str:
    return _sh(name, "curl -sS --max-time 5 http://127.0.0.1:8000/health")


def test_container_unit_under_systemd_runs_as_vllm_serves_on_loopback_scores_and_the_guard_drops_its_egress(
    host: str, tmp_path: Path
) -> None:
    plan = _chat_plan()
    # A second server of the same user, started after the first (as a shared GPU orders them): its
    # podman must not need the first unit's user namespace.
    plan["services"]["autocomplete"] = {
        "server": "vllm",
        "port": 8001,
        "served_model_name": "autocomplete",
        "args": [*CHAT_ARGS[:-1], "8001"],
        "start_after": "chat",
    }
    units = render_vllm_units(tmp_path, plan, vllm_install_method="container", vllm_container_image=STANDIN)
    assert set(units) == {"vllm-chat", "vllm-autocomplete"}
    assert "User=vllm" in units["vllm-chat"].splitlines() and f" {STANDIN} " in units["vllm-chat"]
    for u in units:
        _podman("cp", str(tmp_path / f"{u}.service"), f"{host}:/etc/systemd/system/{u}.service")
    _sh(host, "systemctl daemon-reload")
    uid = int(_sh(host, "id -u vllm"))

    # As rendered, the unit's datagram beyond loopback is refused where systemd can enforce
    # IPAddressDeny=any: it attaches its BPF filter on a cgroup v2 hierarchy, which the privileged
    # container's systemd has (the host's unified one, hybrid mode) on this machine.
    v2 = _sh(host, "stat -fc %T /sys/fs/cgroup/unified 2>/dev/null || stat -fc %T /sys/fs/cgroup") == "cgroup2fs"
    _start(host)
    assert _health(host) == f"0 {'Operation_not_permitted' if v2 else 'sent'} {KEY} 127.0.0.1:8000"
    # The server is the vllm uid on the host (container root is its single mapping), listening on
    # loopback only; the unit's processes all run as vllm.
    ss = _sh(host, "ss -Hltne")
    assert [line.split()[3] for line in ss.splitlines()] == ["127.0.0.1:8000"], ss
    assert f"uid:{uid} " in ss, ss
    server = _sh(host, "ps -o uid= -C standin; ps -o uid= -C conmon")
    assert server.split() == [str(uid), str(uid)], server
    main_uid = _sh(host, "ps -o uid= -p $(systemctl show -P MainPID vllm-chat)")
    assert main_uid == str(uid), main_uid

    # systemd-analyze (the consumer's own scoring) on the installed, running unit.
    sec = _sh(host, "systemd-analyze security --no-pager vllm-chat.service")
    score = float(sec.split("Overall exposure level for vllm-chat.service: ")[1].split()[0])
    assert score <= EXPOSURE_LIMIT, sec

    _start(host, "vllm-autocomplete")
    got = _sh(host, "curl -sS --max-time 5 http://127.0.0.1:8001/health")
    assert got == f"0 {'Operation_not_permitted' if v2 else 'sent'} {KEY} 127.0.0.1:8001"
    ss = _sh(host, "ss -Hltn")
    assert sorted(line.split()[3] for line in ss.splitlines()) == ["127.0.0.1:8000", "127.0.0.1:8001"], ss
    _stop(host, "vllm-autocomplete")
    assert _health(host).endswith(" 127.0.0.1:8000")

    # The guard on its own: IPAddressDeny reset by a drop-in (it is not enforced on cgroup v1 hosts),
    # a control run sends, then the guard's skuid rule refuses the same send.
    _stop(host)
    drop_in = "/etc/systemd/system/vllm-chat.service.d"
    _sh(host, f"mkdir -p {drop_in} && printf '[Service]\\nIPAddressDeny=\\nIPAddressAllow=\\n' > {drop_in}/no-bpf.conf")
    _sh(host, "systemctl daemon-reload")
    _start(host)
    assert _health(host) == f"0 sent {KEY} 127.0.0.1:8000"
    # The guard, rendered by the egress_guard role for the vllm uid, loaded in this host's network.
    ruleset = render_ruleset([("vllm", uid)])
    _podman("exec", "-i", host, "sh", "-c", "cat > /tmp/guard.nft && nft -c -f /tmp/guard.nft && nft -f /tmp/guard.nft",
            input=ruleset)  # fmt: skip
    _stop(host)
    _start(host)
    assert _health(host) == f"0 Operation_not_permitted {KEY} 127.0.0.1:8000"
    counters = json.loads(_sh(host, f"nft -j list counter inet toolkit_egress_guard blocked_uid_{uid}"))
    (counter,) = [it["counter"] for it in counters["nftables"] if "counter" in it]
    assert counter["packets"] == 1, counter

    # Stopping (SIGTERM to podman run, KillMode=mixed) leaves nothing of the vllm user running.
    _stop(host)
    left = _sh(host, f"ps -o pid=,comm= -u {uid} || true")
    assert left == "", left
