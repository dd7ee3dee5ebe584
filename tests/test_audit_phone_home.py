"""Real programs phone home; the audit names what they tried and which process tried it.

curl, git and huggingface_hub run in the audited namespace. Its resolver
(/etc/netns/NAME/resolv.conf) and default route point at a peer namespace the test owns, where a
small DNS responder answers every name with an address of the peer (198.51.100.7-9) and a TCP
listener accepts and holds connections: the programs get as far as their TLS ClientHello, nothing
leaves the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from audit_support import PEER_V4, drop_pair, make_pair, quiet_static, report_of, toolkit_cmd
from conftest import REPO, require_binary, require_root

pytestmark = [pytest.mark.root, pytest.mark.slow]

ANSWERS = {"huggingface.co": "198.51.100.7", "github.com": "198.51.100.8"}
OTHER = "198.51.100.9"

PEER = """
import socket, sys, threading, time
from scapy.layers.dns import DNS, DNSRR
answers = dict(a.split("=") for a in sys.argv[2:])
held = []
def tcp(addr, port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(64)
    while True:
        c, _ = s.accept(); held.append(c)
for addr in set(answers.values()):
    for port in (80, 443):
        threading.Thread(target=tcp, args=(addr, port), daemon=True).start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    data, src = u.recvfrom(4096)
    try:
        q = DNS(data)
        name = q.qd[0].qname.decode().rstrip(".")
        qtype = q.qd[0].qtype
    except Exception:
        continue
    addr = answers.get(name, answers["*"])
    an = [DNSRR(rrname=name + ".", type="A", ttl=60, rdata=addr)] if qtype == 1 else []
    u.sendto(bytes(DNS(id=q.id, qr=1, aa=1, rd=q.rd, ra=1, qd=q.qd, an=an)), src)
"""

HF = """
from huggingface_hub import HfApi
try:
    HfApi().model_info("gpt2", timeout=3)
except Exception as e:
    print(type(e).__name__)
"""


@pytest.fixture(scope="module")
def phone_home(tmp_path_factory):
    require_root()
    curl, git = require_binary("curl"), require_binary("git")
    tmp = tmp_path_factory.mktemp("audph")
    pair = make_pair("ph")
    peer = None
    try:
        for addr in {*ANSWERS.values(), OTHER}:
            subprocess.run(
                [
                    "ip",
                    "-n",
                    pair.peer,
                    "addr",
                    "add",
                    f"{addr}/32",
                    "dev",
                    pair.veth_host.replace("audh", "audp"),
                ],
                check=True,
            )
        etc = Path("/etc/netns") / pair.host
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {PEER_V4}\noptions timeout:1 attempts:1\n")
        peer = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                pair.peer,
                sys.executable,
                "-c",
                PEER,
                PEER_V4,
                *(f"{k}={v}" for k, v in ANSWERS.items()),
                f"*={OTHER}",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert peer.stdout.readline().strip() == "ready"
        ready = tmp / "ready"
        audit = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                pair.host,
                *toolkit_cmd("audit", "--duration", "16", "--json", "--ready-file", str(ready), *quiet_static(tmp)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert audit.poll() is None and time.monotonic() < deadline, "audit did not start"
            time.sleep(0.1)
        # No proxy, no offline switches: the programs behave as they do on a workstation.
        env = {
            k: v
            for k, v in os.environ.items()
            if "proxy" not in k.lower() and not k.startswith("HF_") and not k.startswith("GIT_")
        }
        env.update(HOME=str(tmp), GIT_TERMINAL_PROMPT="0")
        ns = ["ip", "netns", "exec", pair.host, "timeout", "5"]
        subprocess.run(
            [*ns, curl, "-sS", "--max-time", "3", "https://huggingface.co/api/models"],
            env=env,
            capture_output=True,
        )
        subprocess.run([*ns, git, "ls-remote", "https://github.com/vllm-project/vllm"], env=env, capture_output=True)
        subprocess.run([*ns, sys.executable, "-c", HF], env=env, capture_output=True)
        out, err = audit.communicate(timeout=60)
        yield report_of(subprocess.CompletedProcess([], audit.returncode, out, err)), audit.returncode
    finally:
        if peer is not None:
            peer.kill()
            peer.wait()
        drop_pair(pair)


def _tls_flows(report: dict, sni: str) -> list[dict]:
    return [f for f in report["findings"] if f["protocol"] == "tcp" and sni in f["sni"]]


def test_audit_names_by_dns_every_host_the_programs_tried(phone_home):
    report, rc = phone_home
    assert rc == 1 and report["verdict"] == "FAIL"
    assert {"huggingface.co", "github.com"} <= set(report["dns_queries"])
    dns = [f for f in report["findings"] if f["remote_address"] == PEER_V4 and f["remote_port"] == 53]
    assert dns and {"huggingface.co", "github.com"} <= {n for f in dns for n in f["dns_queries"]}
    for name, addr in ANSWERS.items():
        flows = [f for f in report["findings"] if f["remote_address"] == addr and f["remote_port"] == 443]
        assert flows, f"no connection to {name}"
        # Remote address mapped back to the name that resolved to it, and the SNI says the same.
        assert all(name in f["names"] and f["sni"] == [name] and f["direction"] == "outbound" for f in flows)


def test_audit_attributes_each_phone_home_to_the_program_that_sent_it(phone_home):
    report, _ = phone_home
    curl = [
        f["process"]
        for f in _tls_flows(report, "huggingface.co")
        if f["process"] and "curl" in (f["process"].get("cmdline") or "")
    ]
    assert curl and curl[0]["status"] == "attributed" and curl[0]["user"] == "root"
    hub = [
        f["process"]
        for f in _tls_flows(report, "huggingface.co")
        if f["process"] and "HfApi" in (f["process"].get("cmdline") or "")
    ]
    assert hub, [f["process"] for f in _tls_flows(report, "huggingface.co")]
    git = [
        f["process"]
        for f in _tls_flows(report, "github.com")
        if f["process"] and "git" in (f["process"].get("comm") or "")
    ]
    assert git
    att = report["attribution"]
    assert att["method"] == "proc-net+fd-scan"
    assert att["attempted"] == att["attributed"] + att["unattributed"]
    assert att["attempted"] == len([f for f in report["findings"] if f["protocol"] in ("tcp", "udp")])
    # Resolver queries live for one round trip: when gone before the lookup they say so, never guess.
    for f in report["findings"]:
        if f["process"] and f["process"]["pid"] is None:
            assert f["process"]["status"].startswith("unknown") and f["process"]["cmdline"] == "unknown"
