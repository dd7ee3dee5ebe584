"""Overhead of the continuous audit agent (toolkit audit-agent): CPU and memory, idle and under
loopback load.

The agent runs as the service would (exact attribution on, static checks off so that only the
capture is measured), capturing inside a namespace pair it enters with --netns. Phase "idle":
nothing but the namespace's own traffic. Phase "load": iperf3 saturates 127.0.0.1 inside the
namespace (allowed traffic: the kernel BPF filter drops it before it reaches the agent), the
case the agent must stay cheap in. CPU is utime + stime of all the agent's threads from
/proc/PID/stat over the phase; RSS is VmRSS at the end, and VmHWM (the peak).

    sudo python bench/agent_bench.py [--seconds 20]

Prints a Markdown table; docs/compliance.md carries the figures as measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _mem_mib(pid: int) -> tuple[float, float]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def measure(seconds: int) -> list[dict]:
    from audit_support import drop_pair, make_pair, quiet_static, toolkit_cmd

    pair = make_pair("abn")
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp_s:
        tmp = Path(tmp_s)
        try:
            srv = subprocess.Popen(
                ["ip", "netns", "exec", pair.host, "iperf3", "-s", "-B", "127.0.0.1", "-p", "5298"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(srv)
            ready = tmp / "ready"
            agent = subprocess.Popen(
                [
                    *toolkit_cmd("audit-agent"),
                    "--netns", f"/run/netns/{pair.host}", "--window", str(4 * seconds), "--windows", "1",
                    "--out", str(tmp / "out"), "--ready-file", str(ready), "--no-static", *quiet_static(tmp),
                ],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
            )  # fmt: skip
            procs.append(agent)
            while not ready.exists():
                if agent.poll() is not None:
                    raise SystemExit(f"agent exited: {agent.stderr.read()[-2000:]}")
                time.sleep(0.05)
            time.sleep(1)  # past start-up: the window is live
            rows = []
            c0 = _cpu_s(agent.pid)
            time.sleep(seconds)
            c1 = _cpu_s(agent.pid)
            rss, hwm = _mem_mib(agent.pid)
            rows.append({"phase": "idle", "seconds": seconds, "cpu_s": c1 - c0, "rss_mib": rss, "hwm_mib": hwm})
            client = subprocess.run(
                ["ip", "netns", "exec", pair.host, "iperf3", "-c", "127.0.0.1", "-p", "5298", "-t", str(seconds), "-J"],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            c2 = _cpu_s(agent.pid)
            rss, hwm = _mem_mib(agent.pid)
            gbit = json.loads(client.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
            rows.append(
                {"phase": "load", "seconds": seconds, "cpu_s": c2 - c1, "rss_mib": rss, "hwm_mib": hwm, "gbit_s": gbit}
            )
            return rows
        finally:
            for p in reversed(procs):
                p.terminate()
                p.wait(timeout=60)
            drop_pair(pair)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args()
    rows = measure(args.seconds)
    print("| phase | loopback load | agent CPU | share of a core | RSS (peak) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        load = f"{r['gbit_s']:.1f} Gbit/s iperf3" if "gbit_s" in r else "none"
        print(
            f"| {r['phase']} ({r['seconds']} s) | {load} | {r['cpu_s']:.2f} s | "
            f"{100 * r['cpu_s'] / r['seconds']:.2f}% | {r['rss_mib']:.0f} MiB ({r['hwm_mib']:.0f} MiB) |"
        )


if __name__ == "__main__":
    main()
