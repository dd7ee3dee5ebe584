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
from conftest import REPO, require_binary
from plan_contract import assert_valid_plan, plan_lookup

from toolkit.module_utils.gpu_plan import make_plan

PLAYBOOK_BIN = str(Path(sys.executable).parent / "ansible-playbook")
TIERS = yaml.safe_load((REPO / "toolkit/data/tiers.yaml").read_text())


def run_playbook(tmp_path: Path, tasks: list, extra: dict) -> subprocess.CompletedProcess:
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": tasks}]
    pb = tmp_path / "play.yml"
    pb.write_text(yaml.safe_dump(play))
    if isinstance(extra.get("toolkit_plan"), dict):
        extra = dict(extra, toolkit_plan=plan_lookup(tmp_path, extra["toolkit_plan"]))
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


def unit_env(unit: str) -> dict[str, str]:
    """The Environment= lines of a unit as systemd reads them."""
    import shlex

    pairs = [shlex.split(line.split("=", 1)[1])[0] for line in unit.splitlines() if line.startswith("Environment=")]
    return dict(p.replace("%%", "%").split("=", 1) for p in pairs)


@pytest.mark.parametrize(
    ("inv", "overrides"),
    [("rtx4090-24gb", {}), ("no-gpu", {}), ("4x-h100-80gb", {"rerank": {"model": "bge-reranker-base"},
                                                              "embed": {"backend": "vllm"}})],
    ids=["24gb", "cpu", "4-gpus-rerank-vllm-embed"],
)  # fmt: skip
def test_unit_exec_start_is_exactly_the_plan_argv(tmp_path, inv, overrides):
    """The unit is the plan: one unit per service whose server is vllm, named as the plan names it,
    running as its user; ExecStart = the venv's bin/ + the plan's argv and Environment= = the plan's
    env (plus HOME and HF_HOME, the role's paths), nothing added; ordered after the plan's start_after."""
    facts = json.loads((REPO / f"tests/data/gpus/{inv}.json").read_text())
    plan = make_plan(facts, TIERS, overrides)
    assert_valid_plan(plan)
    units = render_vllm_units(tmp_path, plan)
    served = {n: s for n, s in plan["services"].items() if s.get("server") == "vllm"}
    assert sorted(f"{u}.service" for u in units) == sorted(s["unit"] for s in served.values())
    assert set(served) == set(plan["start_order"])
    for name, s in served.items():
        unit = units[s["unit"].removesuffix(".service")]
        lines = unit.splitlines()
        words = systemd_words(exec_start(unit))
        assert words == [f"/opt/vllm/venv/bin/{s['argv'][0]}", *s["argv"][1:]], name
        assert words[words.index("--host") + 1] == s["host"] == "127.0.0.1"
        assert words[words.index("--port") + 1] == str(s["port"])
        assert f"User={s['user']}" in lines, name
        assert unit_env(unit) == {**s["env"], "HOME": "/var/lib/vllm", "HF_HOME": "/var/lib/toolkit/hf"}, name
        after = plan["services"][s["start_after"]]["unit"] if s.get("start_after") else None
        assert f"After=network-online.target{' ' + after if after else ''}" in lines, name
        # The unit is active once the plan's health path answers on the plan's port.
        assert s["health_path"] == "/health"
        assert any(x.startswith("ExecStartPost=") and x.endswith(f"vllm-wait-health {s['port']} 900") for x in lines)
    assert plan["guard"]["units"] == [s["unit"] for s in plan["services"].values() if s.get("server")]


def test_a_renamed_vllm_user_runs_the_units_and_a_plan_for_another_user_is_refused(tmp_path):
    """vllm_user enters the plan once (plan.yml hands it to the planner as users.vllm); the role
    reads it back. A plan made for another user than the inventory's vllm_user is refused."""
    facts = json.loads((REPO / "tests/data/gpus/no-gpu.json").read_text())
    plan = make_plan(facts, TIERS, {}, {"vllm": "svc-llm"})
    assert_valid_plan(plan)
    assert plan["users"] == {"vllm": "svc-llm", "ollama": "ollama"}
    assert plan["guard"]["users"] == ["svc-llm", "ollama"]
    assert {s["user"] for s in plan["services"].values() if s.get("server") == "vllm"} == {"svc-llm"}
    (tmp_path / "renamed").mkdir()
    (tmp_path / "other").mkdir()
    units = render_vllm_units(tmp_path / "renamed", plan)
    assert all("User=svc-llm" in u.splitlines() for u in units.values()) and len(units) == 2
    out = render_refused(tmp_path / "other", "vllm", "vllm.service.j2", {"toolkit_plan": plan, "vllm_user": "vllm"})
    assert "plan service chat: unit vllm-chat.service (the role writes vllm-chat.service), user svc-llm " \
           "(vllm_user is vllm): re-plan with the same vllm_user" in out, out[-2000:]  # fmt: skip


def test_no_role_default_holds_a_service_port():
    """The ports' one home is tiers.yaml, through the plan: no role default repeats 8000, 8001 or 11434."""
    import re

    hits = [f"{p.relative_to(REPO)}:{i}: {line.strip()}"
            for p in sorted(REPO.glob("roles/*/defaults/*.yml"))
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"(?<![0-9])(8000|8001|8002|11434)(?![0-9])", line)]  # fmt: skip
    assert hits == []
    assert (TIERS["ports"]["chat"], TIERS["ports"]["autocomplete"], TIERS["ports"]["embed"]) == (8000, 8001, 11434)


def test_second_server_on_a_shared_gpu_is_ordered_after_the_first(tmp_path):
    facts = json.loads((REPO / "tests/data/gpus/rtx4090-24gb.json").read_text())
    plan = make_plan(facts, TIERS, {})
    assert plan["services"]["autocomplete"]["start_after"] == "chat"
    units = render_vllm_units(tmp_path, plan)
    auto = units["vllm-autocomplete"].splitlines()
    assert "After=network-online.target vllm-chat.service" in auto and "Requires=vllm-chat.service" in auto
    assert not any(line.startswith("Requires=") for line in units["vllm-chat"].splitlines())
    assert "Environment='CUDA_DEVICE_ORDER=PCI_BUS_ID'" in units["vllm-chat"]


def test_units_become_active_only_when_their_health_answers_so_after_waits_for_a_serving_server(tmp_path):
    """After= orders on the first unit's start job, which ends when ExecStartPost does: the unit
    waits for its own /health, inside TimeoutStartSec, so the second server starts on a serving one."""
    facts = json.loads((REPO / "tests/data/gpus/rtx4090-24gb.json").read_text())
    plan = make_plan(facts, TIERS, {})
    units = render_vllm_units(tmp_path, plan, vllm_health_timeout_s=600)
    for name, port in (
        ("chat", plan["services"]["chat"]["port"]),
        ("autocomplete", plan["services"]["autocomplete"]["port"]),
    ):
        lines = units[f"vllm-{name}"].splitlines()
        assert f"ExecStartPost=/opt/vllm/venv/bin/python /usr/local/libexec/vllm-wait-health {port} 600" in lines, name
        assert "TimeoutStartSec=660" in lines and "Type=exec" in lines, name
    (tmp_path / "c").mkdir()
    container = render_vllm_units(tmp_path / "c", plan, vllm_install_method="container")
    assert (
        "ExecStartPost=/usr/bin/python3 /usr/local/libexec/vllm-wait-health 8000 900"
        in container["vllm-chat"].splitlines()
    )


class _Health:
    """A loopback HTTP server whose /health answers `status` (vLLM answers 200 once it serves)."""

    def __init__(self, status: int) -> None:
        import http.server
        import threading

        code = status

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(code if self.path == "/health" else 404)
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()


def _wait_health(*args: str) -> subprocess.CompletedProcess:
    script = REPO / "roles/vllm/files/vllm-wait-health"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=30)


def test_health_wait_exits_0_on_200_and_1_at_its_deadline_and_2_on_bad_arguments():
    ok = _Health(200)
    assert _wait_health(str(ok.port), "5").returncode == 0
    ok.srv.shutdown()
    loading = _Health(503)
    r = _wait_health(str(loading.port), "2")
    assert (r.returncode, r.stderr.strip()) == (
        1,
        f"http://127.0.0.1:{loading.port}/health did not answer 200 within 2 s",
    )
    loading.srv.shutdown()
    for bad in (["8000"], ["0", "5"], ["70000", "5"], ["8000", "-1"], ["８０００", "5"]):
        assert _wait_health(*bad).returncode == 2, bad


def test_autocomplete_on_its_own_gpu_gets_cuda_visible_devices(tmp_path):
    facts = json.loads((REPO / "tests/data/gpus/rtx4090-24gb.json").read_text())
    plan = make_plan(facts, TIERS, {})
    auto = plan["services"]["autocomplete"]
    if "shared_with" in auto:
        pytest.skip("this tier shares the chat server for autocomplete")
    units = render_vllm_units(tmp_path, plan)
    assert f"Environment='CUDA_VISIBLE_DEVICES={auto['cuda_visible_devices']}'" in units["vllm-autocomplete"]


def test_container_method_unit_runs_rootless_podman_as_vllm_with_the_key_from_its_environment(tmp_path):
    """Rendered here; tests/test_egress_container.py runs this command rootless for real (no GPU
    and no image registry here, so not the official image)."""
    facts = json.loads((REPO / "tests/data/gpus/rtx4090-24gb.json").read_text())
    plan = make_plan(facts, TIERS, {})
    units = render_vllm_units(tmp_path, plan, vllm_install_method="container")
    line = exec_start(units["vllm-chat"])
    assert line.startswith(
        "ExecStart=/usr/bin/podman run --rm --replace --name vllm-chat --network host --ipc host --uts host "
        "--cgroupns host --device nvidia.com/gpu=all -e VLLM_API_KEY -e "
    )
    # The image's entry point is `vllm serve`: it gets the plan's arguments after it.
    assert f" docker.io/vllm/vllm-openai:v0.32.0 '{plan['services']['chat']['model']}' " in line
    chat = units["vllm-chat"].splitlines()
    for want in ("User=vllm", "Group=vllm", "RuntimeDirectory=vllm", "Environment=XDG_RUNTIME_DIR=/run/vllm"):
        assert want in chat, want
    # --uts host lets ProtectHostname hold; podman run alone gets SIGTERM (no ExecStop podman stop,
    # which cannot join the container's user namespace: tests/test_vllm_container_unit.py).
    assert "ProtectHostname=yes" in chat and "KillMode=mixed" in chat
    # Nothing in the unit joins a namespace podman made (--replace, not ExecStartPre=podman rm), so
    # the namespaces it may create are only podman's and the container's.
    assert "RestrictNamespaces=user mnt pid" in chat
    assert not [w for w in chat if w.startswith(("ExecStop=", "ExecStartPre="))]
    # The key file is root 0600: systemd reads it; podman (as vllm) only passes the variable on.
    assert "EnvironmentFile=/etc/vllm/api-key.env" in chat and "--env-file" not in line
    # Inside the container the store is mounted at /hf: HF_HOME is passed once, with that value.
    assert line.count("HF_HOME") == 1 and " -e HF_HOME=/hf -v /var/lib/toolkit/hf:/hf:ro " in line, line


def test_vllm_role_refuses_docker_for_the_container_method(tmp_path):
    extra = {"toolkit_plan": _chat_plan(), "vllm_install_method": "container", "vllm_container_runtime": "docker"}
    out = render_refused(tmp_path, "vllm", "vllm.service.j2", extra)
    assert "vllm_container_runtime podman (got docker)" in out, out[-2000:]


def test_hand_written_args_are_served_as_written(tmp_path):
    """A plan with args and no argv: the OpenAI server module in front, and not one flag of the role's
    own (the tool parser and histogram buckets are the planner's, from tiers.yaml)."""
    line = exec_start(render_vllm_units(tmp_path, _chat_plan())["vllm-chat"])
    assert systemd_words(line) == ["/opt/vllm/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", *CHAT_ARGS]


def test_systemd_specifiers_and_quotes_in_arguments_are_escaped(tmp_path):
    plan = {
        "runtime": "cpu",
        "services": {
            "chat": {
                "server": "vllm",
                "port": 8000,
                "served_model_name": "chat",
                "args": ["--model", "/models/it's 100%", "--host", "127.0.0.1", "--port", "8000", "--x", "$HOME"],
            }
        },
    }
    line = exec_start(render_vllm_units(tmp_path, plan)["vllm-chat"])
    assert "'/models/it\\'s 100%%'" in line and "'$$HOME'" in line


CHAT_ARGS = ["--model", "/models/tiny", "--host", "127.0.0.1", "--port", "8000"]


def _chat_plan(args: object = None, port: object = 8000, env: object = None) -> dict:
    svc = {"server": "vllm", "port": port, "served_model_name": "chat", "args": CHAT_ARGS if args is None else args}
    if env is not None:
        svc["env"] = env
    return {"runtime": "cpu", "services": {"chat": svc}}


def render_refused(tmp_path: Path, role: str, template: str, extra: dict) -> str:
    """Runs the role's validate.yml then its template, expecting a refusal; returns the output
    after asserting that no unit file was written."""
    tasks = [
        {
            "name": "Validate",
            "ansible.builtin.include_role": {"name": role, "tasks_from": "validate.yml", "public": True},
        },
        {
            "name": "Render",
            "ansible.builtin.template": {
                "src": str(REPO / f"roles/{role}/templates/{template}"),
                "dest": str(tmp_path / "out.service"),
                "mode": "0644",
            },
            "loop": "{{ vllm_services | default({'x': 1}) | dict2items }}",
        },
    ]
    r = run_playbook(tmp_path, tasks, {"ansible_facts": {"os_family": "Debian"}, **extra})
    assert r.returncode != 0, r.stdout[-2000:]
    assert not (tmp_path / "out.service").exists()
    return r.stdout + r.stderr


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"vllm_extra_env": {"X": "1\nExecStartPre=+/bin/sh -c id"}}, "vllm-chat: X"),
        ({"vllm_extra_env": {"X": "a\u2028ExecStartPre=+/bin/id"}}, "\\u2028"),
        ({"vllm_extra_env": {"X": "a\x85b"}}, "\\x85"),
        ({"vllm_extra_env": {"VLLM_NO_USAGE_STATS": "0"}}, "VLLM_NO_USAGE_STATS must stay 1"),
        ({"vllm_extra_env": {"HF_HUB_OFFLINE": "0"}}, "HF_HUB_OFFLINE must stay 1"),
        ({"vllm_required_env": {}}, "vllm_required_env lacks"),
        ({"vllm_extra_env": {"BAD NAME": "1"}}, "invalid variable name"),
        ({"vllm_extra_env": {"X": True}}, "not bool"),
        ({"toolkit_plan": _chat_plan(env={"GLOO_SOCKET_IFNAME": "eth0"})}, "GLOO_SOCKET_IFNAME must stay lo"),
        ({"toolkit_plan": _chat_plan([*CHAT_ARGS, "--host", "0.0.0.0"])}, "--host exactly once"),
        ({"toolkit_plan": _chat_plan([*CHAT_ARGS, "--host=0.0.0.0"])}, "--host exactly once"),
        ({"toolkit_plan": _chat_plan([*CHAT_ARGS, "--ho", "0.0.0.0"])}, "abbreviates --host"),
        ({"toolkit_plan": _chat_plan([*CHAT_ARGS, "--port", "9000"])}, "--port exactly once"),
        ({"toolkit_plan": _chat_plan([*CHAT_ARGS, "--api-key", "k"])}, "--api-key is refused"),
        ({"toolkit_plan": _chat_plan([*CHAT_ARGS, "--x", "a\nb"])}, "control character"),
        ({"toolkit_plan": _chat_plan(" ".join(CHAT_ARGS))}, "must be a list"),
        ({"toolkit_plan": _chat_plan(port=-5)}, "1-65535, not -5"),
        ({"toolkit_plan": _chat_plan(port=99999)}, "1-65535, not 99999"),
        ({"toolkit_plan": _chat_plan(port=True)}, "1-65535, not True"),
        # plan v2 gives every service a server: one without would be left out of vllm_services unseen.
        (
            {"toolkit_plan": {"runtime": "cpu", "services": {"chat": {"port": 8000, "args": CHAT_ARGS}}}},
            "plan service chat has server (none)",
        ),
        (
            {
                "toolkit_plan": {
                    "runtime": "cpu",
                    "services": {"chat": {**_chat_plan()["services"]["chat"], "server": "tgi"}},
                }
            },
            "plan service chat has server tgi",
        ),
        # The venv unit runs argv, the container unit args: a plan where they differ is refused.
        (
            {
                "toolkit_plan": {
                    "runtime": "cpu",
                    "services": {"chat": {**_chat_plan()["services"]["chat"], "argv": ["vllm", "serve", "/other"]}},
                }
            },
            "does not end with its args",
        ),
        ({"vllm_home": "/var/lib/vllm\nExecStartPre=/bin/id"}, "vllm_home"),
        ({"vllm_user": "vllm;id"}, "vllm_user"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_vllm_role_refuses_hostile_values_before_writing_a_unit(tmp_path, extra, named):
    extra = {"toolkit_plan": _chat_plan(), **extra}
    out = render_refused(tmp_path, "vllm", "vllm.service.j2", extra)
    assert named in out, out[-2000:]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"ollama_extra_env": {"OLLAMA_HOST": "0.0.0.0:11434"}}, "OLLAMA_HOST must stay 127.0.0.1:11434"),
        ({"ollama_extra_env": {"OLLAMA_NO_CLOUD": "0"}}, "OLLAMA_NO_CLOUD must stay 1"),
        ({"ollama_extra_env": {"X": "1\nExecStartPre=+/bin/id"}}, "control character"),
        ({"ollama_port": 99999}, "1-65535, not 99999"),
        ({"ollama_port": True}, "1-65535, not True"),
        ({"ollama_host": "0.0.0.0:11434"}, "ollama_host must be 127.0.0.1:11434"),
    ],
)
def test_ollama_role_refuses_hostile_values_before_writing_its_unit(tmp_path, extra, named):
    # The port's one home is the plan (tiers.yaml ports.embed): a plan's embed service, as the planner makes it.
    plan = make_plan(json.loads((REPO / "tests/data/gpus/no-gpu.json").read_text()), TIERS, {})
    extra = {"ollama_archive_sha256": "0" * 64, "toolkit_plan": plan, **extra}
    out = render_refused(tmp_path, "ollama", "ollama.service.j2", extra)
    assert named in out, out[-2000:]


def test_environment_values_keep_dollar_and_quote_and_double_percent(tmp_path):
    """systemd expands % specifiers in Environment= but not $: the value reaches the service as
    written (read back with systemd-analyze below)."""
    units = render_vllm_units(tmp_path, _chat_plan(), vllm_extra_env={"X": "a'b $HOME 100%"})
    assert "Environment='X=a\\'b $HOME 100%%'" in units["vllm-chat"].splitlines()


@pytest.mark.parametrize(
    ("gpu", "method", "limit"),
    [
        ("no-gpu", "venv", 2.0),
        ("rtx4090-24gb", "venv", 2.0),
        ("no-gpu", "container", 1.8),
        ("rtx4090-24gb", "container", 2.0),
    ],
    ids=["cpu-venv", "cuda-venv", "cpu-container", "cuda-container"],
)
def test_vllm_units_score_at_most_2_in_systemd_analyze_security(tmp_path, gpu, method, limit):
    """systemd-analyze (systemd 252) scores the rendered file offline; the molecule scenarios
    score the installed units and prove the services still start under them. The container units
    (rootless podman; docs/roles.md) score 1.8 on CPU, as tests/test_vllm_container_unit.py measures
    the installed unit under systemd, and 2.0 with the NVIDIA devices (not run: no GPU here)."""
    require_binary("systemd-analyze")
    facts = json.loads((REPO / f"tests/data/gpus/{gpu}.json").read_text())
    units = render_vllm_units(tmp_path, make_plan(facts, TIERS, {}), vllm_install_method=method)
    unit = tmp_path / "vllm-chat.service"
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True)
    score = float(r.stdout.split("Overall exposure level for vllm-chat.service: ")[1].split()[0])
    assert score <= limit, r.stdout
    chat = units["vllm-chat"].splitlines()
    assert "CapabilityBoundingSet=" in chat and "SystemCallArchitectures=native" in chat
    assert "ReadOnlyPaths=-/var/lib/toolkit/hf" in chat and "ReadWritePaths=/var/lib/vllm" in chat
    if gpu != "no-gpu":
        assert "DevicePolicy=closed" in chat and "DeviceAllow=char-nvidia-frontend rw" in chat
        assert "DeviceAllow=char-nvidia-uvm rw" in chat


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
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles"))
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


def _filters():
    import importlib.util

    spec = importlib.util.spec_from_file_location("safe_values", REPO / "plugins/filter/safe_values.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SV = _filters()


@pytest.mark.parametrize(
    "value",
    [
        "192.0.2.0/24\n",
        "192.0.2.0/24\r",
        " 192.0.2.0/24",
        "192.0.2.1/24",
        "192.0.2.0/255.255.255.0",
        "fe80::1%eth0",
        "192.0.2.0/24\u2028",
        "192.0.2.0/33",
        "example.org",
        3232235520,
        True,
    ],
)
def test_cidr_filter_refuses_what_ipaddress_or_nft_would_read_differently(value):
    with pytest.raises(SV.UnsafeValue):
        SV.safe_cidr(value, "cidr")


def test_cidr_filter_normalises_hosts_and_networks():
    assert SV.safe_cidr("192.0.2.0/24") == "192.0.2.0/24"
    assert SV.safe_cidr("2001:DB8::/32") == "2001:db8::/32"
    assert SV.safe_cidr("198.51.100.7") == "198.51.100.7"
    assert SV.safe_address("2001:db8:0::1") == "2001:db8::1"


@pytest.mark.parametrize("value", [0, -5, 65536, 99999, True, False, "80\n", "0x50", 80.0, None, [80]])
def test_port_filter_takes_only_integers_1_to_65535(value):
    with pytest.raises(SV.UnsafeValue):
        SV.safe_port(value, "port")


def test_port_filter_takes_ints_and_digit_strings():
    assert SV.safe_port(1) == 1 and SV.safe_port("65535") == 65535


@pytest.mark.parametrize("ch", ["\n", "\r", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\ufeff"])
def test_systemd_quoting_refuses_every_line_breaking_or_control_character(ch):
    with pytest.raises(SV.UnsafeValue, match="control character"):
        SV.systemd_exec_arg(f"a{ch}ExecStartPre=+/bin/id")
    with pytest.raises(SV.UnsafeValue, match="control character"):
        SV.systemd_env(f"X=a{ch}b")


def test_systemd_quoting_escapes_quotes_backslashes_and_specifiers():
    assert SV.systemd_exec_arg("it's 100% $HOME \\n;") == "'it\\'s 100%% $$HOME \\\\n;'"
    assert SV.systemd_env("X=it's 100% $HOME") == "'X=it\\'s 100%% $HOME'"


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ([*CHAT_ARGS, "--host", "0.0.0.0"], "exactly once"),
        (["--host", "0.0.0.0", *CHAT_ARGS], "exactly once"),
        ([*CHAT_ARGS, "--host=0.0.0.0"], "exactly once"),
        (["--model", "m", "--host=127.0.0.1", "--port", "8000", "--hos", "::"], "abbreviates"),
        (["--model", "m", "--port", "8000"], "exactly once"),
        ([*CHAT_ARGS[:-1], "8001"], "exactly once"),
        ([*CHAT_ARGS, "--", "--host", "0.0.0.0"], "end option parsing"),
        ([*CHAT_ARGS, "--config", "/tmp/c.yaml"], "--config is refused"),
        ([*CHAT_ARGS, "--host"], "--host has no value"),
        (" ".join(CHAT_ARGS), "must be a list"),
        ([*CHAT_ARGS, True], "not bool"),
    ],
)
def test_final_argv_is_read_with_argparse_semantics(args, why):
    with pytest.raises(SV.UnsafeValue, match=why):
        SV.loopback_argv(args, "127.0.0.1", 8000, "vllm-chat")


def test_final_argv_accepts_the_equals_form_once():
    args = ["--model", "m", "--host=127.0.0.1", "--port=8000", "--hf-overrides", '{"a": "$x"}']
    assert SV.loopback_argv(args, "127.0.0.1", "8000") == args


def test_locked_env_cannot_be_overridden_or_dropped():
    locked = {"VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
    env = SV.service_env({"A": 1}, {"B": "x"}, dict(locked), locked, {"HOME": "/h"})
    assert env == {"A": "1", "B": "x", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "HOME": "/h"}
    with pytest.raises(SV.UnsafeValue, match=r"^svc: HF_HUB_OFFLINE must stay 1; plan env sets it to '0'$"):
        SV.service_env({"HF_HUB_OFFLINE": "0"}, {}, dict(locked), locked, what="svc")
    with pytest.raises(SV.UnsafeValue, match="^svc: required env lacks VLLM_NO_USAGE_STATS=1"):
        SV.service_env({}, {}, {}, locked, what="svc")


PINS_SATISFIED = REPO / "roles" / "vllm" / "files" / "pins_satisfied.py"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["# comment", "", "PyYAML=={yaml}  # trailing"], "satisfied"),
        (["pyyaml=={yaml}"], "satisfied"),  # names compare normalised, as pip does
        (["PyYAML==0.0.1"], "install"),
        (["PyYAML>={yaml}"], "install"),  # only exact pins can be judged without pip
        (["PyYAML=={yaml} ; python_version > '3'"], "install"),
        (["no-such-dist-here==1.0"], "install"),
        (["# nothing but comments"], "install"),
    ],
)
def test_pins_probe_says_satisfied_only_for_exact_installed_pins(tmp_path, lines, expected):
    """The vllm role skips pip only on "satisfied"; anything it cannot judge must send pip to decide."""
    import importlib.metadata

    yaml_version = importlib.metadata.version("PyYAML")
    req = tmp_path / "requirements.txt"
    req.write_text("\n".join(line.format(yaml=yaml_version) for line in lines) + "\n")
    out = subprocess.run([sys.executable, "-c", PINS_SATISFIED.read_text(), str(req), "unused==1"],
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert out == expected, (lines, out)


def test_pins_probe_reads_the_single_pin_and_refuses_a_missing_file(tmp_path):
    import importlib.metadata

    pin = f"PyYAML=={importlib.metadata.version('PyYAML')}"
    run = [sys.executable, "-c", PINS_SATISFIED.read_text()]
    assert subprocess.run([*run, "", pin], capture_output=True, text=True).stdout.strip() == "satisfied"
    missing = [*run, str(tmp_path / "absent.txt"), pin]
    assert subprocess.run(missing, capture_output=True, text=True).stdout.strip() == "install"
