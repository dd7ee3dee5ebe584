"""The continue role writes what Continue's own code paths need, checked against Continue itself:

- the role's filters (plugins/filter/continue_config.py) on plans of several GPU
  tiers and families: FIM template and stops, context lengths, tools, embed options, rerank;
- the strict key check against the key tree of the installed @continuedev/config-yaml (node walks
  its zod schemas), and globalContext keys against the installed Continue CLI bundle;
- the role's config/globalContext/editor tasks run by ansible-playbook on localhost into a fake home of
  a developer who ran Continue before (built-in embedder selected, a hub `uses:` block, JSONC
  settings), twice: converged, then nothing changes;
- the rendered FIM template against a real vLLM (CPU build) serving the tiny model, whose tokenizer
  carries Qwen2.5-Coder's FIM added tokens: /tokenize gives the special-token ids and a
  /v1/completions request built as Continue's OpenAI provider builds it succeeds within max_model_len.
"""

from __future__ import annotations

import getpass
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import CACHE, REPO, require
from plan_contract import assert_valid_plan

from toolkit.module_utils.gpu_plan import make_plan

TIERS = yaml.safe_load((REPO / "toolkit/data/tiers.yaml").read_text())
GPUS = REPO / "tests/data/gpus"
PLAYBOOK_BIN = str(Path(sys.executable).parent / "ansible-playbook")
CONFIG_YAML_PKG = CACHE / "continue-cli/node_modules/@continuedev/config-yaml"
CLI_BUNDLE = CACHE / "continue-cli/node_modules/@continuedev/cli/dist/index.js"
QWEN_FIM = "<|fim_prefix|>{{{prefix}}}<|fim_suffix|>{{{suffix}}}<|fim_middle|>"
CODELLAMA_FIM = "<PRE> {{{prefix}}} <SUF>{{{suffix}}} <MID>"
# core/autocomplete/templating/getStopTokens.ts commonStops, appended to the model's own stops.
COMMON_STOPS = ["/src/", "#- coding: utf-8", "```"]


def _filters():
    spec = importlib.util.spec_from_file_location("continue_config", REPO / "plugins/filter/continue_config.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


cc = _filters()


def plan_for(inventory: str, overrides: dict | None = None) -> dict:
    plan = make_plan(json.loads((GPUS / f"{inventory}.json").read_text()), TIERS, overrides or {})
    assert_valid_plan(plan)
    return plan


def options(plan: dict, **over) -> dict:
    """The role's defaults, as Python (defaults/main.yml takes the same from continue_client)."""
    view = cc.client_view(plan)
    auto_ctx = view["autocomplete_context"]
    o = {
        "clients": view["clients"], "chat_context": view["chat_context"],
        "chat_max_tokens": min(4096, view["chat_context"] // 4), "chat_tools": view["chat_tools"],
        "autocomplete_context": auto_ctx, "autocomplete_max_tokens": 256, "fim": view["fim"],
        "autocomplete_options": {"debounceDelay": 250, "modelTimeout": 400,
                                 "maxPromptTokens": cc.autocomplete_budget(auto_ctx, 256, 1536)},
        "embed_max_chunk_size": view["embed_max_chunk_size"], "embed_max_batch_size": 32,
        "api_key": "", "ca_bundle_path": "",
    }  # fmt: skip
    o.update(over)
    return o


@pytest.mark.parametrize(
    ("inventory", "overrides", "chat_family", "auto_family", "template", "chat_ctx", "auto_ctx"),
    [
        ("rtx4090-24gb", {}, "Qwen2.5-Coder", "Qwen2.5-Coder", QWEN_FIM, 16384, 4096),
        ("no-gpu", {}, "Qwen2.5-Coder", "Qwen2.5-Coder", QWEN_FIM, 8192, 4096),
        # CodeLlama is out of automatic choice; pinned for autocomplete, the chat stays the planner's Qwen.
        ("a100-40gb", {"autocomplete": {"model": "codellama-7b"}}, "Qwen2.5-Coder", "CodeLlama", CODELLAMA_FIM, 16384,
         4096),
        # A shared server: autocomplete is the chat model, so it takes the chat model's family and context.
        ("a100-40gb", {"chat": {"model": "codellama-34b"}, "autocomplete": {"shared": True}}, "CodeLlama", "CodeLlama",
         CODELLAMA_FIM, 16384, 16384),
    ],
    ids=["24gb-qwen", "cpu-qwen", "codellama-autocomplete", "codellama-shared"],
)  # fmt: skip
def test_plan_of_each_family_gives_its_fim_template_stops_and_served_contexts(
    inventory, overrides, chat_family, auto_family, template, chat_ctx, auto_ctx
):
    plan = plan_for(inventory, overrides)
    view = cc.client_view(plan)
    assert (view["chat_family"], view["autocomplete_family"]) == (chat_family, auto_family)
    assert view["fim"]["template"] == template
    assert view["fim"]["stop"] == TIERS["families"][auto_family]["fim"]["stop"]
    chat, auto, embed = cc.managed_models(options(plan))
    assert chat["defaultCompletionOptions"] == {"contextLength": chat_ctx, "maxTokens": min(4096, chat_ctx // 4)}
    assert chat["defaultCompletionOptions"]["contextLength"] == plan["services"]["chat"]["max_model_len"]
    # Tool use only where the chat server's argv has a parser (CodeLlama's family has none: vLLM would
    # refuse Continue's tool_choice "auto", so Continue puts tools into the system message instead).
    parser = TIERS["families"][chat_family].get("tool_call_parser")
    assert chat.get("capabilities") == (["tool_use"] if parser else None)
    assert ("--tool-call-parser" in plan["services"]["chat"]["args"]) is bool(parser)
    assert auto["promptTemplates"] == {"autocomplete": template}
    # vLLM refuses more than 4 stops; Continue cuts its list to maxStopWords (OpenAI.ts getMaxStopWords).
    assert auto["maxStopWords"] == chat["maxStopWords"] == 4
    assert auto["defaultCompletionOptions"] == {
        "contextLength": auto_ctx,
        "maxTokens": 256,
        "stop": TIERS["families"][auto_family]["fim"]["stop"][:4],
    }
    assert auto["autocompleteOptions"] == {"debounceDelay": 250, "modelTimeout": 400, "maxPromptTokens": 1536}
    # templating/index.ts pruneLength never has to cut: prompt + maxTokens + safety fit the served context.
    assert 1536 + 256 + min(1000, auto_ctx * 0.02) <= auto_ctx
    assert embed["embedOptions"] == {"maxChunkSize": 500, "maxBatchSize": 32}


def test_tools_follow_the_chat_servers_parser_and_a_short_context_shrinks_the_prompt_budget():
    plan = plan_for("rtx4090-24gb")
    # The planner puts the family's parser into the chat server's argv and says so in the client
    # view; turned off, neither the argv nor the client view has it.
    assert "--tool-call-parser" in plan["services"]["chat"]["args"]
    assert plan["services"]["chat"]["client"]["tools"] is True and cc.client_view(plan)["chat_tools"] is True
    off = plan_for("rtx4090-24gb", {"chat": {"tool_call_parser": ""}})
    assert "--tool-call-parser" not in off["services"]["chat"]["args"]
    assert off["services"]["chat"]["client"]["tools"] is False and cc.client_view(off)["chat_tools"] is False
    assert "capabilities" not in cc.managed_models(options(off))[0]
    chat = cc.managed_models(options(plan_for("rtx4090-24gb"), chat_tools=False))[0]
    assert "capabilities" not in chat
    # 2048 tokens served: 2048 - 256 - 41 = 1751, so the wanted 1536 stays; 1024 served: 1024 - 256 - 21.
    assert cc.autocomplete_budget(2048, 256, 1536) == 1536
    assert cc.autocomplete_budget(1024, 256, 1536) == 747


def test_unknown_family_gives_no_template_and_a_short_embedder_gets_short_chunks():
    overrides = {
        "chat": {"model": "/models/tiny", "max_model_len": 2048},
        "autocomplete": {"shared": True},
        "embed": {"backend": "vllm", "model": "/models/minilm", "dimensions": 384},
    }
    plan = plan_for("no-gpu", overrides)
    view = cc.client_view(plan)
    assert view["fim"] is None and view["autocomplete_context"] == 2048
    auto = cc.managed_models(options(plan))[1]
    assert "promptTemplates" not in auto and "stop" not in auto["defaultCompletionOptions"]
    # An embedder the catalogue does not know is taken as a 512-token BERT: 4/5 of it.
    assert view["embed_max_chunk_size"] == 409


def _key_tree() -> dict:
    require((CONFIG_YAML_PKG / "dist/index.js").exists(), f"needs @continuedev/config-yaml at {CONFIG_YAML_PKG}")
    r = subprocess.run(
        ["node", "--input-type=module", "-e", (REPO / "roles/continue/files/config_keys.mjs").read_text(),
         str(CONFIG_YAML_PKG)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_key_tree_from_the_installed_schema_package_reads_every_key_the_role_writes():
    tree = _key_tree()
    model = tree["object"]["models"]["array"]["union"][0]["union"][1]["object"]
    assert set(model["promptTemplates"]["object"]) == {"apply", "chat", "edit", "autocomplete"}
    assert {"debounceDelay", "modelTimeout", "maxPromptTokens"} <= set(model["autocompleteOptions"]["object"])
    assert {"contextLength", "maxTokens", "stop"} <= set(model["defaultCompletionOptions"]["object"])
    assert set(model["embedOptions"]["object"]) == {"maxChunkSize", "maxBatchSize", "embeddingPrefixes"}
    for inventory in ("rtx4090-24gb", "no-gpu", "a100-40gb"):
        plan = plan_for(inventory)
        merged = cc.merge_config({}, {"name": "n", "version": "1", "schema": "v1"},
                                 cc.managed_models(options(plan, api_key="k", ca_bundle_path="/ca.pem")),
                                 {"nFinal": 5, "useReranking": False})  # fmt: skip
        assert cc.config_problems(merged["config"], tree) == []


def test_strict_check_names_misplaced_and_misspelled_keys_that_zod_would_strip():
    tree = _key_tree()
    config = {
        "name": "n", "version": "1", "schema": "v1", "allowAnonymousTelemetry": False,
        "tabAutocompleteOptions": {"debounceDelay": 1},
        "models": [{"name": "m", "provider": "vllm", "model": "x", "roles": ["chat"], "contextLength": 4096,
                    "defaultCompletionOptions": {"contextLenght": 1}}],
        "context": [{"provider": "codebase", "params": {"nRetreive": 25, "nFinal": 5, "useReranking": True}}],
    }  # fmt: skip
    assert cc.config_problems(config, tree) == [
        "allowAnonymousTelemetry: not read by Continue",
        "tabAutocompleteOptions: not read by Continue",
        "models[0].contextLength: not read by Continue",
        "models[0].defaultCompletionOptions.contextLenght: not read by Continue",
        "context[0].params.nRetreive: not read by the codebase provider (retrieval.ts)",
        "context[0].params.useReranking: true without a model in role rerank "
        "(RerankerRetrievalPipeline throws 'No reranker set up')",
    ]
    # A hub block is a valid shape for the schema (the role drops it before writing).
    assert cc.unknown_keys({"name": "n", "version": "1", "models": [{"uses": "a/b", "with": {"K": "v"}}]}, tree) == []


def test_global_context_keys_the_role_writes_are_in_the_installed_continue_cli():
    require(CLI_BUNDLE.exists(), f"needs the Continue CLI at {CLI_BUNDLE}")
    bundle = CLI_BUNDLE.read_text(errors="replace")
    written = {"selectedModelsByProfileId": {"local": {"chat": "a", "embed": "b"}}, "autoUpdateCli": False,
               "sharedConfig": {"allowAnonymousTelemetry": False, "disableIndexing": False,
                                "useChromiumForDocsCrawling": False}}  # fmt: skip
    assert cc.global_context_problems(written, ["a", "b"]) == []
    # The CLI bundles core's GlobalContext and sharedConfigSchema: the names are Continue's own.
    for key in ["selectedModelsByProfileId", "autoUpdateCli", *written["sharedConfig"]]:
        assert key in bundle, key
    assert cc.global_context_problems({"sharedConfig": {"telemetry": False}, "autoUpdate": False}, []) == [
        "autoUpdate: not a globalContext key (GlobalContext.ts)",
        "sharedConfig.telemetry: not read (sharedConfig.ts)",
    ]
    assert cc.global_context_problems(
        {"selectedModelsByProfileId": {"local": {"embed": "Transformers.js (Built-In)"}}}, ["a"]
    ) == [  # fmt: skip
        "selectedModelsByProfileId.local.embed: 'Transformers.js (Built-In)' names no model of config.yaml"
    ]


def test_merge_drops_hub_blocks_by_name_and_keeps_the_users_own_entries():
    existing = {
        "name": "mine", "version": "0.1", "rules": ["Be brief.", {"uses": "acme/rules"}],
        "models": [{"uses": "anthropic/claude-4-sonnet", "with": {"K": "v"}},
                   {"name": "Own", "provider": "ollama", "model": "x"},
                   {"name": "Local chat (chat)", "provider": "openai", "model": "stale"}],
        "context": [{"provider": "codebase", "params": {"nFinal": 1}}, {"provider": "diff"}],
    }  # fmt: skip
    models = cc.managed_models(options(plan_for("rtx4090-24gb")))
    out = cc.merge_config(
        existing, {"name": "L", "version": "1", "schema": "v1"}, models, {"nFinal": 5, "useReranking": False}
    )
    assert out["dropped"] == ["models: uses anthropic/claude-4-sonnet", "rules: uses acme/rules"]
    cfg = out["config"]
    assert [m["name"] for m in cfg["models"]] == [m["name"] for m in models] + ["Own"]
    assert cfg["rules"] == ["Be brief."]
    assert cfg["context"] == [
        {"provider": "codebase", "params": {"nFinal": 5, "useReranking": False}},
        {"provider": "diff"},
    ]
    assert (cfg["name"], cfg["version"], cfg["schema"]) == ("L", "1", "v1")


def test_jsonc_settings_parse_with_comments_trailing_commas_and_slashes_in_strings():
    text = '// top\n{\n  "a": "http://x/*y*/", // c\n  /* b */ "b": [1, 2,],\n  "c": {"d": "e,}",},\n}\n'
    assert cc.parse_jsonc(text) == {"a": "http://x/*y*/", "b": [1, 2], "c": {"d": "e,}"}}
    assert cc.parse_jsonc("  \n") == {}
    with pytest.raises(cc.ContinueConfigError, match="not JSON with comments"):
        cc.parse_jsonc('{"a": }')


# --- the role's tasks, for real, into a fake home ---------------------------------------------------


def _run_role_tasks(tmp_path: Path, home: Path, extra: dict) -> subprocess.CompletedProcess:
    user, gid = getpass.getuser(), os.getgid()

    def role(tasks_from: str, **more) -> dict:
        return {
            "name": tasks_from,
            "ansible.builtin.include_role": {"name": "continue", "tasks_from": tasks_from, **more},
        }

    editors = [".config/Code/User/settings.json", ".local/share/code-server/User/settings.json"]
    tasks = [
        role("validate.yml", public=True),  # loads the role's defaults
        role("state.yml"),  # the host_state read the writes below are compared with
        role("config_yaml.yml"),
        role("global_context.yml"),
        {**role("editor_settings.yml"), "loop": editors, "loop_control": {"loop_var": "continue_settings_rel"}},
    ]
    pb = tmp_path / "play.yml"
    pb.write_text(
        yaml.safe_dump([{"hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": tasks}])
    )
    if "toolkit_plan" in extra:
        # As plays/plan.yml hands a plan in: through a lookup, whose text is never templated (the
        # client view's FIM template is Handlebars; as an extra var Jinja would parse its braces).
        (tmp_path / "plan.json").write_text(json.dumps(extra["toolkit_plan"]))
        extra = dict(extra, toolkit_plan="{{ lookup('file', '%s') | from_json }}" % (tmp_path / "plan.json"))
    ev = tmp_path / "extra.json"
    ev.write_text(json.dumps({
        "ansible_python_interpreter": sys.executable, "continue_user": user, "continue_gid": gid,
        "continue_home": str(home), "continue_editor_settings": editors,
        "continue_config_validator": str(CONFIG_YAML_PKG),
        **extra}))  # fmt: skip
    env = dict(
        os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_NOCOLOR="1", ANSIBLE_CALLBACK_RESULT_FORMAT="json"
    )  # one line per message, no folding
    env.pop("ANSIBLE_CONFIG", None)
    return subprocess.run([PLAYBOOK_BIN, "-i", "localhost,", str(pb), "-e", f"@{ev}"],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip


def test_role_converges_the_files_of_a_developer_who_ran_continue_before_and_is_idempotent(tmp_path):
    require((CONFIG_YAML_PKG / "dist/cli.js").exists(), f"needs @continuedev/config-yaml at {CONFIG_YAML_PKG}")
    home = tmp_path / "home"
    (home / ".continue/index").mkdir(parents=True)
    (home / ".config/Code/User").mkdir(parents=True)
    (home / ".continue/config.yaml").write_text(
        "name: me\nversion: 0.0.1\nschema: v1\nmodels:\n  - uses: anthropic/claude-4-sonnet\n"
        "  - {name: Mine, provider: ollama, model: llama3, apiBase: 'http://127.0.0.1:11500'}\n"
    )
    (home / ".continue/index/globalContext.json").write_text(
        json.dumps(
            {
                "selectedModelsByProfileId": {"local": {"embed": "Transformers.js (Built-In)", "chat": "Mine"}},
                "sharedConfig": {"allowAnonymousTelemetry": True, "fontSize": 12},
                "hasAlreadyCreatedAPromptFile": True,
            }
        )
    )
    (home / ".config/Code/User/settings.json").write_text(
        '{\n  // mine\n  "editor.fontSize": 15,\n  "update.mode": "default", /* on */\n}\n'
    )
    plan = plan_for("rtx4090-24gb")
    extra = {"toolkit_plan": plan, "continue_api_key": "k-test"}
    r = _run_role_tasks(tmp_path, home, extra)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "dropped hub blocks (fetched from api.continue.dev): models: uses anthropic/claude-4-sonnet" in r.stdout
    cfg = yaml.safe_load((home / ".continue/config.yaml").read_text())
    # config.yaml's managed models are the plan's client view, field for field.
    clients = [plan["services"][n]["client"] for n in ("chat", "autocomplete", "embed")]
    assert [(m["provider"], m["model"], m["apiBase"], m["roles"]) for m in cfg["models"][:3]] == [
        (c["provider"], c["model"], c["api_base"], c["roles"]) for c in clients
    ]
    assert [m.get("defaultCompletionOptions", {}).get("contextLength") for m in cfg["models"][:2]] == [
        c["context_length"] for c in clients[:2]
    ]
    assert cfg["models"][1]["promptTemplates"]["autocomplete"] == clients[1]["fim"]["template"]
    assert cfg["models"][1]["defaultCompletionOptions"]["stop"] == clients[1]["fim"]["stop"][:4]
    names = [m["name"] for m in cfg["models"]]
    assert names == [
        "Local chat (chat)",
        "Local autocomplete (autocomplete)",
        "Local embeddings (nomic-embed-text)",
        "Mine",
    ]
    auto = cfg["models"][1]
    assert auto["promptTemplates"] == {"autocomplete": QWEN_FIM}
    assert (
        auto["defaultCompletionOptions"]["contextLength"] == plan["services"]["autocomplete"]["max_model_len"] == 4096
    )
    assert cfg["models"][0]["defaultCompletionOptions"] == {"contextLength": 16384, "maxTokens": 4096}
    assert cfg["models"][0]["capabilities"] == ["tool_use"]
    assert cfg["context"] == [{"provider": "codebase", "params": {"nFinal": 5, "useReranking": False}}]
    glob = json.loads((home / ".continue/index/globalContext.json").read_text())
    assert glob == {
        "selectedModelsByProfileId": {"local": {
            "embed": "Local embeddings (nomic-embed-text)", "chat": "Local chat (chat)", "edit": "Local chat (chat)",
            "apply": "Local chat (chat)", "autocomplete": "Local autocomplete (autocomplete)"}},
        "sharedConfig": {"allowAnonymousTelemetry": False, "fontSize": 12, "disableIndexing": False,
                         "useChromiumForDocsCrawling": False},
        "hasAlreadyCreatedAPromptFile": True, "autoUpdateCli": False,
    }  # fmt: skip
    code = json.loads((home / ".config/Code/User/settings.json").read_text())
    assert code["editor.fontSize"] == 15 and code["update.mode"] == "none"
    assert code["workbench.settings.enableNaturalLanguageSearch"] is False
    assert code["typescript.disableAutomaticTypeAcquisition"] is True
    assert yaml.safe_load((home / ".config/code-server/config.yaml").read_text()) == {
        "disable-update-check": True,
        "disable-telemetry": True,
    }
    assert json.loads((home / ".local/share/code-server/User/settings.json").read_text())["update.mode"] == "none"
    before = {p: p.read_bytes() for p in home.rglob("*") if p.is_file()}
    again = _run_role_tasks(tmp_path, home, extra)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "changed=0" in again.stdout, again.stdout[-3000:]
    assert {p: p.read_bytes() for p in home.rglob("*") if p.is_file()} == before


def test_role_fails_with_the_path_of_a_key_continue_does_not_read(tmp_path):
    require((CONFIG_YAML_PKG / "dist/cli.js").exists(), f"needs @continuedev/config-yaml at {CONFIG_YAML_PKG}")
    home = tmp_path / "home"
    (home / ".continue/index").mkdir(parents=True)
    (home / ".continue/config.yaml").write_text("name: me\nversion: 0.0.1\nallowAnonymousTelemetry: false\n")
    r = _run_role_tasks(tmp_path, home, {"toolkit_plan": plan_for("no-gpu")})
    assert r.returncode != 0
    assert "config.yaml of " in r.stdout and "allowAnonymousTelemetry: not read by Continue" in r.stdout, r.stdout[
        -3000:
    ]
    assert yaml.safe_load((home / ".continue/config.yaml").read_text())["name"] == "me"


# --- the FIM template against a real vLLM ---------------------------------------------------------


@pytest.mark.vllm
def test_rendered_fim_template_tokenizes_to_the_special_tokens_and_completes_within_max_model_len(vllm_servers):
    gen = vllm_servers.generator
    headers = {"Authorization": f"Bearer {vllm_servers.api_key}"}
    fim = TIERS["families"]["Qwen2.5-Coder"]["fim"]
    tok = json.loads((CACHE / "tiny-model/tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    for name in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", *fim["stop"]):
        assert name in ids, f"the test tokenizer lacks {name} (toolkit/sandbox/make_tiny_model.py)"
    max_model_len = 2048  # what tests/vllm_servers.py serves
    budget = cc.autocomplete_budget(max_model_len, 256, 1536)

    def render(prefix: str, suffix: str) -> str:
        # Handlebars triple-stash (unescaped), as templating/index.ts renderStringTemplate does; the
        # prefix is [snippets, prefix].join("\n") with no snippets (buildPrompt).
        return fim["template"].replace("{{{prefix}}}", "\n" + prefix).replace("{{{suffix}}}", suffix)

    def tokenize(text: str) -> list[int]:
        r = httpx.post(
            f"{gen.url}/tokenize", json={"model": "autocomplete", "prompt": text}, headers=headers, timeout=30
        )
        assert r.status_code == 200, r.text
        return r.json()["tokens"]

    short = tokenize(render("def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"))
    fim_ids = [ids["<|fim_prefix|>"], ids["<|fim_suffix|>"], ids["<|fim_middle|>"]]
    assert [t for t in short if t in fim_ids] == fim_ids
    assert short[-1] == ids["<|fim_middle|>"]
    # A prompt as long as the budget lets Continue make it (maxPromptTokens of prefix and suffix).
    line = "    total = total + fibonacci(n - 1)\n"
    prefix, suffix = "def f(n):\n" + line * 400, "\nreturn total\n"
    while len(tokenize(render(prefix, suffix))) > budget:
        prefix = prefix[len(line) :]
    prompt = render(prefix, suffix)
    n_prompt = len(tokenize(prompt))
    assert budget - 40 <= n_prompt <= budget
    # OpenAI._legacystreamComplete: POST {apiBase}/completions with _convertArgs' body plus prompt and
    # stream; the stops are the model's (defaultCompletionOptions.stop, as the role writes them) plus
    # getStopTokens' common ones, cut to maxStopWords.
    auto = cc.managed_models(options(plan_for("no-gpu")))[1]
    stops = (auto["defaultCompletionOptions"]["stop"] + COMMON_STOPS)[: auto["maxStopWords"]]
    body = {"model": "autocomplete", "max_tokens": 256, "stream": True, "stop": stops, "prompt": prompt}
    # Without maxStopWords Continue would send all of them, and vLLM refuses that (the bug this prevents).
    r = httpx.post(f"{gen.url}/v1/completions", headers=headers, timeout=60,
                   json=dict(body, stream=False, stop=fim["stop"] + COMMON_STOPS))  # fmt: skip
    assert r.status_code == 400 and "at most 4" in r.text, r.text
    with httpx.stream("POST", f"{gen.url}/v1/completions", json=body, headers=headers, timeout=120) as r:
        text = "".join(r.iter_text())
        assert r.status_code == 200, text
    assert text.rstrip().endswith("data: [DONE]"), text[-500:]
    assert n_prompt + 256 <= max_model_len
    # What the budget keeps out: with Continue's default 32768-token assumption a long file's prompt
    # outgrows the served context, and vLLM refuses it.
    long_prompt = render("def f(n):\n" + line * 400, suffix)
    assert len(tokenize(long_prompt)) > max_model_len
    r = httpx.post(f"{gen.url}/v1/completions", json=dict(body, stream=False, prompt=long_prompt), headers=headers,
                   timeout=60)  # fmt: skip
    assert r.status_code == 400 and ("context length" in r.text.lower() or "max_model_len" in r.text), r.text[:500]


# --- the audit's drift controls -------------------------------------------------------------------


def _workstation(root: Path, cfg: dict, glob: dict, settings: dict) -> tuple[list[Path], list[Path]]:
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for name, model, port, mml in (("chat", "Qwen/Qwen2.5-Coder-7B-Instruct", 8000, 16384),
                                   ("autocomplete", "Qwen/Qwen2.5-Coder-1.5B", 8001, 4096)):  # fmt: skip
        (units / f"vllm-{name}.service").write_text(
            "[Service]\nExecStart=/opt/vllm/venv/bin/python -m vllm.entrypoints.openai.api_server "
            f"'--model' '{model}' '--served-model-name' '{name}' '--port' '{port}' '--max-model-len' '{mml}'\n"
        )
    home = root / "home/dev"
    (home / ".continue/index").mkdir(parents=True)
    (home / ".config/Code/User").mkdir(parents=True)
    (home / ".continue/config.yaml").write_text(yaml.safe_dump(cfg))
    (home / ".continue/index/globalContext.json").write_text(json.dumps(glob))
    (home / ".config/Code/User/settings.json").write_text("// mine\n" + json.dumps(settings))
    return [home], [units]


def _provisioned(plan: dict) -> tuple[dict, dict, dict]:
    models = cc.managed_models(options(plan))
    cfg = cc.merge_config(
        {}, {"name": "L", "version": "1", "schema": "v1"}, models, {"nFinal": 5, "useReranking": False}
    )
    sel = {"chat": models[0]["name"], "autocomplete": models[1]["name"], "embed": models[2]["name"]}
    glob = cc.merge_global_context({}, sel, {"allowAnonymousTelemetry": False}, {"autoUpdateCli": False})
    settings = {"update.mode": "none", "extensions.autoUpdate": False, "extensions.autoCheckUpdates": False}
    return cfg["config"], glob, settings


def test_audit_passes_a_provisioned_workstation_and_names_each_kind_of_continue_drift(tmp_path):
    from toolkit.audit.continue_checks import continue_results

    plan = plan_for("rtx3060-12gb")
    cfg, glob, settings = _provisioned(plan)
    homes, units = _workstation(tmp_path / "good", cfg, glob, settings)
    hosts = tmp_path / "good/etc/hosts"  # as the egress_guard role writes it
    hosts.write_text("127.0.0.1 localhost\n0.0.0.0 api.continue.dev hub.continue.dev\n:: api.continue.dev\n")
    assert {r.control: r.status for r in continue_results(homes, units, TIERS, hosts)} == {
        f"CONTINUE-00{i}": "pass" for i in range(1, 8)
    }
    # Drift: StarCoder's template, 32k context, rerank without a reranker, the built-in embedder,
    # the CLI's auto-update and VS Code's update check back on.
    cfg["models"][1]["promptTemplates"]["autocomplete"] = "<fim_prefix>{{{prefix}}}<fim_suffix>{{{suffix}}}<fim_middle>"
    cfg["models"][0]["defaultCompletionOptions"]["contextLength"] = 32768
    cfg["context"][0]["params"]["useReranking"] = True
    glob["selectedModelsByProfileId"]["local"]["embed"] = "Transformers.js (Built-In)"
    del glob["autoUpdateCli"]
    settings["update.mode"] = "default"
    homes, units = _workstation(tmp_path / "drift", cfg, glob, settings)
    hosts = tmp_path / "drift/etc/hosts"
    hosts.write_text("127.0.0.1 localhost\n# 0.0.0.0 api.continue.dev\n0.0.0.0 hub.continue.dev\n")
    results = {r.control: r for r in continue_results(homes, units, TIERS, hosts)}
    assert {k: r.status for k, r in results.items()} == {f"CONTINUE-00{i}": "fail" for i in range(1, 8)}
    assert results["CONTINUE-001"].items[0]["family"] == "Qwen2.5-Coder"
    assert results["CONTINUE-002"].items == [{
        "file": str(homes[0] / ".continue/config.yaml"), "model": "Local chat (chat)", "contextLength": 32768,
        "served_max_model_len": 16384}]  # fmt: skip
    assert results["CONTINUE-004"].items[0]["selected"] == "Transformers.js (Built-In)"
    assert results["CONTINUE-005"].items[0]["autoUpdateCli"] is None
    assert results["CONTINUE-006"].items[0]["wrong"] == {"update.mode": "default"}
    # The version check is named by its DNS name, with the request and where the name comes from.
    assert results["CONTINUE-007"].detail == (
        "api.continue.dev is not sinkholed: GET https://api.continue.dev/cn/info?id=<machine id> "
        "(cn src/version.ts getLatestVersion)"
    )
    assert results["CONTINUE-007"].items[0]["host"] == "api.continue.dev"
    assert results["CONTINUE-007"].items[0]["hosts_file"] == str(hosts)
    assert "extensions/cli/src/version.ts getLatestVersion" in results["CONTINUE-007"].items[0]["source"]
    assert {r.control: r.status for r in continue_results([tmp_path / "nobody"], [], TIERS, hosts)} == {
        f"CONTINUE-00{i}": "skip" for i in range(1, 8)
    }


def test_audit_reads_the_served_context_as_systemd_does_a_drop_in_exec_start_included(tmp_path):
    """An admin's drop-in that resets ExecStart= and serves chat at 8192: CONTINUE-002 judges the
    config against 8192 (what vLLM really serves), not the unit file's 16384."""
    from toolkit.audit.continue_checks import continue_results

    cfg, glob, settings = _provisioned(plan_for("rtx3060-12gb"))
    homes, units = _workstation(tmp_path, cfg, glob, settings)
    assert {r.control: r.status for r in continue_results(homes, units, TIERS)}["CONTINUE-002"] == "pass"
    dropin = units[0] / "vllm-chat.service.d"
    dropin.mkdir()
    (dropin / "50-short.conf").write_text(
        "[Service]\nExecStart=\nExecStart=/opt/vllm/venv/bin/vllm serve Qwen/Qwen2.5-Coder-7B-Instruct "
        "--served-model-name chat --port 8000 --max-model-len 8192\n"
    )
    c2 = {r.control: r for r in continue_results(homes, units, TIERS)}["CONTINUE-002"]
    assert c2.status == "fail" and c2.items[0]["served_max_model_len"] == 8192, c2


def test_a_served_reranker_becomes_a_rerank_model_and_makes_reranking_consistent():
    plan = plan_for("4x-h100-80gb", {"rerank": {"model": "bge-reranker-base"}})
    tree_free = cc.managed_models(options(plan))
    assert tree_free[3] == {
        "name": "Local rerank (rerank)", "provider": "vllm", "model": "rerank", "apiBase": "http://127.0.0.1:8002/v1",
        "roles": ["rerank"]}  # fmt: skip
    cfg = cc.merge_config(
        {}, {"name": "n", "version": "1"}, tree_free, {"nRetrieve": 25, "nFinal": 5, "useReranking": True}
    )
    assert cc.config_problems(cfg["config"], {"leaf": True}) == []


def test_a_reranker_is_planned_only_on_a_gpu_with_room_and_then_continue_reranks():
    import jsonschema

    schema = json.loads((REPO / "toolkit/data/plan.schema.json").read_text())
    ask = {"rerank": {"model": "bge-reranker-base"}}
    plan = plan_for("4x-h100-80gb", ask)  # GPUs 2 and 3 idle beside chat and autocomplete
    jsonschema.validate(plan, schema)
    svc = plan["services"]["rerank"]
    facts = TIERS["rerankers"]["bge-reranker-base"]
    assert (svc["role"], svc["model"], svc["licence"], svc["port"], svc["gpus"]) == (
        "rerank", "BAAI/bge-reranker-base", "MIT", 8002, [2])  # fmt: skip
    assert svc["args"][:5] == ["BAAI/bge-reranker-base", "--revision", facts["revision"], "--runner", "pooling"]
    assert svc["max_model_len"] == 512 and svc["gpu_memory_utilization"] * 80 >= facts["memory_gib"]
    assert plan["start_order"][-1] == "rerank"
    # GPU 2 serves the reranker now: only GPU 3 is left idle, and the plan says so.
    idle = [r for r in plan["reasons"] if " unused: " in r]
    assert [r.split(" unused")[0] for r in idle] == ["GPU(s) 3"], plan["reasons"]
    view = cc.client_view(plan)
    models = cc.managed_models(options(plan))
    assert models[3] == {"name": "Local rerank (rerank)", "provider": "vllm", "model": "rerank",
                         "apiBase": "http://127.0.0.1:8002/v1", "roles": ["rerank"]}  # fmt: skip
    cfg = cc.merge_config(
        {}, {"name": "n", "version": "1"}, models, {"nRetrieve": 25, "nFinal": 5, "useReranking": True}
    )
    assert cc.config_problems(cfg["config"], {"leaf": True}) == [] and view["chat_context"] > 0
    # No room beside a single GPU's chat and autocomplete, and never on the CPU runtime: no service,
    # and the plan says why (the role then writes useReranking: false).
    for inventory, why in (("rtx4090-24gb", "the most any GPU has left beside the other servers is"),
                           ("no-gpu", "not served on the CPU runtime")):  # fmt: skip
        plan = plan_for(inventory, ask)
        jsonschema.validate(plan, schema)
        assert "rerank" not in plan["services"] and "rerank" not in plan["start_order"]
        [reason] = [r for r in plan["reasons"] if r.startswith("rerank: ")]
        assert why in reason and reason.endswith("runs without reranking (useReranking: false)"), reason
    assert "rerank" not in plan_for("4x-h100-80gb")["services"]  # only when asked for
    with pytest.raises(ValueError, match="overrides.rerank.model must be one of bge-reranker-base, got 'x'"):
        plan_for("4x-h100-80gb", {"rerank": {"model": "x"}})


def test_context_control_leaves_an_embedder_served_by_vllm_alone(tmp_path):
    """The sandbox's case: embeddings from vLLM (port 11434, role embed) have no contextLength to
    judge; CONTINUE-002 passes on the generating models and does not count the embedder."""
    from toolkit.audit.continue_checks import continue_results

    plan = plan_for("rtx3060-12gb", {"embed": {"backend": "vllm"}})
    cfg, glob, settings = _provisioned(plan)
    embed = next(m for m in cfg["models"] if "embed" in m["roles"])
    assert embed["provider"] == "vllm" and "defaultCompletionOptions" not in embed
    homes, units = _workstation(tmp_path / "ws", cfg, glob, settings)
    (units[0] / "vllm-embed.service").write_text(
        "[Service]\nExecStart=/opt/vllm/venv/bin/vllm serve 'nomic-ai/nomic-embed-text-v1.5' "
        "'--served-model-name' 'embed' '--port' '11434' '--max-model-len' '8192'\n"
    )
    results = {r.control: r for r in continue_results(homes, units, TIERS)}
    assert results["CONTINUE-002"].status == "pass", results["CONTINUE-002"]
    assert results["CONTINUE-002"].detail == "2 checked"


def test_merge_is_idempotent_for_a_user_with_rules_and_other_blocks():
    """molecule/stack's developer has `rules:`: the merged file read back and merged again must be
    byte-identical (the role writes it with sort_keys=false)."""
    models = cc.managed_models(options(plan_for("no-gpu")))
    managed = {"name": "L", "version": "1", "schema": "v1"}
    codebase = {"nFinal": 5, "useReranking": False}
    user = {"name": "mine", "version": "0.0.1", "schema": "v1", "rules": ["Always answer in English."],
            "models": [{"name": "My own model", "provider": "openai", "model": "gpt-4o"}],
            "prompts": [{"name": "p", "prompt": "x"}]}  # fmt: skip
    first = cc.merge_config(user, managed, models, codebase)["config"]
    text = yaml.safe_dump(first, sort_keys=False)
    second = cc.merge_config(yaml.safe_load(text), managed, models, codebase)["config"]
    assert yaml.safe_dump(second, sort_keys=False) == text
    assert list(first) == ["name", "version", "schema", "models", "context", "rules", "prompts"]
