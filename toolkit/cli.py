"""Command line: parses arguments, calls the library, renders. No logic lives here.

Each command group lives in ``toolkit/commands/<name>.py`` and is registered below.
"""

from __future__ import annotations

import sys

import typer

from toolkit.errors import ToolkitError

app = typer.Typer(
    name="toolkit",
    help="Provision a private coding assistant (vLLM, embeddings, Continue) on workstations "
    "and prove that nothing leaves them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    # Every module in toolkit/commands registers its own commands, so adding a command
    # touches no shared file.
    import importlib
    import pkgutil

    import toolkit.commands

    for mod in sorted(m.name for m in pkgutil.iter_modules(toolkit.commands.__path__)):
        if not mod.startswith("_"):
            importlib.import_module(f"toolkit.commands.{mod}").register(app)


_register()


def main() -> None:
    """Entry point: click reports usage errors itself (exit 2); every ToolkitError becomes one line."""
    try:
        app()  # standalone mode: usage errors print a short usage and exit 2
    except ToolkitError as err:
        print(f"toolkit: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("toolkit: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
