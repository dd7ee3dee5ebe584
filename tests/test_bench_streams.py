"""The client's stream accounting against stand-in servers that stream as hostile as vLLM can.

The stand-in is a loopback HTTP server speaking vLLM's streaming chat protocol, including
``continuous_usage_stats`` (the running token count in every chunk). It streams in one of three
ways: token by token, all tokens in one burst (what vLLM's API server does when it falls behind
the engine: the sandbox's "28,048 tokens/s"), and token by token with a long stall. It does not
exercise a real engine; tests/test_bench_live.py does that against vLLM's CPU build.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from toolkit.bench import document, metrics, slo, tables, workloads
from toolkit.bench.client import Api, Resolved, stream_sample
from toolkit.bench.endpoints import Endpoint
from toolkit.bench.runner import BenchResult, Measurement, Settings
from toolkit.planning import load_tiers

TOKENS = 16
GAP_S = 0.02
STALL_S = 0.4


class StandIn(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, data: dict) -> None:
        self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        mode, continuous = body["model"].split("+") if "+" in body["model"] else (body["model"], "usage")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        usage = continuous == "usage"

        def chunk(text: str, done: int, role: bool = False) -> dict:
            delta = {"role": "assistant", "content": ""} if role else {"content": text}
            out = {"choices": [{"index": 0, "delta": delta}]}
            if usage:
                out["usage"] = {"prompt_tokens": 7, "completion_tokens": done}
            return out

        self._send(chunk("", 0, role=True))
        if mode == "burst":
            time.sleep(0.3)  # the engine made every token meanwhile; one chunk carries them all
            self._send(chunk("tok " * TOKENS, TOKENS))
        else:
            for i in range(TOKENS):
                time.sleep(STALL_S if mode == "gaps" and i == TOKENS // 2 else GAP_S)
                self._send(chunk("tok ", i + 1))
        self._send({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": TOKENS}})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


@pytest.fixture(scope="module")
def standin():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def stream(root: str, model: str) -> dict[str, float]:
    async def go():
        async with httpx.AsyncClient(timeout=30) as ac:
            r = Resolved(Endpoint("chat", root, (model,)), model)
            sample, text = await Api(ac, None).chat(r, [{"role": "user", "content": "hi"}], TOKENS)
            return sample, text

    sample, text = asyncio.run(go())
    assert text == "tok " * TOKENS
    return sample


def test_per_token_stream_gives_a_decode_speed_its_arrival_times_support(standin):
    s = stream(standin, "per-token")
    assert (s["tokens"], s["chunks"], s["per_token"]) == (TOKENS, TOKENS, 1.0)
    # Every gap is at least GAP_S, so the speed cannot exceed 1 / GAP_S.
    assert 0.25 / GAP_S < s["decode_tps"] <= 1 / GAP_S


def test_burst_stream_gives_no_client_decode_speed_and_ttft_is_the_wait(standin):
    s = stream(standin, "burst")
    assert (s["tokens"], s["chunks"], s["per_token"]) == (TOKENS, 1.0, 0.0)
    assert "decode_tps" not in s  # (tokens - 1) / (end - first) would divide by almost nothing
    assert s["ttft_ms"] >= 300  # the user saw nothing until the burst


def test_stream_with_a_stall_is_per_token_and_the_stall_is_reported(standin):
    s = stream(standin, "gaps")
    assert s["per_token"] == 1.0
    assert s["max_gap_ms"] >= STALL_S * 1000
    assert s["decode_tps"] <= (TOKENS - 1) / (STALL_S + (TOKENS - 2) * GAP_S)


def test_without_continuous_usage_a_stream_counts_per_token_only_when_chunks_equal_tokens(standin):
    s = stream(standin, "per-token+none")
    assert (s["tokens"], s["chunks"], s["per_token"]) == (TOKENS, TOKENS, 1.0)  # tokens from the final usage
    s = stream(standin, "burst+none")
    assert (s["chunks"], s["per_token"]) == (1.0, 0.0)
    assert "decode_tps" not in s


def test_stream_sample_needs_most_tokens_in_chunks_of_their_own():
    t = [(0.1 * i, 1) for i in range(10)]
    assert stream_sample(0.0, 1.0, t, 10)["per_token"] == 1.0
    merged = t[:8] + [(0.9, 2)]  # 8 of 10 tokens alone: under PER_TOKEN_SHARE
    assert stream_sample(0.0, 1.0, merged, 10)["per_token"] == 0.0
    first_merged = [(0.1, 2)] + [(0.1 * i, 1) for i in range(2, 20)]
    assert stream_sample(0.0, 2.0, first_merged, 20)["per_token"] == 0.0  # the first chunk is not one token


# --- verdicts from what the client saw and what vLLM's histograms say -----------------------------

BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1)  # vLLM 0.32's first inter-token-latency buckets


def tpot_text(counts: dict[float, int], total_s: float, model: str = "chat") -> str:
    """A vLLM-shaped /metrics page holding one per-request TPOT histogram (cumulative buckets)."""
    lines, cum = [], 0
    for le in BUCKETS:
        cum += counts.get(le, 0)
        lines.append(f'vllm:request_time_per_output_token_seconds_bucket{{le="{le}",model_name="{model}"}} {cum}')
    lines.append(f'vllm:request_time_per_output_token_seconds_bucket{{le="+Inf",model_name="{model}"}} {cum}')
    lines.append(f'vllm:request_time_per_output_token_seconds_count{{model_name="{model}"}} {cum}')
    lines.append(f'vllm:request_time_per_output_token_seconds_sum{{model_name="{model}"}} {total_s}')
    lines.append(f'vllm:request_success_total{{model_name="{model}",finished_reason="length"}} {cum}')
    return "\n".join(lines) + "\n"


def chat_result(per_token: float, decode: list[float] | None, n: int, server_counts: dict[float, int]):
    before = metrics.parse(tpot_text({}, 0.0))
    after = metrics.parse(tpot_text(server_counts, 0.1))
    values = {"ttft_ms": [100.0] * n, "tokens": [16.0] * n, "chunks": [1.0 if not per_token else 16.0] * n,
              "per_token": [per_token] * n}  # fmt: skip
    if decode is not None:
        values["decode_tps"] = decode
    m = Measurement("chat", 1, values, n, 1.0, metrics.view(before, after))
    return BenchResult("t", Settings(concurrency=(1,)), {}, [m])


def decode_verdict(result) -> dict:
    return next(v for v in document.verdicts(result) if v["metric"] == "chat.decode_tps")


def test_burst_decode_is_judged_on_the_server_histogram_never_on_arrival_times():
    # 20 requests, 19 decoding at <= 10 ms a token, one at 75-100 ms: the share at <= 50 ms is 0.95.
    v = decode_verdict(chat_result(0.0, None, 20, {0.01: 19, 0.1: 1}))
    assert (v["source"], v["status"], v["samples"], v["client"]) == ("server", "PASS", 20, None)
    assert v["note"].startswith("20 of 20 streams not per token (320 tokens in 20 chunks): decode speed from")
    assert v["server"]["metric"] == "vllm:request_time_per_output_token_seconds"
    v = decode_verdict(chat_result(0.0, None, 20, {0.01: 18, 0.1: 2}))  # 0.90 at <= 50 ms
    assert (v["source"], v["status"]) == ("server", "FAIL")


def test_burst_decode_without_server_metrics_is_inconclusive():
    result = chat_result(0.0, None, 20, {0.01: 20})
    result.measurements[0].server = None
    v = decode_verdict(result)
    assert (v["status"], v["measured"], v["passed"]) == ("INCONCLUSIVE", None, False)


def test_per_token_decode_is_judged_on_the_client_with_the_server_beside_it():
    v = decode_verdict(chat_result(1.0, [40.0] * 20, 20, {0.025: 20}))
    assert (v["source"], v["status"], v["client"]) == ("client", "PASS", {"value": 40.0, "samples": 20})
    assert v["server"]["bucket"] == [40.0, 100.0]  # TPOT p95 in (10, 25] ms
    assert v["disagree"] is False
    v = decode_verdict(chat_result(1.0, [400.0] * 20, 20, {0.025: 20}))  # 400 > 100 x 1.25
    assert v["disagree"] is True


def test_fewer_samples_than_the_percentile_needs_is_insufficient_not_pass():
    s95 = slo.SEED_SLOS[0]
    assert (s95.min_samples, slo.SEED_SLOS[2].min_samples) == (20, 20)
    from toolkit.bench.stats import summarize

    assert slo.judge(s95, summarize([10.0] * 19), 1).status == "INSUFFICIENT"
    assert slo.judge(s95, summarize([10.0] * 20), 1).status == "PASS"
    v = decode_verdict(chat_result(0.0, None, 10, {0.01: 10}))
    assert (v["status"], v["samples"]) == ("INSUFFICIENT", 10)
    assert v["note"] == "insufficient samples: 10 < 20 for a p5"


# --- Continue-shaped requests ---------------------------------------------------------------------


def test_fim_prompt_and_stops_come_from_the_tier_tables_family():
    tiers = load_tiers()
    fim = workloads.fim_for_family(workloads.family_of("qwen2.5-coder-1.5b-base", tiers), tiers)
    family = tiers["families"]["Qwen2.5-Coder"]["fim"]
    assert fim.stop == tuple(family["stop"])
    assert fim.render("def f(", "):\n") == family["template"].replace("{{{prefix}}}", "def f(").replace(
        "{{{suffix}}}", "):\n"
    )
    # A placeholder inside the code is code, not a placeholder.
    assert fim.render("x = '{{{suffix}}}'", "S").count("S") == 1
    with pytest.raises(Exception, match="unknown model family 'Nope'"):
        workloads.fim_for_family("Nope", tiers)


def test_cursors_are_cut_from_real_files_at_the_same_place_every_run():
    tree = Path(__file__).resolve().parent.parent / "toolkit" / "bench"
    from toolkit.bench import search

    files = search.collect(tree)
    a, b = workloads.cursors(tree, files), workloads.cursors(tree, files)
    assert a == b and len(a) >= 8
    for c in a:
        text = (tree / c.path).read_text()
        assert c.prefix + c.suffix in text
        assert 0 < len(c.prefix) <= workloads.PREFIX_CHARS and len(c.suffix) <= workloads.SUFFIX_CHARS
        assert text.count("\n", 0, text.index(c.prefix + c.suffix) + len(c.prefix)) + 1 == c.line


def test_second_chat_turn_shares_the_first_turns_prompt():
    first = workloads.first_turn("s-1", "```a.py\ncode\n```\n", 0)
    second = workloads.second_turn(first, "an answer", 0)
    assert second[: len(first)] == first
    assert second[len(first)] == {"role": "assistant", "content": "an answer"}
    assert workloads.first_turn("s-2", "ctx", 0)[0] != first[0]  # each first turn starts cold


# --- search latency against index size, at a CI-sized point ----------------------------------------


def test_search_scaling_point_measures_flat_and_ann_with_recall_against_flat(tmp_path):
    from toolkit.bench import search

    p = search.scale_point(4000, 64, tmp_path, queries=20, k=10)
    assert (p.rows, p.dims, p.queries, p.k) == (4000, 64, 20, 10)
    assert p.ann == {"index_type": "IVF_PQ", "num_partitions": 63, "num_sub_vectors": 4, "nprobes": 20,
                     "refine_factor": 10}  # fmt: skip
    assert 0.0 < p.recall_at_k <= 1.0
    assert 0 < p.flat_ms["p50"] <= p.flat_ms["p95"] and 0 < p.ann_ms["p50"] <= p.ann_ms["p95"]
    assert list(tmp_path.iterdir()) == []  # the table is dropped afterwards


def test_synthetic_vectors_are_unit_length_and_the_same_for_a_seed():
    import numpy as np

    from toolkit.bench import search

    a = np.concatenate(list(search.synthetic_vectors(1200, 16, seed=3, batch=500)))
    b = np.concatenate(list(search.synthetic_vectors(1200, 16, seed=3, batch=500)))
    assert a.shape == (1200, 16) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_a_server_figure_in_the_lowest_bucket_is_only_a_bound_and_search_may_be_slower():
    text = "\n".join(
        [f'vllm:e2e_request_latency_seconds_bucket{{le="{le}"}} {c}' for le, c in ((0.3, 20), (0.5, 20))]
        + [
            'vllm:e2e_request_latency_seconds_bucket{le="+Inf"} 20',
            "vllm:e2e_request_latency_seconds_count 20",
            "vllm:e2e_request_latency_seconds_sum 2.0",
        ]  # fmt: skip
    )
    view = metrics.view(metrics.parse(""), metrics.parse(text))
    m = Measurement("search", 1, {"latency_ms": [376.0] * 20}, 20, 1.0, view)
    v = next(
        x
        for x in document.verdicts(BenchResult("t", Settings(concurrency=(1,)), {}, [m]))
        if x["metric"] == m.workload + ".latency_ms"
    )
    assert v["server"]["value"] is None and v["server"]["bucket"] == [0.0, 300.0]
    assert tables.server_cell(v["server"], "ms") == "<= 300 ms (20)"
    # The client timed the embedding and LanceDB, the server the embedding: slower is no disagreement.
    assert (v["status"], v["disagree"]) == ("FAIL", False)


def test_prompt_budgets_fit_the_served_context_by_the_servers_own_tokenizer():
    """The sandbox's tiny model serves 2048 tokens and its tokenizer makes ~2 characters a token:
    4000 characters of code (the ~4 characters a token guess) overflow it and vLLM answers 400. The
    bench asks /tokenize (in-process stand-in here: httpx.MockTransport, not a network server) and
    fits the budget; a server without /tokenize keeps the default."""
    from toolkit.bench.client import Api, Resolved
    from toolkit.bench.endpoints import Endpoint
    from toolkit.bench.runner import fit_chars

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize":
            prompt = json.loads(request.content)["prompt"]
            return httpx.Response(200, json={"count": len(prompt) // 2, "max_model_len": 2048})
        return httpx.Response(404)

    async def run(listed: dict | None, transport) -> int:
        async with httpx.AsyncClient(transport=transport) as client:
            r = Resolved(Endpoint("autocomplete", "http://127.0.0.1:8001", ("autocomplete",)), "autocomplete", listed)
            return await fit_chars(Api(client, None), r, "x" * 8000, 128, 4000)

    fitted = asyncio.run(run({"max_model_len": 2048}, httpx.MockTransport(handler)))
    assert fitted == int((2048 - 128) * 2 * 0.8) == 3072
    assert fitted // 2 + 128 <= 2048
    assert asyncio.run(run({"max_model_len": 2048}, httpx.MockTransport(lambda req: httpx.Response(404)))) == 4000
    assert asyncio.run(run(None, httpx.MockTransport(handler))) == 4000
