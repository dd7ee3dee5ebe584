"""`toolkit provision`: plan every host, show the plans, then converge with live progress."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from toolkit import provision
from toolkit.errors import CheckFailed


def _cell(host: provision.HostState, role: str) -> str:
    """One host x role cell of the live view."""
    rs = host.roles.get(role)
    if rs is not None and rs.failed:
        return "[red]failed[/red]"
    if role == host.role and not host.done and not host.unreachable:
        return f"[cyan]> {escape(host.task)}[/cyan]"
    if rs is None:
        return "-" if host.done or host.unreachable else "[dim]...[/dim]"
    if rs.ok == 0:
        return "[dim]skipped[/dim]"
    return f"[green]ok {rs.ok}[/green]" + (f" [yellow]~{rs.changed}[/yellow]" if rs.changed else "")


def progress_table(tracker: provision.EventTracker, roles: list[str]) -> Table:
    """The live view: a row per host, a column per role (ok count, ~changed, the running task)."""
    seen = [r for h in tracker.hosts.values() for r in h.roles if r not in roles]
    cols = roles + list(dict.fromkeys(seen))
    t = Table("host", *cols, title="provisioning (ok N, ~changed, > running task)")
    for col in t.columns[1:]:
        col.overflow = "ellipsis"
        col.max_width = 28
        col.no_wrap = True
    for name, h in sorted(tracker.hosts.items()):
        label = f"[red]{name} (unreachable)[/red]" if h.unreachable else name
        t.add_row(label, *(_cell(h, r) for r in cols))
    return t


def role_logger(console: Console) -> Callable[[provision.EventTracker], None]:
    """Progress for logs (no terminal): a line the first time each host enters each role."""
    printed: set[tuple[str, str]] = set()

    def log(tracker: provision.EventTracker) -> None:
        for host, s in sorted(tracker.hosts.items()):
            if s.role and (host, s.role) not in printed:
                printed.add((host, s.role))
                console.print(f"{host}: {s.role}", highlight=False)

    return log


def plans_table(plans: dict[str, dict]) -> Table:
    t = Table("host", "tier", "runtime", "chat", "autocomplete", "embeddings", title="plan")
    for col in t.columns[3:]:
        col.overflow = "fold"
    for host, p in sorted(plans.items()):
        s = p["services"]
        auto = s["autocomplete"]
        t.add_row(
            host,
            p["tier"],
            p["runtime"],
            f"{s['chat']['model']} :{s['chat']['port']}",
            f"(chat server) :{auto['port']}" if auto.get("shared_with") else f"{auto['model']} :{auto['port']}",
            f"{s['embed']['backend']} {s['embed']['model']} :{s['embed']['port']}",
        )
    return t


def provision_cmd(
    inventory: Path = typer.Option(
        provision.DEFAULT_INVENTORY,
        "--inventory",
        "-i",
        help="Ansible inventory (file or directory). Default: this machine.",
    ),
    limit: str = typer.Option(None, "--limit", "-l", help="Only these hosts or groups (Ansible pattern)."),
    check: bool = typer.Option(False, "--check", help="Dry run: report what would change, change nothing."),
    diff: bool = typer.Option(False, "--diff", help="Show the changes made (or, with --check, that would be made)."),
    tags: str = typer.Option(None, "--tags", "-t", help="Only the tasks with these tags (comma-separated)."),
    forks: int = typer.Option(10, "--forks", "-f", min=1, max=200, help="Hosts converged in parallel."),
    playbook: str = typer.Option("site.yml", "--playbook", help="Playbook under playbooks/ to run."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON on stdout."),
) -> None:
    """Provision the local AI stack on one machine or a fleet, with Ansible (driven by ansible-runner).

    Phase 1 plans every host (GPU detection and model choice on the host itself) and shows the
    plans; nothing changes if any host cannot be planned. Phase 2 runs playbooks/site.yml with the
    plans shown (no second planning) and a live hosts x roles view. Plans, events and logs are
    kept in artifacts/runs/<id>/.
    Exit 0 when every host converged, 1 when a host failed or was unreachable, 2 on bad input.
    """
    err = Console(stderr=True)
    hosts = provision.check_inventory(inventory, limit)
    live = Live(console=err, refresh_per_second=4, transient=False) if err.is_terminal else None

    def on_plans(run_dir: Path, plans: dict[str, dict]) -> None:
        err.print(f"run {run_dir.name}: {len(hosts)} host(s) from {inventory}; artifacts in {run_dir}")
        err.print(plans_table(plans))
        if live:
            live.start()

    roles = provision.playbook_roles(playbook)

    plain = role_logger(err)

    def on_change(tracker: provision.EventTracker) -> None:
        if live:
            live.update(progress_table(tracker, roles))
        else:
            plain(tracker)

    try:
        result = provision.provision(
            inventory,
            limit=limit,
            check=check,
            diff=diff,
            tags=tags,
            forks=forks,
            playbook=playbook,
            on_plans=on_plans,
            on_change=on_change,
        )
    finally:
        if live:
            live.stop()
    report(result, check=check, as_json=as_json)


def report(result: provision.RunResult, check: bool = False, as_json: bool = False) -> None:
    """Summary table (or JSON) and the first errors of each failed host; CheckFailed if any host failed."""
    err = Console(stderr=True)
    if as_json:
        print(json.dumps(result.summary(), indent=2))
    else:
        mode = "check mode" if check else "applied"
        times = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
        t = Table("host", "ok", "changed", "failed", "result", title=f"summary ({mode}; {times})")
        for host, s in sorted(result.hosts.items()):
            res = "unreachable" if s.unreachable else ("FAILED" if s.failed else "ok")
            t.add_row(host, str(s.ok), str(s.changed), str(s.failed), res)
        Console().print(t)
    for host in result.failed_hosts:
        for e in result.hosts[host].errors[:3]:
            err.print(f"[red]{host}[/red]: {e}", highlight=False)
    if result.rc != 0 or result.failed_hosts:
        raise CheckFailed(
            f"{len(result.failed_hosts) or 'some'} host(s) failed (ansible rc {result.rc}); "
            f"see {result.run_dir}/artifacts/converge/stdout"
        )
    sys.stderr.flush()


def register(app: typer.Typer) -> None:
    app.command("provision")(provision_cmd)
