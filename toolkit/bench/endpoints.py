"""Where the bench sends its requests: from a saved plan or from URLs, plus the API key.

Pure resolution (``from_plan``, ``from_urls``) is kept apart from reading files and the
environment (``load_plan``, ``read_api_key``) so the first is tested on plain dicts.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from toolkit.errors import UsageError

# Environment variables read for the API key when no --api-key-file is given, in order.
API_KEY_ENV = ("TOOLKIT_API_KEY", "VLLM_API_KEY")


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI-compatible service: ``root`` is scheme://host:port, the API lives under /v1."""

    role: str  # chat, autocomplete or embed
    root: str
    models: tuple[str, ...]  # names the model may be served under, preferred first

    @property
    def api(self) -> str:
        return f"{self.root}/v1"


@dataclass(frozen=True)
class Endpoints:
    chat: Endpoint
    autocomplete: Endpoint
    embed: Endpoint

    def all(self) -> tuple[Endpoint, ...]:
        return (self.chat, self.autocomplete, self.embed)


def normalize_url(url: str, what: str) -> str:
    """scheme://host:port of a URL given as http://h:p, http://h:p/ or http://h:p/v1."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{what}: {url!r} is not an http(s) URL such as http://127.0.0.1:8000/v1")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise UsageError(f"{what}: {url!r} has a bad port") from None
    path = parts.path.rstrip("/")
    if path not in ("", "/v1"):
        raise UsageError(f"{what}: {url!r}: give the server's base URL (ending in the port or /v1)")
    return f"{parts.scheme}://{parts.netloc}"


def from_urls(
    chat_url: str,
    autocomplete_url: str,
    embed_url: str,
    chat_model: str = "chat",
    autocomplete_model: str = "autocomplete",
    embed_model: str = "embed",
) -> Endpoints:
    return Endpoints(
        chat=Endpoint("chat", normalize_url(chat_url, "--chat-url"), (chat_model,)),
        autocomplete=Endpoint(
            "autocomplete", normalize_url(autocomplete_url, "--autocomplete-url"), (autocomplete_model,)
        ),
        embed=Endpoint("embed", normalize_url(embed_url, "--embed-url"), (embed_model,)),
    )


def _service(services: Mapping, name: str) -> Mapping:
    svc = services.get(name)
    if not isinstance(svc, Mapping):
        raise UsageError(f"plan: services.{name} is missing")
    port = svc.get("port")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise UsageError(f"plan: services.{name}.port is not a port number: {port!r}")
    return svc


def from_plan(plan: Mapping, host: str = "127.0.0.1") -> Endpoints:
    """Endpoints of a plan (``toolkit plan --json`` output, or a dict holding ``toolkit_plan``).

    The plan's services bind 127.0.0.1 on the workstation; ``host`` is for a tunnelled port.
    """
    if isinstance(plan.get("toolkit_plan"), Mapping):
        plan = plan["toolkit_plan"]
    services = plan.get("services")
    if not isinstance(services, Mapping):
        raise UsageError("plan: no 'services' mapping (expected `toolkit plan --json` output)")
    netloc = f"[{host}]" if ":" in host else host
    out = {}
    for role in ("chat", "autocomplete", "embed"):
        svc = _service(services, role)
        # An embedding server may list the model under its own name (Ollama: nomic-embed-text)
        # or under the served name; the preflight picks whichever the server really lists.
        names = [svc.get("served_model_name"), *(svc.get("served_model_names") or []), svc.get("model")]
        if role != "embed":
            names = names[:-1] or names
        models = tuple(dict.fromkeys(n for n in names if isinstance(n, str) and n))
        if not models:
            raise UsageError(f"plan: services.{role} names no model")
        out[role] = Endpoint(role, f"http://{netloc}:{svc['port']}", models)
    return Endpoints(**out)


def load_plan(path: Path) -> dict:
    """A plan file, JSON or YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"cannot read plan {path}: {err.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise UsageError(
            f"plan {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {str(err).splitlines()[0]}"
        ) from None
    if not isinstance(data, dict):
        raise UsageError(f"plan {path} is not a mapping")
    return data


def read_api_key(path: Path | None, env: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """(key, warning): the key from ``path``, else from $TOOLKIT_API_KEY or $VLLM_API_KEY, else None.

    A key file others can read gets a warning, not a refusal: the bench only reads it.
    """
    env = os.environ if env is None else env
    if path is None:
        for var in API_KEY_ENV:
            if env.get(var):
                return env[var].strip(), None
        return None, None
    try:
        key = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode
    except OSError as err:
        raise UsageError(f"cannot read API key file {path}: {err.strerror}") from None
    if not key or "\n" in key:
        raise UsageError(f"API key file {path} must hold exactly one non-empty line")
    warning = None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warning = f"API key file {path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
    return key, warning


def plan_models(plan: Mapping) -> dict[str, dict[str, object]]:
    """What the plan says each role serves: weights, tier-table key, revision, quantization."""
    if isinstance(plan.get("toolkit_plan"), Mapping):
        plan = plan["toolkit_plan"]
    services = plan.get("services") if isinstance(plan.get("services"), Mapping) else {}
    out: dict[str, dict[str, object]] = {}
    for role in ("chat", "autocomplete", "embed"):
        svc = services.get(role) if isinstance(services.get(role), Mapping) else {}
        out[role] = {
            k: svc.get(k) for k in ("model", "model_key", "revision", "quantization_label", "dtype", "max_model_len")
        }
    return out
