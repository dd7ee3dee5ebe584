"""`toolkit guard`: show the egress guard's live state on this machine (loaded, covered users,
what it blocked, phone-home names sinkholed)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from toolkit import guard
from toolkit.errors import CheckFailed, EnvironmentProblem

_STYLE = {"pass": "green", "fail": "red", "blocked": "yellow", "skip": "dim"}


def guard_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON (for machines)."),
    table: str = typer.Option(guard.DEFAULT_TABLE, help="nftables table (family inet) of the guard."),
    user: list[str] | None = typer.Option(
        None,
        "--user",
        "-u",
        help="Service user that must be covered (repeatable). Default: the users the role guarded "
        "(its intent.json), else vllm and ollama.",
    ),
    log_prefix: str = typer.Option(guard.DEFAULT_LOG_PREFIX, help="Kernel log prefix of the guard."),
    hosts_file: Path = typer.Option(Path("/etc/hosts"), help="Hosts file with the phone-home sinkhole."),
    netns: str | None = typer.Option(None, help="Read the guard inside this network namespace."),
) -> None:
    """Read the egress guard that the egress_guard role loads, and report it as the audit does.

    GUARD-001: the table is loaded, hooked on output, and covers every service user that exists.
    GUARD-002: what it blocked (counters, and the recent kernel log lines of dropped attempts);
    these are "blocked", not failures: the guard did its job. GUARD-003: the known phone-home
    names (toolkit/data/phone_home.yaml) are sinkholed in the hosts file.

    Needs root (nft). Exit 0 when nothing fails, 1 when a control fails, 3 without root or nft.
    """
    state = guard.collect_guard_state(
        table=table, users=user or None, log_prefix=log_prefix, hosts_file=hosts_file, netns=netns
    )
    if state.nft_error and ("not permitted" in state.nft_error.lower() or "not installed" in state.nft_error):
        raise EnvironmentProblem(f"cannot read the guard: {state.nft_error} (run as root, with nftables)")
    findings = guard.guard_findings(state)
    if as_json:
        print(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        t = Table("control", "status", "finding")
        for f in findings:
            t.add_row(f.control, f"[{_STYLE[f.status]}]{f.status}[/]", f"{f.title}: {f.detail}")
        Console().print(t)
    failed = [f.control for f in findings if f.status == "fail"]
    if failed:
        raise CheckFailed("egress guard check failed: " + ", ".join(failed))


def register(app: typer.Typer) -> None:
    app.command("guard")(guard_cmd)
