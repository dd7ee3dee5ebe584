"""HTTP calls to the OpenAI-compatible endpoints, and the translation of their failures.

Every failure becomes an EnvironmentProblem (exit 3) with one line that names the endpoint and
says what went wrong: down (nothing listens), refused the key, or answered something that is not
an OpenAI answer. A bench that cannot measure must not print numbers.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx

from toolkit.bench.endpoints import Endpoint, Endpoints
from toolkit.errors import EnvironmentProblem


class EndpointDown(EnvironmentProblem):
    """Nothing answers at the endpoint (connection refused, DNS, timeout)."""


class BadAnswer(EnvironmentProblem):
    """The endpoint answered, but not as an OpenAI-compatible server serving that model would."""


@dataclass(frozen=True)
class Resolved:
    """An endpoint with the model name the server really lists."""

    endpoint: Endpoint
    model: str
    listed: dict | None = None  # the server's /v1/models entry (vLLM: root = the weights, max_model_len)

    @property
    def label(self) -> str:
        return f"{self.endpoint.role} endpoint {self.endpoint.root}"


def headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _short(text: str, limit: int = 120) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 3] + "..."


def _error_message(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error")
        if isinstance(err, dict) and err.get("message"):
            return _short(str(err["message"]))
        if isinstance(err, str):
            return _short(err)
    except (ValueError, AttributeError):
        pass
    return _short(resp.text) or "(empty body)"


def check_status(resp: httpx.Response, label: str, what: str) -> None:
    """Raise the right one-line error for a non-200 answer."""
    if resp.status_code == 200:
        return
    if resp.status_code == 401:
        raise BadAnswer(
            f"{label} refused the API key (HTTP 401) on {what}: pass --api-key-file or set $TOOLKIT_API_KEY"
        )
    raise BadAnswer(f"{label} answered HTTP {resp.status_code} to {what}: {_error_message(resp)}")


def down(err: httpx.HTTPError, label: str) -> EnvironmentProblem:
    if isinstance(err, httpx.TimeoutException):
        return EndpointDown(f"{label} did not answer in time ({type(err).__name__})")
    if isinstance(err, httpx.ConnectError):
        return EndpointDown(f"{label} is down: {_short(str(err)) or 'connection refused'}")
    return EndpointDown(f"{label}: {type(err).__name__}: {_short(str(err))}")


def _json(resp: httpx.Response, label: str, what: str) -> dict:
    try:
        data = resp.json()
    except ValueError:
        raise BadAnswer(f"{label} answered {what} with something that is not JSON: {_short(resp.text, 60)!r}") from None
    if not isinstance(data, dict):
        raise BadAnswer(f"{label} answered {what} with JSON that is not an object")
    return data


def resolve(client: httpx.Client, endpoints: Endpoints, api_key: str | None) -> dict[str, Resolved]:
    """Check every endpoint answers /v1/models and serves its model; role -> Resolved."""
    out = {}
    for ep in endpoints.all():
        label = f"{ep.role} endpoint {ep.root}"
        try:
            resp = client.get(f"{ep.api}/models", headers=headers(api_key))
        except httpx.HTTPError as err:
            raise down(err, label) from None
        check_status(resp, label, "GET /v1/models")
        data = _json(resp, label, "GET /v1/models")
        listed = data.get("data")
        if not isinstance(listed, list) or not all(isinstance(m, dict) and "id" in m for m in listed):
            raise BadAnswer(f"{label} answered GET /v1/models without an OpenAI model list")
        served = [str(m["id"]) for m in listed]
        entries = {str(m["id"]): m for m in listed}
        # Ollama lists "nomic-embed-text:latest" for a model pulled as "nomic-embed-text".
        match = next((s for name in ep.models for s in served if s in (name, f"{name}:latest")), None)
        if match is None:
            raise BadAnswer(
                f"{label} does not serve model {' or '.join(map(repr, ep.models))} "
                f"(it serves: {', '.join(served) or 'nothing'})"
            )
        out[ep.role] = Resolved(ep, match, entries[match])
    return out


# A stream counts as per token when its first chunk carries one token and at least this share of
# its tokens arrived in chunks of their own; otherwise arrival times do not support a decode speed.
PER_TOKEN_SHARE = 0.9


def stream_sample(start: float, end: float, arrivals: list[tuple[float, int | None]], tokens: int) -> dict[str, float]:
    """The client's figures for one stream, from the arrival time (and token count) of each chunk.

    ``arrivals`` lists the chunks that carried tokens; the token count is None when the server did
    not say (no continuous usage), and then the stream is per token only if chunks == tokens.
    """
    first = arrivals[0][0]
    counts = [n for _, n in arrivals]
    if all(n is not None for n in counts):
        singles = sum(1 for n in counts if n == 1)
        per_token = counts[0] == 1 and tokens > 0 and singles >= PER_TOKEN_SHARE * tokens
    else:
        per_token = len(arrivals) == tokens
    gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:], strict=False)]
    out = {
        "ttft_ms": (first - start) * 1000.0,
        "latency_ms": (end - start) * 1000.0,
        "tokens": float(tokens),
        "chunks": float(len(arrivals)),
        "per_token": 1.0 if per_token else 0.0,
        "max_gap_ms": max(gaps) * 1000.0 if gaps else 0.0,
    }
    last = arrivals[-1][0]
    if per_token and tokens > 1 and last > first:
        # vLLM's serving-benchmark definition (1 / TPOT): the tokens after the first, over the time
        # from the first to the last, here measured as they reached the client.
        out["decode_tps"] = (tokens - (counts[0] or 1)) / (last - first)
    return out


def server_version(client: httpx.Client, root: str, api_key: str | None) -> str | None:
    """vLLM's GET /version ({"version": "0.32.0"}), or None for a server without it (Ollama: /api/version)."""
    for path in ("/version", "/api/version"):
        try:
            resp = client.get(f"{root}{path}", headers=headers(api_key))
            if resp.status_code == 200 and isinstance(resp.json().get("version"), str):
                return ("vllm " if path == "/version" else "ollama ") + resp.json()["version"]
        except (httpx.HTTPError, ValueError, AttributeError):
            continue
    return None


class Tally:
    """What the client sent per server root, to set beside what the server counted.

    vLLM counts one finished request per completion and one per embedded input.
    """

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.generation_tokens: Counter[str] = Counter()

    def reset(self) -> None:
        self.requests.clear()
        self.generation_tokens.clear()


class Api:
    """Async calls that return timings; one httpx.AsyncClient for the whole run."""

    def __init__(self, client: httpx.AsyncClient, api_key: str | None, tally: Tally | None = None) -> None:
        self.client = client
        self.headers = headers(api_key)
        self.tally = tally or Tally()

    async def _post(self, r: Resolved, path: str, body: dict) -> tuple[dict, float]:
        start = time.perf_counter()
        try:
            resp = await self.client.post(f"{r.endpoint.api}{path}", json=body, headers=self.headers)
        except httpx.HTTPError as err:
            raise down(err, r.label) from None
        elapsed = time.perf_counter() - start
        check_status(resp, r.label, f"POST /v1{path}")
        return _json(resp, r.label, f"POST /v1{path}"), elapsed

    async def complete(self, r: Resolved, prompt: str, max_tokens: int, stop: tuple[str, ...] = ()) -> dict[str, float]:
        """One autocomplete request as Continue sends it (its FIM prompt and stops); latency is the whole answer."""
        body: dict[str, Any] = {"model": r.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
        if stop:
            body["stop"] = list(stop)
        try:
            data, elapsed = await self._post(r, "/completions", body)
        except BadAnswer as err:
            if stop and "HTTP 400" in str(err) and "stop" in str(err):
                # vLLM refuses more than VLLM_MAX_STOP_STRINGS (4 by default) stop strings, and
                # Continue sends all of a family's stops to a local server unless maxStopWords is set.
                raise BadAnswer(
                    f"{r.label} refused the {len(stop)} stop strings Continue sends for this family "
                    f"(HTTP 400; vLLM allows $VLLM_MAX_STOP_STRINGS, 4 by default): raise it on the server or "
                    f"set maxStopWords in Continue's config.yaml; --max-stop-words N benches with the first N"
                ) from None
            raise
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0].get("text"), str):
            raise BadAnswer(f"{r.label} answered POST /v1/completions without choices[0].text")
        usage = data.get("usage") or {}
        tokens = int(usage.get("completion_tokens") or 0)
        self.tally.requests[r.endpoint.root] += 1
        self.tally.generation_tokens[r.endpoint.root] += tokens
        return {
            "latency_ms": elapsed * 1000.0,
            "tokens": float(tokens),
            "prompt_tokens": float(usage.get("prompt_tokens") or 0),
        }

    async def chat(self, r: Resolved, messages: list[dict[str, str]], max_tokens: int) -> tuple[dict[str, float], str]:
        """One streamed chat answer: its samples and its text.

        ``ignore_eos`` makes every answer max_tokens long, as vLLM's own serving benchmark does.
        ``continuous_usage_stats`` makes vLLM put the running token count in every chunk, so the
        client knows how many tokens each chunk carried: when the API server falls behind the
        engine it merges tokens into one chunk, and arrival times then say nothing about decode
        speed. ``decode_tps`` is only given for a stream that really came token by token.
        """
        body = {
            "model": r.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "ignore_eos": True,
        }
        what = "POST /v1/chat/completions (stream)"
        start = time.perf_counter()
        arrivals: list[tuple[float, int | None]] = []  # (time, tokens in the chunk; None: not told)
        seen_tokens = 0  # running completion_tokens from continuous usage
        continuous = True
        usage: dict = {}
        text: list[str] = []
        try:
            async with self.client.stream(
                "POST", f"{r.endpoint.api}/chat/completions", json=body, headers=self.headers
            ) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    check_status(resp, r.label, what)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank lines, SSE comments and event names carry no tokens
                    now = time.perf_counter()
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    try:
                        event = json.loads(payload)
                    except ValueError:
                        raise BadAnswer(
                            f"{r.label} streamed a chunk that is not JSON: {_short(payload, 60)!r}"
                        ) from None
                    if not isinstance(event, dict):
                        raise BadAnswer(f"{r.label} streamed a chunk that is not a JSON object")
                    content = "".join(
                        str((c.get("delta") or {}).get("content") or "")
                        for c in event.get("choices") or []
                        if isinstance(c, dict)
                    )
                    text.append(content)
                    u = event.get("usage")
                    if isinstance(u, dict) and isinstance(u.get("completion_tokens"), int):
                        usage = u
                        new = u["completion_tokens"] - seen_tokens
                        seen_tokens = u["completion_tokens"]
                        # the usage-only closing chunk (no choices) carries no token
                        if event.get("choices") and new > 0:
                            arrivals.append((now, new))
                    elif event.get("choices"):
                        continuous = False
                        if content:
                            arrivals.append((now, None))
        except httpx.HTTPError as err:
            raise down(err, r.label) from None
        end = time.perf_counter()
        if not arrivals:
            raise BadAnswer(f"{r.label} streamed no tokens for {what}")
        tokens = int(usage["completion_tokens"]) if usage else len(arrivals)
        self.tally.requests[r.endpoint.root] += 1
        self.tally.generation_tokens[r.endpoint.root] += tokens
        out = stream_sample(start, end, arrivals if continuous else [(t, None) for t, _ in arrivals], tokens)
        out["prompt_tokens"] = float(usage.get("prompt_tokens") or 0) if usage else 0.0
        return out, "".join(text)

    async def embed(self, r: Resolved, inputs: list[str]) -> tuple[list[list[float]], float]:
        """Vectors for ``inputs`` and the seconds it took; too-long inputs are cut to the model's length."""
        body = {"model": r.model, "input": inputs, "truncate_prompt_tokens": -1}
        data, elapsed = await self._post(r, "/embeddings", body)
        items = data.get("data")
        if not isinstance(items, list) or len(items) != len(inputs):
            raise BadAnswer(f"{r.label} answered POST /v1/embeddings without one embedding per input")
        vectors: list[list[float]] = [[]] * len(inputs)
        for item in items:
            vec = item.get("embedding") if isinstance(item, dict) else None
            idx = item.get("index", 0) if isinstance(item, dict) else 0
            if not isinstance(vec, list) or not vec or not isinstance(vec[0], (int, float)):
                raise BadAnswer(f"{r.label} answered POST /v1/embeddings with an embedding that is not numbers")
            if not isinstance(idx, int) or not 0 <= idx < len(inputs):
                raise BadAnswer(f"{r.label} answered POST /v1/embeddings with a bad index {idx!r}")
            vectors[idx] = vec
        self.tally.requests[r.endpoint.root] += len(inputs)
        return vectors, elapsed
