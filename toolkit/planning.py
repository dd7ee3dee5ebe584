"""Planning for the CLI: loads the tier table and inventory overrides, then calls the shared planner."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import yaml

from toolkit.errors import EnvironmentProblem, UsageError
from toolkit.module_utils.gpu_plan import PlanError, UnsupportedGPU, check_gpus, make_plan

TIERS_FILE = Path(str(resources.files("toolkit") / "data" / "tiers.yaml"))


def load_tiers(path: Path = TIERS_FILE) -> dict:
    return yaml.safe_load(path.read_text())


def ports() -> dict:
    """The service ports, from the one table that also drives Ansible."""
    return dict(load_tiers()["ports"])


def _load_mapping(path: Path, what: str) -> dict:
    try:
        text = path.read_text()
    except OSError as err:
        raise UsageError(f"cannot read {what} {path}: {err.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        first = str(err).splitlines()[0]
        raise UsageError(
            f"{what} {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {first}"
        ) from None
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path} must hold a mapping")
    return data


def load_gpu_inventory(path: Path) -> dict:
    """A recorded `toolkit detect --json` result, its GPU fields checked (exit 2 malformed, 3 not NVIDIA)."""
    data = _load_mapping(path, "GPU inventory")
    gpus = data.get("gpus")
    if not isinstance(gpus, list):
        raise UsageError(f"GPU inventory {path} has no 'gpus' list (save one with `toolkit detect --json`)")
    for i, g in enumerate(gpus):
        if not isinstance(g, dict):
            raise UsageError(f"GPU inventory {path}: gpus[{i}] must be a mapping")
        missing = {"index", "name", "memory_total_bytes", "compute_capability"} - set(g)
        if missing:
            raise UsageError(f"GPU inventory {path}: gpus[{i}] lacks {', '.join(sorted(missing))}")
    try:
        check_gpus(data)
    except UnsupportedGPU as err:
        raise EnvironmentProblem(f"not supported: GPU inventory {path}: {err}") from None
    except PlanError as err:
        raise UsageError(f"GPU inventory {path}: {err}") from None
    return data


def inventory_inputs(inventory: Path, host: str) -> tuple[dict, dict]:
    """(toolkit_plan_overrides, users) of one host: what playbooks/plan.yml hands the planner, read
    with Ansible's own group/host variable precedence (users: its vllm_user / ollama_user)."""
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    if not inventory.exists():
        raise UsageError(f"inventory {inventory} does not exist")
    from ansible import constants as C

    C.INVENTORY_UNPARSED_IS_FAILED = True
    loader = DataLoader()
    try:
        inv = InventoryManager(loader=loader, sources=[str(inventory)])
        h = inv.get_host(host)
        if h is None:
            known = ", ".join(sorted(x.name for x in inv.get_hosts())) or "none"
            raise UsageError(f"host {host!r} is not in inventory {inventory} (hosts: {known})")
        hv = VariableManager(loader=loader, inventory=inv).get_vars(host=h)
    except AnsibleError as err:
        raise UsageError(f"inventory {inventory}: {str(err).splitlines()[0]}") from None
    ov = hv.get("toolkit_plan_overrides", {}) or {}
    if not isinstance(ov, dict):
        raise UsageError(f"toolkit_plan_overrides for {host} must be a mapping")
    users = {k: hv[f"{k}_user"] for k in ("vllm", "ollama") if f"{k}_user" in hv}
    # plain types, no Ansible wrappers
    return json.loads(json.dumps(ov, default=str)), json.loads(json.dumps(users, default=str))


def plan(facts: dict, overrides: dict | None = None, users: dict | None = None) -> dict:
    try:
        return make_plan(facts, load_tiers(), overrides or {}, users or None)
    except UnsupportedGPU as err:
        raise EnvironmentProblem(f"not supported: {err}") from None
    except PlanError as err:
        raise UsageError(f"cannot plan: {err}") from None
