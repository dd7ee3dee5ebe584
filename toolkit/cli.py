"""Command line: parses arguments, calls the library, renders. No logic lives here.

Each command lives in ``toolkit/commands/<module>.py``, whose ``register(app)`` adds it to a Typer
app. The table below names which module holds which command, so ``toolkit detect`` imports only
``toolkit.commands.detect`` (and ``toolkit --help`` imports none): every module imported at start-up
cost 0.4 s before a command did anything. ``tests/test_cli.py`` checks the table against the modules.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import typer
from typer.core import TyperGroup

from toolkit.errors import ToolkitError

# command -> (module in toolkit/commands, the one-line help `toolkit --help` shows)
COMMANDS: dict[str, tuple[str, str]] = {
    "detect": ("detect", "Read the GPUs through NVML (then nvidia-smi, then sysfs)."),
    "plan": ("plan", "Choose models, quantization, vLLM arguments and ports that fit this machine."),
    "provision": ("provision", "Provision the local AI stack on one machine or a fleet (Ansible)."),
    "sandbox": ("sandbox", "A sandbox workstation in a local systemd container: up, down."),
    "models": ("models", "Verified model weights: lock, pull into a mirror, verify offline."),
    "bench": ("bench", "Measure the deployed stack against the latency SLOs."),
    "audit": ("audit", "Capture traffic and prove that nothing leaves this machine."),
    "report": ("audit", "Sum up a fleet's audit reports."),
    "audit-agent": ("audit_agent", "Audit continuously: a report and a Prometheus textfile every window."),
    "guard": ("guard", "Read back the egress guard (nftables) and what it blocked."),
}

EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug of ours, not the user's input


class LazyGroup(TyperGroup):
    """Imports a command's module only when that command runs (or its --help is asked for)."""

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, cmd_name: str):
        if cmd_name not in COMMANDS:
            return None
        module, _ = COMMANDS[cmd_name]
        sub = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
        importlib.import_module(f"toolkit.commands.{module}").register(sub)
        # A module may register one command or several (audit: audit and report): take ours.
        built = typer.main.get_command(sub)
        return built.commands[cmd_name] if hasattr(built, "commands") else built

    def format_commands(self, ctx, formatter) -> None:
        # The short help comes from the table, so `toolkit --help` imports no command module.
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in COMMANDS.items()])


app = typer.Typer(
    name="toolkit",
    cls=LazyGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """Provision a private coding assistant (vLLM, embeddings, Continue) on workstations and prove
    that nothing leaves them.

    Exit codes shared by all commands: 0 success, 1 a check failed, 2 bad input or usage, 3 the
    machine lacks something the command needs, 70 an internal error (a bug: please report it).
    """


def main() -> None:
    """Entry point: click reports usage errors itself (exit 2); every ToolkitError becomes one line;
    anything else is a bug and says so in one line (exit 70), with the traceback only when
    TOOLKIT_DEBUG=1."""
    try:
        app()  # standalone mode: usage errors print a short usage and exit 2
    except ToolkitError as err:
        print(f"toolkit: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("toolkit: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - the last-resort handler: no traceback reaches a user
        if os.environ.get("TOOLKIT_DEBUG") == "1":
            traceback.print_exc()
        detail = str(err).splitlines()[0] if str(err) else ""
        print(
            f"toolkit: internal error: {type(err).__name__}{': ' + detail if detail else ''}"
            " (a bug in the toolkit; run again with TOOLKIT_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
