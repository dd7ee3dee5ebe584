"""Running a molecule scenario from pytest: the right directory, the venv's tools, a readable failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import CACHE, REPO, require, require_binary

IMAGE = "localhost/toolkit-systemd:current"


def require_podman_image() -> None:
    require_binary("podman")
    ok = subprocess.run(["podman", "image", "exists", IMAGE], capture_output=True).returncode == 0
    require(ok, f"needs the test image {IMAGE} (.ci/install.d/20-test-image.sh)")


def require_cached(*names: str) -> None:
    for name in names:
        require((CACHE / name / ".complete").exists() or (CACHE / name).is_dir(), f"needs {CACHE / name} (.ci/install)")


def run_molecule(project: Path, scenario: str = "default", timeout: int = 1500) -> subprocess.CompletedProcess:
    """`molecule test -s SCENARIO` from PROJECT, with this interpreter's venv first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TOOLKIT_CACHE", str(CACHE))
    env.pop("ANSIBLE_CONFIG", None)  # molecule builds its own; the repo's would point inventory at localhost
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["NO_COLOR"] = "1"
    return subprocess.run(
        ["molecule", "test", "-s", scenario],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_scenario_passed(result: subprocess.CompletedProcess) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"molecule failed (rc {result.returncode}):\n{out[-6000:]}"


ROLES = REPO / "roles"
