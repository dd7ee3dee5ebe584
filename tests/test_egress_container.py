"""Container mode under the guard: the unit runs podman rootless as the vllm user, so the server's
sockets carry the vllm uid, which the guard's `meta skuid` rule matches.

Host podman runs the exact `podman run` words the vllm role rendered into its unit (image and
command swapped), rootless as a throwaway vllm user with the unit's HOME, XDG_RUNTIME_DIR,
storage.conf (from install_container.yml), no_new_privs and an empty capability bounding set
(setpriv stands in for systemd's User=, NoNewPrivileges= and CapabilityBoundingSet=), inside the
network namespace of a workstation the test creates (the unit uses `--network host`; the namespace
stands in for the host's network so nothing real is touched). The server inside answers /health on
127.0.0.1 and the role's ExecStartPost wait sees it. Not exercised: the official vLLM image (no
registry here; the test image's python3 serves and sends instead), the rest of the unit's sandbox
under systemd (this host has no systemd as PID 1; docs/roles.md records that measurement), GPUs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO, require_root
from egress_support import PEER_ADDR, SERVICE_USERS, Pair, delete_pair, load, make_pair, render_ruleset, throwaway_users
from roles_molecule import IMAGE, require_podman_image
from test_roles_render import _chat_plan, exec_start, render_vllm_units, systemd_words

pytestmark = [pytest.mark.root, pytest.mark.podman]

HEALTH = "http://127.0.0.1:8000/health"

# Sends one UDP datagram beyond loopback, then serves its result (and its uid and the key it was
# given) as /health on 127.0.0.1:8000, the port the plan gives the chat server.
_SERVE = (
    "import http.server, os, signal, socket\n"
    # pid 1 of its namespace: without a handler SIGTERM (podman stop, the unit's stop) is ignored.
    "signal.signal(signal.SIGTERM, lambda *a: os._exit(0))\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "try:\n s.sendto(b'x', ('%s', 9)); res = 'sent'\n"
    "except OSError as e:\n res = e.strerror\n"
    "body = ('%%d %%s %%s' %% (os.getuid(), res, os.environ.get('VLLM_API_KEY'))).encode()\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    " def do_GET(self):\n"
    "  self.send_response(200); self.end_headers(); self.wfile.write(body)\n"
    "http.server.HTTPServer(('127.0.0.1', 8000), H).serve_forever()\n"
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


def _storage_conf() -> str:
    tasks = yaml.safe_load((REPO / "roles/vllm/tasks/install_container.yml").read_text())
    (task,) = [t for t in tasks if t.get("ansible.builtin.copy", {}).get("dest", "").endswith("storage.conf")]
    return task["ansible.builtin.copy"]["content"].replace("{{ ansible_managed }}", "test copy")


class Rootless:
    """The vllm user's rootless podman, as the unit runs it (no subordinate uids)."""

    def __init__(self, user: str, base: Path) -> None:
        self.user, self.home, self.run = user, base / "home", base / "run"
        for d in (self.home / ".config/containers", self.run):
            d.mkdir(parents=True)
        (self.home / ".config/containers/storage.conf").write_text(_storage_conf())
        subprocess.run(["chown", "-R", f"{user}:", str(self.home), str(self.run)], check=True)
        os.chmod(self.run, 0o700)

    def argv(self, ns: str, words: list[str], env: dict[str, str]) -> list[str]:
        runas = ["setpriv", "--reuid", self.user, "--regid", self.user, "--clear-groups", "--no-new-privs"]
        runas += ["--bounding-set", "-all", "--inh-caps", "-all"]
        base_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.home), "XDG_RUNTIME_DIR": str(self.run)}
        envv = ["env", "-i", *(f"{k}={v}" for k, v in {**base_env, **env}.items())]
        # `--ipc host` bind-mounts /dev/mqueue, which systemd mounts on a real host (and inside a
        # PrivateDevices= /dev); this machine has none, so a private mount namespace gets one.
        # (The empty /dev/mqueue directory, its standard mount point, is left in place.)
        mq = 'mkdir -p /dev/mqueue; mountpoint -q /dev/mqueue || mount -t mqueue mqueue /dev/mqueue; exec "$@"'
        # nsenter, not `ip netns exec`: that one remounts /sys, hiding the cgroup mounts runc needs.
        return [
            "nsenter",
            f"--net=/run/netns/{ns}",
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            mq,
            "sh",
            *runas,
            *envv,
            *words,
        ]

    def stop_pause(self) -> None:
        pid = self.run / "libpod/tmp/pause.pid"
        if pid.exists():
            subprocess.run(["kill", pid.read_text().strip()], check=False)


def test_container_mode_runs_rootless_as_the_vllm_uid_serves_on_loopback_and_the_guard_blocks_it(
    pair: Pair, tmp_path: Path
) -> None:
    base = Path(tempfile.mkdtemp(prefix="vllm-rootless-", dir="/var/tmp"))
    os.chmod(base, 0o711)
    server = None
    with throwaway_users(SERVICE_USERS) as uids:
        vllm_user = SERVICE_USERS[0]
        rl = Rootless(vllm_user, base)
        try:
            unit = render_vllm_units(
                tmp_path, _chat_plan(), vllm_install_method="container", vllm_user=vllm_user, vllm_group=vllm_user
            )["vllm-chat"]
            lines = unit.splitlines()
            for want in (f"User={vllm_user}", "NoNewPrivileges=yes", "CapabilityBoundingSet=", "RuntimeDirectory=vllm"):
                assert want in lines, want
            words = systemd_words(exec_start(unit))
            image_at = words.index("docker.io/vllm/vllm-openai:v0.32.0")
            assert words[:5] == ["/usr/bin/podman", "run", "--rm", "--replace", "--name"] and "--user" not in words
            assert words[image_at - 2 : image_at] == ["-v", "/var/lib/toolkit/hf:/hf:ro"]
            # The weights directory of the unit is the model_store role's; here an empty stand-in.
            hf = base / "hf"
            hf.mkdir()
            podman = [w.replace("/var/lib/toolkit/hf:", f"{hf}:") for w in words[:image_at]]

            load_img = subprocess.run(
                f"podman save {IMAGE} | " + shlex.join(rl.argv(pair.ws, ["podman", "load", "-q"], {})),
                shell=True,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert load_img.returncode == 0, load_img.stderr[-2000:]
            rl.stop_pause()

            env = {"VLLM_API_KEY": "k-test"}
            # Control: without the guard the rootless container reaches the peer.
            probe = podman[:5] + ["vllm-probe"] + podman[6:]
            sent = subprocess.run(
                rl.argv(
                    pair.ws,
                    [*probe, IMAGE, "/usr/bin/python3", "-c", (_SERVE.split("body =")[0] % PEER_ADDR) + "print(res)\n"],
                    env,
                ),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert sent.stdout.strip() == "sent", sent.stderr[-2000:]

            load(pair.ws, render_ruleset([(n, uids[n]) for n in SERVICE_USERS]), tmp_path)
            server = subprocess.Popen(
                rl.argv(pair.ws, [*podman, IMAGE, "/usr/bin/python3", "-c", _SERVE % PEER_ADDR], env),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            # The unit's ExecStartPost, run as the unit would (the vllm user, in the same network).
            wait = subprocess.run(
                rl.argv(
                    pair.ws, ["/usr/bin/python3", str(REPO / "roles/vllm/files/vllm-wait-health"), "8000", "60"], {}
                ),
                capture_output=True,
                text=True,
                timeout=90,
            )
            assert wait.returncode == 0, (wait.stderr, server.poll())
            got = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    pair.ws,
                    sys.executable,
                    "-c",
                    f"import urllib.request as u; print(u.urlopen({HEALTH!r}, timeout=5).read().decode())",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.strip()
            # Container root is the vllm uid on the host (the single mapping); its send was refused.
            assert got == "0 Operation not permitted k-test"
            ss = subprocess.run(["ip", "netns", "exec", pair.ws, "ss", "-Hltn"], capture_output=True, text=True).stdout
            assert [line.split()[3] for line in ss.splitlines()] == ["127.0.0.1:8000"], ss
            owner = subprocess.run(
                ["ip", "netns", "exec", pair.ws, "ss", "-Hltne", "sport", "= :8000"], capture_output=True, text=True
            ).stdout
            assert f"uid:{uids[vllm_user]} " in owner, owner
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
            assert counter["packets"] == 1, counter
        finally:
            subprocess.run(
                rl.argv(pair.ws, ["podman", "rm", "-f", "-t", "0", "vllm-chat", "vllm-probe"], {}),
                capture_output=True,
                text=True,
                timeout=120,
            )
            if server is not None:
                try:
                    server.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    server.kill()
            # Whatever podman left (conmon, the server) runs as the throwaway uid this test made.
            left = subprocess.run(["ps", "-o", "pid=", "-u", str(uids[vllm_user])], capture_output=True, text=True)
            for pid in left.stdout.split():
                subprocess.run(["kill", "-9", pid], check=False)
            rl.stop_pause()
            time.sleep(0.5)
            shutil.rmtree(base, ignore_errors=True)
