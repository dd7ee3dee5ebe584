"""``toolkit audit-agent``: the continuous audit the audit_agent role runs as a systemd service."""

from __future__ import annotations

import pwd
import signal
import sys
from pathlib import Path
from threading import Event

import typer

from toolkit.audit import AuditUsageError
from toolkit.commands.audit import _AuditCommand

HELP = """Audit continuously: close a live capture window every --window seconds, each with the same
checks as `toolkit audit` (kernel BPF filter, probes, drops, blind interfaces: INCONCLUSIVE, never a
blind PASS). After every window: OUT/windows/<time>.json and .junit.xml (the last --keep kept),
OUT/audit.json (the last window, for `toolkit report`), and the node_exporter textfile (--textfile).
Flows are attributed through the Linux audit subsystem (connect/sendto records, exact even for
processes that already exited), with the /proc scan as fallback.

Runs until SIGTERM or Ctrl-C (or --windows N). Exit codes: 0 stopped; 64 bad input.
"""


def register(app: typer.Typer) -> None:
    app.command("audit-agent", help=HELP, cls=_AuditCommand)(audit_agent)


def _uids(names: list[str]) -> tuple[int, ...]:
    out = []
    for n in names:
        try:
            out.append(pwd.getpwnam(n).pw_uid)
        except KeyError:
            raise AuditUsageError(f"--audit-user {n}: no such user") from None
    return tuple(out)


def audit_agent(
    window: float = typer.Option(300.0, "--window", min=1, help="Seconds per window (default 5 minutes)."),
    keep: int = typer.Option(288, "--keep", min=1, help="Windows kept in OUT/windows (default: a day of 5 min)."),
    out: Path = typer.Option(Path("/var/lib/toolkit/audit"), "--out", help="Report directory."),
    textfile: Path | None = typer.Option(None, "--textfile", help="node_exporter textfile to write after each window."),
    windows: int | None = typer.Option(None, "--windows", min=1, help="Stop after this many windows."),
    policy: Path | None = typer.Option(None, "--policy", help="Policy YAML (default: loopback only)."),
    interface: str = typer.Option("any", "--interface", "-i", help="Capture interface (default: every interface)."),
    exact: bool = typer.Option(True, "--exact/--no-exact", help="Attribute through the Linux audit subsystem."),
    audit_user: list[str] = typer.Option(
        [], "--audit-user", help="Users whose sendto/sendmsg are audited too (repeatable; connect is always)."
    ),
    static: bool = typer.Option(True, "--static/--no-static", help="Run the static checks in every window."),
    home: list[Path] = typer.Option([], "--home", help="Home directories to check (default: /root and /home/*)."),
    unit_dir: list[Path] = typer.Option([], "--unit-dir", help="systemd unit directories."),
    host: str | None = typer.Option(None, "--host", help="Host name in the reports."),
    guard: bool = typer.Option(False, "--guard", help="Also judge the egress guard (GUARD-001..003)."),
    ready_file: Path | None = typer.Option(
        None, "--ready-file", help="Written when each window's capture is live (scripts start after it)."
    ),
    netns: Path | None = typer.Option(
        None, "--netns", help="Capture inside this network namespace (e.g. /run/netns/NAME); audit records stay ours."
    ),
) -> None:
    from toolkit.audit.agent import AgentOptions, run_agent
    from toolkit.audit.policy import load_policy
    from toolkit.audit.run import AuditOptions
    from toolkit.audit.static_checks import StaticInputs

    if guard:
        from toolkit.audit.extensions import enable_guard

        enable_guard(("vllm", "ollama"), Path("/"))
    audit_opts = AuditOptions(
        policy=load_policy(policy),
        interface=interface,
        static=static,
        static_inputs=StaticInputs(Path("/proc"), list(home) or None, list(unit_dir) or None, Path("/")),
        ready_file=ready_file,
    )
    if host:
        audit_opts.host = host
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AuditUsageError(f"--out {out}: {e.strerror or e}") from None
    if netns is not None and not netns.exists():
        raise AuditUsageError(f"--netns {netns}: no such namespace")
    stop = Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def said(report: dict, state) -> None:
        print(
            f"window {report['window']['index']}: {report['verdict']} "
            f"({len(report['findings'])} flow(s), attribution {state.exact})",
            flush=True,
        )

    run_agent(
        AgentOptions(
            audit=audit_opts,
            out_dir=out,
            window=window,
            keep=keep,
            textfile=textfile,
            windows=windows,
            exact=exact,
            audit_uids=_uids(audit_user),
            netns=netns,
        ),
        stop,
        said,
    )
    sys.exit(0)
