#!/usr/bin/env python3
"""Converge-time benchmark for ``toolkit provision`` (not a test; as root:
``.venv/bin/python bench/provision_bench.py [--hosts 1,4,8]``).

For each fleet size N it starts N fresh podman hosts (tests/fleet.py ``stack_fleet``: the whole of
site.yml runs for real, with the vllm role's stand-in api_server in place of vLLM, which is too big
for 8 hosts on 2 cores) and measures, wall clock:

- fresh:      ``toolkit provision -i FLEET --forks N`` on the new hosts
- idempotent: the same command again on the converged hosts (it must change nothing)
- reference:  ``ansible-playbook -i FLEET playbooks/site.yml --forks N``, the same playbook without
              the toolkit (no plan phase, no ansible-runner, no live view), once on another N fresh
              hosts and once more on those converged hosts, in the same run.
- transport:  with ``--podman-too``, the idempotent ``ansible-playbook`` once more on the same
              converged hosts through the podman connection (no pipelining) instead of SSH.

The hosts are reached over SSH with pipelining and ControlPersist (tests/fleet.py), as real fleets are.

Prints a Markdown table; the figures go to docs/provisioning.md and the README. The real vLLM on
one host is measured by ``toolkit sandbox up`` (its summary.json has the converge seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fleet import stack_fleet  # noqa: E402

from toolkit.provision import ansible_env  # noqa: E402


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env)
    return time.monotonic() - t0, r


def toolkit_provision(inv: Path, n: int) -> tuple[float, dict]:
    secs, r = timed([sys.executable, "-m", "toolkit", "provision", "-i", str(inv), "--forks", str(n), "--json"])
    if r.returncode != 0:
        sys.exit(f"toolkit provision failed ({r.returncode}): {r.stderr[-2000:]}")
    return secs, json.loads(r.stdout)


def ansible_playbook(inv: Path, n: int) -> tuple[float, str]:
    env = dict(os.environ, **ansible_env())
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inv), "--forks", str(n)]
    secs, r = timed([*argv, str(REPO / "playbooks" / "site.yml")], env=env)
    if r.returncode != 0:
        sys.exit(f"ansible-playbook failed ({r.returncode}): {r.stdout[-2000:]}")
    recap = r.stdout[r.stdout.rfind("PLAY RECAP") :]
    return secs, " ".join(recap.split()[2:8]) if recap else ""


def podman_inventory(inv: Path) -> Path:
    """The same hosts as inv (an SSH fleet), reached with the podman connection instead."""
    doc = yaml.safe_load(inv.read_text())
    hosts = doc["all"]["children"]["fleet"]["hosts"]
    for name, hv in hosts.items():
        hosts[name] = {k: v for k, v in hv.items() if not k.startswith(("ansible_ssh", "ansible_user"))}
        hosts[name]["ansible_connection"] = "containers.podman.podman"
    out = inv.with_name("fleet-podman.yml")
    out.write_text(yaml.safe_dump(doc))
    return out


def changed(summary: dict) -> int:
    return sum(h["changed"] for h in summary["hosts"].values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", default="1,4,8", help="fleet sizes, comma-separated")
    ap.add_argument("--no-reference", action="store_true", help="skip the ansible-playbook runs")
    ap.add_argument("--podman-too", action="store_true", help="also time the idempotent run over the podman connection")
    args = ap.parse_args()
    rows = []
    for n in (int(x) for x in args.hosts.split(",")):
        with tempfile.TemporaryDirectory() as tmp, stack_fleet(n, Path(tmp), prefix=f"tk-bench{n}") as inv:
            fresh, s1 = toolkit_provision(inv, n)
            idem, s2 = toolkit_provision(inv, n)
            if changed(s2):
                sys.exit(f"second run changed {changed(s2)} things: not idempotent")
            row = {
                "hosts": n,
                "fresh_s": fresh,
                "fresh_plan_s": s1["seconds"]["plan"],
                "fresh_changed": changed(s1),
                "idem_s": idem,
                "idem_plan_s": s2["seconds"]["plan"],
            }
            if not args.no_reference:
                row["ref_idem_s"], _ = ansible_playbook(inv, n)
            if args.podman_too:
                row["podman_idem_s"], row["podman_idem_recap"] = ansible_playbook(podman_inventory(inv), n)
        if not args.no_reference:
            with tempfile.TemporaryDirectory() as tmp, stack_fleet(n, Path(tmp), prefix=f"tk-ref{n}") as inv:
                row["ref_fresh_s"], _ = ansible_playbook(inv, n)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    print(
        "| hosts | fresh (toolkit) | fresh (ansible-playbook) | ratio | idempotent (toolkit) "
        "| idempotent (ansible-playbook) | ratio | of which plan phase | idempotent over podman connection |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")

    def secs(v: float | None) -> str:
        return f"{v:.0f} s" if v else "-"

    def ratio(a: float, b: float | None) -> str:
        return f"{a / b:.2f}x" if b else "-"

    for r in rows:
        ref_f, ref_i = r.get("ref_fresh_s"), r.get("ref_idem_s")
        print(
            f"| {r['hosts']} | {secs(r['fresh_s'])} ({r['fresh_changed']} changed) | {secs(ref_f)} "
            f"| {ratio(r['fresh_s'], ref_f)} | {secs(r['idem_s'])} | {secs(ref_i)} | {ratio(r['idem_s'], ref_i)} "
            f"| {secs(r['idem_plan_s'])} | {secs(r.get('podman_idem_s'))} |"
        )


if __name__ == "__main__":
    main()
