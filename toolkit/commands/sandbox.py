"""`toolkit sandbox`: the main job on a machine with no GPU and no fleet.

Provisions a local systemd container as a sandbox workstation (CPU tier, a tiny generator
model, MiniLM embeddings, Continue config), then measures it with `toolkit bench` and watches it
with `toolkit audit`, and prints both verdicts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from toolkit import provision
from toolkit.commands.provision import plans_table, report, role_logger
from toolkit.errors import CheckFailed
from toolkit.sandbox import workstation

INVENTORY = provision.REPO / "inventories" / "sandbox" / "hosts.yml"
sandbox_app = typer.Typer(
    help="A sandbox workstation in a local systemd container: provision, bench, audit.", no_args_is_help=True
)


def _toolkit(box: workstation.Sandbox, *args: str) -> list[str]:
    """This toolkit, run on the host inside the sandbox's network namespace."""
    return box.enter([sys.executable, "-m", "toolkit", *args])


def _verdicts_table(rows: list[tuple[str, str, str]]) -> Table:
    t = Table("check", "verdict", "details", title="sandbox workstation")
    t.columns[2].overflow = "fold"  # paths must survive a narrow log whole
    for name, verdict, details in rows:
        colour = "green" if verdict == "PASS" else ("yellow" if verdict == "INCONCLUSIVE" else "red")
        t.add_row(name, f"[{colour}]{verdict}[/{colour}]", details)
    return t


@sandbox_app.command("up")
def up_cmd(
    recreate: bool = typer.Option(False, "--recreate", help="Start from a fresh container."),
    audit_seconds: int = typer.Option(60, "--audit-seconds", min=5, help="How long the audit watches (during bench)."),
    skip_bench: bool = typer.Option(False, "--skip-bench", help="Provision and audit only."),
) -> None:
    """Provision the sandbox workstation, then bench and audit it; print both verdicts.

    Needs root, podman and the cached image, vLLM wheelhouse and models that `bash .ci/install`
    prepares. Exit 0 when the stack converged, the audit passed and every SLO was met; 1 otherwise.
    The audit never says PASS when it could not see: INCONCLUSIVE counts as a failure here.
    """
    err = Console(stderr=True)
    err.print("starting the sandbox workstation (podman, systemd)")
    box = workstation.up(recreate=recreate)
    # Reached over SSH like a real workstation (pipelining, one ControlPersist master).
    inventory = workstation.reach_over_ssh(INVENTORY)

    def on_plans(run_dir: Path, plans: dict[str, dict]) -> None:
        err.print(f"provisioning; artifacts in {run_dir}")
        err.print(plans_table(plans))

    on_change = role_logger(err)

    result = provision.provision(inventory, on_plans=on_plans, on_change=on_change)
    report(result)
    run_dir = result.run_dir
    plan_file = run_dir / "plans" / f"{workstation.NAME}.json"

    rows: list[tuple[str, str, str]] = []
    audit_dir = run_dir / "audit"
    audit_dir.mkdir()
    err.print(f"auditing for {audit_seconds} s inside the sandbox's network namespace")
    ready = audit_dir / ".capturing"
    # Static checks read the sandbox's own files through /proc/PID/root; the capture and the
    # listener check see its network namespace.
    audit = subprocess.Popen(
        _toolkit(
            box,
            "audit",
            "--duration",
            str(audit_seconds),
            "--out",
            str(audit_dir),
            "--host",
            workstation.NAME,
            "--ready-file",
            str(ready),
            "--root",
            str(box.root),
            # The egress guard the play loaded in the sandbox's netns, judged for the sandbox's users.
            "--guard",
        ),
        stdout=(audit_dir / "audit.txt").open("w"),
        stderr=subprocess.STDOUT,
    )
    bench_rc = None
    if not skip_bench:
        bench_dir = run_dir / "bench"
        err.print("benchmarking the sandbox's endpoints")
        for _ in range(600):  # the capture is live before the first request
            if ready.exists() or audit.poll() is not None:
                break
            time.sleep(0.1)
        env = dict(os.environ, VLLM_API_KEY=box.api_key() or "")
        b = subprocess.run(
            _toolkit(
                box,
                "bench",
                "--plan",
                str(plan_file),
                "--out",
                str(bench_dir),
                "--json",
                "--requests",
                str(SANDBOX_REQUESTS),
                "--concurrency",
                "1,2",
                "--code-tree",
                str(Path(__file__).resolve().parents[1] / "bench"),  # the package's own code, installed or not
            ),
            capture_output=True,
            text=True,
            env=env,
        )
        bench_rc = b.returncode
        (run_dir / "bench.log").write_text(b.stderr)
        try:
            slo = json.loads(b.stdout)
            details = ", ".join(
                f"{s['name']}@{s['concurrency']} {s['measured']:.0f}{s['unit']} {s.get('status', 'MISSED')}"
                for s in slo.get("slos", [])
                if s.get("measured") is not None
            )
        except (json.JSONDecodeError, KeyError, TypeError):
            details = (b.stderr.strip().splitlines() or ["no output"])[-1]
        # The fewest requests a p95 verdict needs keep the sandbox short; a real run uses the bench's 100.
        details = f"{SANDBOX_REQUESTS} requests per level (the minimum for a p95; real runs use 100); {details}"
        rows.append(("bench (SLOs)", {0: "PASS", 1: "FAIL", 4: "INCONCLUSIVE"}.get(bench_rc, "FAIL"), details))
    audit_rc = audit.wait()
    verdict = {0: "PASS", 1: "FAIL", 2: "INCONCLUSIVE"}.get(audit_rc, f"ERROR (exit {audit_rc})")
    rows.append(("audit (egress)", verdict, f"{audit_dir}/audit.html, audit.json"))
    Console().print(_verdicts_table(rows))
    if audit_rc != 0 or bench_rc not in (None, 0):
        raise CheckFailed("the sandbox workstation did not pass every check (see the table above)")


# Requests per workload and level: 20 is the fewest the bench judges a p95 from (toolkit/bench/slo.py).
SANDBOX_REQUESTS = 20


@sandbox_app.command("down")
def down_cmd() -> None:
    """Remove the sandbox workstation container."""
    gone = workstation.down()
    print("sandbox removed" if gone else "no sandbox was running")


def register(app: typer.Typer) -> None:
    app.add_typer(sandbox_app, name="sandbox")
