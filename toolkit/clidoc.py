"""The CLI reference (docs/cli.md), generated from the commands themselves so it cannot drift.

``python -m toolkit.clidoc > docs/cli.md`` rewrites it; tests/test_cli.py fails when it is stale.
"""

from __future__ import annotations

import re
from pathlib import Path

from toolkit import cli

# Defaults that are paths inside the checkout are shown relative to it, so the reference is the
# same in every clone.
_ROOT = str(Path(cli.__file__).resolve().parent.parent) + "/"

HEADER = """# CLI reference

Generated from the commands by `python -m toolkit.clidoc > docs/cli.md`; CI fails when it is stale.
Exit codes shared by all commands: 0 success, 1 a check failed, 2 bad input or usage, 3 the machine
lacks something the command needs, 70 an internal error; a command's own help names any others.
"""


def _cell(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").replace("|", "\\|").strip()


def _param_rows(cmd) -> list[str]:
    rows = []
    for p in cmd.params:
        if getattr(p, "hidden", False) or p.name == "help":
            continue
        if p.param_type_name == "argument":
            name = (p.metavar or p.name or "").upper()
            kind = "argument" if p.required else "argument, optional"
            rows.append(f"| `{name}` | {kind}{': ' + _cell(p.help) if p.help else ''} | |")
            continue
        names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
        default = p.default
        shown = "" if default in (None, False, (), []) or callable(default) else f"`{default}`".replace(_ROOT, "")
        rows.append(f"| {names} | {_cell(p.help)} | {shown} |")
    return rows


def _section(cmd, path: list[str], level: int) -> list[str]:
    ctx = cmd.context_class(cmd, info_name=path[-1])
    out = [f"{'#' * level} `toolkit {' '.join(path)}`", ""]
    help_ = (cmd.help or "").strip()
    if help_:
        out += [help_, ""]
    pieces = " ".join(piece for p in cmd.params for piece in p.get_usage_pieces(ctx))
    sub = " COMMAND [ARGS]..." if getattr(cmd, "commands", None) else ""
    out += ["```", f"toolkit {' '.join(path)} [OPTIONS]{sub} {pieces}".rstrip(), "```", ""]
    rows = _param_rows(cmd)
    if rows:
        out += ["| option | meaning | default |", "| --- | --- | --- |", *rows, ""]
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        out += _section(sub, [*path, name], level + 1)
    return out


def render() -> str:
    group = cli.LazyGroup(name="toolkit")
    lines = [HEADER]
    for name in cli.COMMANDS:
        lines += _section(group.get_command(None, name), [name], 2)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
