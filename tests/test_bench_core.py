"""The bench's pure core on fixed numbers: percentiles, SLO verdicts, /metrics parsing, endpoint
resolution, chunking, the JSON schema and the plot. No server is involved here; the same code is
exercised against real vLLM servers in test_bench_live.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from toolkit.bench import document, endpoints, metrics, plot, search, slo, stats
from toolkit.bench.metrics import ServerView
from toolkit.bench.runner import BenchResult, Measurement, SearchInfo, ServerReport, Settings
from toolkit.errors import UsageError

# --- stats -----------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0, 5, 50, 95, 99, 100])
def test_percentile_matches_numpy_linear_method(q):
    values = [12.0, 3.5, 7.25, 100.0, 41.0, 8.0, 9.5]
    assert stats.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_summary_of_ten_samples_has_interpolated_tail_and_count():
    s = stats.summarize([float(v) for v in range(1, 11)])
    assert (s.n, s.min, s.max, s.mean) == (10, 1.0, 10.0, 5.5)
    assert s.p50 == pytest.approx(5.5)
    assert s.p95 == pytest.approx(9.55)
    assert s.p99 == pytest.approx(9.91)
    assert s.p5 == pytest.approx(1.45)


def test_summary_of_no_samples_is_none_and_percentile_refuses():
    assert stats.summarize([]) is None
    with pytest.raises(ValueError):
        stats.percentile([], 50)


# --- SLO verdicts ----------------------------------------------------------------------------


def _summary(p95=0.0, p5=0.0, n=20):
    return stats.Summary(n=n, mean=0, min=0, max=0, p5=p5, p50=0, p95=p95, p99=0)


def test_autocomplete_p95_of_299_ms_passes_and_300_ms_fails():
    ac = slo.SEED_SLOS[0]
    assert ac.metric == "autocomplete.latency_ms"
    assert slo.judge(ac, _summary(p95=299.9), 1).passed is True
    v = slo.judge(ac, _summary(p95=300.0), 4)
    assert (v.passed, v.measured, v.samples, v.concurrency) == (False, 300.0, 20, 4)


def test_decode_speed_is_judged_on_its_slow_tail_at_least_20_tokens_per_s():
    dec = next(s for s in slo.SEED_SLOS if s.metric == "chat.decode_tps")
    assert slo.judge(dec, _summary(p5=20.0, p95=1.0), 1).passed is True
    assert slo.judge(dec, _summary(p5=19.99, p95=500.0), 1).passed is False


def test_seed_slo_thresholds_are_the_seed_promises():
    assert [(s.metric, s.stat, s.op, s.threshold) for s in slo.SEED_SLOS] == [
        ("autocomplete.latency_ms", "p95", "<", 300),
        ("chat.ttft_ms", "p95", "<", 5000),
        ("chat.decode_tps", "p5", ">=", 20),
        ("search.latency_ms", "p95", "<", 200),
    ]


def test_every_slo_is_judged_at_every_level_and_an_unmeasured_one_is_inconclusive():
    r = _result()
    r.measurements = [m for m in r.measurements if not (m.workload == "search" and m.concurrency == 2)]
    vs = document.verdicts(r)
    assert len(vs) == 8
    open_ = [(v["metric"], v["concurrency"], v["status"]) for v in vs if not v["passed"]]
    assert open_ == [("autocomplete.latency_ms", 2, "FAIL"), ("search.latency_ms", 2, "INCONCLUSIVE")]
    assert slo.all_passed([]) is False


# --- /metrics --------------------------------------------------------------------------------

BEFORE = """\
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="chat"} 3.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="chat"} 2.0
vllm:generation_tokens_total{engine="0",model_name="chat"} 100.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.01",model_name="chat"} 1.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="chat"} 4.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="1.0",model_name="chat"} 5.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="chat"} 5.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="chat"} 5.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="chat"} 0.5
vllm:request_decode_time_seconds_sum{engine="0",model_name="chat"} 1.0
python_info{implementation="CPython",version="3.11.7"} 1.0
"""
AFTER = """\
vllm:request_success_total{engine="0",finished_reason="stop",model_name="chat"} 3.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="chat"} 12.0
vllm:generation_tokens_total{engine="0",model_name="chat"} 740.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.01",model_name="chat"} 1.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="chat"} 10.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="1.0",model_name="chat"} 15.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="chat"} 15.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="chat"} 15.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="chat"} 3.5
vllm:request_decode_time_seconds_sum{engine="0",model_name="chat"} 5.0
"""


def test_metrics_deltas_sum_over_labels_and_subtract_the_before_scrape():
    v = metrics.view(metrics.parse(BEFORE), metrics.parse(AFTER))
    assert v.requests == 10.0
    assert v.generation_tokens == 640.0
    assert v.ttft.count == 10.0 and v.ttft.sum == pytest.approx(3.0)
    assert v.ttft.buckets == ((0.01, 0.0), (0.1, 6.0), (1.0, 10.0), (float("inf"), 10.0))
    # Prometheus histogram_quantile: the 5th of 10 lies in (0.01, 0.1], 5/6 of the way through.
    assert v.ttft.quantile(0.5) == pytest.approx(0.01 + 0.09 * 5 / 6)
    assert v.ttft.quantile(0.95) == pytest.approx(0.1 + 0.9 * 3.5 / 4)
    # 640 tokens for 10 requests: 630 came after a first token, decoded in 4 s.
    assert v.decode_s == pytest.approx(4.0)
    assert v.decode_tokens_per_s == pytest.approx(157.5)


def test_metrics_parser_reads_labels_with_escapes_and_rejects_a_non_metrics_page():
    (s,) = metrics.parse('m{a="x\\"y",le="+Inf"} 2.5 1700000000000')
    assert s.name == "m" and dict(s.labels) == {"a": 'x"y', "le": "+Inf"} and s.value == 2.5
    with pytest.raises(ValueError, match="line 1"):
        metrics.parse("<html>hello</html>")
    assert metrics.has_vllm_metrics(metrics.parse("python_info 1")) is False


def test_histogram_quantile_of_an_empty_delta_is_none():
    h = metrics.histogram(metrics.parse(AFTER), metrics.TTFT)
    assert h.minus(h).quantile(0.5) is None


# --- endpoints -------------------------------------------------------------------------------

PLAN = {
    "schema": 1,
    "services": {
        "chat": {"served_model_name": "chat", "served_model_names": ["chat"], "model": "Qwen/X", "port": 8000},
        "autocomplete": {"shared_with": "chat", "served_model_name": "autocomplete", "port": 8000, "model": "Q/Y"},
        "embed": {"backend": "ollama", "model": "nomic-embed-text", "served_model_name": "embed", "port": 11434},
    },
}


def test_plan_endpoints_use_plan_ports_on_loopback_and_its_model_names():
    eps = endpoints.from_plan(PLAN)
    assert (eps.chat.root, eps.chat.models) == ("http://127.0.0.1:8000", ("chat",))
    assert (eps.autocomplete.root, eps.autocomplete.models) == ("http://127.0.0.1:8000", ("autocomplete",))
    assert (eps.embed.root, eps.embed.models) == ("http://127.0.0.1:11434", ("embed", "nomic-embed-text"))
    assert eps.chat.api == "http://127.0.0.1:8000/v1"


def test_plan_wrapped_in_toolkit_plan_and_an_ipv6_host_are_accepted():
    eps = endpoints.from_plan({"toolkit_plan": PLAN}, host="::1")
    assert eps.embed.root == "http://[::1]:11434"


def test_plan_without_a_port_is_a_usage_error_naming_the_service():
    bad = {"services": {**PLAN["services"], "embed": {"model": "m"}}}
    with pytest.raises(UsageError, match=r"services\.embed\.port"):
        endpoints.from_plan(bad)


@pytest.mark.parametrize(
    "url, root",
    [
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8001/", "http://127.0.0.1:8001"),
        ("https://ws.example:443", "https://ws.example:443"),
    ],
)
def test_urls_normalise_to_the_server_root(url, root):
    assert endpoints.normalize_url(url, "--chat-url") == root


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://h:1", "http://h:1/v1/chat/completions", "http://h:x"])
def test_bad_urls_are_usage_errors(url):
    with pytest.raises(UsageError, match="--chat-url"):
        endpoints.normalize_url(url, "--chat-url")


def test_api_key_from_file_beats_env_and_an_open_file_gets_a_warning(tmp_path):
    f = tmp_path / "key"
    f.write_text("from-file\n")
    f.chmod(0o644)
    key, warning = endpoints.read_api_key(f, {"TOOLKIT_API_KEY": "from-env"})
    assert key == "from-file" and "chmod 600" in warning
    f.chmod(0o600)
    assert endpoints.read_api_key(f, {}) == ("from-file", None)
    assert endpoints.read_api_key(None, {"VLLM_API_KEY": "v", "TOOLKIT_API_KEY": "t"}) == ("t", None)
    assert endpoints.read_api_key(None, {}) == (None, None)
    f.write_text("")
    with pytest.raises(UsageError, match="non-empty"):
        endpoints.read_api_key(f, {})
    with pytest.raises(UsageError, match="cannot read"):
        endpoints.read_api_key(tmp_path / "missing", {})


def test_plan_file_that_is_not_yaml_is_a_usage_error(tmp_path):
    p = tmp_path / "plan.yaml"
    p.write_text("services: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        endpoints.load_plan(p)


# --- search chunking -------------------------------------------------------------------------


def test_chunks_cover_every_line_once_within_the_line_and_size_limits():
    text = "\n".join(f"line {i} " + "x" * (i % 50) for i in range(1, 101))
    chunks = search.chunk("a.py", text, lines=30, chars=800)
    covered = [n for c in chunks for n in range(c.start_line, c.end_line + 1)]
    assert covered == list(range(1, 101))
    assert all(c.end_line - c.start_line < 30 and len(c.text) <= 800 for c in chunks)
    assert chunks[0].text.splitlines()[0] == "line 1 x"


def test_an_overlong_line_is_cut_and_blank_files_give_no_chunks():
    (c,) = search.chunk("min.js", "a" * 10_000, chars=1500)
    assert len(c.text) == 1500
    assert search.chunk("empty.py", "\n\n  \n") == []


def test_collect_skips_environments_caches_and_binaries(tmp_path):
    for rel in [
        "src/app.py",
        "src/util.ts",
        ".venv/lib/x.py",
        "node_modules/m/i.js",
        "src/__pycache__/a.py",
        "img.png",
        ".git/config",
        "docs/guide.md",
    ]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("content\n")
    got = [p.relative_to(tmp_path).as_posix() for p in search.collect(tmp_path)]
    assert got == ["docs/guide.md", "src/app.py", "src/util.ts"]


def test_default_code_tree_is_this_repository():
    assert search.default_tree() == Path(__file__).resolve().parent.parent


# --- report ----------------------------------------------------------------------------------


def _result() -> BenchResult:
    n = 20
    s = Settings(concurrency=(1, 2), requests=n, code_tree=Path("/src"))
    r = BenchResult(
        "2026-01-01T00:00:00+00:00",
        s,
        {
            "chat": ("http://127.0.0.1:8000", "chat"),
            "autocomplete": ("http://127.0.0.1:8000", "autocomplete"),
            "embed": ("http://127.0.0.1:11434", "embed"),
        },
    )
    r.measured = {"roles": {}, "servers": {}, "device": {"kind": "cpu"}, "fim": {"family": None}}
    chat = {"ttft_ms": [400.0] * n, "decode_tps": [30.0] * n, "per_token": [1.0] * n, "chunks": [16.0] * n,
            "tokens": [16.0] * n}  # fmt: skip
    for c in (1, 2):
        r.measurements += [
            Measurement(
                "autocomplete", c, {"latency_ms": [100.0] * 18 + [290.0, 310.0 * c], "tokens": [64.0] * n}, n, 1.0
            ),  # fmt: skip
            Measurement("chat", c, chat, n, 2.0),
            Measurement("chat_followup", c, {**chat, "ttft_ms": [100.0] * n}, n, 2.0),
            Measurement("embed", c, {"latency_ms": [20.0] * n}, n, 0.1),
            Measurement("search", c, {"latency_ms": [40.0] * n}, n, 0.2),
        ]
    h = metrics.histogram(metrics.parse(AFTER), metrics.TTFT)
    r.servers = [
        ServerReport("http://127.0.0.1:8000", ["chat", "autocomplete"], 12, 700, ServerView(12, 700, h, 17.2)),
        ServerReport("http://127.0.0.1:11434", ["embed"], 12, 0, None),
    ]
    r.search = SearchInfo("/src", 3, 10, 384, 1.5, 5, "q", [search.Hit("a.py", 1, 30, 0.5)])
    return r


def test_report_json_matches_its_schema_and_fails_the_slo_that_was_missed():
    doc = document.build(_result())
    jsonschema.validate(json.loads(document.to_json(doc)), document.REPORT_SCHEMA)
    missed = [(v["metric"], v["concurrency"]) for v in doc["slos"] if not v["passed"]]
    # autocomplete p95 at c=1 interpolates to 291 ms (pass), at c=2 to 306.5 ms (fail).
    assert missed == [("autocomplete.latency_ms", 2)]
    assert [v["measured"] for v in doc["slos"] if v["metric"] == "autocomplete.latency_ms"] == pytest.approx(
        [291.0, 306.5]
    )
    assert (doc["passed"], doc["verdict"]) == (False, "FAIL")
    assert doc["servers"][1]["server"] is None


def test_schema_rejects_a_report_without_slo_verdicts():
    doc = document.build(_result())
    del doc["slos"][0]["passed"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, document.REPORT_SCHEMA)


def test_plot_is_self_contained_html_with_one_line_per_level_and_the_slo_marked():
    page = plot.plot_html(document.build(_result()))
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"<script|<link|<img|src=|href=|url\(|@import|https?://", page)
    assert page.count("<svg") == 6
    assert page.count('class="ecdf"') == 12  # six metrics at two levels
    assert page.count('class="slo"') == 4  # embedding latency and the second chat turn have no SLO
    assert "FAIL" in page and "PASS" in page
