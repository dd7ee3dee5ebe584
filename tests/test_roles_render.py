"""Fast checks of the roles without containers: what Ansible renders from a plan, and the package
selection per OS family. Real ansible-playbook runs on localhost that write only under tmp_path;
no service is started (the molecule scenarios do that)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from toolkit.module_utils.gpu_plan import make_plan

PLAYBOOK_BIN = str(Path(sys.executable).parent / "ansible-playbook")
TIERS = yaml.safe_load((REPO / "toolkit/data/tiers.yaml").read_text())


def run_playbook(tmp_path: Path, tasks: list, extra: dict) -> subprocess.CompletedProcess:
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": tasks}]
    pb = tmp_path / "play.yml"
    pb.write_text(yaml.safe_dump(play))
    ev = tmp_path / "extra.json"
    ev.write_text(json.dumps({"ansible_python_interpreter": sys.executable, **extra}))
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_NOCOLOR="1")
    env.pop("ANSIBLE_CONFIG", None)
    r = subprocess.run(
        [PLAYBOOK_BIN, "-i", "localhost,", str(pb), "-e", f"@{ev}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    return r


def render_vllm_units(tmp_path: Path, plan: dict, **overrides) -> dict[str, str]:
    """Render the vllm role's unit template for every service its defaults derive from the plan."""
    tasks = [
        {
            "name": "Load the vllm role's defaults and vars",
            "ansible.builtin.include_role": {"name": "vllm", "tasks_from": "validate.yml", "public": True},
        },
        {
            "name": "Render each unit",
            "ansible.builtin.template": {
                "src": str(REPO / "roles/vllm/templates/vllm.service.j2"),
                "dest": str(tmp_path) + "/vllm-{{ item.key }}.service",
                "mode": "0644",
            },
            "loop": "{{ vllm_services | dict2items }}",
        },
    ]
    extra = {"toolkit_plan": plan, "ansible_facts": {"os_family": "Debian"}, **overrides}
    r = run_playbook(tmp_path, tasks, extra)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    return {p.stem: p.read_text() for p in tmp_path.glob("vllm-*.service")}


def exec_start(unit: str) -> str:
    return next(line for line in unit.splitlines() if line.startswith("ExecStart="))


def test_gpu_plan_gives_one_unit_per_server_with_the_plan_args_on_loopback(tmp_path):
    facts = json.loads((REPO / "tests/data/gpus/rtx4090-24gb.json").read_text())
    plan = make_plan(facts, TIERS, {})
    units = render_vllm_units(tmp_path, plan)
    expected = {f"vllm-{n}" for n, s in plan["services"].items() if "args" in s and "shared_with" not in s}
    assert set(units) == expected and "vllm-chat" in units
    chat = units["vllm-chat"]
    line = exec_start(chat)
    assert line.startswith("ExecStart=/opt/vllm/venv/bin/vllm 'serve' ")
    for arg in plan["services"]["chat"]["args"]:
        assert f"'{arg}'" in line
    assert "'--host' '127.0.0.1'" in line
    assert "'--enable-auto-tool-choice' '--tool-call-parser' 'hermes'" in line
    assert "--api-key" not in chat and "EnvironmentFile=/etc/vllm/api-key.env" in chat
    buckets = json.loads(line.split("'--custom-histogram-buckets' '")[1].split("'")[0])
    assert min(buckets["time_to_first_token"]) < 0.3 and 0.3 in buckets["request_latency"]
    for env in ("VLLM_NO_USAGE_STATS=1", "DO_NOT_TRACK=1", "HF_HUB_OFFLINE=1", "HF_HUB_DISABLE_TELEMETRY=1"):
        assert f"Environment='{env}'" in chat
    for hard in (
        "User=vllm",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "IPAddressDeny=any",
        "IPAddressAllow=localhost",
    ):
        assert hard in chat.splitlines()


def systemd_words(line: str) -> list[str]:
    """ExecStart's words as systemd reads them (single-quoted words, %% and $$ undoubled)."""
    import shlex

    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line.split("=", 1)[1])]


@pytest.mark.parametrize("inv", ["rtx4090-24gb", "no-gpu"])
def test_unit_exec_start_is_exactly_the_plan_argv(tmp_path, inv):
    """The unit is the plan: ExecStart = the venv's bin/ + the plan's argv, with nothing added."""
    facts = json.loads((REPO / f"tests/data/gpus/{inv}.json").read_text())
    plan = make_plan(facts, TIERS, {})
    units = render_vllm_units(tmp_path, plan)
    for name in plan["start_order"]:
        argv = plan["services"][name]["argv"]
        words = systemd_words(exec_start(units[f"vllm-{name}"]))
        assert words == [f"/opt/vllm/venv/bin/{argv[0]}", *argv[1:]], name


def test_second_server_on_a_shared_gpu_is_ordered_after_the_first(tmp_path):
    facts = json.loads((REPO / "tests/data/gpus/rtx4090-24gb.json").read_text())
    plan = make_plan(facts, TIERS, {})
    assert plan["services"]["autocomplete"]["start_after"] == "chat"
    units = render_vllm_units(tmp_path, plan)
    auto = units["vllm-autocomplete"].splitlines()
    assert "After=network-online.target vllm-chat.service" in auto and "Requires=vllm-chat.service" in auto
    assert not any(line.startswith("Requires=") for line in units["vllm-chat"].splitlines())
    assert "Environment='CUDA_DEVICE_ORDER=PCI_BUS_ID'" in units["vllm-chat"]


def test_autocomplete_on_its_own_gpu_gets_cuda_visible_devices(tmp_path):
    facts = json.loads((REPO / "tests/data/gpus/rtx4090-24gb.json").read_text())
    plan = make_plan(facts, TIERS, {})
    auto = plan["services"]["autocomplete"]
    if "shared_with" in auto:
        pytest.skip("this tier shares the chat server for autocomplete")
    units = render_vllm_units(tmp_path, plan)
    assert f"Environment='CUDA_VISIBLE_DEVICES={auto['cuda_visible_devices']}'" in units["vllm-autocomplete"]


def test_container_method_unit_runs_the_pinned_image_on_the_host_network_with_the_key_file(tmp_path):
    """Rendered only: no GPU and no image registry here, so the container method is not run."""
    facts = json.loads((REPO / "tests/data/gpus/rtx4090-24gb.json").read_text())
    plan = make_plan(facts, TIERS, {})
    units = render_vllm_units(tmp_path, plan, vllm_install_method="container")
    line = exec_start(units["vllm-chat"])
    assert line.startswith(
        "ExecStart=/usr/bin/podman run --rm --name vllm-chat --network host --ipc host "
        "--device nvidia.com/gpu=all --env-file /etc/vllm/api-key.env "
    )
    # The image's entry point is `vllm serve`: it gets the plan's arguments after it.
    assert f" docker.io/vllm/vllm-openai:v0.32.0 '{plan['services']['chat']['model']}' " in line
    assert "User=vllm" not in units["vllm-chat"]


def test_systemd_specifiers_and_quotes_in_arguments_are_escaped(tmp_path):
    plan = {
        "runtime": "cpu",
        "services": {
            "chat": {
                "port": 8000,
                "served_model_name": "chat",
                "args": ["--model", "/models/it's 100%", "--host", "127.0.0.1", "--port", "8000", "--x", "$HOME"],
            }
        },
    }
    line = exec_start(render_vllm_units(tmp_path, plan)["vllm-chat"])
    assert "'/models/it\\'s 100%%'" in line and "'$$HOME'" in line


def test_cpu_plan_with_shared_autocomplete_gives_only_the_chat_unit(tmp_path):
    facts = json.loads((REPO / "tests/data/gpus/no-gpu.json").read_text())
    plan = make_plan(facts, TIERS, {"autocomplete": {"shared": True}, "embed": {"backend": "vllm"}})
    units = render_vllm_units(tmp_path, plan)
    assert set(units) == {"vllm-chat", "vllm-embed"}
    assert "'--runner' 'pooling'" in exec_start(units["vllm-embed"])
    assert "Environment='VLLM_CPU_KVCACHE_SPACE=" in units["vllm-chat"]


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (
            {"os_family": "Debian", "distribution": "Debian", "kernel": "6.1.0-9-amd64"},
            [
                "linux-headers-6.1.0-9-amd64",
                "nvidia-driver",
                "firmware-misc-nonfree",
                "nvidia-smi",
                "nvidia-persistenced",
            ],
        ),
        (
            {"os_family": "Debian", "distribution": "Ubuntu", "kernel": "6.8.0-31-generic"},
            ["linux-headers-6.8.0-31-generic", "nvidia-driver-550-server", "nvidia-utils-550-server"],
        ),
        (
            {"os_family": "RedHat", "distribution": "Rocky", "kernel": "5.14.0-427.el9.x86_64"},
            [
                "kernel-devel-5.14.0-427.el9.x86_64",
                "kernel-headers-5.14.0-427.el9.x86_64",
                "@nvidia-driver:open-dkms",
                "nvidia-persistenced",
            ],
        ),
    ],
    ids=["debian", "ubuntu", "rhel-family"],
)
def test_nvidia_driver_selects_the_packages_of_each_os_family(tmp_path, facts, expected):
    """Selection only, with facts set by the test: installing a driver needs a GPU, which is not here."""
    out = tmp_path / "packages.json"
    tasks = [
        {"name": "Select", "ansible.builtin.include_role": {"name": "nvidia_driver", "tasks_from": "select.yml"}},
        {
            "name": "Save",
            "ansible.builtin.copy": {
                "content": "{{ nvidia_driver_selected_packages | to_json }}",
                "dest": str(out),
                "mode": "0644",
            },
        },
    ]
    r = run_playbook(tmp_path, tasks, {"ansible_facts": facts})
    assert r.returncode == 0, r.stdout[-3000:]
    assert json.loads(out.read_text()) == expected


def test_site_playbook_passes_syntax_check():
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_LIBRARY=str(REPO / "library"))
    r = subprocess.run(
        [PLAYBOOK_BIN, "--syntax-check", "-i", str(REPO / "inventories/local"), str(REPO / "playbooks/site.yml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_example_fleet_inventory_gives_each_gpu_tier_its_overrides():
    inv_bin = str(Path(sys.executable).parent / "ansible-inventory")
    r = subprocess.run(
        [inv_bin, "-i", str(REPO / "inventories/example-fleet"), "--list"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    hostvars = json.loads(r.stdout)["_meta"]["hostvars"]
    cpu = hostvars["ws-laptop-01.example.internal"]
    want = {"runtime": "cpu", "autocomplete": {"shared": True}, "embed": {"backend": "vllm"}}
    assert cpu["toolkit_plan_overrides"] == want
    assert hostvars["ws-rtx3060-01.example.internal"]["toolkit_plan_overrides"]["embed"] == {"backend": "ollama"}
    assert all(h["vllm_pip_index_url"].startswith("https://") for h in hostvars.values())
    assert len(hostvars) == 5
