"""`toolkit bench`: measure the deployed stack against the seed's SLOs."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from toolkit import files
from toolkit.bench import document, plot, runner, tables, workloads
from toolkit.bench import endpoints as ep_mod
from toolkit.errors import CheckFailed, UsageError


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--concurrency {text!r}: give comma-separated whole numbers such as 1,4") from None
    if not levels or any(c < 1 for c in levels):
        raise UsageError(f"--concurrency {text!r}: every level must be 1 or more")
    return tuple(dict.fromkeys(levels))


def bench_cmd(
    plan: Path = typer.Option(
        None,
        "--plan",
        help="A saved plan (`toolkit plan --json > plan.json`, JSON or "
        "YAML): the endpoints are 127.0.0.1 (or --host) on its ports, with its model names.",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Host for the plan's ports (e.g. a tunnelled workstation)."),
    chat_url: str = typer.Option(None, "--chat-url", help="Chat server base URL, e.g. http://127.0.0.1:8000/v1."),
    autocomplete_url: str = typer.Option(None, "--autocomplete-url", help="Autocomplete server base URL."),
    embed_url: str = typer.Option(None, "--embed-url", help="Embedding server base URL (vLLM or Ollama)."),
    chat_model: str = typer.Option("chat", "--chat-model", help="Model name for chat, with the URL options."),
    autocomplete_model: str = typer.Option(
        "autocomplete", "--autocomplete-model", help="Model name for autocomplete, with the URL options."
    ),
    embed_model: str = typer.Option("embed", "--embed-model", help="Model name for embeddings, with the URL options."),
    api_key_file: Path = typer.Option(
        None,
        "--api-key-file",
        help="File holding the servers' API key (one line, "
        "mode 600). Default: $TOOLKIT_API_KEY, then $VLLM_API_KEY, else no key.",
    ),
    concurrency: str = typer.Option(
        "1,4",
        "--concurrency",
        help="Concurrency levels, comma-separated; every workload runs at each and every SLO is judged at each.",
    ),
    requests: int = typer.Option(
        100,
        "--requests",
        min=1,
        help="Measured requests per workload and level (a p95 or p5 needs 20; fewer: INSUFFICIENT).",
    ),
    warmup: int = typer.Option(
        2, "--warmup", min=0, help="Warm-up rounds: WARMUP x C unmeasured requests per workload at each level C."
    ),
    max_tokens: int = typer.Option(
        workloads.AUTOCOMPLETE_MAX_TOKENS, "--max-tokens", min=1, help="Autocomplete max_tokens (the seed's value)."
    ),
    chat_max_tokens: int = typer.Option(
        workloads.CHAT_MAX_TOKENS,
        "--chat-max-tokens",
        min=2,
        help="Tokens per chat answer (decode speed is measured over them).",
    ),
    chat_context_chars: int = typer.Option(
        workloads.CHAT_CONTEXT_CHARS,
        "--chat-context-chars",
        min=100,
        help="Characters of code from --code-tree in each chat question (~4 per token).",
    ),
    autocomplete_context_chars: int = typer.Option(
        workloads.PREFIX_CHARS + workloads.SUFFIX_CHARS,
        "--autocomplete-context-chars",
        min=50,
        help="Characters of code around the cursor per autocomplete prompt (4/5 before it, 1/5 after).",
    ),
    autocomplete_family: str = typer.Option(
        None,
        "--autocomplete-family",
        help="Model family whose FIM template and stops (tiers.yaml families:) autocomplete uses; "
        "default: the plan's autocomplete model's family, else a plain prefix.",
    ),
    max_stop_words: int = typer.Option(
        workloads.MAX_STOP_WORDS,
        "--max-stop-words",
        min=0,
        help="Send the first N of the family's stop strings, as Continue does with maxStopWords N (the "
        "continue role writes 4 for vLLM, whose default limit is 4).",
    ),
    top_k: int = typer.Option(workloads.SEARCH_TOP_K, "--top-k", min=1, help="Hits per codebase search."),
    code_tree: Path = typer.Option(
        None, "--code-tree", help="Code tree to index for search (default: the toolkit's own repository)."
    ),
    out: Path = typer.Option(
        None, "--out", help="Directory for bench.json and latency.html (default: ./bench-results/<UTC time>)."
    ),
    timeout: float = typer.Option(120.0, "--timeout", min=1.0, help="Seconds one request may take."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report on stdout instead of tables."),
) -> None:
    """Measure autocomplete latency, chat time to first token and decode speed, embedding latency and
    codebase search latency (LanceDB over a real code tree) against the seed's SLOs.

    \b
    SLOs (each judged at every concurrency level):
      autocomplete latency      p95 < 300 ms   (max_tokens 64 by default)
      chat time to first token  p95 < 5000 ms  (streamed)
      chat decode speed         p5 >= 20 tokens/s
      codebase search latency   p95 < 200 ms   (embed the query + LanceDB top-k)

    Warms up first, then reads vLLM's /metrics before and after to show what the servers
    counted beside what the client measured. Writes bench.json and latency.html (a
    self-contained plot) to --out.

    \b
    Exit codes: 0 every SLO passed; 1 an SLO failed; 2 bad arguments or plan file;
    3 an endpoint is down or answers wrongly (wrong model, bad key, not an OpenAI answer);
    4 none failed but some could not be judged (INSUFFICIENT samples or INCONCLUSIVE).
    """
    levels = _levels(concurrency)
    if code_tree is not None and not code_tree.is_dir():
        raise UsageError(f"--code-tree {code_tree} is not a directory")
    urls = (chat_url, autocomplete_url, embed_url)
    if plan is not None and any(urls):
        raise UsageError("give either --plan or the --*-url options, not both")
    plan_doc = ep_mod.load_plan(plan) if plan is not None else None
    if plan_doc is not None:
        endpoints = ep_mod.from_plan(plan_doc, host)
    elif all(urls):
        endpoints = ep_mod.from_urls(chat_url, autocomplete_url, embed_url, chat_model, autocomplete_model, embed_model)
    else:
        raise UsageError("give --plan FILE, or all of --chat-url, --autocomplete-url and --embed-url")
    err = Console(stderr=True)
    api_key, warning = ep_mod.read_api_key(api_key_file)
    if warning:
        err.print(f"toolkit: warning: {warning}", highlight=False)
    from toolkit.planning import load_tiers

    tiers = load_tiers()
    plan_models = ep_mod.plan_models(plan_doc) if plan_doc is not None else None
    family = autocomplete_family or workloads.family_of(
        (plan_models or {}).get("autocomplete", {}).get("model_key"), tiers
    )
    fim = workloads.fim_for_family(family, tiers) if family else workloads.PLAIN
    settings = runner.Settings(
        concurrency=levels,
        requests=requests,
        warmup=warmup,
        autocomplete_max_tokens=max_tokens,
        chat_max_tokens=chat_max_tokens,
        chat_context_chars=chat_context_chars,
        autocomplete_context_chars=autocomplete_context_chars,
        fim=fim,
        max_stop_words=max_stop_words,
        plan_models=plan_models,
        top_k=top_k,
        code_tree=code_tree,
        timeout_s=timeout,
    )
    out_dir = out or Path("bench-results") / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:

        def progress(label: str, total: int):
            task = bar.add_task(label, total=total)
            return lambda: bar.advance(task)

        result = runner.run(endpoints, api_key, settings, progress)

    doc = document.build(result)
    json_path, plot_path = out_dir / "bench.json", out_dir / "latency.html"
    try:
        files.write_atomic(json_path, document.to_json(doc))
        files.write_atomic(plot_path, plot.plot_html(doc))
    except OSError as e:
        raise UsageError(f"cannot write to {out_dir}: {e.strerror}") from None

    if as_json:
        sys.stdout.write(document.to_json(doc))
    else:
        console = Console()
        for line in tables.measured_lines(doc):
            console.print(line, highlight=False)
        console.print(tables.slo_table(doc))
        for line in tables.notes(doc):
            console.print(line, highlight=False)
        console.print(tables.measurements_table(doc))
        console.print(tables.servers_table(doc))
        for line in tables.prefix_cache_lines(doc):
            console.print(line, highlight=False)
        for line in tables.search_lines(doc):
            console.print(line, highlight=False)
        console.print(f"Wrote {json_path} and {plot_path}", highlight=False)
    if doc["verdict"] == "FAIL":
        failed = [f"{v['name']} at concurrency {v['concurrency']}" for v in doc["slos"] if v["status"] == "FAIL"]
        raise CheckFailed(f"{len(failed)} of {len(doc['slos'])} SLO checks failed: {'; '.join(failed)}")
    if doc["verdict"] == "INCONCLUSIVE":
        open_ = [
            f"{v['name']} at concurrency {v['concurrency']} ({v['status']})" for v in doc["slos"] if not v["passed"]
        ]
        raise Inconclusive(f"{len(open_)} of {len(doc['slos'])} SLO checks could not be judged: {'; '.join(open_)}")


class Inconclusive(CheckFailed):
    """No SLO failed, but some could not be judged: too few samples, or no figure the run supports."""

    exit_code = 4


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_cmd)
