"""Planning: which models, quantization and vLLM settings a host's GPUs can really carry.

Pure functions (detection facts + tier table + overrides in, plan dict out), standard library only:
Ansible ships this file to managed hosts as ``ansible.module_utils.gpu_plan``, and the CLI imports it
as ``toolkit.module_utils.gpu_plan``. The tier table is toolkit/data/tiers.yaml, passed in parsed.

Fit rule, per GPU: weights/tp + KV cache(context)/tp + process overhead <= the server's share of
gpu_memory_utilization x VRAM. The seed's matrix is followed only where that holds; every step down
(smaller model, shorter context, stronger quantization) is recorded in ``reasons``.
"""

from __future__ import annotations

import copy
import math

GIB = 1024**3
SCHEMA = 1
TELEMETRY_ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
SERVICE_KEYS = {
    "model",
    "revision",
    "quantization",
    "max_model_len",
    "port",
    "dtype",
    "gpu_memory_utilization",
    "max_num_batched_tokens",
    "enable_prefix_caching",
    "served_model_name",
    "shared",
    "fit_check",
    "extra_args",
    "tensor_parallel_size",
}
OVERRIDE_KEYS = {"gpu_memory_utilization", "chat", "autocomplete", "embed", "runtime", "chat_context_target"}
EMBED_KEYS = {"backend", "model", "dimensions", "port", "revision"}


class PlanError(ValueError):
    """The overrides ask for something impossible or malformed; the message says what and why."""


def _cc(value: str) -> tuple:
    major, _, minor = str(value).partition(".")
    return (int(major), int(minor or 0))


def weights_gib(model: dict, quant: dict) -> float:
    body = model["params_b"] - model["embed_params_b"]
    return (body * quant["bytes_per_param"] + model["embed_params_b"] * 2.0) * 1e9 / GIB


def kv_gib(model: dict, context: int, kv_bytes: int) -> float:
    per_token = 2 * model["layers"] * model["kv_heads"] * model["head_dim"] * kv_bytes
    return per_token * context / GIB


def _tp_size(model: dict, gpu_count: int) -> int:
    """Largest power of two <= gpu_count that divides the attention heads (vLLM's requirement)."""
    tp = 1
    while tp * 2 <= gpu_count and model["attention_heads"] % (tp * 2) == 0:
        tp *= 2
    return tp


def _estimate(model: dict, quant: dict, context: int, tp: int, limits: dict) -> dict:
    w = weights_gib(model, quant) / tp
    kv = kv_gib(model, context, limits["kv_cache_dtype_bytes"]) / tp
    oh = limits["process_overhead_gib"]
    return {
        "weights_gib": round(w, 2),
        "kv_cache_gib": round(kv, 2),
        "overhead_gib": oh,
        "total_gib": round(w + kv + oh, 2),
    }


def _fmt(e: dict) -> str:
    return f"{e['weights_gib']:.1f} GiB weights + {e['kv_cache_gib']:.1f} GiB KV + {e['overhead_gib']:.1f} GiB overhead"


def _quant_names(model: dict, table: dict, min_cc: tuple, only: str | None) -> list[str]:
    names = [q for q in table["quantizations"] if q in model["variants"]]
    if only:
        if only not in model["variants"]:
            raise PlanError(f"quantization {only!r} is not available for this model (have: {', '.join(names)})")
        names = [only]
    return [q for q in names if _cc(table["quantizations"][q]["min_cc"]) <= min_cc]


def _fit(
    model_key: str,
    table: dict,
    budget_gib: float,
    contexts: list[int],
    tp_gpus: int,
    min_cc: tuple,
    quant_only: str | None = None,
) -> tuple[dict | None, str]:
    """First (context, quantization) that fits, contexts before quantizations. Returns (choice, why-not)."""
    model = table["models"][model_key]
    limits = table["limits"]
    tp = _tp_size(model, tp_gpus)
    quants = _quant_names(model, table, min_cc, quant_only)
    if not quants:
        return None, f"{model_key}: no quantization of it runs on compute capability {min_cc[0]}.{min_cc[1]}"
    ctxs = [c for c in contexts if c <= model["max_context"]] or [min(contexts)]
    for ctx in ctxs:
        for q in quants:
            est = _estimate(model, table["quantizations"][q], ctx, tp, limits)
            if est["total_gib"] <= budget_gib:
                return {"model_key": model_key, "quant": q, "context": ctx, "tp": tp, "estimate": est}, ""
    small_q = min(quants, key=lambda q: table["quantizations"][q]["bytes_per_param"])
    smallest = _estimate(model, table["quantizations"][small_q], ctxs[-1], tp, limits)
    where = f" per GPU with tensor parallel {tp}" if tp > 1 else ""
    return None, (
        f"{model_key} does not fit: even {small_q} at {ctxs[-1]} tokens needs {_fmt(smallest)} = "
        f"{smallest['total_gib']:.1f} GiB{where}, over the {budget_gib:.1f} GiB available"
    )


def _service(
    role: str,
    choice: dict,
    table: dict,
    runtime: str,
    port: int,
    batched: int,
    util: float | None,
    served: list[str],
    ov: dict,
) -> dict:
    model = table["models"][choice["model_key"]] if choice.get("model_key") else None
    q = table["quantizations"].get(choice.get("quant") or "", {})
    repo = ov.get("model") if not model else model["variants"][choice["quant"]]
    dtype = ov.get("dtype") or (q.get("dtype") if runtime == "cuda" else "auto") or "auto"
    svc = {
        "role": role,
        "model": repo,
        "model_key": choice.get("model_key"),
        "revision": ov.get("revision"),
        "served_model_name": served[0],
        "served_model_names": served,
        "port": port,
        "quantization": (q.get("vllm") if runtime == "cuda" else None) if model else ov.get("quantization"),
        "quantization_label": choice.get("quant"),
        "dtype": dtype,
        "max_model_len": int(ov.get("max_model_len") or choice["context"]),
        "max_num_batched_tokens": int(ov.get("max_num_batched_tokens") or batched),
        "enable_prefix_caching": bool(ov.get("enable_prefix_caching", True)),
        "tensor_parallel_size": int(choice.get("tp", 1)),
        "gpu_memory_utilization": util,
        "estimate": choice.get("estimate"),
    }
    svc["max_num_batched_tokens"] = max(svc["max_num_batched_tokens"], 1)
    args = ["--model", svc["model"]]
    if svc["revision"]:
        args += ["--revision", svc["revision"]]
    args += [
        "--served-model-name",
        *served,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        svc["dtype"],
        "--max-model-len",
        str(svc["max_model_len"]),
        "--max-num-batched-tokens",
        str(svc["max_num_batched_tokens"]),
    ]
    if runtime == "cuda":
        args += ["--gpu-memory-utilization", f"{util:.2f}", "--tensor-parallel-size", str(svc["tensor_parallel_size"])]
    if svc["quantization"]:
        args += ["--quantization", svc["quantization"]]
    if svc["enable_prefix_caching"]:
        args.append("--enable-prefix-caching")
    args += [str(a) for a in ov.get("extra_args", [])]
    svc["args"] = args
    env = dict(TELEMETRY_ENV)
    if runtime == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(table["cpu_tier"]["kv_cache_space_gib"])
    svc["env"] = env
    return svc


def _check_overrides(ov: dict) -> None:
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
    emb = ov.get("embed", {})
    if not isinstance(emb, dict) or set(emb) - EMBED_KEYS:
        raise PlanError(f"overrides.embed takes only: {', '.join(sorted(EMBED_KEYS))}")
    util = ov.get("gpu_memory_utilization")
    if util is not None and not (isinstance(util, (int, float)) and 0.1 <= util <= 0.98):
        raise PlanError(f"gpu_memory_utilization must be a number between 0.1 and 0.98, got {util!r}")
    if ov.get("runtime") not in (None, "cpu", "cuda"):
        raise PlanError(f"runtime must be 'cpu' or 'cuda', got {ov.get('runtime')!r}")


def _pinned(role: str, ov: dict, table: dict) -> tuple[str | None, dict]:
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


def _embed(table: dict, ov: dict, runtime: str) -> dict:
    emb = dict(ov.get("embed", {}))
    backend = emb.get("backend", "ollama")
    if backend not in table["embedding_backends"]:
        raise PlanError(f"embed.backend must be one of {', '.join(table['embedding_backends'])}, got {backend!r}")
    base = table["embedding_backends"][backend]
    out = {
        "backend": backend,
        "model": emb.get("model", base["model"]),
        "revision": emb.get("revision"),
        "dimensions": int(emb.get("dimensions", base["dimensions"])),
        "port": int(emb.get("port", table["ports"]["embed"])),
        "served_model_name": "embed",
    }
    if backend == "vllm":
        out["args"] = [
            "--model",
            out["model"],
            "--runner",
            "pooling",
            "--served-model-name",
            "embed",
            "--host",
            "127.0.0.1",
            "--port",
            str(out["port"]),
        ]
        if out["revision"]:
            out["args"] += ["--revision", out["revision"]]
        env = dict(TELEMETRY_ENV)
        if runtime == "cpu":
            env["VLLM_CPU_KVCACHE_SPACE"] = "1"
        out["env"] = env
    return out


def _trusted(
    role: str,
    sub: dict,
    table: dict,
    runtime: str,
    port: int,
    batched: int,
    util: float | None,
    served: list[str],
    reasons: list[str],
) -> dict:
    reasons.append(f"{role}: {sub['model']} is not in the catalogue; served as given, fit not checked")
    ctx = int(sub.get("max_model_len") or table["limits"]["autocomplete_context"])
    return _service(role, {"context": ctx}, table, runtime, port, batched, util, served, sub)


def _cpu_plan(facts: dict, table: dict, ov: dict, reasons: list[str]) -> dict:
    cpu = table["cpu_tier"]
    limits = table["limits"]
    mem_gib = (facts.get("cpu", {}).get("memory_total_bytes") or 0) / GIB
    ports = table["ports"]
    services = {}
    chat_key, chat_ov = _pinned("chat", ov, table)
    auto_key, auto_ov = _pinned("autocomplete", ov, table)
    shared = bool(auto_ov.get("shared")) or (mem_gib and mem_gib < cpu["shared_below_memory_gib"] and not auto_key)
    if shared and not chat_key and chat_key != "":
        chat_key = cpu["shared_model"]
        reasons.append(
            f"cpu: {mem_gib:.0f} GiB of memory is under {cpu['shared_below_memory_gib']} GiB: "
            f"one server ({chat_key}) answers chat and autocomplete"
        )
    chat_ctx = int(chat_ov.get("max_model_len") or cpu["chat_context"])
    names = ["chat", "autocomplete"] if shared else ["chat"]
    if chat_key == "":
        services["chat"] = _trusted(
            "chat", chat_ov, table, "cpu", ports["chat"], limits["chat_max_num_batched_tokens"], None, names, reasons
        )
    else:
        chat_key = chat_key or cpu["chat"]
        services["chat"] = _service(
            "chat",
            {"model_key": chat_key, "quant": "bf16", "context": chat_ctx},
            table,
            "cpu",
            int(chat_ov.get("port", ports["chat"])),
            limits["chat_max_num_batched_tokens"],
            None,
            names,
            chat_ov,
        )
    if shared:
        services["autocomplete"] = _shared_auto(services["chat"])
    elif auto_key == "":
        services["autocomplete"] = _trusted(
            "autocomplete",
            auto_ov,
            table,
            "cpu",
            ports["autocomplete"],
            limits["autocomplete_max_num_batched_tokens"],
            None,
            ["autocomplete"],
            reasons,
        )
    else:
        services["autocomplete"] = _service(
            "autocomplete",
            {"model_key": auto_key or cpu["autocomplete"], "quant": "bf16", "context": limits["autocomplete_context"]},
            table,
            "cpu",
            int(auto_ov.get("port", ports["autocomplete"])),
            limits["autocomplete_max_num_batched_tokens"],
            None,
            ["autocomplete"],
            auto_ov,
        )
    return services


def _shared_auto(chat: dict) -> dict:
    return {
        "role": "autocomplete",
        "shared_with": "chat",
        "model": chat["model"],
        "port": chat["port"],
        "served_model_name": "autocomplete",
        "max_model_len": chat["max_model_len"],
    }


def _share(need_gib: float, vram_gib: float) -> float:
    """The gpu_memory_utilization fraction that holds need_gib, rounded up with a 1% margin."""
    return math.ceil(need_gib / vram_gib * 100 + 1) / 100


def _tier_for(vram_gib: float, table: dict) -> dict:
    for tier in table["tiers"]:
        if vram_gib >= tier["min_vram_gib"]:
            return tier
    return table["tiers"][-1]


def _candidates(tier: dict, table: dict, role: str) -> list[str]:
    """The tier's candidates, then every smaller tier's (the step-down path), without repeats."""
    out = []
    start = table["tiers"].index(tier)
    for t in table["tiers"][start:]:
        for key in t[role]:
            if key not in out:
                out.append(key)
    return out


def _gpu_plan(facts: dict, table: dict, ov: dict, reasons: list[str]) -> tuple[dict, str]:
    limits = table["limits"]
    ports = table["ports"]
    gpus = facts["gpus"]
    vram = min(g["memory_total_bytes"] for g in gpus) / GIB
    min_cc = min(_cc(g["compute_capability"]) for g in gpus)
    if len({g["memory_total_bytes"] for g in gpus}) > 1:
        reasons.append(f"GPUs differ in memory: planning with the smallest ({vram:.1f} GiB) for each")
    util_total = float(ov.get("gpu_memory_utilization", limits["gpu_memory_utilization"]))
    per_gpu = util_total * vram
    tier = _tier_for(vram, table)
    reasons.append(
        f"tier {tier['name']}: {len(gpus)} GPU(s) of {vram:.1f} GiB, compute capability "
        f"{min_cc[0]}.{min_cc[1]}; vLLM may use {util_total:.2f} x {vram:.1f} = {per_gpu:.1f} GiB per GPU"
    )
    for g in gpus:
        free = g.get("memory_free_bytes")
        if free is not None and free < util_total * g["memory_total_bytes"]:
            reasons.append(
                f"warning: GPU {g['index']} has only {free / GIB:.1f} GiB free now; vLLM will refuse "
                f"to start while other processes hold its memory"
            )

    chat_key, chat_ov = _pinned("chat", ov, table)
    auto_key, auto_ov = _pinned("autocomplete", ov, table)
    target = int(ov.get("chat_context_target", limits["chat_context_target"]))
    contexts = [c for c in limits["chat_context_steps"] if c <= target] or [target]
    if chat_ov.get("max_model_len"):
        contexts = [int(chat_ov["max_model_len"])]
    auto_ctx = [int(auto_ov.get("max_model_len") or limits["autocomplete_context"])]

    # Autocomplete gets a small dedicated server when memory allows (p95 < 300 ms needs a small
    # model); chat is chosen first against the budget left after the smallest autocomplete.
    auto_cands = [auto_key] if auto_key else _candidates(tier, table, "autocomplete")
    want_shared = bool(auto_ov.get("shared"))
    smallest_auto = None
    if not want_shared and auto_key != "":
        for key in reversed(auto_cands):
            c, _ = _fit(key, table, per_gpu, auto_ctx, 1, min_cc, auto_ov.get("quantization"))
            if c:
                smallest_auto = c
                break

    chat_cands = [chat_key] if chat_key else _candidates(tier, table, "chat")
    chat_choice = None
    auto_reserve = _share(smallest_auto["estimate"]["total_gib"], vram) * vram if smallest_auto else 0.0
    if chat_key == "":
        chat_choice = None
    else:
        for attempt_reserve in [auto_reserve, 0.0] if smallest_auto else [0.0]:
            budget = per_gpu - attempt_reserve
            for key in chat_cands:
                c, why = _fit(key, table, budget, contexts, len(gpus), min_cc, chat_ov.get("quantization"))
                if c:
                    chat_choice = c
                    break
                if attempt_reserve == auto_reserve:
                    reasons.append(f"chat: {why}")
            if chat_choice:
                if attempt_reserve == 0.0 and smallest_auto:
                    reasons.append(
                        "autocomplete: no room for a separate server beside the chat model; "
                        "the chat server also answers autocomplete"
                    )
                    smallest_auto = None
                break
        if not chat_choice:
            if chat_key:
                raise PlanError(why)
            raise PlanError(f"no catalogue chat model fits in {per_gpu:.1f} GiB per GPU (smallest tried: {why})")

    services = {}
    if chat_key == "":
        share = 1 if smallest_auto else 0
        services["chat"] = _trusted(
            "chat",
            chat_ov,
            table,
            "cuda",
            int(chat_ov.get("port", ports["chat"])),
            limits["chat_max_num_batched_tokens"],
            round(util_total, 2),
            ["chat"] if share else ["chat", "autocomplete"],
            reasons,
        )
        chat_total = 0.0
    else:
        chat_total = chat_choice["estimate"]["total_gib"]

    # Upgrade autocomplete to the best candidate that fits in what chat leaves.
    auto_choice = None
    if smallest_auto and chat_key != "":
        left = (util_total - math.ceil(chat_total / vram * 100) / 100) * vram
        for key in auto_cands:
            c, _ = _fit(key, table, left, auto_ctx, 1, min_cc, auto_ov.get("quantization"))
            if c and _share(c["estimate"]["total_gib"], vram) * vram <= left + 1e-9:
                auto_choice = c
                break
    elif smallest_auto:
        auto_choice = smallest_auto

    if chat_key != "":
        c = chat_choice
        if c["context"] < contexts[0]:
            reasons.append(
                f"chat: context stepped down from {contexts[0]} to {c['context']} tokens so that "
                f"{c['model_key']} fits ({_fmt(c['estimate'])})"
            )
        first_quant = _quant_names(table["models"][c["model_key"]], table, min_cc, chat_ov.get("quantization"))[0]
        if c["quant"] != first_quant:
            reasons.append(
                f"chat: {c['model_key']} quantized to {c['quant']} (higher-fidelity variants do not fit "
                f"at {c['context']} tokens)"
            )
        auto_share = _share(auto_choice["estimate"]["total_gib"], vram) if auto_choice else 0.0
        chat_util = round(util_total - auto_share, 2)
        names = ["chat"] if auto_choice else ["chat", "autocomplete"]
        services["chat"] = _service(
            "chat",
            c,
            table,
            "cuda",
            int(chat_ov.get("port", ports["chat"])),
            limits["chat_max_num_batched_tokens"],
            chat_util,
            names,
            chat_ov,
        )
        reasons.append(
            f"chat: {c['model_key']} ({c['quant']}, {c['context']} tokens"
            f"{', tensor parallel ' + str(c['tp']) if c['tp'] > 1 else ''}): {_fmt(c['estimate'])} = "
            f"{c['estimate']['total_gib']:.1f} GiB of {chat_util:.2f} x {vram:.1f} = {chat_util * vram:.1f} GiB"
        )
    if auto_choice:
        auto_util = round(util_total - services["chat"]["gpu_memory_utilization"], 2) if chat_key != "" else None
        if auto_util is None:
            auto_util = _share(auto_choice["estimate"]["total_gib"], vram)
        services["autocomplete"] = _service(
            "autocomplete",
            dict(auto_choice, tp=1),
            table,
            "cuda",
            int(auto_ov.get("port", ports["autocomplete"])),
            limits["autocomplete_max_num_batched_tokens"],
            auto_util,
            ["autocomplete"],
            auto_ov,
        )
        services["autocomplete"]["cuda_visible_devices"] = str(gpus[0]["index"])
        reasons.append(
            f"autocomplete: {auto_choice['model_key']} ({auto_choice['quant']}) on GPU {gpus[0]['index']}: "
            f"{auto_choice['estimate']['total_gib']:.1f} GiB, its own server for low latency"
        )
    else:
        services["autocomplete"] = _shared_auto(services["chat"])
    return services, tier["name"]


def make_plan(facts: dict, table: dict, overrides: dict | None = None) -> dict:
    """Plan the services for one host. Raises PlanError when the overrides are malformed or cannot fit."""
    ov = copy.deepcopy(overrides or {})
    _check_overrides(ov)
    reasons: list[str] = []
    gpus = facts.get("gpus") or []
    runtime = ov.get("runtime") or ("cuda" if gpus else "cpu")
    if runtime == "cuda" and not gpus:
        raise PlanError("runtime 'cuda' was asked for but this host has no usable NVIDIA GPU")
    if runtime == "cpu":
        if gpus:
            reasons.append("runtime forced to cpu by the inventory: the GPUs are not used")
        else:
            reasons.append(f"no usable GPU ({facts.get('status', 'no-gpu')}): CPU tier on the vLLM CPU build")
        services = _cpu_plan(facts, table, ov, reasons)
        tier = table["cpu_tier"]["name"]
    else:
        services, tier = _gpu_plan(facts, table, ov, reasons)
    services["embed"] = _embed(table, ov, runtime)
    return {
        "schema": SCHEMA,
        "runtime": runtime,
        "vllm_package": "vllm" if runtime == "cuda" else "vllm-cpu",
        "tier": tier,
        "gpu_count": len(gpus),
        "gpu_names": sorted({g["name"] for g in gpus}),
        "services": services,
        "reasons": reasons,
    }
