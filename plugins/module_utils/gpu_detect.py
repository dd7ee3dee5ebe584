"""GPU detection: NVML first, then `nvidia-smi`, then sysfs. Shared by the CLI and the gpu_facts module.

Standard library only and no imports from the toolkit package: Ansible ships this file to managed
hosts as ``ansible_collections.pca.toolkit.plugins.module_utils.gpu_detect``. The result is a plain
dict (JSON-ready):

    {"status": "ok" | "no-gpu" | "driver-needed" | "error",
     "source": "nvml" | "nvidia-smi" | "sysfs" | "none",
     "message": one plain line,
     "driver_version": str | None, "cuda_driver_version": str | None,
     "gpus": [{"index", "name", "uuid", "memory_total_bytes", "memory_free_bytes",
               "compute_capability", "pci_bus_id"}
              (+ "mig": true, "mig_index", "mig_profile", "parent_uuid" for a MIG instance)],
     "pci_nvidia_devices": ["0000:01:00.0", ...],
     "cpu": {"count", "model", "memory_total_bytes", "flags": [...]}}
"""

from __future__ import annotations

import contextlib
import os
import subprocess

NVIDIA_PCI_VENDOR = "0x10de"
# PCI class 0x03xxxx is "display controller" (VGA 0x0300, 3D 0x0302); NVIDIA audio/USB functions differ.
DISPLAY_CLASS_PREFIX = "0x03"
SMI_FIELDS = "index,name,uuid,memory.total,memory.free,driver_version,compute_cap,pci.bus_id"
SMI_TIMEOUT_S = 20


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def pci_nvidia_devices(sysfs_root: str = "/sys") -> list[str]:
    """PCI addresses of NVIDIA display/3D controllers, whatever the driver state."""
    base = os.path.join(sysfs_root, "bus", "pci", "devices")
    found = []
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return []
    for dev in entries:
        vendor = _read(os.path.join(base, dev, "vendor"))
        klass = _read(os.path.join(base, dev, "class")) or ""
        if vendor == NVIDIA_PCI_VENDOR and klass.startswith(DISPLAY_CLASS_PREFIX):
            found.append(dev)
    return found


def cpu_facts(proc_root: str = "/proc") -> dict:
    model, flags = None, []
    for line in (_read(os.path.join(proc_root, "cpuinfo")) or "").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = sorted(f for f in value.split() if f.startswith(("avx", "amx")))
    mem = None
    for line in (_read(os.path.join(proc_root, "meminfo")) or "").splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    return {"count": os.cpu_count() or 1, "model": model, "memory_total_bytes": mem, "flags": flags}


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_version(raw: int) -> str:
    # NVML reports e.g. 12040 for CUDA 12.4.
    return f"{raw // 1000}.{(raw % 1000) // 10}"


def _from_nvml(nvml) -> dict:
    nvml.nvmlInit()
    try:
        driver = _decode(nvml.nvmlSystemGetDriverVersion())
        try:
            cuda = _cuda_version(nvml.nvmlSystemGetCudaDriverVersion())
        except nvml.NVMLError:
            cuda = None
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(h)
            pci = _decode(nvml.nvmlDeviceGetPciInfo(h).busId)
            entry = {
                "index": i,
                "name": _decode(nvml.nvmlDeviceGetName(h)),
                "uuid": _decode(nvml.nvmlDeviceGetUUID(h)),
                "compute_capability": f"{major}.{minor}",
                "pci_bus_id": pci,
            }
            migs = _mig_instances(nvml, h, entry)
            if migs is not None:
                # A GPU in MIG mode serves only through its instances: each is its own device with
                # its own memory (CUDA_VISIBLE_DEVICES takes the instance's MIG- UUID).
                gpus.extend(migs)
                continue
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            entry["memory_total_bytes"] = int(mem.total)
            entry["memory_free_bytes"] = int(mem.free)
            gpus.append(entry)
        return {"driver_version": driver, "cuda_driver_version": cuda, "gpus": gpus}
    finally:
        # A shutdown failure must not hide the result.
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _mig_instances(nvml, handle, parent: dict) -> list[dict] | None:
    """The MIG instances of a GPU in MIG mode (NVML MIG device handles), or None when MIG is off."""
    if not hasattr(nvml, "nvmlDeviceGetMigMode"):
        return None  # an nvidia-ml-py too old to know MIG
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError:
        return None  # not MIG-capable (NVML says NotSupported)
    if current != getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1):
        return None
    out = []
    for j in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mh = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
        except nvml.NVMLError:
            continue  # an empty slot
        mem = nvml.nvmlDeviceGetMemoryInfo(mh)
        name = _decode(nvml.nvmlDeviceGetName(mh))
        profile = name.rsplit(" MIG ", 1)[1] if " MIG " in name else None
        out.append(
            dict(
                parent,
                name=name,
                uuid=_decode(nvml.nvmlDeviceGetUUID(mh)),
                parent_uuid=parent["uuid"],
                mig=True,
                mig_index=j,
                mig_profile=profile,
                memory_total_bytes=int(mem.total),
                memory_free_bytes=int(mem.free),
            )
        )
    return out


def parse_smi_csv(text: str) -> list[dict]:
    """Parse `nvidia-smi --query-gpu=SMI_FIELDS --format=csv,noheader,nounits` output."""
    gpus = []
    for line in text.strip().splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) != 8:
            raise ValueError(f"unexpected nvidia-smi line: {line!r}")
        idx, name, uuid, total, free, _driver, cc, bus = cols
        gpus.append(
            {
                "index": int(idx),
                "name": name,
                "uuid": uuid,
                "memory_total_bytes": int(float(total)) * 1024 * 1024,
                "memory_free_bytes": int(float(free)) * 1024 * 1024,
                "compute_capability": cc,
                "pci_bus_id": bus,
            }
        )
    return gpus


def _from_smi(run) -> dict:
    out = run(["nvidia-smi", f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader,nounits"])
    gpus = parse_smi_csv(out)
    driver = out.strip().splitlines()[0].split(",")[5].strip() if gpus else None
    cuda = None
    for line in run(["nvidia-smi", "-q"]).splitlines():
        if "CUDA Version" in line:
            cuda = line.split(":", 1)[1].strip()
            break
    return {"driver_version": driver, "cuda_driver_version": cuda, "gpus": gpus}


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=False)
    if done.returncode != 0:
        msg = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(msg[-1] if msg else f"{argv[0]} exited {done.returncode}")
    return done.stdout


def _load_nvml():
    try:
        import pynvml  # from the nvidia-ml-py distribution
    except ImportError:
        return None
    return pynvml


_NO_DRIVER_ERRORS = ("LibraryNotFound", "DriverNotLoaded", "LibRmVersionMismatch", "NoPermission")


def detect(nvml=None, run=None, sysfs_root: str = "/sys", proc_root: str = "/proc", use_nvml: bool = True) -> dict:
    """Detect NVIDIA GPUs. Never raises for GPU trouble: the result's status and message say what happened.

    ``nvml`` (a pynvml-like module) and ``run`` (argv -> stdout) are injectable so recorded
    behaviour can stand in for hardware in tests.
    """
    run = run or _run
    pci = pci_nvidia_devices(sysfs_root)
    result = {
        "status": "no-gpu",
        "source": "none",
        "message": "",
        "driver_version": None,
        "cuda_driver_version": None,
        "gpus": [],
        "pci_nvidia_devices": pci,
        "cpu": cpu_facts(proc_root),
    }
    problems = []

    if nvml is None and use_nvml:
        nvml = _load_nvml()
    if nvml is not None:
        try:
            result.update(_from_nvml(nvml), source="nvml")
        except Exception as err:  # noqa: BLE001 - every NVML failure becomes a plain line
            name = type(err).__name__
            problems.append(f"NVML: {name.replace('NVMLError_', '')}: {err}")
            if not any(k in name for k in _NO_DRIVER_ERRORS):
                result["status"] = "error"
    else:
        problems.append("NVML: the nvidia-ml-py package is not installed")

    if result["source"] == "none":
        try:
            result.update(_from_smi(run), source="nvidia-smi")
        except FileNotFoundError:
            problems.append("nvidia-smi: not installed")
        except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as err:
            problems.append(f"nvidia-smi: {err}")

    if result["gpus"]:
        result["status"] = "ok"
        names = ", ".join(sorted({g["name"] for g in result["gpus"]}))
        result["message"] = (
            f"{len(result['gpus'])} NVIDIA GPU(s) via {result['source']}: {names}; "
            f"driver {result['driver_version']}, CUDA {result['cuda_driver_version']}"
        )
    elif pci:
        result.update(status="driver-needed", source="sysfs")
        result["message"] = (
            f"driver needed: {len(pci)} NVIDIA PCI device(s) ({', '.join(pci)}) but no working driver "
            f"({'; '.join(problems)}); planning for CPU only"
        )
    elif result["status"] == "error":
        result["message"] = f"GPU detection failed ({'; '.join(problems)}); planning for CPU only"
    else:
        result["message"] = "no NVIDIA GPU found (no NVIDIA PCI device, no NVIDIA driver); planning for CPU only"
    result["problems"] = problems
    return result
