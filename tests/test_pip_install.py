"""The toolkit's wheel is enough for `toolkit provision`: it carries the collection pca.toolkit, and
the CLI installed from it runs that copy's playbooks and roles, not the checkout's.

Exercised for real: the wheel built from the checkout (setup.py unpacks the tarball that
`ansible-galaxy collection build` makes into site-packages/ansible_collections/pca/toolkit); its
install into a fresh venv, offline (`--no-index --no-deps`); `toolkit provision` from that venv, run
from a directory outside the checkout with no ansible.cfg and no ANSIBLE_*/PYTHONPATH, converging
localhost (local connection) with plan.yml in both phases (GPU detection and planning on this
machine, then the converge with the plans handed in); every task the run's events name comes from the
installed collection. `ansible-builder create` turning execution-environment.yml into a build context.

Stand-ins: the fresh venv reaches the toolkit's dependencies (ansible-core, ansible-runner, typer...)
through a .pth line naming the shared venv's site-packages, and its ansible-playbook is the shared
venv's script pointed at the fresh interpreter: what `pip install` of those dependencies would put
there, without the network. The .pth adds a path only; the shared venv's editable finder for the
checkout is not loaded, so `import toolkit` can only find the wheel's copy (the test checks it).
Not exercised: site.yml's roles converging a host from the installed copy (test_collection.py
converges egress_guard from an installed tarball; the molecule scenarios converge the rest from the
checkout); building and running the execution environment's image is
tests/test_execution_environment.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO

BIN = Path(sys.executable).parent


def clean_env(scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_") and k != "PYTHONPATH"}
    env.update(HOME=str(scratch), ANSIBLE_NOCOLOR="1")
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--no-build-isolation",
         "-w", str(out), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (whl,) = out.glob("private_coding_assistant_toolkit-*.whl")
    return whl


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, wheel) -> dict:
    """A new venv with the wheel installed and nothing of the checkout."""
    root = tmp_path_factory.mktemp("fresh")
    venv, outside = root / "venv", root / "elsewhere"
    outside.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = Path(
        subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       capture_output=True, text=True, check=True).stdout.strip()
    )  # fmt: skip
    r = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-index", "--no-deps", str(wheel)],
        capture_output=True, text=True, timeout=300, env=clean_env(root),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    # Only now: seen before the install, the shared venv's editable toolkit would count as installed.
    (purelib / "zz_shared_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = (BIN / "ansible-playbook").read_text().split("\n", 1)[1]
    (venv / "bin" / "ansible-playbook").write_text(f"#!{py}\n{script}")
    (venv / "bin" / "ansible-playbook").chmod(0o755)
    return {"venv": venv, "py": py, "purelib": purelib, "cwd": outside, "env": clean_env(root)}


def test_wheel_carries_exactly_the_collection_tarball(wheel, tmp_path):
    """The wheel's ansible_collections/pca/toolkit is the tarball `ansible-galaxy collection build`
    makes, file for file and byte for byte (build_ignore is the one list of what ships)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    r = subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path), str(REPO)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    import tarfile

    (tarball,) = tmp_path.glob("pca-toolkit-*.tar.gz")
    with tarfile.open(tarball) as tar:
        shipped = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    prefix = "ansible_collections/pca/toolkit/"
    with zipfile.ZipFile(wheel) as z:
        carried = {n[len(prefix) :]: z.read(n) for n in z.namelist() if n.startswith(prefix)}
        top = {n.split("/")[0] for n in z.namelist()}
    assert sorted(carried) == sorted(shipped)
    assert [n for n in carried if carried[n] != shipped[n]] == []
    assert "playbooks/site.yml" in carried and "roles/vllm/tasks/main.yml" in carried
    assert top == {"toolkit", "ansible_collections", "private_coding_assistant_toolkit-0.1.0.dist-info"}


def test_installed_toolkit_finds_the_installed_collection_not_the_checkout(fresh):
    r = subprocess.run(
        [str(fresh["py"]), "-c",
         "import json, toolkit.provision as p; print(json.dumps([p.__file__, str(p.PLAYBOOKS), p.CHECKOUT]))"],
        capture_output=True, text=True, cwd=fresh["cwd"], env=fresh["env"], timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    module, playbooks, checkout = json.loads(r.stdout)
    assert (module, playbooks, checkout) == (
        str(fresh["purelib"] / "toolkit" / "provision.py"),
        str(fresh["purelib"] / "ansible_collections" / "pca" / "toolkit" / "playbooks"),
        False,
    )


@pytest.mark.slow
def test_pip_installed_toolkit_provisions_localhost_from_the_installed_collection(fresh):
    inventory = fresh["cwd"] / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": str(fresh["py"]),
        "continue_users": []}}}}))  # fmt: skip
    # site.yml in check mode with the continue tag: plan.yml imported, every role parsed and its
    # argument spec validated, the continue role's tasks run (no developer: nothing to configure).
    r = subprocess.run(
        [str(fresh["venv"] / "bin" / "toolkit"), "provision", "-i", str(inventory), "--check", "--tags", "continue",
         "--json"],
        capture_output=True, text=True, cwd=fresh["cwd"], env=fresh["env"], timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout)
    run_dir = Path(summary["run_dir"])
    # Installed, runs are kept under the directory the toolkit ran in, not inside site-packages.
    assert run_dir.parent == fresh["cwd"] / "artifacts" / "runs"
    assert (summary["rc"], summary["status"], summary["hosts"]["localhost"]["failed"]) == (0, "successful", 0)
    plan = json.loads((run_dir / "plans" / "localhost.json").read_text())
    assert plan["tier"] == "cpu", plan["tier"]
    collection = fresh["purelib"] / "ansible_collections" / "pca" / "toolkit"
    # Where every task of both phases was read from: ansible-runner records it per event.
    paths = {}
    for phase in ("plan", "converge"):
        for f in sorted((run_dir / "artifacts" / phase / "job_events").glob("*.json")):
            task_path = json.loads(f.read_text()).get("event_data", {}).get("task_path")
            if task_path:
                paths.setdefault(phase, set()).add(task_path.rsplit(":", 1)[0])
    relative = {phase: {os.path.relpath(p, collection) for p in found} for phase, found in paths.items()}
    assert relative == {
        "plan": {"playbooks/plan.yml"},
        "converge": {
            "playbooks/plan.yml",
            "playbooks/site.yml",
            "roles/continue/tasks/main.yml",
            "roles/continue/tasks/validate.yml",
            "roles/continue/tasks/check_embeddings.yml",
        },
    }
    roles = set(summary["hosts"]["localhost"]["roles"])
    assert roles == {"facts", "nvidia_driver", "safe_values", "vllm", "ollama", "egress_guard", "continue"}


def test_execution_environment_definition_makes_a_build_context(wheel, tmp_path):
    """`ansible-builder create` (no image build) accepts execution-environment.yml and lays out a
    context with the toolkit's wheel, the pinned ansible-core/runner and the system packages."""
    builder = shutil.which("ansible-builder", path=str(BIN))
    assert builder, "ansible-builder is a dev dependency (pyproject.toml [dev])"
    work = tmp_path / "ee"
    (work / "dist").mkdir(parents=True)
    shutil.copy(REPO / "execution-environment.yml", work)
    shutil.copy(wheel, work / "dist")
    r = subprocess.run(
        [builder, "create", "-f", "execution-environment.yml", "-c", "context", "--output-filename", "Containerfile"],
        capture_output=True, text=True, cwd=work, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    containerfile = (work / "context" / "Containerfile").read_text()
    ee = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    assert f'ARG EE_BASE_IMAGE="{ee["images"]["base_image"]["name"]}"' in containerfile
    constraints = dict(
        line.split("==") for line in (REPO / ".ci" / "constraints.txt").read_text().splitlines() if "==" in line
    )
    install_refs = f"ARG ANSIBLE_INSTALL_REFS=\"ansible-core=={constraints['ansible-core']} " \
                   f"ansible-runner=={constraints['ansible-runner']}\""  # fmt: skip
    assert install_refs in containerfile
    assert (work / "context" / "_build" / "toolkit" / wheel.name).read_bytes() == wheel.read_bytes()
    assert f"/tmp/toolkit/{wheel.name}" in containerfile.replace("*.whl", wheel.name)
    bindep = (work / "context" / "_build" / "bindep.txt").read_text().split("\n")
    assert "openssh-client [platform:dpkg]" in bindep


@pytest.mark.slow
def test_pip_installed_audit_playbook_runs_by_fqcn_with_no_checkout_paths(fresh):
    """`ansible-playbook pca.toolkit.audit` with no collections path set: ansible-core finds the
    wheel's collection on its sys.path scan; the summary runs the controller Python's toolkit and
    the reports land in the user's state directory (no checkout, no .venv beside the playbook)."""
    from scapy.all import IP, UDP, Ether, wrpcap

    pcap = fresh["cwd"] / "quiet.pcap"
    wrpcap(str(pcap), [Ether() / IP(src="127.0.0.1", dst="127.0.0.1") / UDP(sport=1, dport=2)])
    inventory = fresh["cwd"] / "audit-hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": str(fresh["py"]), "ansible_become": False,
        "audit_pcap": str(pcap), "audit_toolkit": str(fresh["venv"] / "bin" / "toolkit"),
        "audit_remote_dir": str(fresh["cwd"] / "remote")}}}}))  # fmt: skip
    env = dict(fresh["env"], PATH=f"{fresh['venv'] / 'bin'}:{os.environ['PATH']}")
    env.pop("XDG_STATE_HOME", None)
    r = subprocess.run(
        [str(fresh["venv"] / "bin" / "ansible-playbook"), "-i", str(inventory), "pca.toolkit.audit"],
        capture_output=True, text=True, cwd=fresh["cwd"], env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    fetched = Path(env["HOME"]) / ".local" / "state" / "toolkit" / "audit" / "localhost"
    assert sorted(p.name for p in fetched.iterdir()) == ["audit.html", "audit.json", "audit.junit.xml", "audit.prom"]
    assert json.loads((fetched / "audit.json").read_text())["verdict"] == "PASS"
    assert "localhost: PASS" in r.stdout
