"""`toolkit bench` against real vLLM servers (CPU build): the tiny Llama as chat and autocomplete
behind an API key, all-MiniLM-L6-v2 for embeddings (tests/vllm_servers.py).

On this CPU the SLOs may pass or fail; these tests never assume either. They check that the
verdicts follow from the measured numbers, that the files are written, that the server's own
/metrics agree with what the bench sent, and that search really indexed and found a code tree.
"""

from __future__ import annotations

import asyncio
import json
import operator
import re
import shutil
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import pytest
from conftest import REPO
from test_bench_cli import one_error_line, run_bench

from toolkit.bench import document, plot, search
from toolkit.bench.client import Api, resolve
from toolkit.bench.endpoints import from_urls

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

CODE_TREE = REPO / "toolkit" / "bench"  # a real code tree, small enough to embed quickly on 2 cores
# 20 requests: the fewest a p95 / p5 verdict needs. At concurrency 1 the CPU build's API server
# mostly keeps up (per-token streams); at 4 it falls behind and merges tokens (bursts).
LEVELS, REQUESTS, CHAT_TOKENS = (1, 4), 20, 16
GENERATOR_WORKLOADS = ("autocomplete", "chat", "chat_followup")
OPS = {"<": operator.lt, ">=": operator.ge}


def urls(servers) -> list[str]:
    gen, emb = servers.generator.url, servers.embedder.url
    return ["--chat-url", f"{gen}/v1", "--autocomplete-url", gen, "--embed-url", f"{emb}/v1"]


@pytest.fixture(scope="module")
def table_run(vllm_servers, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    proc = run_bench(
        *urls(vllm_servers), "--api-key-file", str(vllm_servers.api_key_file),
        "--concurrency", ",".join(map(str, LEVELS)), "--requests", str(REQUESTS), "--warmup", "1",
        "--chat-max-tokens", str(CHAT_TOKENS), "--code-tree", str(CODE_TREE), "--out", str(out),
        # The tiny model serves 2048 tokens and its tokenizer makes many tokens of code.
        "--chat-context-chars", "1000", "--autocomplete-context-chars", "1000",
        "--autocomplete-family", "Qwen2.5-Coder",
    )  # fmt: skip
    assert proc.returncode in (0, 1, 4), proc.stderr
    return proc, out, json.loads((out / "bench.json").read_text())


def test_slo_table_from_real_servers_has_every_slo_at_every_level(table_run):
    proc, _, doc = table_run
    assert "SLOs (seed)" in proc.stdout
    rows = [ln for ln in proc.stdout.splitlines() if re.search(r"\b(PASS|FAIL|INSUFFICIENT|INCONCLUSIVE)\b", ln)]
    names = ("autocomplete latency", "chat time to first token", "chat decode speed", "codebase search latency")
    assert len(rows) == len(names) * len(LEVELS)
    for name in names:
        assert sum(name in r for r in rows) == len(LEVELS)
    assert [re.search(r"\b(PASS|FAIL|INSUFFICIENT|INCONCLUSIVE)\b", r)[1] for r in rows] == [
        v["status"] for v in doc["slos"]
    ]


def test_verdicts_follow_from_the_measured_samples(table_run):
    proc, _, doc = table_run
    by_key = {(m["workload"], m["concurrency"]): m for m in doc["measurements"]}
    for v in doc["slos"]:
        workload, metric = v["metric"].split(".")
        m = by_key[(workload, v["concurrency"])]
        if v["source"] == "server":
            # Only decode speed falls back to the server, and only when some stream came in bursts.
            assert metric == "decode_tps"
            assert min(m["metrics"]["per_token"]["values"]) == 0.0
            assert v["client"] is None and "streams not per token" in v["note"]
            assert v["samples"] == m["server"]["tpot"]["count"] == REQUESTS
            continue
        values = m["metrics"][metric]["values"]
        q = {"p95": 95, "p5": 5}[v["stat"]]
        assert v["samples"] == len(values) == REQUESTS
        assert v["measured"] == pytest.approx(float(np.percentile(values, q)))  # an independent percentile
        assert v["status"] == ("PASS" if OPS[v["op"]](v["measured"], v["threshold"]) else "FAIL")
        if metric == "decode_tps":
            assert m["metrics"]["per_token"]["values"] == [1.0] * REQUESTS
    statuses = {v["status"] for v in doc["slos"]}
    assert doc["verdict"] == ("FAIL" if "FAIL" in statuses else "PASS" if statuses == {"PASS"} else "INCONCLUSIVE")
    assert proc.returncode == {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 4}[doc["verdict"]]


def test_every_chat_stream_is_classified_and_a_decode_figure_only_from_per_token_ones(table_run):
    _, _, doc = table_run
    for m in doc["measurements"]:
        if m["workload"] not in ("chat", "chat_followup"):
            continue
        mm = m["metrics"]
        assert mm["tokens"]["values"] == [CHAT_TOKENS] * REQUESTS
        per_token = mm["per_token"]["values"]
        # decode_tps exists for exactly the per-token streams
        assert mm.get("decode_tps", {}).get("n", 0) == sum(per_token)
        for chunks, pt in zip(mm["chunks"]["values"], per_token, strict=True):
            if pt:
                assert chunks >= 0.9 * CHAT_TOKENS


def test_each_level_has_its_own_server_window_with_exactly_its_requests(table_run):
    _, _, doc = table_run
    for m in doc["measurements"]:
        assert m["server"]["requests"] == REQUESTS, (m["workload"], m["concurrency"], m["server"])
        if m["workload"] in GENERATOR_WORKLOADS:
            assert m["server"]["ttft"]["count"] == REQUESTS
            assert m["server"]["generation_tokens"] == sum(m["metrics"]["tokens"]["values"])
    by_key = {(m["workload"], m["concurrency"]): m for m in doc["measurements"]}
    for c in LEVELS:  # the second turn carries the first turn's prompt and answer
        first, second = by_key[("chat", c)]["metrics"], by_key[("chat_followup", c)]["metrics"]
        assert second["prompt_tokens"]["mean"] > first["prompt_tokens"]["mean"]


def test_report_names_what_was_measured(table_run, vllm_servers):
    _, _, doc = table_run
    m = doc["measured"]
    assert m["device"]["kind"] == "cpu" and m["device"]["gpus"] == []
    assert m["servers"][vllm_servers.generator.url].startswith("vllm 0.")
    assert m["roles"]["chat"]["weights"].endswith("tiny-model")
    assert m["roles"]["chat"]["max_model_len"] == 2048
    assert m["fim"]["family"] == "Qwen2.5-Coder" and "<|fim_middle|>" in m["fim"]["stop"]
    assert m["fim"]["stop_sent"] == m["fim"]["stop"][:4]


def test_all_nine_qwen_stops_as_continue_sends_them_are_refused_by_vllm_with_a_clear_line(vllm_servers, tmp_path):
    """vLLM 0.32 allows 4 stop strings ($VLLM_MAX_STOP_STRINGS); Continue sends every one of the
    family's stops to a local server unless config.yaml sets maxStopWords (the bench's default 4)."""
    tree = tmp_path / "tree"  # two files: indexing is not what this test is about
    tree.mkdir()
    for name in ("stats.py", "slo.py"):
        shutil.copy(CODE_TREE / name, tree / name)
    proc = run_bench(
        *urls(vllm_servers), "--api-key-file", str(vllm_servers.api_key_file), "--concurrency", "1",
        "--requests", "1", "--warmup", "0", "--code-tree", str(tree), "--out", str(tmp_path / "o"),
        "--autocomplete-family", "Qwen2.5-Coder", "--autocomplete-context-chars", "500", "--max-stop-words", "9",
    )  # fmt: skip
    assert proc.returncode == 3
    line = one_error_line(proc)
    assert (
        f"autocomplete endpoint {vllm_servers.generator.url} refused the 9 stop strings Continue sends "
        "for this family (HTTP 400" in line
    )
    assert not (tmp_path / "o").exists()


def test_json_report_is_written_and_valid(table_run, vllm_servers):
    _, out, doc = table_run
    jsonschema.validate(doc, document.REPORT_SCHEMA)
    assert doc["endpoints"] == {
        "chat": {"url": vllm_servers.generator.url, "model": "chat"},
        "autocomplete": {"url": vllm_servers.generator.url, "model": "autocomplete"},
        "embed": {"url": vllm_servers.embedder.url, "model": "embed"},
    }
    seen = {(m["workload"], m["concurrency"]) for m in doc["measurements"]}
    assert seen == {(w, c) for w in ("autocomplete", "chat", "chat_followup", "embed", "search") for c in LEVELS}
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "latency.html"]


def test_plot_is_written_and_self_contained(table_run, vllm_servers):
    _, out, doc = table_run
    page = (out / "latency.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"<script|<link|<img|src=|href=|url\(|@import", page)
    # URLs appear only as text: the servers that were measured, named in "what was measured".
    assert set(re.findall(r"https?://[^\s<)]+", page)) == {vllm_servers.generator.url, vllm_servers.embedder.url}
    # One chart per metric and one line per level with client samples: a level whose streams all
    # came in bursts has no client decode figure to draw.
    series = [
        (key, m["concurrency"])
        for key, _ in plot.PLOTTED
        for m in doc["measurements"]
        if key.split(".") == [m["workload"], key.split(".")[1]] and key.split(".")[1] in m["metrics"]
    ]
    assert page.count("<svg") == len({key for key, _ in series}) >= 5
    assert page.count('class="ecdf"') == len(series) >= 5 * len(LEVELS)


def test_server_metrics_deltas_equal_the_requests_the_bench_sent(table_run, vllm_servers):
    _, _, doc = table_run
    servers = {s["url"]: s for s in doc["servers"]}
    gen, emb = servers[vllm_servers.generator.url], servers[vllm_servers.embedder.url]
    # Generator: autocomplete and chat, REQUESTS at each level; warm-up happened before the first scrape.
    expected = len(GENERATOR_WORKLOADS) * REQUESTS * len(LEVELS)
    assert gen["client"]["requests"] == expected
    assert gen["server"]["requests"] == expected
    assert gen["server"]["ttft"]["count"] == expected
    tokens = sum(
        sum(m["metrics"]["tokens"]["values"]) for m in doc["measurements"] if m["workload"] in GENERATOR_WORKLOADS
    )
    assert gen["client"]["generation_tokens"] == tokens == gen["server"]["generation_tokens"]
    assert gen["server"]["decode_tokens_per_s"] > 0
    # Embedder: one input per embedding request and per search query; vLLM counts each input.
    assert emb["client"]["requests"] == emb["server"]["requests"] == 2 * REQUESTS * len(LEVELS)
    assert emb["server"]["generation_tokens"] == 0
    assert emb["server"]["decode_tokens_per_s"] is None


def test_search_indexed_the_code_tree_and_hits_are_its_files(table_run):
    _, _, doc = table_run
    s = doc["search"]
    assert s["tree"] == str(CODE_TREE)
    assert s["files"] == len(search.collect(CODE_TREE)) >= 8
    assert s["chunks"] == len(list(search.chunks_of(CODE_TREE, search.collect(CODE_TREE))))
    assert s["dimensions"] == 384
    assert len(s["hits"]) == 5
    for h in s["hits"]:
        lines = (CODE_TREE / h["path"]).read_text().splitlines()
        assert 1 <= h["start_line"] <= h["end_line"] <= len(lines)


def test_search_finds_the_file_and_lines_a_chunk_came_from(vllm_servers, tmp_path):
    """Library level: index real files into LanceDB, query with chunk texts, get their origin back."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("stats.py", "metrics.py", "slo.py"):
        shutil.copy(CODE_TREE / name, tree / name)
    eps = from_urls(vllm_servers.generator.url, vllm_servers.generator.url, vllm_servers.embedder.url)

    async def go(db_dir: Path):
        with httpx.Client() as c:
            res = resolve(c, eps, vllm_servers.api_key)
        async with httpx.AsyncClient(timeout=120) as ac:
            api = Api(ac, vllm_servers.api_key)
            index = await search.build(api, res["embed"], tree, db_dir)
            chunks = list(search.chunks_of(tree, search.collect(tree)))
            probes = [next(c for c in chunks if c.path == name) for name in ("stats.py", "metrics.py", "slo.py")]
            found = []
            for chunk in probes:
                hits, _ = await search.query(api, res["embed"], index, chunk.text, 3)
                found.append((chunk, hits))
            return index, found

    db = tmp_path / "lancedb"
    index, found = asyncio.run(go(db))
    assert any(db.rglob("*.lance"))  # a real LanceDB dataset on disk
    assert (index.files, index.dimensions) == (3, 384)
    for chunk, hits in found:
        assert (hits[0].path, hits[0].start_line, hits[0].end_line) == (chunk.path, chunk.start_line, chunk.end_line)
        assert hits[0].distance == pytest.approx(0.0, abs=1e-3)


def test_plan_file_key_from_env_and_json_on_stdout(vllm_servers, tmp_path):
    gen, emb = vllm_servers.generator.port, vllm_servers.embedder.port
    plan = {
        "schema": 1,
        "services": {
            "chat": {"served_model_name": "chat", "model": "tiny", "port": gen},
            "autocomplete": {"shared_with": "chat", "served_model_name": "autocomplete", "port": gen},
            # The embedding server lists "embed"; the plan's model name is only the fallback.
            "embed": {"backend": "vllm", "served_model_name": "embed", "model": "all-MiniLM-L6-v2", "port": emb},
        },
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("errors.py", "cli.py"):
        shutil.copy(REPO / "toolkit" / name, tree / name)
    proc = run_bench(
        "--plan", "plan.json", "--json", "--concurrency", "1", "--requests", "1", "--warmup", "0",
        "--chat-max-tokens", "4", "--code-tree", "tree", "--out", "o",
        "--chat-context-chars", "500", "--autocomplete-context-chars", "500",
        cwd=tmp_path, env_extra={"TOOLKIT_API_KEY": vllm_servers.api_key},
    )  # fmt: skip
    assert proc.returncode in (0, 1, 4), proc.stderr
    doc = json.loads(proc.stdout)
    assert doc == json.loads((tmp_path / "o" / "bench.json").read_text())
    assert doc["endpoints"]["embed"] == {"url": f"http://127.0.0.1:{emb}", "model": "embed"}
    assert {h["path"] for h in doc["search"]["hits"]} <= {"errors.py", "cli.py"}
    assert doc["search"]["files"] == 2


def test_model_the_server_does_not_serve_is_refused_with_what_it_serves(vllm_servers, tmp_path):
    proc = run_bench(*urls(vllm_servers), "--api-key-file", str(vllm_servers.api_key_file), "--chat-model", "nope",
                     "--out", str(tmp_path / "o"))  # fmt: skip
    assert proc.returncode == 3
    line = one_error_line(proc)
    assert (
        f"chat endpoint {vllm_servers.generator.url} does not serve model 'nope' (it serves: chat, autocomplete)"
        in line
    )


def test_missing_api_key_is_refused_clearly(vllm_servers, tmp_path):
    proc = run_bench(*urls(vllm_servers), "--out", str(tmp_path / "o"))
    assert proc.returncode == 3
    line = one_error_line(proc)
    assert f"chat endpoint {vllm_servers.generator.url} refused the API key (HTTP 401)" in line
    assert not (tmp_path / "o").exists()
