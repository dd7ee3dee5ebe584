"""The sandbox workstation: a systemd podman container that stands in for a developer's machine.

It boots the cached test image with its own network namespace, so its services' 127.0.0.1 is its
own; the toolkit's bench and audit enter that namespace (nsenter) to measure and watch it exactly
as they would on a real workstation. The vLLM wheelhouse and the models come in read-only mounts,
so provisioning it needs no network. Ansible reaches it over SSH, as a real workstation is reached
(toolkit/sandbox/ssh.py): sshd on the sandbox's own 127.0.0.1, a pinned host key, a client key kept
in STATE.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from toolkit import files
from toolkit.errors import EnvironmentProblem
from toolkit.sandbox import ssh

NAME = "toolkit-sandbox"
IMAGE = "localhost/toolkit-systemd:current"
CACHE = Path(os.environ.get("TOOLKIT_CACHE", "/var/cache/toolkit"))
# host path (under the cache) -> path inside the sandbox
MOUNTS = {
    "vllm-wheelhouse": "/srv/wheelhouse",
    "tiny-model": "/srv/models/tiny",
    "minilm": "/srv/models/minilm",
    "continue-cli": "/opt/continue-cli",  # Continue's config schema validator (and cn)
}
NODE = "/usr/bin/node"  # the host's node runs the validator inside (both are Debian 12)
DEVELOPER = "dev"  # the developer account whose Continue gets configured
# The controller's side of the SSH reach-in (client key, known_hosts, the generated inventory): root's.
STATE = Path(os.environ.get("TOOLKIT_SANDBOX_STATE", "/var/lib/toolkit/sandbox"))


@dataclass
class Sandbox:
    name: str
    pid: int

    @property
    def netns(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    @property
    def root(self) -> Path:
        """The sandbox's file system as seen from the host."""
        return Path(f"/proc/{self.pid}/root")

    def api_key(self) -> str | None:
        """The vLLM API key the vllm role generated (root-only file inside the sandbox)."""
        try:
            text = (self.root / "etc" / "vllm" / "api-key.env").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("VLLM_API_KEY="):
                return line.split("=", 1)[1].strip().strip("'\"")
        return None

    def enter(self, argv: list[str]) -> list[str]:
        """argv run on the host but inside the sandbox's network namespace."""
        return ["nsenter", f"--net={self.netns}", "--", *argv]


def _podman(*args: str, timeout: int = 120, check: bool = True) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise EnvironmentProblem("podman is not installed (run `bash .ci/install` first)") from None
    if check and r.returncode != 0:
        msg = (r.stderr or r.stdout).strip().splitlines()
        raise EnvironmentProblem(f"podman {args[0]} failed: {msg[-1] if msg else r.returncode}")
    return r


def preflight() -> None:
    """Everything the sandbox needs, checked before anything starts: one line naming what is missing."""
    if os.geteuid() != 0:
        raise EnvironmentProblem("the sandbox needs root (podman system containers and nsenter)")
    for tool in ("podman", "nsenter", NODE):
        if not shutil.which(tool):
            raise EnvironmentProblem(f"{tool} is not installed (run `bash .ci/install` first)")
    if _podman("image", "exists", IMAGE, check=False).returncode != 0:
        raise EnvironmentProblem(f"image {IMAGE} is missing (run `bash .ci/install` first)")
    for src in MOUNTS:
        if not (CACHE / src / ".complete").exists():
            raise EnvironmentProblem(f"{CACHE / src} is missing or incomplete (run `bash .ci/install` first)")


def status(name: str = NAME) -> Sandbox | None:
    r = _podman("inspect", name, check=False)
    if r.returncode != 0:
        return None
    state = json.loads(r.stdout)[0]["State"]
    return Sandbox(name, int(state["Pid"])) if state.get("Running") else None


def up(name: str = NAME, recreate: bool = False) -> Sandbox:
    """Start the sandbox (or reuse the running one) and wait until its systemd is up."""
    preflight()
    if recreate:
        down(name)
    box = status(name)
    if box is None:
        _podman("rm", "-f", name, check=False)
        args = [
            "run",
            "-d",
            "--name",
            name,
            "--hostname",
            name,
            "--systemd=always",
            "--shm-size=2g",
            "--cap-add",
            "NET_ADMIN",
        ]
        for src, dst in MOUNTS.items():
            args += ["-v", f"{(CACHE / src).resolve()}:{dst}:ro"]
        args += ["-v", f"{NODE}:/usr/local/bin/node:ro"]
        _podman(*args, IMAGE)
        box = status(name)
        if box is None:
            raise EnvironmentProblem(f"sandbox {name} did not start (see `podman logs {name}`)")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        r = _podman("exec", name, "systemctl", "is-system-running", check=False)
        if r.stdout.strip() in ("running", "degraded"):
            # A workstation has a developer; the continue role configures that account.
            if _podman("exec", name, "id", DEVELOPER, check=False).returncode != 0:
                _podman("exec", name, "useradd", "--create-home", "--shell", "/bin/bash", DEVELOPER)
            return box
        time.sleep(1)
    raise EnvironmentProblem(f"systemd in sandbox {name} did not come up in 90 s")


def reach_over_ssh(source: Path, name: str = NAME) -> Path:
    """Start sshd in the running sandbox, pin its host key and write STATE/inventory.yml: the
    inventory `source` with the sandbox reached over SSH instead of the podman connection."""
    try:
        inventory = yaml.safe_load(source.read_text())
        host = inventory["all"]["hosts"][name]
        if not isinstance(host, dict):
            raise TypeError(f"its variables are {type(host).__name__}, not a mapping")
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise EnvironmentProblem(f"{source}: no host {name} under all.hosts ({e})") from None
    STATE.mkdir(parents=True, exist_ok=True)
    STATE.chmod(0o700)
    key = STATE / "ssh_ed25519"
    host_key = ssh.start_sshd(name, ssh.client_key(key))
    known_hosts = STATE / "known_hosts"
    known_hosts.write_text(f"{name} {host_key}\n")
    host.pop("ansible_connection", None)
    host.update(ssh.host_vars(name, key, known_hosts, STATE / "cp"))
    (STATE / "cp").mkdir(exist_ok=True)
    out = STATE / "inventory.yml"
    header = f"# Written by `toolkit sandbox up` from {source}: the same workstation, reached over SSH.\n"
    files.write_atomic(out, header + yaml.safe_dump(inventory, sort_keys=False), 0o600)
    return out


def down(name: str = NAME) -> bool:
    """Remove the sandbox; True when one existed."""
    ssh.close_masters(STATE / "cp")
    return _podman("rm", "-f", "-t", "5", name, check=False).returncode == 0 and status(name) is None
