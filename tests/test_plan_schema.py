"""Every plan the planner makes is valid against toolkit/data/plan.schema.json (the contract the
roles, the audit and the bench read), for every recorded GPU inventory and the override cases; and
the schema is strict: a misplaced or unknown key, or a value no unit may carry, is refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from toolkit.module_utils.gpu_plan import PlanError, UnsupportedGPU, make_plan

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "toolkit" / "data" / "plan.schema.json").read_text())
TIERS = yaml.safe_load((ROOT / "toolkit" / "data" / "tiers.yaml").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
INVENTORIES = sorted((ROOT / "tests" / "data" / "gpus").glob("*.json"))


def _errors(plan: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(plan)]


def test_the_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("inventory", INVENTORIES, ids=lambda p: p.stem)
def test_every_recorded_plan_matches_the_schema(inventory):
    facts = json.loads(inventory.read_text())
    try:
        plan = make_plan(facts, TIERS)
    except (UnsupportedGPU, PlanError):
        pytest.skip("this inventory is refused by design (tests/test_planning.py checks the refusal)")
    assert _errors(plan) == []


@pytest.mark.parametrize(
    "overrides",
    [
        {"autocomplete": {"shared": True}},
        {"embed": {"backend": "vllm"}},
        {"chat": {"max_model_len": 8192}},
        {"rerank": {"model": "bge-reranker-base"}},
    ],
    ids=["shared-autocomplete", "vllm-embeddings", "chat-context", "rerank"],
)
def test_override_plans_match_the_schema(overrides):
    facts = json.loads((ROOT / "tests" / "data" / "gpus" / "rtx4090-24gb.json").read_text())
    assert _errors(make_plan(facts, TIERS, overrides)) == []


def _cpu_plan() -> dict:
    return make_plan(json.loads((ROOT / "tests" / "data" / "gpus" / "no-gpu.json").read_text()), TIERS)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("services", "chat", "useReranking"), True, "Additional properties are not allowed"),
        (("services", "chat", "port"), 99999, "is greater than the maximum"),
        (("services", "chat", "port"), True, "is not of type 'integer'"),
        (("services", "chat", "env", "EVIL"), "1\nExecStartPre=+/bin/sh", "should not be valid"),
        (("services", "chat", "env", "TRAILING"), "1\n", "should not be valid"),
        (("services", "chat", "served_model_name"), "chat\n", "should not be valid"),
        (("runtime",), "rocm", "is not one of"),
        # Plan v2's consumer fields: what a unit, the guard or Continue would read is held to its shape.
        (("services", "chat", "host"), "0.0.0.0", "was expected"),
        (("services", "chat", "unit"), "vllm-chat.service\nExecStartPre=/bin/sh", "should not be valid"),
        (("services", "chat", "user"), "root; rm", "does not match"),
        (("services", "chat", "client", "api_base"), "http://198.51.100.7:8000/v1", "does not match"),
        (("services", "chat", "client", "apiKey"), "x", "Additional properties are not allowed"),
        (("guard", "users"), [], "should be non-empty"),
        (("schema",), 1, "was expected"),
    ],
    ids=[
        "unknown-key",
        "port-range",
        "port-bool",
        "newline-in-env",
        "trailing-newline",
        "name-newline",
        "runtime",
        "host-not-loopback",
        "unit-newline",
        "user-shell",
        "client-off-loopback",
        "client-unknown-key",
        "guard-without-users",
        "schema-1",
    ],
)
def test_the_schema_refuses_what_no_consumer_may_read(path, value, expected):
    plan = copy.deepcopy(_cpu_plan())
    node = plan
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errors = _errors(plan)
    assert errors and any(expected in e for e in errors), errors


def test_a_renamed_user_reaches_the_plan_and_the_audit_reads_the_guard_users_from_it(tmp_path):
    """vllm_user / ollama_user enter the plan once (users); the guard's users and every server's user
    follow, and `toolkit audit --plan` takes the users the guard must cover from guard.users."""
    from toolkit.audit import AuditUsageError
    from toolkit.commands.audit import _plan_guard_users

    plan = make_plan(json.loads((ROOT / "tests/data/gpus/rtx4090-24gb.json").read_text()), TIERS, {},
                     {"vllm": "svc-llm", "ollama": "svc-embed"})  # fmt: skip
    assert _errors(plan) == []
    assert plan["guard"] == {
        "users": ["svc-llm", "svc-embed"],
        "units": ["vllm-chat.service", "vllm-autocomplete.service", "ollama.service"],
    }
    assert [s.get("user") for s in plan["services"].values()] == ["svc-llm", "svc-llm", "svc-embed"]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    assert _plan_guard_users(path) == ("svc-llm", "svc-embed")
    del plan["guard"]
    path.write_text(json.dumps(plan))
    with pytest.raises(AuditUsageError, match="has no guard.users"):
        _plan_guard_users(path)
    with pytest.raises(PlanError, match=r"users.vllm must be a user name like 'vllm'.*got 'root\\n'"):
        make_plan({}, TIERS, {}, {"vllm": "root\n"})
    with pytest.raises(PlanError, match="users takes only: ollama, vllm"):
        make_plan({}, TIERS, {}, {"guard": "x"})


def test_cli_plan_reads_the_inventorys_service_users_as_plan_yml_hands_them_in(tmp_path):
    from toolkit.planning import inventory_inputs

    inv = tmp_path / "hosts.yml"
    inv.write_text(
        "all:\n  vars: {vllm_user: svc-llm}\n  hosts:\n    ws1: {toolkit_plan_overrides: {embed: {backend: vllm}}}\n"
    )
    overrides, users = inventory_inputs(inv, "ws1")
    assert (overrides, users) == ({"embed": {"backend": "vllm"}}, {"vllm": "svc-llm"})
    plan = make_plan(json.loads((ROOT / "tests/data/gpus/no-gpu.json").read_text()), TIERS, overrides, users)
    assert _errors(plan) == []
    # Embeddings on vLLM: one user, every unit a vllm one.
    assert plan["guard"] == {
        "users": ["svc-llm"],
        "units": ["vllm-chat.service", "vllm-autocomplete.service", "vllm-embed.service"],
    }
