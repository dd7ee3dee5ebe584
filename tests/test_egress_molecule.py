"""The egress_guard molecule scenario: the role in a systemd container (lead's test image).

It verifies the loaded ruleset (`nft -j list ruleset`), a send as the vllm user refused with EPERM
and counted while root still sends (into a veth that stays inside the container), the restore
timer firing when a load is not confirmed, the boot unit reloading the guard, idempotence and
removal. The scenario's own files live in roles/egress_guard/molecule/default/.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, require, require_binary, require_root

pytestmark = [pytest.mark.molecule, pytest.mark.podman, pytest.mark.root, pytest.mark.slow]


def test_molecule_default_scenario_passes() -> None:
    require_root()
    require_binary("podman")
    image = subprocess.run(["podman", "image", "exists", "localhost/toolkit-systemd:current"], check=False)
    require(image.returncode == 0, "needs the test image localhost/toolkit-systemd:current")
    bindir = Path(sys.executable).parent
    molecule = bindir / "molecule"
    require(molecule.exists(), "needs molecule in the venv")
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", ANSIBLE_NOCOLOR="1", NO_COLOR="1")
    proc = subprocess.run(
        [str(molecule), "test"],
        cwd=REPO / "roles" / "egress_guard",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
