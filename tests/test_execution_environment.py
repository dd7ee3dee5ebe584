"""The execution environment (execution-environment.yml) built by ansible-builder and run as AWX runs
it: ansible-runner with process isolation starts the image under podman and the image's collection
pca.toolkit (from the toolkit's wheel) converges a real systemd host over SSH.

Exercised for real: the wheel built from the checkout; `ansible-builder build` of the file with
podman, with the build's network switched off (`--network=none`): every layer that needs a registry
must come from the layer cache that .ci/install.d/60-execution-environment.sh filled, and only the
wheel's layers are rebuilt; `ansible_runner.run(process_isolation=True, ...)` running
`pca.toolkit.site` by FQCN inside that image, no checkout mounted; SSH from the EE to the host's
sshd on the host's own 127.0.0.1 (the EE shares the host's network namespace, as a jump host would
reach it: nothing is sent to a bridge address); the whole of site.yml (plan play, driver check, vllm
units with health wait, egress guard, Continue) converged on the host, read back there
(`nft -j list ruleset`, the developer's config.yaml).
Stand-in: vLLM itself is tests/fleet.py's stand-in (STACK_VARS), as in the fleet tests. Not exercised:
AWX itself (its job launcher does what ansible-runner does here), a registry push/pull, the image's
build from a cold cache (.ci/install.d does that, with the registries).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import REPO, require, require_root
from fleet import image_available, podman, stack_fleet

pytestmark = [pytest.mark.podman, pytest.mark.root, pytest.mark.slow]

BIN = Path(sys.executable).parent
# Where the image's pip put the wheel's collection (Debian python3, system site-packages).
EE_COLLECTION = "/usr/local/lib/python3.11/dist-packages/ansible_collections/pca/toolkit"


@pytest.fixture(scope="module")
def ee_image(tmp_path_factory) -> str:
    require_root()
    require(image_available(), "needs the cached systemd test image (bash .ci/install)")
    builder = shutil.which("ansible-builder", path=str(BIN))
    require(builder is not None, "needs ansible-builder (pyproject.toml [dev])")
    work = tmp_path_factory.mktemp("ee")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--no-build-isolation",
         "-w", str(work / "dist"), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    shutil.copy(REPO / "execution-environment.yml", work)
    tag = f"localhost/ee-toolkit-test:{uuid.uuid4().hex[:8]}"
    r = subprocess.run(
        [builder, "build", "-f", "execution-environment.yml", "-c", "context", "-t", tag,
         "--container-runtime", "podman", "--extra-build-cli-args=--network=none", "-v", "2"],
        capture_output=True, text=True, cwd=work, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, (
        "ansible-builder build failed with the network off (is the layer cache of "
        ".ci/install.d/60-execution-environment.sh there?):\n" + r.stdout[-4000:] + r.stderr[-2000:]
    )
    yield tag
    podman("rmi", tag, check=False)


def test_site_playbook_runs_from_the_execution_environment_over_ssh(ee_image, tmp_path):
    import ansible_runner

    with stack_fleet(1, tmp_path, prefix="ee-stack") as inv:
        ((name, fleet_vars),) = yaml.safe_load(inv.read_text())["all"]["children"]["fleet"]["hosts"].items()
        pdd = tmp_path / "runner"
        keys = pdd / "keys"
        for d in (keys, pdd / "inventory", pdd / "project", pdd / "env"):
            d.mkdir(parents=True)
        shutil.copy(tmp_path / "fleet_ed25519", keys / "id_ed25519")
        (keys / "id_ed25519").chmod(0o600)
        host_key = (tmp_path / "fleet_known_hosts").read_text().split(None, 1)[1]
        (keys / "known_hosts").write_text(f"127.0.0.1 {host_key}")
        host = {k: v for k, v in fleet_vars.items() if not k.startswith("ansible_ssh")}
        host.update(
            ansible_host="127.0.0.1",
            ansible_ssh_private_key_file="/runner/keys/id_ed25519",
            ansible_ssh_common_args="-o UserKnownHostsFile=/runner/keys/known_hosts -o StrictHostKeyChecking=yes"
            " -o IdentitiesOnly=yes",
            ansible_ssh_host_key_checking=True,
            ansible_ssh_pipelining=True,
        )
        (pdd / "inventory" / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {name: host}}}))
        # The private data dir is root's here; AWX prepares it for the image's user (uid 1000).
        r = ansible_runner.run(
            private_data_dir=str(pdd),
            playbook="pca.toolkit.site",
            process_isolation=True,
            process_isolation_executable="podman",
            container_image=ee_image,
            container_options=["--user=0", f"--network=container:{name}"],
            quiet=True,
            timeout=600,
        )
        events = list(r.events)
        stdout = r.stdout.read()
        assert (r.rc, r.status) == (0, "successful"), stdout[-4000:]
        recap = {k: r.stats.get(k, {}).get(name, 0) for k in ("failures", "dark", "ok")}
        assert recap["failures"] == 0 and recap["dark"] == 0 and recap["ok"] > 5, recap

        paths = {
            e["event_data"]["task_path"].rsplit(":", 1)[0] for e in events if e.get("event_data", {}).get("task_path")
        }
        outside = sorted(p for p in paths if not p.startswith(EE_COLLECTION + "/"))
        assert outside == [], outside
        relative = {os.path.relpath(p, EE_COLLECTION) for p in paths}
        roles = {f"roles/{r}/tasks/main.yml" for r in ("vllm", "egress_guard", "continue")}
        assert {"playbooks/plan.yml", "playbooks/site.yml", *roles} <= relative, sorted(relative)
        # The plan play ran gpu_facts on the host, over SSH from the EE.
        planned = [e for e in events if e.get("event") == "runner_on_ok"
                   and e["event_data"].get("task_action") == "pca.toolkit.gpu_facts"]  # fmt: skip
        assert [e["event_data"]["host"] for e in planned] == [name]

        # What changed on the host, read there.
        ruleset = json.loads(podman("exec", name, "nft", "-j", "list", "ruleset").stdout)
        tables = [o["table"]["name"] for o in ruleset["nftables"] if "table" in o]
        assert "toolkit_egress_guard" in tables, tables
        config = yaml.safe_load(podman("exec", name, "cat", "/home/dev/.continue/config.yaml").stdout)
        bases = sorted({m.get("apiBase") for m in config["models"]})
        assert bases and all(b.startswith("http://127.0.0.1:") for b in bases), bases
