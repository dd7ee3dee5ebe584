"""What the bench sends: the requests Continue sends to each service, built from a real code tree.

- Autocomplete: a cursor placed inside a real file of the tree, the code before and after it as
  Continue cuts them, wrapped in the FIM template of the model's family and sent with that
  family's stop tokens (both read from tiers.yaml ``families:``, the same fields the continue
  role writes into config.yaml).
- Chat: a question about a few thousand tokens of real code from the tree (what Continue sends
  when a file is in the context), then a second turn of the same conversation: the second
  shares the first one's whole prompt, so vLLM's prefix cache serves it and its time to first
  token shows what caching buys.
- Search and embeddings: questions about a code base and code snippets.

Cursor positions and files are chosen deterministically, so two runs on one tree send the same
requests; each first chat turn starts with its own session line so that it is never served
from the prefix cache of an earlier one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import UsageError

# The seed's autocomplete budget: Continue's tab completions ask for short continuations.
AUTOCOMPLETE_MAX_TOKENS = 64
CHAT_MAX_TOKENS = 128
SEARCH_TOP_K = 5
# Continue's prompt budget for autocomplete (core/util/parameters.ts DEFAULT_AUTOCOMPLETE_OPTS:
# maxPromptTokens 1024, of which the suffix gets at most maxSuffixPercentage 0.2). At ~4
# characters a token: about 3200 characters before the cursor and 800 after it.
PREFIX_CHARS = 3200
SUFFIX_CHARS = 800
# A realistic chat context: a file or two in the context, ~3000 tokens at ~4 characters a token.
CHAT_CONTEXT_CHARS = 12000
FIM_PLACEHOLDERS = ("{{{prefix}}}", "{{{suffix}}}")
# vLLM refuses more than $VLLM_MAX_STOP_STRINGS (4 by default) stop strings, and Continue sends
# a model's first maxStopWords of them; the continue role writes maxStopWords 4 for vLLM models.
MAX_STOP_WORDS = 4
_FIM_SUFFIXES = frozenset([".py", ".ts", ".tsx", ".js", ".go", ".rs", ".sh", ".yml", ".yaml", ".j2", ".sql", ".c"])


@dataclass(frozen=True)
class Fim:
    """A family's fill-in-the-middle prompt: Continue's mustache template and its stop tokens."""

    family: str | None  # None: no family known, the prompt is the prefix alone
    template: str
    stop: tuple[str, ...]

    def render(self, prefix: str, suffix: str) -> str:
        # Triple braces are mustache's unescaped form: the code goes in verbatim. One pass, so a
        # "{{{suffix}}}" inside the prefix's code is not expanded again.
        return re.sub(r"\{\{\{(prefix|suffix)\}\}\}", lambda m: prefix if m[1] == "prefix" else suffix, self.template)


PLAIN = Fim(None, "{{{prefix}}}", ())


def fim_for_family(family: str, tiers: Mapping[str, Any]) -> Fim:
    """The FIM template and stops of ``family`` from the tier table's ``families:``."""
    families = tiers.get("families") or {}
    if family not in families:
        raise UsageError(f"unknown model family {family!r} (tiers.yaml families: {', '.join(families)})")
    fim = (families[family] or {}).get("fim")
    if not fim:
        raise UsageError(f"model family {family!r} has no fim template in tiers.yaml")
    template, stop = fim.get("template"), fim.get("stop") or []
    if not isinstance(template, str) or not all(p in template for p in FIM_PLACEHOLDERS):
        raise UsageError(f"the fim template of {family!r} lacks {' and '.join(FIM_PLACEHOLDERS)}")
    return Fim(family, template, tuple(str(s) for s in stop))


def family_of(model_key: str | None, tiers: Mapping[str, Any]) -> str | None:
    """A plan's model key (``qwen2.5-coder-1.5b-base``) to its family, None when unknown."""
    model = (tiers.get("models") or {}).get(model_key or "") or {}
    return model.get("family")


@dataclass(frozen=True)
class Cursor:
    path: str
    line: int  # 1-based line of the cursor
    prefix: str
    suffix: str


def cursors(
    tree: Path, files: Sequence[Path], n: int = 24, prefix_chars: int = PREFIX_CHARS, suffix_chars: int = SUFFIX_CHARS
) -> list[Cursor]:
    """Up to ``n`` cursor positions in the tree's code files: inside a non-blank line, after its
    indentation and first word, as when a developer pauses mid-statement."""
    code = [p for p in files if p.suffix in _FIM_SUFFIXES]
    out: list[Cursor] = []
    for i, p in enumerate(code):
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        lines = text.splitlines(keepends=True)
        candidates = [k for k, ln in enumerate(lines) if len(ln.strip()) >= 12]
        if len(candidates) < 3:
            continue
        k = candidates[(len(candidates) * (3 + i % 5)) // 9]  # spread over the file, the same every run
        line = lines[k]
        indent = len(line) - len(line.lstrip())
        # Spaces after the word, not its newline: a one-word line keeps the cursor on that line.
        word = re.match(r"\S+[ \t]*", line[indent:])
        col = indent + (word.end() if word else 0)
        offset = sum(len(x) for x in lines[:k]) + col
        out.append(
            Cursor(p.relative_to(tree).as_posix(), k + 1, text[max(0, offset - prefix_chars) : offset],
                   text[offset : offset + suffix_chars])
        )  # fmt: skip
        if len(out) >= n:
            break
    if not out:
        raise UsageError(f"code tree {tree} has no code file to place an autocomplete cursor in")
    return out


CHAT_QUESTIONS: tuple[str, ...] = (
    "Explain what this code does, then point out one bug or edge case it does not handle.",
    "Suggest how to make this code easier to test, with a short example test.",
    "Which parts of this code would you refactor first, and why?",
    "Write a docstring for the most important function here.",
)
FOLLOW_UPS: tuple[str, ...] = (
    "Show the fix as a diff.",
    "Now write that test in pytest style.",
    "Do the first refactoring step.",
    "Make it shorter.",
)


def chat_contexts(tree: Path, files: Sequence[Path], chars: int = CHAT_CONTEXT_CHARS, n: int = 4) -> list[str]:
    """``n`` code contexts of about ``chars`` characters: consecutive files of the tree, as Continue
    pastes them ("```path\\ncode\\n```")."""
    blocks = []
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if p.suffix in _FIM_SUFFIXES:
            blocks.append(f"```{p.relative_to(tree).as_posix()}\n{text}\n```\n")
    if not blocks:
        raise UsageError(f"code tree {tree} has no code file for a chat context")
    out = []
    for i in range(n):
        ctx, j = "", (i * 7) % len(blocks)
        for _ in range(len(blocks)):
            ctx += blocks[j]
            if len(ctx) >= chars:
                break
            j = (j + 1) % len(blocks)
        out.append(ctx[:chars])
    return out


def first_turn(session: str, context: str, i: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": f"Session {session}. You are a coding assistant."},
        {"role": "user", "content": f"{context}\n{pick(CHAT_QUESTIONS, i)}"},
    ]


def second_turn(first: list[dict[str, str]], answer: str, i: int) -> list[dict[str, str]]:
    return [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": pick(FOLLOW_UPS, i)}]


SEARCH_QUERIES: tuple[str, ...] = (
    "where is the command line parsed",
    "how are errors turned into exit codes",
    "percentile computation for latency samples",
    "parse prometheus metrics text",
    "which port does the chat server listen on",
    "start a vllm server for tests",
    "write a file atomically with a temporary file",
    "read the API key from a file",
)

EMBED_INPUTS: tuple[str, ...] = (
    "def read_lines(path):\n    with open(path) as fh:\n        return [l.rstrip('\\n') for l in fh]\n",
    "class Config:\n    host: str = '127.0.0.1'\n    port: int = 8000\n",
    "SELECT count(*) FROM events WHERE kind = 'login' GROUP BY user_id;",
    "async function main() { const r = await fetch(url); return r.json(); }",
)


def pick(items: Sequence[Any], i: int) -> Any:
    """The i-th request's item: cycles through the list so any request count works."""
    return items[i % len(items)]
