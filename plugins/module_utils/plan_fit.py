"""Planning's memory model and fit: what vLLM will count for one server, and the first context,
quantization and tensor-parallel size that fits a GPU's budget.

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

import math

from .plan_inputs import GIB, PlanError, cc_str, cc_tuple

TP_SIZES = (1, 2, 4, 8)


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


def fraction_up(need_gib: float, total_gib: float) -> float:
    """The gpu_memory_utilization (two decimals, rounded up) whose share holds need_gib."""
    return math.ceil(round(need_gib / total_gib * 100, 6)) / 100


def fraction_down(have_gib: float, total_gib: float) -> float:
    return math.floor(round(have_gib / total_gib * 100, 6)) / 100


def describe(e: dict) -> str:
    return (
        f"{e['weights_gib']:.2f} GiB weights + {e['profile_peak_gib']:.2f} profile peak + "
        f"{e['non_torch_gib']:.2f} non-torch + {e['cuda_graphs_gib']:.2f} CUDA graphs + "
        f"{e['kv_needed_gib']:.2f} KV for {e.get('_seqs', 2)} x {e.get('_ctx', '?')} tokens"
    )


def quant_names(
    model: dict, table: dict, min_cc: tuple, only: str | None, role: str, pinned: bool = False
) -> list[str]:
    names = [q for q in table["quantizations"] if q in model["variants"]]
    if only:
        if only not in model["variants"]:
            raise PlanError(f"quantization {only!r} is not available for this model (have: {', '.join(names)})")
        names = [only]
    names = [q for q in names if cc_tuple(table["quantizations"][q]["min_cc"]) <= min_cc]
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


def eligible(key: str, model: dict, role: str, ov: dict, reasons: list[str], pinned: bool) -> bool:
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


def fit(
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
    quants = quant_names(model, table, min_cc, sub.get("quantization"), role, bool(sub.get("model")))
    if not quants:
        return None, f"{key}: no variant of it runs on compute capability {cc_str(min_cc)}"
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
                util = fraction_up(est["_need"], total_gib)
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
        f"{key} does not fit: even {q} at {ctx} tokens needs {describe(est)} = {est['total_gib']:.1f} GiB "
        f"+ {limits['cuda_context_gib']:.2f} GiB CUDA context{where}, over the {budget_gib:.1f} GiB available"
    )


def repo_of(model: dict, qkey: str) -> str:
    return model["variants"][qkey]


def quant_flag_for(model: dict, qkey: str, table: dict, cc: tuple) -> tuple[str | None, str]:
    """--quantization for a variant: none for a prequantized checkpoint (vLLM reads its
    quantization_config and picks Marlin where it can), fp8 for load-time quantization."""
    q = table["quantizations"][qkey]
    pre = model.get("prequantized_variants", {}).get(qkey) or q.get("prequantized")
    if pre:
        marlin = q.get("marlin_min_cc")
        if marlin and cc < cc_tuple(marlin):
            return None, (
                f"{qkey} checkpoint on compute capability {cc_str(cc)}: Marlin needs {marlin}, so vLLM falls back "
                f"to its unoptimised {pre} kernel by itself (slower decode); no --quantization is passed"
            )
        return None, ""
    return q.get("runtime_flag"), ""
