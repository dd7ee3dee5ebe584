"""A fleet of real podman hosts (systemd containers from the cached test image) for provisioning tests."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

IMAGE = "localhost/toolkit-systemd:current"


def podman(*args: str, check: bool = True, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=timeout)


def image_available() -> bool:
    try:
        return podman("image", "exists", IMAGE, check=False).returncode == 0
    except FileNotFoundError:
        return False


@contextmanager
def podman_fleet(
    n: int, tmp: Path, prefix: str = "tk-fleet", extra_run_args: tuple[str, ...] = (), host_vars: dict | None = None
) -> Iterator[Path]:
    """Start n systemd containers and yield an inventory file that reaches them with the podman connection."""
    tag = uuid.uuid4().hex[:6]
    names = [f"{prefix}-{tag}-{i}" for i in range(n)]
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
        inv = {
            "all": {
                "children": {
                    "fleet": {
                        "hosts": {
                            name: {
                                "ansible_connection": "containers.podman.podman",
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
        for name in names:
            podman("rm", "-f", "-t", "0", name, check=False)
