"""`toolkit bench` refuses clearly: bad arguments (exit 2), an endpoint that is down or answers
wrongly (exit 3), always one line and never a traceback.

The "wrong answer" servers here are real HTTP servers on loopback (http.server in a thread) that
answer what a misconfigured or foreign service would: they stand in for a broken deployment, not
for vLLM; vLLM's own refusals (unknown model, missing key) are tested in test_bench_live.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import REPO


def run_bench(*args: str, cwd=None, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TOOLKIT_API_KEY", "VLLM_API_KEY")}
    env.update({"COLUMNS": "200", **(env_extra or {})})
    return subprocess.run(
        [sys.executable, "-m", "toolkit", "bench", *args],
        capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=600,
    )  # fmt: skip


def closed_port() -> int:
    # Bound and closed again: nothing listens there, a connect is refused at once.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("toolkit: error: ")
    return lines[0]


class FakeServer(BaseHTTPRequestHandler):
    """Answers by ``mode``: "garbage" 200 text everywhere; "models-then-garbage" a good model list
    then 200 text for real requests; "models-then-404" a good model list, then vLLM-style 404s."""

    mode = "garbage"

    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, body: str, ctype: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.mode != "garbage" and self.path == "/v1/models":
            models = [{"id": n, "object": "model"} for n in ("chat", "autocomplete", "embed")]
            self._send(200, json.dumps({"object": "list", "data": models}), "application/json")
        else:
            self._send(200, "<html>Welcome to nginx!</html>", "text/html")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.mode == "models-then-404":
            err = {"error": {"message": "The model `embed` does not exist.", "type": "NotFoundError", "code": 404}}
            self._send(404, json.dumps(err), "application/json")
        else:
            self._send(200, "garbage")


@pytest.fixture
def fake_server(request) -> Iterator[str]:
    handler = type("Handler", (FakeServer,), {"mode": request.param})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_down_endpoint_is_one_line_and_exit_3(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    proc = run_bench("--chat-url", url, "--autocomplete-url", url, "--embed-url", url, "--out", str(tmp_path / "o"))
    line = one_error_line(proc)
    assert proc.returncode == 3
    assert f"chat endpoint {url[:-3]} is down" in line
    assert not (tmp_path / "o").exists()  # nothing measured, nothing written


@pytest.mark.parametrize("fake_server", ["garbage"], indirect=True)
def test_server_answering_200_garbage_is_a_clear_error_exit_3(fake_server, tmp_path):
    proc = run_bench(
        "--chat-url",
        fake_server,
        "--autocomplete-url",
        fake_server,
        "--embed-url",
        fake_server,
        "--out",
        str(tmp_path / "o"),
    )
    line = one_error_line(proc)
    assert proc.returncode == 3
    assert "answered GET /v1/models with something that is not JSON" in line


@pytest.mark.parametrize("fake_server", ["models-then-garbage"], indirect=True)
def test_garbage_answer_to_a_real_request_is_a_clear_error_exit_3(fake_server, tmp_path):
    proc = run_bench(
        "--chat-url",
        fake_server,
        "--autocomplete-url",
        fake_server,
        "--embed-url",
        fake_server,
        "--code-tree",
        str(REPO / "toolkit" / "bench"),
        "--out",
        str(tmp_path / "o"),
    )
    line = one_error_line(proc)
    assert proc.returncode == 3
    assert "embed endpoint" in line and "POST /v1/embeddings with something that is not JSON" in line


@pytest.mark.parametrize("fake_server", ["models-then-404"], indirect=True)
def test_404_answer_names_the_status_and_the_server_message(fake_server, tmp_path):
    proc = run_bench(
        "--chat-url",
        fake_server,
        "--autocomplete-url",
        fake_server,
        "--embed-url",
        fake_server,
        "--code-tree",
        str(REPO / "toolkit" / "bench"),
        "--out",
        str(tmp_path / "o"),
    )
    line = one_error_line(proc)
    assert proc.returncode == 3
    assert "HTTP 404 to POST /v1/embeddings: The model `embed` does not exist." in line


@pytest.mark.parametrize(
    "args, message",
    [
        (["--plan", "p.json", "--chat-url", "http://127.0.0.1:1"], "either --plan or the --*-url options"),
        (["--chat-url", "http://127.0.0.1:1"], "give --plan FILE, or all of"),
        (["--plan", "missing.json"], "cannot read plan missing.json"),
        (["--plan", "p.json", "--concurrency", "1,x"], "--concurrency '1,x'"),
        (["--plan", "p.json", "--concurrency", "0"], "every level must be 1 or more"),
        (["--plan", "p.json", "--code-tree", "nowhere"], "--code-tree nowhere is not a directory"),
        (
            [
                "--chat-url",
                "http://127.0.0.1:1",
                "--autocomplete-url",
                "http://127.0.0.1:1",
                "--embed-url",
                "http://127.0.0.1:1",
                "--autocomplete-family",
                "Nope",
            ],
            "unknown model family 'Nope' (tiers.yaml families: Qwen2.5-Coder, Qwen3-Coder, CodeLlama)",
        ),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "p.json").write_text(json.dumps({"services": {}}))
    proc = run_bench(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in one_error_line(proc)


def test_help_documents_the_slos_and_exit_codes():
    proc = run_bench("--help")
    assert proc.returncode == 0
    out = " ".join(proc.stdout.split())
    for text in (
        "p95 < 300 ms",
        "p95 < 5000 ms",
        "p5 >= 20 tokens/s",
        "p95 < 200 ms",
        "0 every SLO passed",
        "1 an SLO failed",
        "3 an endpoint is down",
    ):
        assert text in out
