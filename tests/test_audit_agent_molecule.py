"""The audit_agent role's molecule scenario on a real systemd container (podman): the toolkit
installed only from the controller's wheelhouse (pip --no-index, sha256 of every wheel checked on
the host, a tampered wheel refused), the hardened unit active, a window closed, the textfile
valid for promtool, and systemd restarting the agent after SIGKILL. Exact attribution inside the
container is reported as unavailable (see the scenario's molecule.yml); test_audit_agent*.py
prove it on the machine's namespaces."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
from conftest import require_root
from roles_molecule import ROLES, assert_scenario_passed, require_podman_image, run_molecule

from toolkit.audit.wheelhouse import build

pytestmark = [pytest.mark.molecule, pytest.mark.podman, pytest.mark.slow]


def test_audit_agent_scenario_installs_offline_runs_windows_and_restarts(tmp_path, monkeypatch):
    require_root()
    require_podman_image()
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian prometheus) not installed")
    build(tmp_path / "wheelhouse", sys.executable)
    monkeypatch.setenv("AUDIT_AGENT_WHEELHOUSE", str(tmp_path / "wheelhouse"))
    assert os.environ["AUDIT_AGENT_WHEELHOUSE"]
    assert_scenario_passed(run_molecule(ROLES / "audit_agent", timeout=1700))
