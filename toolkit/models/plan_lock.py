"""The plan joins the lock: every hub model a plan serves must be locked before a host pulling models converges."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from toolkit.errors import UsageError
from toolkit.module_utils.gpu_plan import SCHEMA
from toolkit.module_utils.model_lock import REPO_PATTERN, Lock


def served_repos(plan: dict) -> dict[str, str | None]:
    """Hub repos the plan's vLLM servers serve (plan v2: ``server: vllm``, its ``model``), with the
    plan's revision if any. Raises UsageError for a plan of another schema.

    A model given as a local directory is the operator's own and not a hub repo; Ollama names are not either.
    """
    if not isinstance(plan, dict) or plan.get("schema") != SCHEMA:
        got = plan.get("schema") if isinstance(plan, dict) else None
        raise UsageError(f"not a plan of schema {SCHEMA} (`toolkit plan --json`), got schema {got!r}")
    out: dict[str, str | None] = {}
    for svc in (plan.get("services") or {}).values():
        if not isinstance(svc, dict) or svc.get("server") != "vllm":
            continue  # answered by another server (shared_with), or Ollama's own
        model = svc.get("model")
        if isinstance(model, str) and REPO_PATTERN.fullmatch(model):
            revision = svc.get("revision")
            out[model] = revision if isinstance(revision, str) else out.get(model)
    return out


def host_settings(inventory: Path, hosts: list[str]) -> dict[str, tuple[bool, Path]]:
    """For each host: does it pull models (model_store_enabled), and which lock applies to it."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    with contextlib.redirect_stderr(io.StringIO()):
        inv = InventoryManager(loader=loader, sources=[str(inventory)])
    variables = VariableManager(loader=loader, inventory=inv)
    default_lock = (inventory if inventory.is_dir() else inventory.parent).resolve() / "models.lock.yaml"
    out = {}
    for name in hosts:
        host = inv.get_host(name)
        hv = variables.get_vars(host=host) if host else {}
        lock = hv.get("model_store_lock_file")
        lock_path = Path(lock) if isinstance(lock, str) and lock and "{{" not in lock else default_lock
        out[name] = (hv.get("model_store_enabled", False) is True, lock_path)
    return out


def check_plans_locked(inventory: Path, plans: dict[str, dict]) -> None:
    """Refuse (one line, exit 2) when a host that pulls models plans a hub model its lock does not hold.

    A host with ``model_store_enabled: false`` pulls nothing: it serves only what is already verified on
    it, which the vllm role checks on the host (a valid marker for the locked revision) before any start.
    """
    from toolkit.models.lockfile import load_lock

    missing: dict[str, list[str]] = {}
    locks: dict[Path, Lock] = {}
    for host, (pulls, lock_path) in sorted(host_settings(inventory, sorted(plans)).items()):
        wanted = served_repos(plans[host])
        if not pulls or not wanted:
            continue
        if lock_path not in locks:
            locks[lock_path] = load_lock(lock_path, missing_ok=True)
        locked = {m.repo for m in locks[lock_path].models}
        gaps = sorted(r for r in wanted if r not in locked)
        if gaps:
            missing[f"{host} ({lock_path})"] = gaps
    if missing:
        raise UsageError(
            "planned models are not locked, nothing was changed: "
            + "; ".join(f"{h}: {', '.join(r)}" for h, r in missing.items())
            + f" (run `toolkit models lock --inventory {inventory}`, or set model_store_enabled: false "
            "for a host that serves only what is already verified on it)"
        )
