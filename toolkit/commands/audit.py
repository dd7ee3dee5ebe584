"""``toolkit audit`` (prove nothing leaves this machine) and ``toolkit report`` (sum up a fleet)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand

from toolkit.audit import EXIT_USAGE, AuditUsageError
from toolkit.audit.escape import visible

AUDIT_HELP = f"""Capture traffic and prove that nothing leaves this machine; check listeners and telemetry.

Live (default): captures on every interface for --duration seconds (0: until Ctrl-C) through a
kernel BPF filter compiled from the policy, so allowed traffic (loopback, and the policy's LAN
networks) never reaches the audit. Offline: --pcap FILE (pcap or pcapng from any tool).

Every flow with an end outside the allowed set is a finding (EGRESS-001), named by DNS, TLS SNI,
HTTP Host, flagged as QUIC, and attributed to a process in live mode. Static checks (live only,
unless --static) cover listeners beyond loopback, Continue models, telemetry flags and the vLLM and
Ollama units. Fails closed: a capture that cannot start, drops packets or cannot prove it saw
traffic (its own loopback probe) is INCONCLUSIVE, never PASS.

Exit codes: 0 pass; 1 a finding (egress, or a failed static control); 2 INCONCLUSIVE;
{EXIT_USAGE} usage error or bad input (options, policy, waiver file, expired waiver, unreadable pcap).
"""


try:  # typer >= 0.20 vendors click; its usage errors are not click's
    from typer._click.exceptions import UsageError as _TyperUsageError
except ImportError:  # pragma: no cover - older typer uses click itself
    _TyperUsageError = click.UsageError
_USAGE_ERRORS = (click.UsageError, _TyperUsageError)


class _AuditCommand(TyperCommand):
    """Click reports bad options with exit 2, which here means INCONCLUSIVE: map them to 64."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _USAGE_ERRORS as err:
            raise AuditUsageError(err.format_message()) from None


def _exit(code: int) -> None:
    # sys.exit, not typer.Exit: the CLI runs click with standalone_mode=False, where click turns
    # typer.Exit into a return value and the exit code would be lost.
    sys.stdout.flush()
    sys.exit(code)


def register(app: typer.Typer) -> None:
    app.command("audit", help=AUDIT_HELP, cls=_AuditCommand)(audit)
    app.command(
        "report",
        cls=_AuditCommand,
        help="Sum up a fleet's audit reports: every audit.json below DIR (as playbooks/audit.yml brings "
        f"them back). Exit codes: 0 all pass, 1 a host failed, 2 a host inconclusive, "
        f"{EXIT_USAGE} bad input.",
    )(report)


def _plan_guard_users(path: Path) -> tuple[str, ...]:
    """The users a plan's servers run as (plan v2 guard.users): the users the egress guard must cover."""
    from toolkit.planning import _load_mapping

    users = (_load_mapping(path, "plan").get("guard") or {}).get("users")
    if not isinstance(users, list) or not users or not all(isinstance(u, str) and u for u in users):
        raise AuditUsageError(f"plan {path} has no guard.users (a plan v2 from `toolkit plan --json`)")
    return tuple(users)


def audit(
    duration: float = typer.Option(30.0, "--duration", "-d", min=0, help="Live capture seconds; 0 runs until Ctrl-C."),
    pcap: Path | None = typer.Option(None, "--pcap", help="Audit this capture file (pcap or pcapng) instead of live."),
    policy: Path | None = typer.Option(
        None,
        "--policy",
        help="Policy YAML (allowed networks and hosts). Default: only loopback (127.0.0.0/8, ::1).",
    ),
    waivers: Path | None = typer.Option(
        None,
        "--waivers",
        help="Waiver YAML (control, hosts, justification, owner, "
        "expires). An expired or malformed waiver stops the run.",
    ),
    interface: str = typer.Option("any", "--interface", "-i", help="Capture interface (default: every interface)."),
    json_out: bool = typer.Option(False, "--json", help="Print the full JSON report on stdout (summary on stderr)."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Write audit.json, audit.junit.xml, audit.html and audit.prom into this directory.",
    ),
    junit: Path | None = typer.Option(None, "--junit", help="Write the JUnit XML report (one test case per control)."),
    html: Path | None = typer.Option(None, "--html", help="Write the self-contained HTML report."),
    textfile: Path | None = typer.Option(
        None,
        "--textfile",
        help="Write the Prometheus textfile (for node_exporter's textfile collector directory).",
    ),
    static: bool | None = typer.Option(
        None, "--static/--no-static", help="Run the static checks (default: yes live, no with --pcap)."
    ),
    home: list[Path] = typer.Option([], "--home", help="Home directories to check (default: /root and /home/*)."),
    unit_dir: list[Path] = typer.Option(
        [],
        "--unit-dir",
        help="systemd unit directories, highest priority first (default: systemd's system unit search path).",
    ),
    root: Path = typer.Option(
        Path("/"),
        "--root",
        help="File system whose Continue, VS Code and unit files are judged (default /; e.g. a "
        "container's /proc/PID/root). Homes and unit dirs default to places under it.",
    ),
    proc_root: Path = typer.Option(Path("/proc"), "--proc-root", help="Where /proc is (listener check)."),
    host: str | None = typer.Option(None, "--host", help="Host name in the reports (default: this machine's)."),
    buffer_kib: int = typer.Option(32768, "--buffer-kib", min=1, help="Kernel capture buffer in KiB."),
    attribution: bool = typer.Option(True, "--attribution/--no-attribution", help="Attribute flows to processes."),
    guard: bool = typer.Option(
        False,
        "--guard",
        help="Also judge the egress guard (GUARD-001..003: nftables table loaded, "
        "what it blocked, phone-home names sinkholed), as loaded by the egress_guard role.",
    ),
    guard_user: list[str] = typer.Option(
        [],
        "--guard-user",
        help="Service users the guard must cover (repeatable; default: the --plan's guard.users, else "
        "those the role guarded, from its intent.json, else vllm and ollama).",
    ),
    plan: Path | None = typer.Option(
        None,
        "--plan",
        help="The host's plan (`toolkit plan --json`, or a provision run's plans/HOST.json): with --guard, "
        "the users the guard must cover are its guard.users.",
    ),
    ready_file: Path | None = typer.Option(
        None,
        "--ready-file",
        help="Write this file once the capture is live (its start probe seen); scripts start after it.",
    ),
) -> None:
    from toolkit.audit.policy import load_policy
    from toolkit.audit.run import AuditOptions, run_audit
    from toolkit.audit.static_checks import StaticInputs
    from toolkit.audit.waivers import load_waivers

    if guard:
        from toolkit.audit.extensions import enable_guard

        enable_guard(tuple(guard_user) or (_plan_guard_users(plan) if plan else ()), root)
    if pcap is not None and (interface != "any"):
        raise AuditUsageError("--pcap and --interface exclude each other")
    opts = AuditOptions(
        policy=load_policy(policy),
        pcap=pcap,
        duration=duration or None,
        interface=interface,
        static=static if static is not None else pcap is None,
        static_inputs=StaticInputs(proc_root, list(home) or None, list(unit_dir) or None, root),
        waivers=load_waivers(waivers),
        buffer_kib=buffer_kib,
        attribute=attribution,
        ready_file=ready_file,
    )
    if host:
        opts.host = host
    err = Console(stderr=True)
    if pcap is None:
        err.print(
            Text(f"capturing on {visible(interface)} " + (f"for {duration:g} s" if duration else "until Ctrl-C"), "dim")
        )

    def progress(elapsed: float, candidates: int) -> None:
        if err.is_terminal:
            err.print(f"[dim]  {elapsed:5.0f} s, {candidates} candidate packet(s)[/]", end="\r")

    report_doc = run_audit(opts, progress=progress)
    _write_reports(report_doc, out, junit, html, textfile)
    if json_out:
        from toolkit.audit.report_json import render_json

        sys.stdout.write(render_json(report_doc))
        _summary(report_doc, err)
    else:
        _summary(report_doc, Console())
    _exit(report_doc["exit_code"])


def _write_reports(doc: dict, out: Path | None, junit: Path | None, html: Path | None, textfile: Path | None) -> None:
    from toolkit.audit.report_html import render_html
    from toolkit.audit.report_json import render_json, write_atomic
    from toolkit.audit.report_junit import render_junit
    from toolkit.audit.report_prom import render_prom

    targets = []
    if out is not None:
        targets += [
            (out / "audit.json", render_json),
            (out / "audit.junit.xml", render_junit),
            (out / "audit.html", render_html),
            (out / "audit.prom", render_prom),
        ]
    targets += [(p, f) for p, f in ((junit, render_junit), (html, render_html), (textfile, render_prom)) if p]
    for path, render in targets:
        try:
            write_atomic(path, render(doc))
        except OSError as e:
            raise AuditUsageError(f"cannot write {path}: {e.strerror or e}") from None


_STYLE = {
    "pass": "green",
    "fail": "bold red",
    "inconclusive": "yellow",
    "skip": "dim",
    "waived": "magenta",
    "info": "cyan",
    "blocked": "bold cyan",
    "PASS": "bold green",
    "FAIL": "bold red",
    "INCONCLUSIVE": "bold yellow",
}


def _t(value: object, style: str = "") -> Text:
    """A table cell from report data: never parsed as rich markup, controls made visible."""
    return Text(visible(value), style=style)


def _status(value: object) -> Text:
    return _t(value, _STYLE.get(str(value), ""))


def _summary(doc: dict, console: Console) -> None:
    t = Table(title=_t(f"toolkit audit: {doc['host']} ({doc['mode']})"), show_lines=False)
    for col in ("control", "severity", "status", "detail"):
        t.add_column(col, overflow="fold")
    for c in doc["controls"]:
        t.add_row(_t(c["id"]), _t(c["severity"]), _status(c["status"]), _t(c["detail"]))
    console.print(t)
    blocked = [c for c in doc["controls"] if c["status"] == "blocked"]
    if blocked:
        b = Table(title="blocked by the egress guard (never reached the wire)")
        b.add_column("control")
        b.add_column("what was stopped", overflow="fold")
        for c in blocked:
            b.add_row(_t(c["id"]), _t(c["detail"]))
        console.print(b)
    if doc["findings"]:
        f = Table(title="escaped: egress seen on the wire")
        for col in ("proto", "local", "remote", "dir", "names", "pkts", "process"):
            f.add_column(col, overflow="fold")
        for x in doc["findings"][:50]:
            p = x.get("process") or {}
            who = f"{p.get('pid')} {p.get('user')} {p.get('comm', '')}" if p.get("pid") else (p.get("status") or "-")
            f.add_row(
                _t(x["protocol"]),
                _t(f"{x['local_address']}:{x['local_port']}"),
                _t(f"{x['remote_address']}:{x['remote_port']}"),
                _t(x["direction"]),
                _t(", ".join(map(str, x["names"])) or "-"),
                _t(x["packets"]),
                _t(who),
            )
        console.print(f)
    console.print(Text.assemble("verdict: ", _status(doc["verdict"]), f" (exit {doc['exit_code']})"))


def _fleet_summary(summary: dict, console: Console) -> None:
    t = Table(title=f"fleet audit: {len(summary['hosts'])} host(s)")
    for col in ("host", "verdict", "egress flows", "failing controls", "finished"):
        t.add_column(col, overflow="fold")
    for h in summary["hosts"]:
        t.add_row(
            _t(h["host"]),
            _status(h["verdict"]),
            _t(h["egress_flows"]),
            _t(", ".join(h["failing_controls"]) or "-"),
            _t(h["finished"] or "-"),
        )
    console.print(t)
    for h in summary["hosts"]:
        for problem in h["problems"]:
            line = Text.assemble(_t(h["host"], "bold"), ": ", _t(problem, "yellow"), " ", _t(f"({h['report']})"))
            console.print(line)
    for name, hosts in summary["egress_names"].items():
        console.print(Text.assemble("  ", _t(name), ": ", _t(", ".join(hosts))))
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    console.print(Text.assemble("verdict: ", _status(summary["verdict"]), f" ({counts})"))


def report(
    directory: Path = typer.Argument(..., help="Directory holding the hosts' audit.json files (searched recursively)."),
    json_out: bool = typer.Option(False, "--json", help="Print the fleet summary as JSON."),
) -> None:
    import json

    from toolkit.audit.fleet import load_reports, summarize

    summary = summarize(load_reports(directory))
    if json_out:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        _fleet_summary(summary, Console())
    _exit(summary["exit_code"])
