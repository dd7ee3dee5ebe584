"""`toolkit provision`: ansible-runner driving real Ansible against this machine and real podman hosts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CACHE, REPO, require, require_binary
from fleet import image_available, podman, stack_fleet
from test_models_secrets import assert_secret_absent

TOOLKIT = [sys.executable, "-m", "toolkit"]


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*TOOLKIT, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_dirs() -> set[Path]:
    base = REPO / "artifacts" / "runs"
    return set(base.iterdir()) if base.exists() else set()


def test_malformed_inventory_is_one_line_exit_2_and_writes_nothing(tmp_path):
    bad = tmp_path / "hosts.yml"
    bad.write_text("all:\n  hosts: [this is: not: valid\n")
    before = run_dirs()
    r = run("provision", "-i", str(bad))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert run_dirs() == before


def test_unknown_group_in_limit_is_refused(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    localhost: {ansible_connection: local}\n")
    r = run("provision", "-i", str(inv), "--limit", "gpu_workstations")
    assert r.returncode == 2 and "matches no host or group" in r.stderr


def test_plan_that_cannot_fit_stops_before_any_change(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n"
        "      toolkit_plan_overrides: {runtime: cuda}\n"
    )
    r = run("provision", "-i", str(inv))
    assert r.returncode == 1
    assert "planning failed, nothing was changed" in r.stderr
    assert "runtime 'cuda' was asked for but this host has no usable NVIDIA GPU" in r.stderr
    newest = max(run_dirs(), key=lambda p: p.stat().st_mtime)
    assert not (newest / "artifacts" / "converge").exists()  # phase 2 never started


def test_unreachable_host_is_named_and_fails(tmp_path):
    require_binary("ssh")
    port = free_port()  # nothing listens there: ssh to loopback is refused at once
    inv = tmp_path / "hosts.yml"
    inv.write_text(f"all:\n  hosts:\n    ghost:\n      ansible_host: 127.0.0.1\n      ansible_port: {port}\n")
    r = run("provision", "-i", str(inv))
    assert r.returncode == 1
    assert "ghost: unreachable" in r.stderr


def test_provision_local_plans_and_keeps_artifacts():
    r = run("provision", "--json", "--tags", "facts")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    run_dir = Path(summary["run_dir"])
    plan = json.loads((run_dir / "plans" / "localhost.json").read_text())
    gpu = json.loads((run_dir / "plans" / "localhost.gpu.json").read_text())
    assert plan["runtime"] == "cpu" and gpu["status"] == "no-gpu"
    assert (run_dir / "artifacts" / "converge" / "stdout").exists() and (run_dir / "summary.json").exists()
    # One plan: the converge skipped planning and applied the plan phase 1 showed, from the run's events.
    events = [json.loads(f.read_text()) for f in (run_dir / "artifacts" / "converge" / "job_events").glob("*.json")]
    by_task = {
        (e.get("event_data") or {}).get("task", ""): e
        for e in events
        if e.get("event", "").startswith("runner_on_") and e["event"] != "runner_on_start"
    }
    detect = next(e for t, e in by_task.items() if t.startswith("Detect this host's GPUs"))
    publish = next(e for t, e in by_task.items() if t.startswith("Publish the plan"))
    assert detect["event"] == "runner_on_skipped", detect["event"]
    assert publish["event_data"]["res"]["ansible_facts"]["toolkit_plan"] == plan


def _host_spans(run_dir: Path) -> dict[str, tuple[str, str]]:
    """First and last event time of each host in the converge phase (ansible-runner's job events)."""
    spans: dict[str, list[str]] = {}
    for f in (run_dir / "artifacts" / "converge" / "job_events").glob("*.json"):
        ev = json.loads(f.read_text())
        host = (ev.get("event_data") or {}).get("host")
        if host and ev.get("event", "").startswith("runner_on_"):
            spans.setdefault(host, []).append(ev["created"])
    return {h: (min(t), max(t)) for h, t in spans.items()}


@pytest.mark.podman
@pytest.mark.slow
def test_fleet_of_three_stack_hosts_converges_in_parallel_and_then_changes_nothing(tmp_path):
    """The whole site.yml on three podman hosts at once, checked on each host over the wire.

    Real on every host: planning, the vllm role (user, 0600 key, hardened units, health wait,
    warm-up), the egress guard in nftables, Continue's config validated by Continue's schema.
    Not exercised: vLLM itself, replaced by the vllm role's stand-in api_server (too big for a
    fleet on this machine; molecule/stack and `toolkit sandbox up` serve the real one).
    """
    require_binary("podman")
    require(image_available(), "needs the test image (.ci/install.d/20-test-image.sh)")
    require(
        (CACHE / "continue-cli" / ".complete").exists(), "needs the Continue CLI (.ci/install.d/50-continue-cli.sh)"
    )
    with stack_fleet(3, tmp_path) as inv:
        r = run("provision", "-i", str(inv), "--forks", "3", "--json", timeout=1500)
        assert r.returncode == 0, r.stderr[-3000:]
        summary = json.loads(r.stdout)
        hosts = sorted(summary["hosts"])
        assert len(hosts) == 3
        assert all(h["failed"] == 0 and not h["unreachable"] and h["changed"] > 0 for h in summary["hosts"].values())
        # In parallel: every host had started before the first one finished.
        spans = _host_spans(Path(summary["run_dir"]))
        assert max(start for start, _ in spans.values()) < min(end for _, end in spans.values())

        for host in hosts:
            plan = json.loads((Path(summary["run_dir"]) / "plans" / f"{host}.json").read_text())
            ports = sorted({plan["services"]["chat"]["port"], plan["services"]["embed"]["port"]})
            active = podman("exec", host, "systemctl", "is-active", "vllm-chat.service", "vllm-embed.service")
            assert active.stdout.split() == ["active", "active"]
            listen = [line.split()[3] for line in podman("exec", host, "ss", "-Hltn").stdout.splitlines()]
            assert {a for a in listen if a.rsplit(":", 1)[1] in map(str, ports)} == {f"127.0.0.1:{p}" for p in ports}
            health = podman(
                "exec",
                host,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                f"http://127.0.0.1:{ports[0]}/health",
            )
            assert health.stdout == "200"
            assert "meta skuid" in podman("exec", host, "nft", "list", "table", "inet", "toolkit_egress_guard").stdout
            mode = podman("exec", host, "stat", "-c", "%a %U", "/home/dev/.continue/config.yaml").stdout.split()
            assert mode == ["600", "dev"]

        again = run("provision", "-i", str(inv), "--forks", "3", "--json", timeout=900)
        assert again.returncode == 0, again.stderr[-3000:]
        changed = {h: s["changed"] for h, s in json.loads(again.stdout)["hosts"].items()}
        assert changed == dict.fromkeys(hosts, 0)
        # Each host's real API key is nowhere in either run's artifacts (events, stdout, facts, command).
        for host in hosts:
            key = podman("exec", host, "cat", "/etc/vllm/api-key.env").stdout.strip().split("=", 1)[1]
            assert len(key) >= 32
            for run_dir in (summary["run_dir"], json.loads(again.stdout)["run_dir"]):
                assert assert_secret_absent(Path(run_dir), key) > 50


def _event(kind: str, host: str, role: str = "", task: str = "t", **res) -> dict:
    """The fields of an ansible-runner job event that the tracker reads (stands in for a live run)."""
    return {"event": kind, "event_data": {"host": host, "role": role, "task": task, "res": res}}


def test_live_view_has_a_column_per_role_of_site_yml_in_play_order():
    from toolkit.provision import playbook_roles

    assert playbook_roles("site.yml") == [
        "facts",
        "nvidia_driver",
        "model_store",
        "vllm",
        "ollama",
        "egress_guard",
        "continue",
    ]
    assert playbook_roles("plan.yml") == ["facts"]


def test_tracker_counts_per_role_and_the_view_shows_running_failed_and_pending_cells():
    """Synthetic runner events (the shape ansible-runner hands the event_handler); the real stream is
    exercised by the fleet and sandbox tests."""
    from rich.console import Console

    from toolkit.commands.provision import progress_table
    from toolkit.provision import EventTracker, playbook_roles

    tracker = EventTracker()
    for ev in (
        _event("runner_on_ok", "ws1", task="Gathering Facts"),
        _event("runner_on_ok", "ws2", task="Gathering Facts"),
        _event("runner_on_skipped", "ws1", "nvidia_driver"),
        _event("runner_on_ok", "ws1", "vllm", "Create the service user", changed=True),
        _event("runner_on_ok", "ws1", "vllm", "Write the unit"),
        _event("runner_on_start", "ws1", "vllm", "Wait for /health"),
        _event("runner_on_failed", "ws2", "nvidia_driver", "Install the driver", msg="no\nsuch package"),
    ):
        tracker(ev)
    ws1, ws2 = tracker.hosts["ws1"], tracker.hosts["ws2"]
    assert (ws1.ok, ws1.changed, ws1.skipped) == (3, 1, 1)
    assert (ws1.roles["vllm"].ok, ws1.roles["vllm"].changed) == (2, 1)
    assert ws2.failed == 1 and ws2.errors == ["Install the driver: no such package"]

    console = Console(record=True, width=250)
    console.print(progress_table(tracker, playbook_roles("site.yml")))
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in console.export_text().splitlines()
        if line.startswith("│ ws")
    }
    # facts, nvidia_driver, model_store, vllm, ollama, egress_guard, continue
    assert rows["ws1"] == ["ok 1", "skipped", "...", "> Wait for /health", "...", "...", "..."]
    assert rows["ws2"][:2] == ["ok 1", "failed"]

    tracker({"event": "playbook_on_stats", "event_data": {}})
    assert all(h.done for h in tracker.hosts.values())
    console = Console(record=True, width=250)
    console.print(progress_table(tracker, playbook_roles("site.yml")))
    assert "│ ok 2 ~1 " in console.export_text() and "..." not in console.export_text()
