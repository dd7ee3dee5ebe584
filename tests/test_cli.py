"""The CLI's shell: the lazy command table matches the modules, start-up imports only what the
command needs, and an unexpected exception is one line with exit 70, never a raw traceback."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import pytest
import typer

import toolkit.commands
from toolkit import cli


def _registered(module: str) -> set[str]:
    sub = typer.Typer()
    importlib.import_module(f"toolkit.commands.{module}").register(sub)
    names = {c.name for c in sub.registered_commands} | {g.name for g in sub.registered_groups}
    return names


def test_command_table_names_every_command_each_module_registers():
    modules = sorted(m.name for m in pkgutil.iter_modules(toolkit.commands.__path__) if not m.name.startswith("_"))
    by_module: dict[str, set[str]] = {}
    for name, (module, help_) in cli.COMMANDS.items():
        by_module.setdefault(module, set()).add(name)
        assert help_ and "\n" not in help_, f"{name}: the table's help must be one line, got {help_!r}"
    assert sorted(by_module) == modules, "a module in toolkit/commands is missing from cli.COMMANDS (or vice versa)"
    for module, names in by_module.items():
        got = _registered(module)
        assert got == names, f"toolkit/commands/{module}.py registers {got}, the table says {names}"


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_resolves_and_has_help(name):
    out = subprocess.run([sys.executable, "-m", "toolkit", name, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout


PROBE = """
import sys, json
sys.argv = ["toolkit", *json.loads(sys.argv[1])]
from toolkit import cli
try:
    cli.main()
except SystemExit:
    pass
heavy = ("toolkit.commands.", "lancedb", "toolkit.bench", "toolkit.audit")
print(json.dumps(sorted(m for m in sys.modules if m.startswith(heavy))), file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("argv", "allowed"),
    [
        (["--help"], set()),
        (["detect", "--json"], {"toolkit.commands.detect"}),
        (["plan", "--help"], {"toolkit.commands.plan"}),
    ],
)
def test_start_up_imports_only_the_command_that_runs(argv, allowed):
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True, text=True)
    imported = set(json.loads(out.stderr.strip().splitlines()[-1]))
    assert imported == allowed, f"`toolkit {' '.join(argv)}` imported {sorted(imported)}"


def test_an_unexpected_exception_is_one_line_and_exit_70(monkeypatch, capsys):
    def boom():
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(cli, "app", boom)
    monkeypatch.delenv("TOOLKIT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == cli.EXIT_INTERNAL == 70
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "toolkit: internal error: RuntimeError: disk on fire"
        " (a bug in the toolkit; run again with TOOLKIT_DEBUG=1 for the traceback)"
    ]


def test_toolkit_debug_shows_the_traceback(monkeypatch, capsys):
    def boom():
        raise KeyError("plan")

    monkeypatch.setattr(cli, "app", boom)
    monkeypatch.setenv("TOOLKIT_DEBUG", "1")
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 70
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("toolkit: internal error: KeyError: 'plan'")


def test_cli_reference_is_current():
    from pathlib import Path

    from toolkit import clidoc

    doc = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
    assert doc.read_text() == clidoc.render(), "docs/cli.md is stale: run `python -m toolkit.clidoc > docs/cli.md`"
