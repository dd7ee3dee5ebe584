#!/usr/bin/env python3
"""Benchmark for ``toolkit audit`` (not a test; run as root: ``.venv/bin/python bench/audit_bench.py``).

(a) Replay: a 500,000-packet capture, audited offline, against tcpdump reading the same file in
    the same run: ``tcpdump -nn -r FILE FILTER`` (same filter) and ``tcpdump -nn -r FILE`` (prints
    every packet). Two captures: loopback-dominated (50 egress packets) and one tenth egress.
(b) Live: the audit's CPU while iperf3 saturates loopback in its namespace, and the egress packets
    it counts out of a known number sent from the namespace at a stated rate (missed must be 0).

Prints a Markdown table; figures go to docs/audit.md.

``--against DIR`` (a checkout of another version, e.g. ``git archive HEAD | tar -x -C DIR``)
compares instead: five interleaved rounds of tcpdump + filter, DIR's offline_capture and this
one's, each in a fresh interpreter, on the same files; prints each round and the medians.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from scapy.all import DNS, DNSQR, IP, TCP, UDP, Ether  # noqa: E402

from toolkit.audit.pcap import offline_capture  # noqa: E402
from toolkit.audit.policy import compile_filter, default_policy  # noqa: E402

N = 500_000


def write_capture(path: Path, egress_every: int | None, egress_total: int | None) -> int:
    """Raw pcap records from a few templates (scapy builds each template once)."""
    lo = bytes(Ether() / IP(src="127.0.0.1", dst="127.0.0.1") / TCP(sport=40000, dport=8000, flags="PA") / bytes(400))
    out_udp = bytearray(
        bytes(Ether() / IP(src="192.0.2.10", dst="198.51.100.20") / UDP(sport=40000, dport=9999) / bytes(200))
    )
    dns = bytes(
        Ether()
        / IP(src="192.0.2.10", dst="198.51.100.53")
        / UDP(sport=53000, dport=53)
        / DNS(qd=DNSQR(qname="stats.vllm.ai"))
    )
    syn = bytearray(bytes(Ether() / IP(src="192.0.2.10", dst="203.0.113.7") / TCP(sport=50000, dport=443, flags="S")))
    egress = 0
    with path.open("wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        ts = 1_700_000_000
        for i in range(N):
            if egress_every and i % egress_every == 0 or egress_total and i % (N // egress_total) == 0:
                k = egress % 100
                if k == 0:
                    frame = dns
                elif k < 10:
                    syn[34:36] = struct.pack("!H", 50000 + egress % 5000)
                    frame = bytes(syn)
                else:
                    out_udp[34:36] = struct.pack("!H", 40000 + egress % 1000)
                    frame = bytes(out_udp)
                egress += 1
            else:
                frame = lo
            fh.write(struct.pack("<IIII", ts + i // 100_000, i % 1_000_000, len(frame), len(frame)))
            fh.write(frame)
    return egress


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def best(fn, n: int = 3) -> float:
    return min(fn() for _ in range(n))


def replay(tmp: Path) -> list[tuple]:
    rows = []
    flt = compile_filter(default_policy())
    for label, every, total in (("loopback-dominated (50 egress)", None, 50), ("one tenth egress", 10, None)):
        path = tmp / f"{label.split()[0]}.pcap"
        egress = write_capture(path, every, total)
        t_dump_f = best(lambda p=path: timed(["tcpdump", "-nn", "-r", str(p), flt]))
        t_dump_all = best(lambda p=path: timed(["tcpdump", "-nn", "-r", str(p)]))
        t_audit = best(lambda p=path: _audit_time(p))
        t_cli = best(
            lambda p=path: (
                timed([sys.executable, "-m", "toolkit", "audit", "--pcap", str(p), "--json"]) if False else _cli_time(p)
            ),
            n=1,
        )
        res = offline_capture(path, default_policy())
        found = sum(f.packets for f in res.flows)
        rows.append((label, egress, found, t_dump_f, t_dump_all, t_audit, t_cli))
    return rows


def _audit_time(path: Path) -> float:
    t = time.perf_counter()
    offline_capture(path, default_policy())
    return time.perf_counter() - t


def _cli_time(path: Path) -> float:
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "toolkit", "audit", "--pcap", str(path), "--json"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - t


SENDER = """
import socket, sys, time
n, rate, dst = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t0 = time.perf_counter()
for i in range(n):
    s.sendto(b"%08d" % i + b"e" * 92, (dst, 9999))
    delay = t0 + (i + 1) / rate - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
print(n / (time.perf_counter() - t0))
"""


def live(tmp: Path, seconds: int = 10, n: int = 20_000, rate: float = 2_000.0) -> dict:
    from audit_support import PEER_V4, drop_pair, make_pair, quiet_static, toolkit_cmd

    pair = make_pair("bn")
    procs = []
    try:
        srv = subprocess.Popen(
            ["ip", "netns", "exec", pair.host, "iperf3", "-s", "-B", "127.0.0.1", "-p", "5299"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(srv)
        time.sleep(0.5)
        ready = tmp / "ready"
        audit = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                pair.host,
                *toolkit_cmd(
                    "audit",
                    "--duration",
                    str(seconds + 4),
                    "--json",
                    "--ready-file",
                    str(ready),
                    *quiet_static(tmp),
                ),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        while not ready.exists():
            time.sleep(0.05)
        cpu0 = _cpu(audit.pid)
        client = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                pair.host,
                "iperf3",
                "-c",
                "127.0.0.1",
                "-p",
                "5299",
                "-t",
                str(seconds),
                "-J",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        sender = subprocess.run(
            ["ip", "netns", "exec", pair.host, sys.executable, "-c", SENDER, str(n), str(rate), PEER_V4],
            capture_output=True,
            text=True,
            check=True,
        )
        iperf = json.loads(client.communicate()[0])
        cpu1 = _cpu(audit.pid)
        out = audit.communicate()[0]
        report = json.loads(out)
        counted = sum(f["packets"] for f in report["findings"] if f["remote_port"] == 9999)
        tps = os.sysconf("SC_CLK_TCK")
        return {
            "iperf_gbit_s": iperf["end"]["sum_received"]["bits_per_second"] / 1e9,
            "window_s": seconds,
            "audit_cpu_s": (cpu1 - cpu0) / tps,
            "sent": n,
            "rate_pps": float(sender.stdout.strip()),
            "counted": counted,
            "dropped": report["capture"]["stats"].get("kernel_dropped"),
            "verdict": report["verdict"],
        }
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        drop_pair(pair)


def _cpu(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


_TIMER = (
    "import sys, time\nsys.path.insert(0, sys.argv[1])\n"
    "from pathlib import Path\nfrom toolkit.audit.pcap import offline_capture\n"
    "from toolkit.audit.policy import default_policy\nbest = 9e9\n"
    "for _ in range(3):\n    t = time.perf_counter()\n    r = offline_capture(Path(sys.argv[2]), default_policy())\n"
    "    best = min(best, time.perf_counter() - t)\nprint(best, sum(f.packets for f in r.flows))\n"
)


def _audit_in(repo: Path, path: Path) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", _TIMER, str(repo), str(path)], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    return float(out[0]), int(out[1])


def against(other: Path, tmp: Path, rounds: int = 5) -> None:
    import statistics

    flt = compile_filter(default_policy())
    for label, every, total in (("loopback-dominated", None, 50), ("one tenth egress", 10, None)):
        path = tmp / f"{label.split()[0]}.pcap"
        write_capture(path, every, total)
        rows = []
        for i in range(rounds):
            td = best(lambda p=path: timed(["tcpdump", "-nn", "-r", str(p), flt]))
            to, fo = _audit_in(other, path)
            tn, fn = _audit_in(REPO, path)
            rows.append((td / to, td / tn))
            print(f"| {label} | {i + 1} | {td:.3f} s | {to:.3f} s ({fo:,} found) | {tn:.3f} s ({fn:,} found) |")
        print(
            f"| {label} | median ratio vs tcpdump + filter | | {statistics.median(r[0] for r in rows):.2f}x "
            f"| {statistics.median(r[1] for r in rows):.2f}x |"
        )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--against":
        with tempfile.TemporaryDirectory(prefix="audbench-") as d:
            print("| capture | round | tcpdump -nn -r + filter | other | this |\n|---|---|---|---|---|")
            against(Path(sys.argv[2]).resolve(), Path(d))
        return
    for tool in ("tcpdump", "iperf3"):
        if not shutil.which(tool):
            sys.exit(f"needs {tool}")
    with tempfile.TemporaryDirectory(prefix="audbench-") as d:
        tmp = Path(d)
        print(f"## (a) replay, {N:,} packets per capture (best of 3; audit = in-process offline_capture)\n")
        print(
            "| capture | egress pkts | audit found | tcpdump -nn -r + filter | tcpdump -nn -r (all) "
            "| audit | "
            "audit pkts/s | ratio vs filtered | ratio vs print-all | CLI wall |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for label, egress, found, tf, ta, t, tc in replay(tmp):
            print(
                f"| {label} | {egress:,} | {found:,} | {tf:.3f} s | {ta:.3f} s | {t:.3f} s | {N / t:,.0f} | "
                f"{tf / t:.2f}x | {ta / t:.2f}x | {tc:.2f} s |"
            )
        if os.geteuid() == 0:
            r = live(tmp)
            print(f"\n## (b) live, {r['window_s']} s of iperf3 on 127.0.0.1 plus egress from the namespace\n")
            print("| loopback load | audit CPU | egress sent | rate | counted by audit | missed | kernel drops |")
            print("|---|---|---|---|---|---|---|")
            print(
                f"| {r['iperf_gbit_s']:.1f} Gbit/s iperf3 | {r['audit_cpu_s']:.2f} s CPU "
                f"in {r['window_s']} s "
                f"({100 * r['audit_cpu_s'] / r['window_s']:.1f}% of a core) | {r['sent']:,} UDP | "
                f"{r['rate_pps']:,.0f} pkt/s | {r['counted']:,} | {r['sent'] - r['counted']} "
                f"| {r['dropped']} |"
            )


if __name__ == "__main__":
    main()
