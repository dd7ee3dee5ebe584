"""The checkout built as the Ansible collection pca.toolkit, installed into an empty path and run by
FQCN from a directory outside the checkout, with no project ansible.cfg and none of the checkout's
search paths (ANSIBLE_CONFIG names a file that does not exist; every other ANSIBLE_* variable and
PYTHONPATH are dropped).

Exercised for real: `ansible-galaxy collection build` and `install`; the gpu_facts module and its
module_utils shipped by Ansible from the installed copy; the data_file lookup finding tiers.yaml and
phone_home.yaml inside the installed collection; `ansible-playbook pca.toolkit.plan` on localhost
planning a recorded GPU inventory to exactly the plan `toolkit plan` prints; `pca.toolkit.site`
resolving its sibling import and every role; the installed vllm role's validation and unit template
(the collection's filters) rendering the same unit as the checkout's role; the installed egress_guard
role converging this machine inside a network namespace (root) and blocking a service user.
Not exercised here: the other roles converging a host from the installed copy (the molecule
scenarios converge them from the checkout, by the same FQCNs), systemd-only steps, and AWX / an
execution environment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import tomllib
import yaml
from conftest import REPO

BIN = Path(sys.executable).parent
RECORDED = REPO / "tests" / "data" / "gpus" / "2x-rtx3090-24gb.json"
# What the tarball may hold at its top level: Ansible content, its docs and the data files' home.
# site.yml's statically imported roles (model_store is an include_role, resolved at run time).
ROLES = ("nvidia_driver", "vllm", "ollama", "safe_values", "egress_guard", "continue")
TOP_LEVEL = {"FILES.json", "MANIFEST.json", "README.md", "docs", "meta", "playbooks", "plugins", "roles", "toolkit"}


def clean_env(collections: Path, scratch: Path) -> dict[str, str]:
    """No trace of the checkout: no ansible.cfg, no roles/library/module_utils paths, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_") and k != "PYTHONPATH"}
    env.update(
        ANSIBLE_CONFIG=str(scratch / "no-such-ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_HOME=str(scratch / "ansible-home"),
    )
    return env


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The collection built from the checkout and installed into an empty directory."""
    root = tmp_path_factory.mktemp("collection")
    build, inst, outside = root / "build", root / "installed", root / "elsewhere"
    for d in (build, inst, outside):
        d.mkdir()
    env = clean_env(inst, outside)
    r = run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(build), str(REPO)], outside, env)
    assert r.returncode == 0, r.stdout + r.stderr
    (tarball,) = build.glob("pca-toolkit-*.tar.gz")
    r = run([str(BIN / "ansible-galaxy"), "collection", "install", "-p", str(inst), str(tarball)], outside, env)
    version = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]
    assert r.returncode == 0 and f"pca.toolkit:{version} was installed successfully" in r.stdout, r.stdout + r.stderr
    inventory = outside / "hosts.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "hosts": {
                        "localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
                    }
                }
            }
        )
    )
    return {
        "tarball": tarball,
        "root": inst / "ansible_collections" / "pca" / "toolkit",
        "env": env,
        "cwd": outside,
        "inventory": inventory,
    }


def cli_plan(gpus: Path) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "toolkit", "plan", "--gpus", str(gpus), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_galaxy_version_is_the_python_package_version():
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert (galaxy["namespace"], galaxy["name"], galaxy["version"]) == ("pca", "toolkit", project["version"])


def test_tarball_ships_ansible_content_and_data_only(installed):
    with tarfile.open(installed["tarball"]) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert {n.split("/")[0] for n in names} == TOP_LEVEL
    # toolkit/ carries only the data files' home, never the CLI's Python (pip installs that).
    assert sorted(n for n in names if n.startswith("toolkit/")) == [
        "toolkit/data",
        *sorted(f"toolkit/data/{p.name}" for p in (REPO / "toolkit" / "data").iterdir() if p.is_file()),
    ]
    leaked = [
        n for n in names if re.search(r"(^|/)(tests|\.venv|artifacts|molecule|__pycache__|\.ci)(/|$)|\.egg-info", n)
    ]
    assert leaked == []
    assert [m.name for m in members if m.issym() or m.islnk()] == []


def test_tarball_module_utils_and_data_are_the_bytes_the_cli_imports(installed):
    import importlib

    from toolkit import planning

    # Every module the CLI imports from toolkit/module_utils (gpu_plan and model_verify import their
    # siblings relatively, so AnsiballZ ships those with them).
    names = ("egress_intent", "gpu_detect", "gpu_plan", "plan_fit", "plan_inputs", "plan_render", "plan_search",
             "model_lock", "model_verify")  # fmt: skip
    cli = {name: Path(importlib.import_module(f"toolkit.module_utils.{name}").__file__) for name in names}
    with tarfile.open(installed["tarball"]) as tar:
        shipped = {
            Path(m.name).stem: tar.extractfile(m).read()
            for m in tar.getmembers()
            if m.isfile() and m.name.startswith("plugins/module_utils/") and m.name.endswith(".py")
        }
        tiers = tar.extractfile("toolkit/data/tiers.yaml").read()
    assert set(shipped) == {"__init__", *cli}
    assert {name: shipped[name] == path.read_bytes() for name, path in cli.items()} == dict.fromkeys(cli, True)
    assert tiers == planning.TIERS_FILE.read_bytes()


def test_installed_gpu_facts_module_plans_a_recorded_inventory_exactly_as_toolkit_plan(installed):
    args = {
        "tiers": "{{ lookup('ansible.builtin.file', lookup('pca.toolkit.data_file', 'tiers.yaml')) | from_yaml }}",
        "gpus": json.loads(RECORDED.read_text()),
    }
    env = dict(installed["env"], ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
    r = run(
        [str(BIN / "ansible"), "localhost", "-i", str(installed["inventory"]), "-m", "pca.toolkit.gpu_facts",
         "-a", json.dumps(args)],
        installed["cwd"], env,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    result = json.loads(r.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    assert result["ansible_facts"]["toolkit_plan"] == cli_plan(RECORDED)


def test_installed_plan_playbook_by_fqcn_plans_exactly_as_toolkit_plan(installed):
    extra = installed["cwd"] / "recorded.json"
    extra.write_text(json.dumps({"toolkit_recorded_gpus": json.loads(RECORDED.read_text())}))
    env = dict(installed["env"], ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
    r = run(
        [str(BIN / "ansible-playbook"), "-i", str(installed["inventory"]), "pca.toolkit.plan", "-e", f"@{extra}"],
        installed["cwd"], env,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    tasks = json.loads(r.stdout)["plays"][0]["tasks"]
    plan_task = tasks[0]["hosts"]["localhost"]
    assert (tasks[0]["task"]["name"], plan_task["changed"]) == (
        "Detect this host's GPUs and plan its services (unless a plan was handed in)",
        False,
    )
    assert plan_task["ansible_facts"]["toolkit_plan"] == cli_plan(RECORDED)


def test_installed_site_playbook_resolves_its_import_and_every_role(installed):
    r = run(
        [str(BIN / "ansible-playbook"), "-i", str(installed["inventory"]), "pca.toolkit.site", "--list-tasks"],
        installed["cwd"], installed["env"],
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    plays = re.findall(r"^\s*play #\d+ \(all\): (.+?)\s+TAGS", r.stdout, re.M)
    assert plays == ["Detect GPUs and plan the local AI stack", "Stand up the local AI stack"]
    # Each role's tasks are listed under its collection name: the installed copy, not a roles_path.
    listed = set(re.findall(r"^\s+([a-z_.]+) : ", r.stdout, re.M))
    assert listed == {f"pca.toolkit.{role}" for role in ROLES}


def render_vllm_unit(where: Path, collection_root: Path, env: dict[str, str], cwd: Path) -> str:
    """The vllm role's validation (its pca.toolkit filters) and unit template, from collection_root."""
    plan = cli_plan(REPO / "tests" / "data" / "gpus" / "rtx4090-24gb.json")
    play = [{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "tasks": [
            {"name": "Validate the vllm role's inputs",
             "ansible.builtin.include_role": {"name": "pca.toolkit.vllm", "tasks_from": "validate.yml",
                                              "public": True}},
            {"name": "Render the chat unit",
             "ansible.builtin.template": {"src": str(collection_root / "roles/vllm/templates/vllm.service.j2"),
                                          "dest": str(where), "mode": "0644"},
             "vars": {"item": {"key": "chat", "value": "{{ vllm_services.chat }}"}}},
        ],
    }]  # fmt: skip
    pb = where.with_suffix(".yml")
    pb.write_text(yaml.safe_dump(play))
    ev = where.with_suffix(".json")
    # The plan through a lookup, as plan.yml hands one in (an extra var's FIM template would be parsed as Jinja).
    where.with_suffix(".plan.json").write_text(json.dumps(plan))
    lookup = f"{{{{ lookup('ansible.builtin.file', '{where.with_suffix('.plan.json')}') | from_json }}}}"
    ev.write_text(json.dumps({"toolkit_plan": lookup, "ansible_facts": {"os_family": "Debian"}}))
    r = run([str(BIN / "ansible-playbook"), "-i", "localhost,", str(pb), "-e", f"@{ev}",
             "-e", f"ansible_python_interpreter={sys.executable}"], cwd, env)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    return where.read_text()


def test_installed_vllm_role_renders_the_unit_the_checkout_renders(installed, tmp_path):
    from_collection = render_vllm_unit(tmp_path / "installed.service", installed["root"], installed["env"],
                                       installed["cwd"])  # fmt: skip
    checkout_env = clean_env(REPO / "collections", tmp_path)
    from_checkout = render_vllm_unit(tmp_path / "checkout.service", REPO, checkout_env, installed["cwd"])
    assert "ExecStart=" in from_collection and "--host 127.0.0.1" in from_collection.replace("'", "")
    assert from_collection == from_checkout


def test_installed_data_file_lookup_finds_the_installed_copy_and_refuses_paths(installed):
    env = dict(installed["env"], ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
    argv = [str(BIN / "ansible"), "localhost", "-i", str(installed["inventory"]), "-m", "ansible.builtin.debug"]
    r = run([*argv, "-a", "msg={{ lookup('pca.toolkit.data_file', 'phone_home.yaml') }}"], installed["cwd"], env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    msg = json.loads(r.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]
    assert msg == str(installed["root"] / "toolkit" / "data" / "phone_home.yaml")
    r = run([*argv, "-a", "msg={{ lookup('pca.toolkit.data_file', '../galaxy.yml') }}"], installed["cwd"], env)
    res = json.loads(r.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    assert (
        r.returncode != 0 and "pca.toolkit.data_file: a bare file name is expected, got '../galaxy.yml'" in res["msg"]
    )


@pytest.mark.root
@pytest.mark.slow
def test_installed_egress_guard_role_guards_a_workstation_namespace(installed, tmp_path):
    """The installed role converges a real host (this machine inside a network namespace the test
    creates, as tests/test_egress_role.py does from the checkout): its filters, its
    egress_guard_verify module and the phone-home list through the data_file lookup all come from
    the installed copy. systemd-only steps are skipped here (no systemd as PID 1)."""
    from conftest import require_binary, require_root
    from egress_support import PEER_ADDR, attempt, delete_pair, make_pair, nsx, throwaway_users

    # Names of its own: tests/test_egress_role.py creates and removes egress-t-* around its runs.
    service_users = ("coll-t-vllm", "coll-t-ollama")

    require_root()
    require_binary("nft")
    play = tmp_path / "play.yml"
    guard = {"name": "Guard", "hosts": "localhost", "connection": "local", "gather_facts": True}
    play.write_text(yaml.safe_dump([{**guard, "roles": [{"role": "pca.toolkit.egress_guard"}]}]))

    def converge(ns: str, **extra: object) -> subprocess.CompletedProcess:
        variables = {
            "egress_guard_users": list(service_users),
            "egress_guard_config_dir": str(tmp_path / "etc"),
            "egress_guard_state_dir": str(tmp_path / "state"),
            "egress_guard_sinkhole_hosts_file": str(tmp_path / "hosts"),
            "ansible_python_interpreter": sys.executable,
            **extra,
        }
        (tmp_path / "vars.json").write_text(json.dumps(variables))
        env = dict(installed["env"], PATH=f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin", HOME=str(tmp_path))
        argv = ["ip", "netns", "exec", ns, str(BIN / "ansible-playbook"), "-i", "localhost,",
                "-e", f"@{tmp_path / 'vars.json'}", str(play)]  # fmt: skip
        return run(argv, installed["cwd"], env, timeout=240)

    with throwaway_users(service_users):
        pair = make_pair()
        try:
            r = converge(pair.ws)
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
            assert "pca.toolkit.egress_guard : " in r.stdout
            assert attempt(pair.ws, "coll-t-vllm", "udp", PEER_ADDR, 9) == "EPERM"
            assert "0.0.0.0 stats.vllm.ai" in (tmp_path / "hosts").read_text()
            r = converge(pair.ws, egress_guard_state="absent")
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
            assert nsx(pair.ws, "nft", "list", "tables").stdout.strip() == ""
        finally:
            delete_pair(pair)


def test_checkout_resolves_its_own_fqcns_through_ansible_cfg_alone(tmp_path):
    """No install, no ANSIBLE_COLLECTIONS_PATH: the project's ansible.cfg puts collections/ (a link
    back to the root) on the path, so the lookup answers with the checkout's own file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_") and k != "PYTHONPATH"}
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_HOME=str(tmp_path / "ansible-home"))  # fmt: skip
    r = run(
        [str(BIN / "ansible"), "localhost", "-c", "local", "-i", "localhost,", "-m", "ansible.builtin.debug",
         "-a", "msg={{ lookup('pca.toolkit.data_file', 'tiers.yaml') }}"],
        tmp_path, env,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    msg = json.loads(r.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]
    assert os.path.realpath(msg) == str((REPO / "toolkit" / "data" / "tiers.yaml").resolve())
