"""Planning's inputs: the detection facts' GPUs, the overrides and the service accounts, each checked
before any choice is made, and the errors a malformed or impossible input raises.
"""

from __future__ import annotations

import re

GIB = 1024**3
SERVICE_KEYS = {
    "model",
    "revision",
    "quantization",
    "max_model_len",
    "port",
    "dtype",
    "gpu_memory_utilization",
    "max_num_batched_tokens",
    "max_num_seqs",
    "enable_prefix_caching",
    "served_model_name",
    "shared",
    "fit_check",
    "extra_args",
    "tensor_parallel_size",
    "tool_call_parser",
}
OVERRIDE_KEYS = {
    "gpu_memory_utilization",
    "chat",
    "autocomplete",
    "embed",
    "runtime",
    "chat_context_target",
    "allow_noncommercial",
    "rerank",
}
EMBED_KEYS = {"backend", "model", "dimensions", "port", "revision"}
RERANK_KEYS = {"model", "port"}
CC_RE = re.compile(r"\d{1,2}\.\d{1,2}")
USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


class PlanError(ValueError):
    """The overrides or the GPU facts are malformed, or ask for something impossible; one line says why."""


class UnsupportedGPU(PlanError):
    """The host's accelerator is not an NVIDIA CUDA GPU (AMD, Intel, unknown): the machine lacks something."""


def cc_tuple(value: str) -> tuple:
    major, _, minor = str(value).partition(".")
    return (int(major), int(minor or 0))


def cc_str(cc: tuple) -> str:
    return f"{cc[0]}.{cc[1]}"


def check_gpus(facts: dict) -> list[dict]:
    """Validate the detection facts' GPU entries; return normalised GPU records.

    Raises UnsupportedGPU for a non-NVIDIA accelerator, PlanError for a malformed field.
    """
    gpus = facts.get("gpus")
    if gpus is None:
        return []
    if not isinstance(gpus, list):
        raise PlanError("GPU facts: 'gpus' must be a list")
    out = []
    for i, g in enumerate(gpus):
        where = f"gpus[{i}]"
        if not isinstance(g, dict):
            raise PlanError(f"GPU facts: {where} must be a mapping")
        vendor = str(g.get("vendor", "nvidia")).lower()
        cc = g.get("compute_capability")
        name = str(g.get("name", "?"))
        if vendor != "nvidia" or not isinstance(cc, str) or not CC_RE.fullmatch(cc):
            if vendor != "nvidia" or isinstance(cc, str):
                raise UnsupportedGPU(
                    f"{where} ({name}, compute capability {cc!r}) is not an NVIDIA CUDA GPU: "
                    f"AMD, Intel and other accelerators are not supported (vLLM's CUDA build needs NVIDIA)"
                )
            raise PlanError(f"GPU facts: {where}.compute_capability must be a string like '8.9', got {cc!r}")
        for key, required in (("index", True), ("memory_total_bytes", True), ("memory_free_bytes", False)):
            v = g.get(key)
            if v is None and not required:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise PlanError(f"GPU facts: {where}.{key} must be a whole number of bytes (or index), got {v!r}")
        if g["memory_total_bytes"] == 0:
            raise PlanError(f"GPU facts: {where}.memory_total_bytes is 0")
        total = g["memory_total_bytes"] / GIB
        free = g.get("memory_free_bytes")
        mig = bool(g.get("mig"))
        visible = str(g.get("uuid") if mig else g["index"])
        out.append(
            {
                "pos": i,
                "index": g["index"],
                "label": f"{g['index']}" + (f" (MIG {g.get('mig_profile') or g.get('uuid')})" if mig else ""),
                "name": name,
                "total_gib": total,
                "free_gib": total if free is None else min(free / GIB, total),
                "cc": cc_tuple(cc),
                "mig": mig,
                "visible": visible,
            }
        )
    return out


def check_overrides(ov: dict) -> None:
    if not isinstance(ov, dict):
        raise PlanError("overrides must be a mapping")
    unknown = set(ov) - OVERRIDE_KEYS
    if unknown:
        raise PlanError(
            f"unknown override key(s): {', '.join(sorted(unknown))} (known: {', '.join(sorted(OVERRIDE_KEYS))})"
        )
    for role in ("chat", "autocomplete"):
        sub = ov.get(role, {})
        if not isinstance(sub, dict):
            raise PlanError(f"overrides.{role} must be a mapping")
        bad = set(sub) - SERVICE_KEYS
        if bad:
            raise PlanError(f"unknown key(s) in overrides.{role}: {', '.join(sorted(bad))}")
        for key in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            v = sub.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise PlanError(f"overrides.{role}.{key} must be a positive whole number, got {v!r}")
    emb = ov.get("embed", {})
    if not isinstance(emb, dict) or set(emb) - EMBED_KEYS:
        raise PlanError(f"overrides.embed takes only: {', '.join(sorted(EMBED_KEYS))}")
    rr = ov.get("rerank", {})
    if not isinstance(rr, dict) or set(rr) - RERANK_KEYS:
        raise PlanError(f"overrides.rerank takes only: {', '.join(sorted(RERANK_KEYS))}")
    util = ov.get("gpu_memory_utilization")
    if util is not None and (isinstance(util, bool) or not isinstance(util, (int, float)) or not 0.1 <= util <= 0.98):
        raise PlanError(f"gpu_memory_utilization must be a number between 0.1 and 0.98, got {util!r}")
    if ov.get("runtime") not in (None, "cpu", "cuda"):
        raise PlanError(f"runtime must be 'cpu' or 'cuda', got {ov.get('runtime')!r}")
    if not isinstance(ov.get("allow_noncommercial", False), bool):
        raise PlanError("allow_noncommercial must be true or false")
    target = ov.get("chat_context_target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, int) or target < 512):
        raise PlanError(f"chat_context_target must be a whole number of tokens >= 512, got {target!r}")


def pinned_model(role: str, ov: dict, table: dict) -> tuple[str | None, dict]:
    """A model override: a catalogue key (checked for fit) or any repo/path (trusted, fit unchecked)."""
    sub = ov.get(role, {})
    name = sub.get("model")
    if not name:
        return None, sub
    if name in table["models"]:
        return name, sub
    for key, m in table["models"].items():
        if name in m["variants"].values():
            return key, sub
    return "", sub  # unknown model: served as given


def plan_users(table: dict, users: dict | None) -> dict:
    """The accounts the servers run as: tiers.yaml service_users, then the inventory's vllm_user /
    ollama_user (handed in by playbooks/plan.yml). This is where a renamed user enters the plan."""
    out = dict(table["service_users"])
    if users is None:
        return out
    if not isinstance(users, dict) or set(users) - set(out):
        raise PlanError(f"users takes only: {', '.join(sorted(out))}")
    for key, name in users.items():
        if not isinstance(name, str) or not USER_RE.fullmatch(name):
            raise PlanError(f"users.{key} must be a user name like 'vllm' ([a-z_][a-z0-9_-]*, 32 at most), "
                            f"got {name!r}")  # fmt: skip
        out[key] = name
    return out
