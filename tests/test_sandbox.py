"""The README's main job, `toolkit sandbox up`, end to end on this machine.

Real: a systemd podman container provisioned by `toolkit provision` (ansible-runner, site.yml)
with vLLM's CPU build installed from the pinned wheelhouse, serving a tiny generator and MiniLM
embeddings; Continue's config validated by Continue's schema; `toolkit bench` and `toolkit audit`
run inside the container's network namespace; then molecule/stack's verify playbook (hardened
units, loopback-only listeners, real completions and embeddings, Continue's files, the Continue
CLI answering through the provisioned config) against the same workstation. That converge is the
stack scenario's: CI installs and starts the real vLLM once, here, instead of twice. Not
exercised: a GPU, Ollama (the CPU tier here serves embeddings with vLLM), an editor, and the
stack scenario's merge into files the developer already had (the continue role's scenario
covers that).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CACHE, REPO, require, require_binary, require_root
from fleet import image_available

from toolkit.sandbox import workstation

TOOLKIT = [sys.executable, "-m", "toolkit"]


VERIFY = REPO / "molecule" / "stack" / "verify.yml"
# What `toolkit sandbox up` wrote: inventories/sandbox reached over SSH.
INVENTORY = workstation.STATE / "inventory.yml"


def stack_verify() -> subprocess.CompletedProcess:
    """molecule/stack's verify, run on the sandbox workstation (its developer had no files of their own)."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    argv = ["ansible-playbook", "-i", str(INVENTORY), str(VERIFY), "-e", "stack_developer_had_files=false"]
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def sandbox(*args: str, timeout: int) -> tuple[subprocess.CompletedProcess, Path]:
    r = subprocess.run([*TOOLKIT, "sandbox", *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)
    m = re.search(r"artifacts in (\S+)", r.stderr)
    assert m, r.stderr[-3000:]
    return r, Path(m.group(1))


@pytest.mark.root
@pytest.mark.podman
@pytest.mark.vllm
@pytest.mark.slow
def test_sandbox_up_converges_benches_audits_then_reconverges_with_no_change():
    """Fresh sandbox: converge, bench and audit, both verdicts printed; then a second run changes nothing.

    The audit must say PASS and every SLO must have been measured. Whether a latency SLO holds
    depends on the load of this 2-core machine (the tool says FAIL, truthfully, when CI runs
    beside it), so a missed SLO is reported by the test but is the only failure it tolerates.
    """
    require_root()
    require_binary("podman")
    require(image_available(), "needs the test image (.ci/install.d/20-test-image.sh)")
    for dep in ("vllm-wheelhouse", "tiny-model", "minilm", "continue-cli"):
        require((CACHE / dep / ".complete").exists(), f"needs {CACHE / dep} (bash .ci/install)")
    try:
        r, run_dir = sandbox("up", "--recreate", "--audit-seconds", "45", timeout=2400)
        summary = json.loads((run_dir / "summary.json").read_text())
        (host,) = summary["hosts"].values()
        assert host["failed"] == 0 and not host["unreachable"] and host["changed"] > 0, r.stderr[-3000:]
        # Both verdicts are printed, in the table on stdout.
        # INCONCLUSIVE: a server histogram bucket straddled a threshold (the bench will not guess).
        assert re.search(r"bench \(SLOs\)\s*│\s*(PASS|FAIL|INCONCLUSIVE)", r.stdout), r.stdout
        assert re.search(r"audit \(egress\)\s*│\s*PASS", r.stdout), (
            r.stdout + (run_dir / "audit" / "audit.txt").read_text()
        )
        audit = json.loads((run_dir / "audit" / "audit.json").read_text())
        assert audit["verdict"] == "PASS"
        # The guard the play loaded in the sandbox covers the sandbox's own vllm user.
        guard = {c["id"]: c for c in audit["controls"] if c["id"].startswith("GUARD-")}
        assert guard["GUARD-001"]["status"] == "pass" and "vllm (uid" in guard["GUARD-001"]["detail"]
        bench = json.loads((run_dir / "bench" / "bench.json").read_text())
        slos = {(s["metric"], s["concurrency"]): s for s in bench["slos"]}
        metrics = {"autocomplete.latency_ms", "chat.ttft_ms", "chat.decode_tps", "search.latency_ms"}
        assert set(slos) == {(m, c) for m in metrics for c in (1, 2)}
        assert all(s["measured"] is not None for s in slos.values()), slos
        missed = [k for k, s in slos.items() if not s["passed"]]
        assert r.returncode == (1 if missed else 0), r.stderr[-3000:]
        if missed:
            print(f"SLOs missed under this machine's load: {missed}")

        # The stack scenario's verify, on this converge.
        v = stack_verify()
        assert v.returncode == 0 and "failed=0" in v.stdout, v.stdout[-6000:] + v.stderr[-2000:]

        # The same command again on the running sandbox: an idempotent converge and a fresh audit.
        r2, run_dir2 = sandbox("up", "--skip-bench", "--audit-seconds", "10", timeout=1200)
        assert r2.returncode == 0, r2.stderr[-3000:] + r2.stdout
        (host2,) = json.loads((run_dir2 / "summary.json").read_text())["hosts"].values()
        assert host2["failed"] == 0 and host2["changed"] == 0
    finally:
        subprocess.run([*TOOLKIT, "sandbox", "down"], cwd=REPO, capture_output=True, timeout=120)
