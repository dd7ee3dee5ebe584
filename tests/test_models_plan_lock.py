"""plan -> lock: `toolkit models lock --plan` locks exactly what a plan serves, and `toolkit provision`
refuses to converge a host that pulls models when its planned hub models are not all locked.

The hub is tests/fakehub.py (loopback stand-in serving the real MiniLM files); planning is a real
ansible-runner run of plan.yml on this machine (no changes are made before the refusal).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, require
from fakehub import FakeHub, FakeRepo
from test_models_verify import MINILM, MINILM_REPO, MINILM_REV


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "toolkit", *args],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})}, timeout=600,
    )  # fmt: skip


def plan_serving(model: str) -> dict:
    args = ["--model", model, "--served-model-name", "embed", "--host", "127.0.0.1", "--port", "11434"]
    return {
        "schema": 2,
        "services": {
            "embed": {"server": "vllm", "model": model, "revision": None, "args": args, "port": 11434},
            "chat": {"server": "vllm", "model": "/srv/models/chat", "args": ["--model", "/srv/models/chat"],
                     "port": 8000},
            "autocomplete": {"model": model, "shared_with": "embed"},
        },
    }  # fmt: skip


def test_lock_from_a_plan_holds_exactly_the_planned_hub_models(tmp_path: Path) -> None:
    require((MINILM / "config.json").is_file(), f"needs MiniLM files in {MINILM}")
    files = {p: (MINILM / p).read_bytes() for p in ("config.json", "vocab.txt", "tokenizer.json")}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(plan_serving(MINILM_REPO)))
    lock = tmp_path / "models.lock.yaml"
    stale = {
        "repo": "Qwen/old",
        "revision": "a" * 40,
        "files": [{"path": "config.json", "size": 2, "git_sha1": "b" * 40}],
    }
    lock.write_text(yaml.safe_dump({"version": 1, "models": [stale]}))
    with FakeHub([FakeRepo(MINILM_REPO, MINILM_REV, files)]) as hub:
        env = {
            "HF_ENDPOINT": hub.endpoint,
            "HF_HOME": "/nonexistent-hf",
            "HF_HUB_OFFLINE": "0",
            "NO_PROXY": "127.0.0.1",
        }
        r = run("models", "lock", "--plan", str(plan), "--lock", str(lock), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"locked {MINILM_REPO}@{MINILM_REV}: 3 files, {sum(map(len, files.values()))} bytes -> {lock}\n"
    data = yaml.safe_load(lock.read_text())
    assert [(m["repo"], m["revision"]) for m in data["models"]] == [(MINILM_REPO, MINILM_REV)]
    r = run("models", "lock", MINILM_REPO, "--plan", str(plan), "--lock", str(lock))
    assert (r.returncode, r.stderr) == (2, "toolkit: error: give exactly one of REPO, --plan PLAN or --inventory INV\n")


@pytest.mark.slow
def test_provision_refuses_a_host_that_pulls_unlocked_planned_models(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yml"
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": dict(host, model_store_enabled=True)}}}))
    (tmp_path / "models.lock.yaml").write_text("version: 1\nmodels: []\n")
    r = run("provision", "-i", str(inv), "--json")
    assert r.returncode == 2, r.stdout + r.stderr
    plans = sorted((REPO / "artifacts" / "runs").glob("*/plans/localhost.json"), key=os.path.getmtime)
    plan = json.loads(plans[-1].read_text())  # this run's plan
    planned = sorted({s["model"] for s in plan["services"].values() if s.get("server") == "vllm"})
    assert planned and all("/" in m and not m.startswith("/") for m in planned)
    assert r.stderr == (
        "toolkit: error: planned models are not locked, nothing was changed: "
        f"localhost ({tmp_path / 'models.lock.yaml'}): {', '.join(planned)} "
        f"(run `toolkit models lock --inventory {inv}`, or set model_store_enabled: false "
        "for a host that serves only what is already verified on it)\n"
    )
    runs = sorted((REPO / "artifacts" / "runs").iterdir(), key=os.path.getmtime)
    assert not (runs[-1] / "artifacts" / "converge").exists()  # the refusal came before any converge
