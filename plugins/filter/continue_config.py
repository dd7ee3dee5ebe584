"""Filters of the continue role: what Continue needs from the plan, the merge into a user's files,
and the strict key check. Pure functions (tests import this file directly).

Every value is tied to the Continue code that reads it (continuedev/continue, extension 1.2.x):
- autocomplete prompt: CompletionProvider.provideInlineCompletionItems copies the model's
  `promptTemplates.autocomplete` into options.template; templating/index.ts getTemplate() then uses
  it instead of getTemplateForModel(modelName), which would pick StarCoder's <fim_prefix> for a model
  served as "autocomplete". With a custom template the template's own stops are empty, so the FIM
  stops go to `defaultCompletionOptions.stop` (BaseLLM._parseCompletionOptions mergeJson appends
  getStopTokens()' common stops to them).
- context: BaseLLM.contextLength falls back to DEFAULT_CONTEXT_LENGTH (32768, llm/constants.ts) and
  maxTokens to DEFAULT_MAX_TOKENS (4096); the vllm provider reads max_model_len from /v1/models only
  for AUTODETECT models (llms/Vllm.ts _setupCompletionOptions). templating/index.ts pruneLength()
  keeps prompt <= contextLength - maxTokens - min(1000, 2% of contextLength).
- stops: vLLM's OpenAI server refuses a request with more than 4 stop strings (400 "List should have
  at most 4 items"); Continue's OpenAI provider (which vllm extends) cuts the list to maxStopWords,
  Infinity for a local apiBase (OpenAI.ts getMaxStopWords). So vLLM models get `maxStopWords: 4` and
  the first 4 of the family's stops (tiers.yaml lists the ones that matter first).
- tools: yaml/models.ts modelConfigToBaseLLM sets capabilities.tools from `capabilities: [tool_use]`;
  vllm is not in toolSupport.ts PROVIDER_TOOL_SUPPORT, so without it tools go into the system message.
- @Codebase: retrieval.ts retrieveContextItemsFromEmbeddings: useReranking = params.useReranking ??
  !!reranker; RerankerRetrievalPipeline._rerank throws "No reranker set up" without one.
- selections: selectedModels.ts rectifySelectedModelsFromGlobalContext keeps a stored
  selectedModelsByProfileId.<profile>.<role> that still names a model; yaml/loadYaml.ts always adds
  "Transformers.js (Built-In)" to the embed models in VS Code. The profile of ~/.continue/config.yaml
  is "local" (profile/LocalProfileLoader.ts ID).
"""

from __future__ import annotations

import json
import re

# core/config/sharedConfig.ts sharedConfigSchema: the keys Continue reads from globalContext.json's
# sharedConfig (there is no schema package for globalContext.json; this list cites the source).
SHARED_CONFIG_KEYS = frozenset({
    "allowAnonymousTelemetry", "disableIndexing", "disableSessionTitles", "useChromiumForDocsCrawling",
    "readResponseTTS", "promptPath", "useCurrentFileAsContext", "enableExperimentalTools",
    "onlyUseSystemMessageTools", "codebaseToolCallingOnly", "enableStaticContextualization",
    "showSessionTabs", "codeBlockToolbarPosition", "fontSize", "codeWrap", "displayRawMarkdown",
    "showChatScrollbar", "continueAfterToolRejection", "useAutocompleteCache",
    "useAutocompleteMultilineCompletions", "disableAutocompleteInFiles", "modelTimeout", "debounceDelay",
})  # fmt: skip
# core/util/GlobalContext.ts GlobalContextType: the top-level keys of globalContext.json.
GLOBAL_CONTEXT_KEYS = frozenset({
    "indexingPaused", "lastSelectedProfileForWorkspace", "lastSelectedOrgIdForWorkspace",
    "selectedModelsByProfileId", "cliSelectedModel", "hasDismissedConfigTsNoticeJetBrains",
    "hasAlreadyCreatedAPromptFile", "hasShownUnsupportedPlatformWarning", "showConfigUpdateToast",
    "isSupportedLanceDbCpuTargetForLinux", "sharedConfig", "failedDocs", "shownDeprecatedProviderWarnings",
    "autoUpdateCli", "mcpOauthStorage",
})  # fmt: skip
# The roles selectedModels.ts rectifies (ModelRole of @continuedev/config-yaml).
SELECTABLE_ROLES = ("autocomplete", "apply", "edit", "embed", "rerank", "chat")
# retrieval.ts reads these params of the codebase provider (the package types params as any).
CODEBASE_PARAMS = frozenset({"nRetrieve", "nFinal", "useReranking"})
LOCAL_PROFILE = "local"
BLOCK_LISTS = ("models", "context", "data", "mcpServers", "rules", "prompts", "docs")
# Continue's own chunk default is 500 tokens (llm/constants.ts DEFAULT_MAX_CHUNK_SIZE); it counts with
# its own tokenizer, so a short-context embedder keeps a fifth of its window as margin.
MAX_CHUNK = 500
# vLLM 0.32 protocol: CompletionRequest/ChatCompletionRequest accept at most 4 stop strings.
VLLM_MAX_STOP_WORDS = 4


class ContinueConfigError(Exception):
    pass


def client_view(plan: dict) -> dict:
    """The plan's client view of each served model (services.*.client, made by the planner: provider,
    api_base, roles, model, context_length, family, tools, fim, dimensions), read as it is, plus the
    numbers the role's defaults take from it. Nothing here re-derives a port or a template."""
    services = (plan or {}).get("services") or {}
    missing = [
        n for n in ("chat", "autocomplete", "embed") if not isinstance((services.get(n) or {}).get("client"), dict)
    ]
    if missing:
        raise ContinueConfigError(
            f"the plan has no client view for {', '.join(missing)} (services.<name>.client of plan v2: "
            f"make the plan with `toolkit plan --json` or the gpu_facts module)"
        )
    clients = {n: s["client"] for n, s in services.items() if isinstance((s or {}).get("client"), dict)}
    chat, auto, embed = clients["chat"], clients["autocomplete"], clients["embed"]
    return {
        "clients": clients,
        "chat_family": chat.get("family"),
        "chat_context": int(chat["context_length"]),
        "chat_tools": bool(chat.get("tools")),
        "autocomplete_family": auto.get("family"),
        "autocomplete_context": int(auto["context_length"]),
        "fim": auto.get("fim"),
        "embed_context": int(embed["context_length"]),
        "embed_dimensions": int(embed.get("dimensions") or 0),
        "embed_max_chunk_size": min(MAX_CHUNK, int(embed["context_length"]) * 4 // 5),
    }


def autocomplete_budget(context: int, max_tokens: int, wanted_prompt: int) -> int:
    """maxPromptTokens that templating/index.ts never has to prune: context - maxTokens - safety."""
    safety = min(1000, int(context * 0.02) + 1)
    return max(0, min(wanted_prompt, context - max_tokens - safety))


def _entry(label: str, client: dict, common: dict) -> dict:
    """One config.yaml model from the plan's client view: provider, model, apiBase and roles as they are."""
    m = {
        "name": f"Local {label} ({client['model']})", "provider": client["provider"], "model": client["model"],
        "apiBase": client["api_base"], "roles": list(client["roles"]),
    }  # fmt: skip
    if client["provider"] == "vllm":
        m.update(common)
    elif "requestOptions" in common:
        m["requestOptions"] = common["requestOptions"]  # Ollama takes no API key
    return m


def managed_models(o: dict) -> list[dict]:
    """The models the toolkit serves, as config.yaml v1 (packages/config-yaml models.ts) writes them:
    o["clients"] is the plan's client view (client_view()["clients"]); the rest are the role's knobs."""
    clients = o["clients"]
    common = {}
    if o.get("api_key"):
        common["apiKey"] = o["api_key"]
    if o.get("ca_bundle_path"):
        common["requestOptions"] = {"caBundlePath": o["ca_bundle_path"]}
    chat = _entry("chat", clients["chat"], common)
    chat["maxStopWords"] = VLLM_MAX_STOP_WORDS
    chat["defaultCompletionOptions"] = {"contextLength": int(o["chat_context"]), "maxTokens": int(o["chat_max_tokens"])}
    if o.get("chat_tools"):
        chat["capabilities"] = ["tool_use"]
    auto_opts = {"contextLength": int(o["autocomplete_context"]), "maxTokens": int(o["autocomplete_max_tokens"])}
    auto = _entry("autocomplete", clients["autocomplete"], common)
    auto["maxStopWords"] = VLLM_MAX_STOP_WORDS
    fim = o.get("fim")
    if fim:
        auto["promptTemplates"] = {"autocomplete": fim["template"]}
        auto_opts["stop"] = list(fim["stop"])[:VLLM_MAX_STOP_WORDS]
    auto["defaultCompletionOptions"] = auto_opts
    auto["autocompleteOptions"] = dict(o["autocomplete_options"])
    embed = _entry("embeddings", clients["embed"], common)
    embed["embedOptions"] = {
        "maxChunkSize": int(o["embed_max_chunk_size"]),
        "maxBatchSize": int(o["embed_max_batch_size"]),
    }
    models = [chat, auto, embed]
    if clients.get("rerank"):
        # Vllm.rerank posts to the OpenAI adapter's /rerank (vLLM serves cross-encoders there).
        models.append(_entry("rerank", clients["rerank"], common))
    return models


def _describe_uses(section: str, item: dict) -> str:
    return f"{section}: uses {item.get('uses')}"


def merge_config(existing: dict | None, managed: dict, models: list[dict], codebase: dict) -> dict:
    """Merge the managed parts into a user's config.yaml. Hub blocks (`uses:`) are dropped and named:
    Continue would fetch them from api.continue.dev/registry (packages/config-yaml load/unroll.ts)."""
    existing = dict(existing or {})
    if not isinstance(existing, dict):
        existing = {}
    dropped: list[str] = []
    kept: dict = {}
    for section in BLOCK_LISTS:
        items = existing.get(section)
        if items is None:
            continue
        if not isinstance(items, list):
            raise ContinueConfigError(f"config.yaml: {section} must be a list")
        keep = []
        for item in items:
            if isinstance(item, dict) and "uses" in item:
                dropped.append(_describe_uses(section, item))
            else:
                keep.append(item)
        kept[section] = keep
    names = {m["name"] for m in models}
    user_models = [m for m in kept.get("models", []) if not (isinstance(m, dict) and m.get("name") in names)]
    user_context = [c for c in kept.get("context", []) if not (isinstance(c, dict) and c.get("provider") == "codebase")]
    out = {k: v for k, v in existing.items() if k not in BLOCK_LISTS}
    out.update(kept)
    out.update(managed)
    out["models"] = models + user_models
    out["context"] = [{"provider": "codebase", "params": dict(codebase)}] + user_context
    # One key order whatever the input's: the block lists after the other keys, in BLOCK_LISTS order.
    # A user's `rules:` before `context:` would otherwise swap places on the next run (not idempotent).
    ordered = {k: v for k, v in out.items() if k not in BLOCK_LISTS}
    ordered.update((section, out[section]) for section in BLOCK_LISTS if section in out)
    return {"config": ordered, "dropped": dropped}


def merge_global_context(existing: dict | None, selections: dict, shared: dict, extra: dict) -> dict:
    """globalContext.json with the managed selections for the local profile, sharedConfig and flags."""
    out = dict(existing) if isinstance(existing, dict) else {}
    by_profile = dict(out.get("selectedModelsByProfileId") or {})
    local = dict(by_profile.get(LOCAL_PROFILE) or {})
    local.update(selections)
    by_profile[LOCAL_PROFILE] = local
    out["selectedModelsByProfileId"] = by_profile
    out["sharedConfig"] = {**(out.get("sharedConfig") or {}), **shared}
    out.update(extra)
    return out


_STRING = r'("(?:[^"\\\n]|\\.)*")'
_COMMENT = re.compile(_STRING + r"|//[^\n]*|/\*.*?\*/", re.S)
_TRAILING_COMMA = re.compile(_STRING + r"|,(?=\s*[}\]])")


def parse_jsonc(text: str) -> dict:
    """VS Code's settings.json dialect: JSON with // and /* */ comments and trailing commas."""
    if not text.strip():
        return {}
    # Strings are kept as they are; comments, then trailing commas, outside them are dropped.
    cleaned = _COMMENT.sub(lambda m: m.group(1) or " ", text)
    cleaned = _TRAILING_COMMA.sub(lambda m: m.group(1) or "", cleaned)
    try:
        data = json.loads(cleaned)
    except ValueError as e:
        raise ContinueConfigError(f"not JSON with comments: {e}") from None
    if not isinstance(data, dict):
        raise ContinueConfigError("settings must be a JSON object")
    return data


def unknown_keys(doc, tree: dict, path: str = "") -> list[str]:
    """Paths of keys in doc that the schema tree (files/config_keys.mjs) does not read."""
    if not isinstance(tree, dict) or "leaf" in tree:
        return []
    if "union" in tree:
        best = None
        for option in tree["union"]:
            if isinstance(doc, dict) and not _accepts_dict(option):
                continue
            errs = unknown_keys(doc, option, path)
            if not errs:
                return []
            if best is None or len(errs) < len(best):
                best = errs
        return best or []
    if "array" in tree:
        if not isinstance(doc, list):
            return []
        return [e for i, item in enumerate(doc) for e in unknown_keys(item, tree["array"], f"{path}[{i}]")]
    if "record" in tree:
        if not isinstance(doc, dict):
            return []
        return [e for k, v in doc.items() for e in unknown_keys(v, tree["record"], _join(path, k))]
    if "object" in tree:
        if not isinstance(doc, dict):
            return []
        errs = []
        for k, v in doc.items():
            if k not in tree["object"]:
                errs.append(_join(path, k))
            else:
                errs.extend(unknown_keys(v, tree["object"][k], _join(path, k)))
        return errs
    return []


def _accepts_dict(tree: dict) -> bool:
    if "union" in tree:
        return any(_accepts_dict(t) for t in tree["union"])
    return "object" in tree or "record" in tree or "leaf" in tree


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def config_problems(config: dict, tree: dict) -> list[str]:
    """Every key of a config.yaml Continue does not read where it stands (zod strips them silently)."""
    problems = [f"{p}: not read by Continue" for p in unknown_keys(config, tree)]
    for i, ctx in enumerate(config.get("context") or []):
        if isinstance(ctx, dict) and ctx.get("provider") == "codebase" and isinstance(ctx.get("params"), dict):
            problems += [f"context[{i}].params.{k}: not read by the codebase provider (retrieval.ts)"
                         for k in ctx["params"] if k not in CODEBASE_PARAMS]  # fmt: skip
            p = ctx["params"]
            if p.get("useReranking") and not any("rerank" in (m.get("roles") or []) for m in config.get("models") or []
                                                 if isinstance(m, dict)):  # fmt: skip
                problems.append(f"context[{i}].params.useReranking: true without a model in role rerank "
                                "(RerankerRetrievalPipeline throws 'No reranker set up')")  # fmt: skip
    return problems


def global_context_problems(written: dict, model_names: list[str]) -> list[str]:
    """Keys the role writes into globalContext.json that Continue does not read there."""
    problems = [f"{k}: not a globalContext key (GlobalContext.ts)" for k in written if k not in GLOBAL_CONTEXT_KEYS]
    problems += [f"sharedConfig.{k}: not read (sharedConfig.ts)" for k in written.get("sharedConfig", {})
                 if k not in SHARED_CONFIG_KEYS]  # fmt: skip
    for profile, sel in (written.get("selectedModelsByProfileId") or {}).items():
        problems += [
            f"selectedModelsByProfileId.{profile}.{r}: not a model role" for r in sel if r not in SELECTABLE_ROLES
        ]
    names = set(model_names)
    for profile, sel in (written.get("selectedModelsByProfileId") or {}).items():
        problems += [f"selectedModelsByProfileId.{profile}.{r}: {v!r} names no model of config.yaml"
                     for r, v in sel.items() if names and v is not None and v not in names]  # fmt: skip
    return problems


class FilterModule:
    def filters(self):
        return {
            "continue_client_view": client_view,
            "continue_autocomplete_budget": autocomplete_budget,
            "continue_managed_models": managed_models,
            "continue_merge_config": merge_config,
            "continue_merge_global_context": merge_global_context,
            "continue_parse_jsonc": parse_jsonc,
            "continue_config_problems": config_problems,
            "continue_global_context_problems": global_context_problems,
        }
