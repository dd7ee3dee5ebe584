"""User-facing errors: one exception type per kind, one line and a documented exit code at the CLI.

Exit codes shared by every command (commands may define more, documented in their --help):
  0 success, 1 the check found a problem (mismatch, egress, SLO miss, failed host),
  2 usage error / bad input file, 3 environment problem (missing tool, no privilege, unreachable).
"""

from __future__ import annotations


class ToolkitError(Exception):
    """Base class: the message is shown as one line, the process exits with ``exit_code``."""

    exit_code = 1


class UsageError(ToolkitError):
    """Bad arguments or a malformed input file (inventory, lock, policy, waiver)."""

    exit_code = 2


class EnvironmentProblem(ToolkitError):
    """The machine lacks something the command needs (a binary, a privilege, a reachable endpoint)."""

    exit_code = 3


class CheckFailed(ToolkitError):
    """The command ran and its check failed (verification mismatch, SLO missed, host failed)."""

    exit_code = 1
