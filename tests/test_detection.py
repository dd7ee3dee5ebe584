"""GPU detection. No GPU exists here: NVML is replaced by a fake module that behaves like pynvml
(same function names, same exception class names) and nvidia-smi by recorded output. What is NOT
exercised: a real NVML library talking to a real driver (checked on a GPU machine when one is lent)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from toolkit.module_utils.gpu_detect import SMI_FIELDS, detect, parse_smi_csv

REPO = Path(__file__).resolve().parent.parent
TOOLKIT = [sys.executable, "-m", "toolkit"]


class NVMLError(Exception):
    pass


def fake_nvml(gpus=None, fail=None, fail_at="init"):
    """A pynvml stand-in: raises the named NVMLError_* subclass at `fail_at`, else reports `gpus`."""
    err_cls = type(f"NVMLError_{fail}", (NVMLError,), {}) if fail else None

    def maybe(step):
        if fail and fail_at == step:
            raise err_cls(f"{fail} (recorded)")

    def init():
        maybe("init")

    def handle(i):
        maybe("device")
        return i

    g = gpus or []
    return SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=init,
        nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: "570.124.06",
        nvmlSystemGetCudaDriverVersion=lambda: 12080,
        nvmlDeviceGetCount=lambda: len(g),
        nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=g[h][1], free=g[h][1] // 2),
        nvmlDeviceGetCudaComputeCapability=lambda h: g[h][2],
        nvmlDeviceGetPciInfo=lambda h: SimpleNamespace(busId=b"00000000:01:00.0"),
        nvmlDeviceGetName=lambda h: g[h][0].encode(),
        nvmlDeviceGetUUID=lambda h: f"GPU-{h}",
    )


def fake_mig_nvml():
    """A pynvml stand-in for one H100 in MIG mode with two instances (slot 1 empty): the parent's handle
    is 0, instance handles are ("mig", slot). Same function names and argument order as pynvml."""
    instances = {
        0: ("NVIDIA H100 80GB HBM3 MIG 3g.40gb", 42278584320),
        2: ("NVIDIA H100 80GB HBM3 MIG 2g.20gb", 21072183296),
    }

    def mig_handle(h, j):
        if j not in instances:
            raise NVMLError("NotFound")
        return ("mig", j)

    def mem(h):
        if isinstance(h, tuple):
            total = instances[h[1]][1]
            return SimpleNamespace(total=total, free=total - 50331648)
        raise AssertionError("the parent's memory must not be read in MIG mode")

    return SimpleNamespace(
        NVMLError=NVMLError,
        NVML_DEVICE_MIG_ENABLE=1,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: "570.124.06",
        nvmlSystemGetCudaDriverVersion=lambda: 12080,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: 0,
        nvmlDeviceGetCudaComputeCapability=lambda h: (9, 0),
        nvmlDeviceGetPciInfo=lambda h: SimpleNamespace(busId=b"00000000:01:00.0"),
        nvmlDeviceGetName=lambda h: (instances[h[1]][0] if isinstance(h, tuple) else "NVIDIA H100 80GB HBM3").encode(),
        nvmlDeviceGetUUID=lambda h: f"MIG-instance-{h[1]}" if isinstance(h, tuple) else "GPU-parent",
        nvmlDeviceGetMigMode=lambda h: (1, 1),
        nvmlDeviceGetMaxMigDeviceCount=lambda h: 7,
        nvmlDeviceGetMigDeviceHandleByIndex=mig_handle,
        nvmlDeviceGetMemoryInfo=mem,
    )


def test_detect_lists_mig_instances_with_their_own_memory(tmp_path):
    r = detect(nvml=fake_mig_nvml(), run=no_smi, sysfs_root=sysfs(tmp_path, {}))
    assert r["status"] == "ok"
    assert [(g["index"], g["uuid"], g["mig_profile"], g["memory_total_bytes"]) for g in r["gpus"]] == [
        (0, "MIG-instance-0", "3g.40gb", 42278584320),
        (0, "MIG-instance-2", "2g.20gb", 21072183296),
    ]
    assert all(g["mig"] and g["parent_uuid"] == "GPU-parent" for g in r["gpus"])
    # The planner takes the larger instance and names it by its MIG UUID.
    import yaml

    from toolkit.module_utils.gpu_plan import make_plan

    tiers = yaml.safe_load((REPO / "toolkit/data/tiers.yaml").read_text())
    chat = make_plan(r, tiers)["services"]["chat"]
    assert chat["env"]["CUDA_VISIBLE_DEVICES"] == "MIG-instance-0"


def sysfs(tmp_path: Path, devices: dict) -> str:
    for addr, (vendor, klass) in devices.items():
        d = tmp_path / "bus" / "pci" / "devices" / addr
        d.mkdir(parents=True)
        (d / "vendor").write_text(vendor + "\n")
        (d / "class").write_text(klass + "\n")
    return str(tmp_path)


def no_smi(argv):
    raise FileNotFoundError(argv[0])


def test_detect_reads_every_field_from_nvml(tmp_path):
    nvml = fake_nvml([("NVIDIA H100 80GB HBM3", 85520809984, (9, 0))])
    r = detect(nvml=nvml, run=no_smi, sysfs_root=sysfs(tmp_path, {}))
    assert r["status"] == "ok" and r["source"] == "nvml"
    assert r["driver_version"] == "570.124.06" and r["cuda_driver_version"] == "12.8"
    assert r["gpus"] == [
        {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "uuid": "GPU-0",
            "memory_total_bytes": 85520809984,
            "memory_free_bytes": 42760404992,
            "compute_capability": "9.0",
            "pci_bus_id": "00000000:01:00.0",
        }
    ]


def test_nvidia_pci_device_without_driver_is_reported_as_driver_needed(tmp_path):
    root = sysfs(
        tmp_path,
        {
            "0000:01:00.0": ("0x10de", "0x030000"),
            "0000:01:00.1": ("0x10de", "0x040300"),
            "0000:02:00.0": ("0x8086", "0x030000"),
        },
    )
    r = detect(nvml=fake_nvml(fail="LibraryNotFound"), run=no_smi, sysfs_root=root)
    assert r["status"] == "driver-needed" and r["source"] == "sysfs"
    assert r["pci_nvidia_devices"] == ["0000:01:00.0"]  # the HDMI audio function and the Intel GPU are not counted
    assert r["message"].startswith("driver needed: 1 NVIDIA PCI device(s)")


def test_no_gpu_and_no_driver_is_one_plain_line(tmp_path):
    r = detect(nvml=fake_nvml(fail="LibraryNotFound"), run=no_smi, sysfs_root=sysfs(tmp_path, {}))
    assert r["status"] == "no-gpu" and "\n" not in r["message"] and "CPU only" in r["message"]


@pytest.mark.parametrize(
    "fail,fail_at,status",
    [
        ("DriverNotLoaded", "init", "no-gpu"),
        ("GpuIsLost", "device", "error"),
        ("Unknown", "init", "error"),
    ],
)
def test_nvml_failures_never_raise(tmp_path, fail, fail_at, status):
    nvml = fake_nvml([("NVIDIA L4", 24 * 2**30, (8, 9))], fail=fail, fail_at=fail_at)
    r = detect(nvml=nvml, run=no_smi, sysfs_root=sysfs(tmp_path, {}))
    assert r["status"] == status and r["gpus"] == []
    assert any(fail in p for p in r["problems"])


def test_falls_back_to_nvidia_smi_when_nvml_fails(tmp_path):
    csv = "0, NVIDIA GeForce RTX 4090, GPU-abc, 24564, 23000, 570.124.06, 8.9, 00000000:01:00.0\n"

    def smi(argv):
        if argv[1].startswith("--query-gpu="):
            assert argv[1] == f"--query-gpu={SMI_FIELDS}"
            return csv
        return "Driver Version : 570.124.06\nCUDA Version : 12.8\n"

    r = detect(nvml=fake_nvml(fail="Unknown"), run=smi, sysfs_root=sysfs(tmp_path, {}))
    assert r["status"] == "ok" and r["source"] == "nvidia-smi" and r["cuda_driver_version"] == "12.8"
    assert r["gpus"][0]["memory_total_bytes"] == 24564 * 2**20 and r["gpus"][0]["compute_capability"] == "8.9"


def test_parse_smi_csv_rejects_unexpected_output():
    with pytest.raises(ValueError, match="unexpected nvidia-smi line"):
        parse_smi_csv("garbage")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TOOLKIT, *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_cli_detect_on_this_machine_reports_cpu_only_in_one_line():
    """Real NVML binding on a machine without the NVIDIA library: the CPU-only case, exit 0."""
    r = run_cli("detect")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("no NVIDIA GPU found") and "Traceback" not in r.stderr
    facts = json.loads(run_cli("detect", "--json").stdout)
    assert facts["status"] == "no-gpu" and facts["cpu"]["count"] == os.cpu_count()


def test_cli_plan_json_for_recorded_inventory():
    r = run_cli("plan", "--gpus", "tests/data/gpus/h100-80gb.json", "--json")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert p["services"]["chat"]["model"] == "Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8"


def test_cli_plan_text_shows_the_final_command_lines_and_why():
    r = run_cli("plan", "--gpus", "tests/data/gpus/rtx4090-24gb.json", "--json")
    plan = json.loads(r.stdout)
    r = run_cli("plan", "--gpus", "tests/data/gpus/rtx4090-24gb.json")
    assert r.returncode == 0 and "qwen2.5-coder-32b does not fit" in r.stdout
    for name in ("chat", "autocomplete"):
        assert shlex.join(plan["services"][name]["argv"]) in r.stdout
    assert "(starts after chat answers /health)" in r.stdout


@pytest.mark.parametrize("inv", ["amd-mi300x", "intel-arc-a770"])
def test_cli_plan_for_amd_or_intel_is_one_line_not_supported_exit_3(inv):
    r = run_cli("plan", "--gpus", f"tests/data/gpus/{inv}.json")
    assert r.returncode == 3 and "not supported" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_plan_for_malformed_gpu_field_is_one_line_exit_2(tmp_path):
    facts = json.loads((REPO / "tests/data/gpus/rtx4090-24gb.json").read_text())
    facts["gpus"][0]["memory_total_bytes"] = "24 GB"
    bad = tmp_path / "gpus.json"
    bad.write_text(json.dumps(facts))
    r = run_cli("plan", "--gpus", str(bad))
    assert r.returncode == 2 and "memory_total_bytes must be a whole number" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args,msg",
    [
        (["plan", "--gpus", "/nonexistent.json"], "cannot read GPU inventory"),
        (
            ["plan", "--gpus", "tests/data/gpus/rtx4090-24gb.json", "--overrides", "tests/data/bad-overrides.yaml"],
            "unknown override",
        ),
        (["plan", "-i", "inventories/does-not-exist", "--host", "x"], "does not exist"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args, msg):
    r = run_cli(*args)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_plan_reads_overrides_from_inventory_group_vars(tmp_path):
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "hosts.yml").write_text("all:\n  children:\n    small_gpu:\n      hosts:\n        ws1: {}\n")
    (tmp_path / "group_vars" / "small_gpu.yml").write_text(
        "toolkit_plan_overrides:\n  chat: {model: qwen2.5-coder-7b, max_model_len: 8192}\n"
    )
    r = run_cli(
        "plan", "--gpus", "tests/data/gpus/a100-40gb.json", "-i", str(tmp_path / "hosts.yml"), "--host", "ws1", "--json"
    )
    assert r.returncode == 0, r.stderr
    chat = json.loads(r.stdout)["services"]["chat"]
    assert chat["model_key"] == "qwen2.5-coder-7b" and chat["max_model_len"] == 8192


def run_module(args: dict) -> tuple[int, dict]:
    """`ansible localhost -m gpu_facts` for real: Ansible ships the module and its module_utils itself."""
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_STDOUT_CALLBACK="json",
    )
    r = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible"),
            "localhost",
            "-c",
            "local",
            "-i",
            "localhost,",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-m",
            "pca.toolkit.gpu_facts",
            "-a",
            json.dumps(args),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=180,
    )
    out = json.loads(r.stdout)
    return r.returncode, out["plays"][0]["tasks"][0]["hosts"]["localhost"]


def assert_plan_schema(plan: dict) -> None:
    import jsonschema

    schema = json.loads((Path(__file__).resolve().parent.parent / "toolkit/data/plan.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(plan)]
    assert errors == []


TIERS_ARG = "{{ lookup('file', 'toolkit/data/tiers.yaml') | from_yaml }}"


def test_gpu_facts_module_plans_a_recorded_inventory():
    rc, res = run_module(
        {"tiers": TIERS_ARG, "gpus": "{{ lookup('file', 'tests/data/gpus/2x-rtx3090-24gb.json') | from_json }}"}
    )
    assert rc == 0, res
    plan = res["ansible_facts"]["toolkit_plan"]
    assert plan["services"]["chat"]["tensor_parallel_size"] == 2
    assert_plan_schema(plan)  # the module's plan is the same contract as the CLI's


def test_gpu_facts_module_plans_the_service_users_it_is_handed():
    """plan.yml hands the inventory's vllm_user to the module (users): the plan's servers and guard follow."""
    rc, res = run_module(
        {"tiers": TIERS_ARG, "gpus": "{{ lookup('file', 'tests/data/gpus/no-gpu.json') | from_json }}",
         "users": {"vllm": "svc-llm"}}
    )  # fmt: skip
    assert rc == 0, res
    plan = res["ansible_facts"]["toolkit_plan"]
    assert plan["users"] == {"vllm": "svc-llm", "ollama": "ollama"}
    assert plan["guard"]["users"] == ["svc-llm", "ollama"] and plan["services"]["chat"]["user"] == "svc-llm"
    assert_plan_schema(plan)


def test_gpu_facts_module_detects_this_host_and_plans_cpu_tier():
    rc, res = run_module({"tiers": TIERS_ARG})
    assert rc == 0, res
    facts = res["ansible_facts"]
    assert facts["toolkit_gpu"]["status"] == "no-gpu" and facts["toolkit_plan"]["runtime"] == "cpu"
    assert_plan_schema(facts["toolkit_plan"])


def test_gpu_facts_module_fails_cleanly_on_impossible_override():
    rc, res = run_module(
        {
            "tiers": TIERS_ARG,
            "gpus": "{{ lookup('file', 'tests/data/gpus/rtx3060-12gb.json') | from_json }}",
            "overrides": {"chat": {"model": "codellama-70b"}},
        }
    )
    assert rc != 0 and res["msg"].startswith("cannot plan this host: codellama-70b does not fit")


def test_cli_unknown_option_is_a_usage_error_not_a_traceback():
    r = run_cli("plan", "--bogus")
    assert r.returncode == 2 and "No such option: --bogus" in r.stderr and "Traceback" not in r.stderr


def test_gpu_facts_module_says_not_supported_for_an_amd_inventory():
    rc, res = run_module(
        {"tiers": TIERS_ARG, "gpus": "{{ lookup('file', 'tests/data/gpus/amd-mi300x.json') | from_json }}"}
    )
    assert rc != 0 and res["msg"].startswith("not supported: gpus[0] (AMD Instinct MI300X")
