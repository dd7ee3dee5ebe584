"""CONTINUE-001..007: a workstation's Continue drifted from what the continue role writes.

Static, from the files alone (the audit's StaticInputs: homes, systemd unit directories, root):
the vLLM units say what is served (``--model``, ``--served-model-name``, ``--port``,
``--max-model-len``), tiers.yaml says each served model's family and its FIM template, and each
developer's ~/.continue/config.yaml, index/globalContext.json and editor settings say what Continue
will do; the hosts file says whether the Continue CLI's version check can leave. Why each matters
is in roles/continue/README.md (with the Continue code that reads it). A file that cannot be read
or parsed makes the control INCONCLUSIVE, never PASS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from toolkit.audit import controls
from toolkit.audit.controls import Control, Result
from toolkit.audit.static_checks import _load_doc
from toolkit.audit.vllm_units import vllm_units
from toolkit.planning import load_tiers

# @continuedev/cli 1.5.47 src/version.ts getLatestVersion() fetches
# https://api.continue.dev/cn/info?id=<sha256 of the machine id> when the module loads (line 65, a
# top-level call): autoUpdateCli only stops what UpdateService does with the answer. The name must
# be in toolkit/data/phone_home.yaml with sinkhole: true (the egress_guard role writes the hosts file).
CLI_VERSION_HOST = "api.continue.dev"
CLI_VERSION_REQUEST = "GET https://api.continue.dev/cn/info?id=<machine id> (cn src/version.ts getLatestVersion)"

CONTROLS = (
    Control("CONTINUE-001", "Continue's autocomplete FIM template matches the served model's family", "medium",
            "promptTemplates.autocomplete of the autocomplete model is the family's FIM template (tiers.yaml "
            "families); without it Continue guesses StarCoder's tokens from the served name."),
    Control("CONTINUE-002", "Continue's context lengths are within what vLLM serves", "medium",
            "defaultCompletionOptions.contextLength of each local vLLM model is set and at most the unit's "
            "--max-model-len (Continue assumes 32768 otherwise, and vLLM refuses longer prompts)."),
    Control("CONTINUE-003", "@Codebase reranking is configured consistently", "medium",
            "useReranking true only with a model in role rerank (Continue throws 'No reranker set up')."),
    Control("CONTINUE-004", "Continue's embeddings selection is the managed local model", "medium",
            "selectedModelsByProfileId.local.embed names an embed model of config.yaml, not the built-in "
            "Transformers.js embedder."),
    Control("CONTINUE-005", "Continue CLI auto-update off", "medium",
            "globalContext.json autoUpdateCli is false (otherwise `cn` runs npm i -g and restarts)."),
    Control("CONTINUE-006", "Editor update checks off", "medium",
            "Every editor settings.json present sets update.mode none and extension auto-update/checks off."),
    Control("CONTINUE-007", "Continue CLI version check sinkholed", "medium",
            f"{CLI_VERSION_HOST} resolves to 0.0.0.0/:: in the hosts file: `cn` asks it for its latest "
            "version on every start (GET /cn/info?id=<machine id>) and no setting turns that off."),
)  # fmt: skip
EDITOR_SETTINGS = (
    ".config/Code/User/settings.json",
    ".config/VSCodium/User/settings.json",
    ".local/share/code-server/User/settings.json",
)
EDITOR_VALUES = {"update.mode": "none", "extensions.autoUpdate": False, "extensions.autoCheckUpdates": False}


def served_models(unit_dirs: list[Path], root: Path = Path("/")) -> dict[int, dict[str, Any]]:
    """port -> {model, names, max_model_len} of every vLLM unit (its ExecStart arguments)."""
    return {
        u.port: {"model": u.model, "names": u.served_names, "max_model_len": u.max_model_len}
        for u in vllm_units(unit_dirs, root)
        if u.port is not None
    }


def family_of(model: str | None, catalogue: dict[str, Any]) -> str | None:
    for key, m in catalogue.get("models", {}).items():
        if model == key or model in (m.get("variants") or {}).values():
            return m.get("family")
    return None


def _port(api_base: str) -> int | None:
    try:
        return urlparse(api_base).port
    except ValueError:
        return None


def continue_results(
    homes: list[Path],
    unit_dirs: list[Path],
    catalogue: dict[str, Any] | None = None,
    hosts_file: Path | None = None,
    root: Path = Path("/"),
) -> list[Result]:
    """The CONTINUE-00x results; ``hosts_file`` None leaves CONTINUE-007 unjudged (skip)."""
    catalogue = catalogue or load_tiers()
    served = served_models(unit_dirs, root)
    items: dict[str, list[dict[str, Any]]] = {c.id: [] for c in CONTROLS}
    unsure: dict[str, list[str]] = {c.id: [] for c in CONTROLS}
    seen = {c.id: 0 for c in CONTROLS}
    for home in homes:
        cfg_path = home / ".continue/config.yaml"
        if cfg_path.exists():
            try:
                cfg = _load_doc(cfg_path) or {}
            except (OSError, ValueError, yaml.YAMLError) as err:
                for cid in ("CONTINUE-001", "CONTINUE-002", "CONTINUE-003", "CONTINUE-004"):
                    unsure[cid].append(f"{cfg_path}: {err}")
                cfg = None
            if isinstance(cfg, dict):
                _judge_config(cfg_path, cfg, served, catalogue, items, unsure, seen)
                _judge_selection(home, cfg, items, unsure, seen)
        _judge_cli(home, items, unsure, seen)
        _judge_editors(home, items, unsure, seen)
    if hosts_file is not None and any((h / ".continue").is_dir() for h in homes):
        _judge_version_check(hosts_file, items, unsure, seen)
    out = []
    for c in CONTROLS:
        if items[c.id] and c.id == "CONTINUE-007":
            out.append(Result(c.id, "fail", f"{CLI_VERSION_HOST} is not sinkholed: {CLI_VERSION_REQUEST}", items[c.id]))
        elif items[c.id]:
            out.append(Result(c.id, "fail", f"{len(items[c.id])} finding(s)", items[c.id]))
        elif unsure[c.id]:
            out.append(Result(c.id, "inconclusive", "; ".join(unsure[c.id])))
        elif seen[c.id] == 0:
            out.append(Result(c.id, "skip", "nothing of this kind on this host"))
        else:
            out.append(Result(c.id, "pass", f"{seen[c.id]} checked"))
    return out


def _models(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in cfg.get("models") or [] if isinstance(m, dict)]


def _judge_config(path, cfg, served, catalogue, items, unsure, seen) -> None:
    models = _models(cfg)
    for m in models:
        port = _port(str(m.get("apiBase", "")))
        srv = served.get(port) if port else None
        if m.get("provider") != "vllm" or srv is None:
            continue
        # contextLength prunes prompts of the models that generate; an embedder (role embed, or
        # rerank) has none to prune, and the role writes none for it.
        if not set(m.get("roles") or ["chat"]) - {"embed", "rerank"}:
            continue
        seen["CONTINUE-002"] += 1
        ctx = (m.get("defaultCompletionOptions") or {}).get("contextLength")
        if not isinstance(ctx, int) or (srv["max_model_len"] and ctx > srv["max_model_len"]):
            items["CONTINUE-002"].append({"file": str(path), "model": m.get("name"), "contextLength": ctx,
                                          "served_max_model_len": srv["max_model_len"]})  # fmt: skip
        if "autocomplete" in (m.get("roles") or []):
            family = family_of(srv["model"], catalogue)
            fim = ((catalogue.get("families") or {}).get(family) or {}).get("fim") if family else None
            have = (m.get("promptTemplates") or {}).get("autocomplete")
            if fim is None:  # a model outside the catalogue (a test model): nothing to compare with
                continue
            seen["CONTINUE-001"] += 1
            if have != fim["template"]:
                items["CONTINUE-001"].append({"file": str(path), "model": m.get("name"), "family": family,
                                              "template": have, "expected": fim["template"]})  # fmt: skip
    for ctx in cfg.get("context") or []:
        if isinstance(ctx, dict) and ctx.get("provider") == "codebase":
            seen["CONTINUE-003"] += 1
            params = ctx.get("params") or {}
            if params.get("useReranking") and not any("rerank" in (m.get("roles") or []) for m in models):
                items["CONTINUE-003"].append({"file": str(path), "useReranking": True, "rerank_models": 0})


def _judge_selection(home, cfg, items, unsure, seen) -> None:
    embed_names = {m.get("name") for m in _models(cfg) if "embed" in (m.get("roles") or [])}
    if not embed_names:
        return
    seen["CONTINUE-004"] += 1
    path = home / ".continue/index/globalContext.json"
    try:
        glob = json.loads(path.read_text())
    except FileNotFoundError:
        glob = {}
    except (OSError, ValueError) as err:
        unsure["CONTINUE-004"].append(f"{path}: {err}")
        return
    selected = ((glob.get("selectedModelsByProfileId") or {}).get("local") or {}).get("embed")
    if selected not in embed_names:
        items["CONTINUE-004"].append({"file": str(path), "selected": selected, "expected_one_of": sorted(embed_names)})


def _judge_cli(home, items, unsure, seen) -> None:
    path = home / ".continue/index/globalContext.json"
    if not (home / ".continue").is_dir():
        return
    seen["CONTINUE-005"] += 1
    try:
        glob = json.loads(path.read_text())
    except FileNotFoundError:
        glob = {}
    except (OSError, ValueError) as err:
        unsure["CONTINUE-005"].append(f"{path}: {err}")
        return
    if glob.get("autoUpdateCli") is not False:  # unset is on (UpdateService: ?? true)
        items["CONTINUE-005"].append({"file": str(path), "autoUpdateCli": glob.get("autoUpdateCli")})


def _judge_editors(home, items, unsure, seen) -> None:
    for rel in EDITOR_SETTINGS:
        path = home / rel
        if not path.exists():
            continue
        seen["CONTINUE-006"] += 1
        try:
            doc = _load_doc(path)
        except (OSError, ValueError) as err:
            unsure["CONTINUE-006"].append(f"{path}: {err}")
            continue
        wrong = {k: (doc or {}).get(k) for k, v in EDITOR_VALUES.items() if (doc or {}).get(k) != v}
        if wrong:
            items["CONTINUE-006"].append({"file": str(path), "wrong": wrong, "expected": EDITOR_VALUES})


def _judge_version_check(hosts_file: Path, items, unsure, seen) -> None:
    from toolkit.guard import load_phone_home, match_phone_home, parse_hosts_sinkhole

    seen["CONTINUE-007"] += 1
    try:
        sinkholed = parse_hosts_sinkhole(hosts_file.read_text(errors="replace"))
    except FileNotFoundError:
        sinkholed = []
    except OSError as err:
        unsure["CONTINUE-007"].append(f"{hosts_file}: {err.strerror}")
        return
    if CLI_VERSION_HOST not in sinkholed:
        entry = match_phone_home(CLI_VERSION_HOST, load_phone_home())
        items["CONTINUE-007"].append({
            "host": CLI_VERSION_HOST, "request": CLI_VERSION_REQUEST, "hosts_file": str(hosts_file),
            "source": entry.source if entry else None})  # fmt: skip


def enable() -> None:
    """Register CONTINUE-00x and their check (run with the static checks' inputs)."""
    for c in CONTROLS:
        controls.register(c)

    def check(context: dict[str, Any]) -> list[Result]:
        opts = context.get("options")
        inputs = getattr(opts, "static_inputs", None)
        if inputs is None or not getattr(opts, "static", True):
            return []
        return continue_results(
            inputs.home_dirs(), inputs.unit_directories(), hosts_file=inputs.root / "etc/hosts", root=inputs.root
        )

    controls.register_check("continue", check)
