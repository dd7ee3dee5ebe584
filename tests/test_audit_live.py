"""Live capture in network namespaces: real packets to a peer namespace and to loopback.

The audited "host" namespace routes everything to a "peer" namespace the test owns; addresses
are documentation ranges inside them. The same traffic is also captured by tcpdump (pcap) and
tshark (pcapng), and the audit must find the same flows in those files offline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from audit_support import (
    HOST_V4,
    PEER_V4,
    PEER_V6,
    control,
    drop_pair,
    make_pair,
    quiet_static,
    report_of,
    run_toolkit,
    toolkit_cmd,
)
from conftest import REPO, require, require_binary, require_root

pytestmark = [pytest.mark.root]

LISTENER = """
import socket, sys, threading, time
held = []
def serve(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 8080)); s.listen(16)
    while True:
        c, _ = s.accept(); held.append(c)
for fam, addr in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):
    threading.Thread(target=serve, args=(fam, addr), daemon=True).start()
print("ready", flush=True)
time.sleep(600)
"""

# The traffic: a held TCP connection (attributable), UDP over v4 and v6, and loopback noise that
# must never appear. The marker in argv lets the test find this process in the attribution.
TRAFFIC = """
import socket, sys, time
marker, peer4, peer6 = sys.argv[1], sys.argv[2], sys.argv[3]
lo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(2000):
    lo.sendto(b"x" * 200, ("127.0.0.1", 9))
t = socket.create_connection((peer4, 8080))
t.sendall(b"POST /v1/telemetry HTTP/1.1\\r\\nHost: t.example.net\\r\\n\\r\\n")
u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(5):
    u4.sendto(b"usage-stats %d" % i, (peer4, 9999))
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for i in range(3):
    u6.sendto(b"v6 %d" % i, (peer6, 9999))
time.sleep(2.5)
"""


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"audit exited early: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError("audit never became live")
        time.sleep(0.1)


def _wait_line(proc: subprocess.Popen, text: str) -> None:
    for _ in range(10):
        line = proc.stderr.readline()
        if text in line:
            return
    raise AssertionError(f"{proc.args[3]} did not start")


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """One live audit run with tcpdump and tshark capturing the same traffic beside it."""
    require_root()
    tcpdump = require_binary("tcpdump")
    tshark = require_binary("tshark")
    tmp = tmp_path_factory.mktemp("audlive")
    pair = make_pair("lv")
    procs: list[subprocess.Popen] = []
    try:
        listener = subprocess.Popen(
            ["ip", "netns", "exec", pair.peer, sys.executable, "-c", LISTENER, PEER_V4, PEER_V6],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(listener)
        assert listener.stdout.readline().strip() == "ready"
        pcap, pcapng = tmp / "tcpdump.pcap", tmp / "tshark.pcapng"
        dump = subprocess.Popen(
            ["ip", "netns", "exec", pair.host, tcpdump, "-i", "any", "-U", "-w", str(pcap)],
            stderr=subprocess.PIPE,
            text=True,
        )
        shark = subprocess.Popen(
            ["ip", "netns", "exec", pair.host, tshark, "-q", "-i", "any", "-F", "pcapng", "-w", str(pcapng)],
            stderr=subprocess.PIPE,
            text=True,
        )
        procs += [dump, shark]
        _wait_line(dump, "listening on")
        _wait_line(shark, "Capturing on")
        ready = tmp / "ready"
        audit = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                pair.host,
                *toolkit_cmd("audit", "--duration", "6", "--json", "--ready-file", str(ready), *quiet_static(tmp)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        _wait_file(ready, audit)
        marker = f"aud-marker-{os.getpid()}"
        subprocess.run(
            ["ip", "netns", "exec", pair.host, sys.executable, "-c", TRAFFIC, marker, PEER_V4, PEER_V6],
            check=True,
            timeout=30,
        )
        out, err = audit.communicate(timeout=60)
        time.sleep(0.5)
        for p in (dump, shark):
            p.send_signal(signal.SIGINT)
            p.wait(timeout=20)
        proc = subprocess.CompletedProcess(audit.args, audit.returncode, out, err)
        yield {
            "pair": pair,
            "proc": proc,
            "report": report_of(proc),
            "marker": marker,
            "pcap": pcap,
            "pcapng": pcapng,
            "tmp": tmp,
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        drop_pair(pair)


def _flow(report: dict, proto: str, remote: str, port: int) -> dict:
    hits = [
        f
        for f in report["findings"]
        if f["protocol"] == proto and f["remote_address"] == remote and f["remote_port"] == port
    ]
    assert hits, (
        f"no {proto} flow to {remote}:{port} in {[(f['protocol'], f['remote_address']) for f in report['findings']]}"
    )
    return hits[0]


def test_live_audit_finds_every_egress_to_peer_namespace_v4_and_v6_and_exits_1(live_run):
    proc, report = live_run["proc"], live_run["report"]
    assert proc.returncode == 1, proc.stderr
    assert report["verdict"] == "FAIL"
    assert control(report, "CAPTURE-001")["status"] == "pass", report["capture"]
    tcp = _flow(report, "tcp", PEER_V4, 8080)
    assert tcp["local_address"] == HOST_V4 and tcp["direction"] == "outbound"
    assert tcp["direction_evidence"] == "tcp-syn"
    assert "t.example.net" in tcp["names"] and tcp["http_host"] == ["t.example.net"]
    assert _flow(report, "udp", PEER_V4, 9999)["packets"] == 5
    assert _flow(report, "udp", PEER_V6, 9999)["packets"] == 3
    # 2000 loopback datagrams: dropped by the kernel filter, never a finding, never seen by Python.
    assert not [f for f in report["findings"] if f["remote_address"].startswith("127.")]
    assert report["capture"]["stats"]["kernel_dropped"] == 0
    assert report["capture"]["stats"]["probes_seen"] == 2


def test_live_audit_attributes_the_held_connection_to_its_process_and_counts_the_rest(live_run):
    report = live_run["report"]
    proc_info = _flow(report, "tcp", PEER_V4, 8080)["process"]
    assert proc_info["status"] == "attributed", proc_info
    assert proc_info["method"] == "proc-net+fd-scan"
    assert live_run["marker"] in proc_info["cmdline"] and proc_info["user"] == "root"
    att = report["attribution"]
    assert att["method"] == "proc-net+fd-scan"
    assert att["attempted"] == att["attributed"] + att["unattributed"] >= 3


@pytest.mark.parametrize("name", ["pcap", "pcapng"])
def test_offline_audit_of_tcpdump_and_tshark_captures_finds_the_same_flows(live_run, name):
    path = live_run[name]
    proc = run_toolkit("audit", "--pcap", str(path), "--json")
    assert proc.returncode == 1, proc.stderr
    report = report_of(proc)
    live = {(f["protocol"], f["remote_address"], f["remote_port"]) for f in live_run["report"]["findings"]}
    offline = {(f["protocol"], f["remote_address"], f["remote_port"]) for f in report["findings"]}
    assert live <= offline, live - offline
    assert "t.example.net" in _flow(report, "tcp", PEER_V4, 8080)["names"]
    assert _flow(report, "tcp", PEER_V4, 8080)["direction"] == "outbound"


@pytest.fixture(scope="module")
def pair():
    require_root()
    p = make_pair("lp")
    yield p
    drop_pair(p)


def test_live_audit_of_loopback_only_traffic_passes_with_exit_0(pair, tmp_path):
    ready = tmp_path / "ready"
    audit = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            pair.host,
            *toolkit_cmd("audit", "--duration", "2", "--json", "--ready-file", str(ready), *quiet_static(tmp_path)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    _wait_file(ready, audit)
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            pair.host,
            sys.executable,
            "-c",
            "import socket\ns=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n"
            "[s.sendto(b'x',('::1',9)) for _ in range(300)]",
        ],
        check=True,
    )
    out, err = audit.communicate(timeout=60)
    report = report_of(subprocess.CompletedProcess([], audit.returncode, out, err))
    assert audit.returncode == 0, (err, report["controls"])
    assert report["verdict"] == "PASS" and report["findings"] == []
    assert control(report, "LISTEN-001")["status"] == "pass"


def test_live_capture_that_cannot_see_loopback_is_inconclusive_never_pass(pair, tmp_path):
    # Capturing only on the veth: the start and end probes on lo are never seen.
    proc = run_toolkit(
        "audit", "--duration", "1", "--json", "-i", pair.veth_host, *quiet_static(tmp_path), ns=pair.host
    )
    assert proc.returncode == 2, proc.stderr
    report = report_of(proc)
    assert report["verdict"] == "INCONCLUSIVE"
    assert "start probe" in control(report, "CAPTURE-001")["detail"]
    assert control(report, "EGRESS-001")["status"] == "inconclusive"


def test_live_capture_without_privilege_is_inconclusive(pair, tmp_path):
    """Root without CAP_NET_RAW (dropped from the bounding set): the kernel refuses the socket."""
    setpriv = require_binary("setpriv")
    cmd = [
        "ip",
        "netns",
        "exec",
        pair.host,
        setpriv,
        "--bounding-set=-net_raw",
        *toolkit_cmd("audit", "--duration", "1", "--json", *quiet_static(tmp_path)),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    report = report_of(proc)
    assert report["verdict"] == "INCONCLUSIVE"
    assert "no privilege" in report["capture"]["unavailable_reason"]


def test_live_capture_without_libpcap_is_inconclusive(pair, tmp_path):
    """libpcap made unloadable for this process only: /dev/null bind-mounted over the library in
    a private mount namespace, so the real loader fails the way it does on a host without it."""
    unshare = require_binary("unshare")
    lib = next(
        (
            p
            for p in ("/usr/lib/x86_64-linux-gnu/libpcap.so.0.8", "/usr/lib/aarch64-linux-gnu/libpcap.so.0.8")
            if Path(p).exists()
        ),
        None,
    )
    require(lib is not None, "libpcap.so.0.8 installed")
    inner = " ".join(toolkit_cmd("audit", "--duration", "1", "--json", *quiet_static(tmp_path)))
    cmd = [
        "ip",
        "netns",
        "exec",
        pair.host,
        unshare,
        "-m",
        "sh",
        "-c",
        f"mount --bind /dev/null {lib} && exec {inner}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert "libpcap is not available" in report_of(proc)["capture"]["unavailable_reason"]


def test_live_kernel_drops_make_the_capture_control_inconclusive(pair, tmp_path):
    """A 1 KiB capture buffer and a burst of egress: the kernel drops, the audit says so."""
    ready = tmp_path / "ready"
    audit = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            pair.host,
            *toolkit_cmd(
                "audit",
                "--duration",
                "3",
                "--json",
                "--buffer-kib",
                "1",
                "--no-attribution",
                "--ready-file",
                str(ready),
                *quiet_static(tmp_path),
            ),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    _wait_file(ready, audit)
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            pair.host,
            sys.executable,
            "-c",
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"[s.sendto(b'y'*600,('{PEER_V4}',9999)) for _ in range(30000)]",
        ],
        check=True,
    )
    out, err = audit.communicate(timeout=60)
    report = report_of(subprocess.CompletedProcess([], audit.returncode, out, err))
    stats = report["capture"]["stats"]
    require(stats.get("kernel_dropped", 0) > 0, f"the kernel dropped nothing this time: {stats}")
    assert control(report, "CAPTURE-001")["status"] == "inconclusive"
    assert "dropped" in control(report, "CAPTURE-001")["detail"]
    assert report["verdict"] != "PASS"


def test_listener_beyond_loopback_fails_listen_001_with_its_process(pair, tmp_path):
    from scapy.all import IP, UDP, Ether, wrpcap

    cap = tmp_path / "lo.pcap"
    wrpcap(str(cap), [Ether() / IP(src="127.0.0.1", dst="127.0.0.1") / UDP()])
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            pair.host,
            sys.executable,
            "-c",
            "import socket,time\na=socket.socket();a.bind(('127.0.0.1',8000));a.listen()\n"
            "b=socket.socket();b.bind(('0.0.0.0',11434));b.listen()\nprint('ready',flush=True);time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout.readline().strip() == "ready"
        proc = run_toolkit("audit", "--pcap", str(cap), "--static", "--json", *quiet_static(tmp_path), ns=pair.host)
    finally:
        server.kill()
        server.wait()
    listen = control(report_of(proc), "LISTEN-001")
    assert proc.returncode == 1 and listen["status"] == "fail"
    assert [(i["address"], i["port"]) for i in listen["items"]] == [("0.0.0.0", 11434)]
    assert listen["items"][0]["process"]["pid"] == server.pid or "python" in listen["items"][0]["process"]["comm"]


def test_live_capture_until_ctrl_c_still_runs_its_end_probe_and_reports(pair, tmp_path):
    ready = tmp_path / "ready"
    audit = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            pair.host,
            *toolkit_cmd("audit", "--duration", "0", "--json", "--ready-file", str(ready), *quiet_static(tmp_path)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    _wait_file(ready, audit)
    time.sleep(1)
    audit.send_signal(signal.SIGINT)
    out, err = audit.communicate(timeout=60)
    report = report_of(subprocess.CompletedProcess([], audit.returncode, out, err))
    assert audit.returncode == 0, err
    assert report["capture"]["stats"]["interrupted"] is True
    assert report["capture"]["stats"]["probes_seen"] == 2


# Frames sent through a raw packet socket. With PACKET_QDISC_BYPASS they go straight to the
# driver and never pass the packet tap libpcap reads; the interface counters still count them.
RAW_SENDER = """
import socket, sys
dev, n, bypass, frame = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", bytes.fromhex(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
if bypass:
    s.setsockopt(263, 20, 1)  # SOL_PACKET, PACKET_QDISC_BYPASS
s.bind((dev, 0))
for _ in range(n):
    s.send(frame)
"""


def _frame(dst: str = "203.0.113.99") -> str:
    from scapy.all import IP, UDP, Ether

    return bytes(
        Ether(src="02:00:00:00:aa:01", dst="02:00:00:00:aa:02") / IP(src=HOST_V4, dst=dst) / UDP(dport=9999) / b"x"
    ).hex()


def _audit_during(
    pair, tmp_path: Path, steps: list[list[str]], duration: int = 3, extra: tuple[str, ...] = ()
) -> tuple[int, dict]:
    """A live audit in the host namespace while ``steps`` (commands) run in it, one after another."""
    ready = tmp_path / "ready"
    ready.unlink(missing_ok=True)
    audit = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            pair.host,
            *toolkit_cmd(
                "audit",
                "--duration",
                str(duration),
                "--json",
                "--no-attribution",
                "--ready-file",
                str(ready),
                *extra,
                *quiet_static(tmp_path),
            ),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    _wait_file(ready, audit)
    for step in steps:
        subprocess.run(["ip", "netns", "exec", pair.host, *step], check=True, capture_output=True, timeout=30)
    out, err = audit.communicate(timeout=60)
    return audit.returncode, report_of(subprocess.CompletedProcess([], audit.returncode, out, err))


def _row(report: dict, name: str) -> dict:
    return next(r for r in report["capture"]["stats"]["sent_vs_seen"] if r["interface"] == name)


def test_frames_that_bypass_the_packet_tap_make_the_live_audit_inconclusive(pair, tmp_path):
    veth = pair.veth_host
    rc, r = _audit_during(pair, tmp_path, [[sys.executable, "-c", RAW_SENDER, veth, "50", "1", _frame()]])
    assert (rc, r["verdict"]) == (2, "INCONCLUSIVE"), r["capture"]
    row = _row(r, veth)
    assert row["sent"] - row["seen"] == 50 and row["blind"] is True, row
    assert r["findings"] == []  # none of the 50 was seen: that is the point
    detail = control(r, "CAPTURE-001")["detail"]
    assert f"{veth} sent {row['sent']}, seen {row['seen']}" in detail
    assert r["capture"]["stats"]["sent_seen_tolerance"] == 0


def test_frames_through_the_tap_are_counted_as_seen_and_found(pair, tmp_path):
    veth = pair.veth_host
    rc, r = _audit_during(pair, tmp_path, [[sys.executable, "-c", RAW_SENDER, veth, "50", "0", _frame()]])
    assert (rc, r["verdict"]) == (1, "FAIL"), r["capture"]
    row = _row(r, veth)
    assert row["sent"] == row["seen"] >= 50 and row["blind"] is False, row
    assert control(r, "CAPTURE-001")["status"] == "pass"
    assert _flow(r, "udp", "203.0.113.99", 9999)["packets"] == 50


def test_interface_created_mid_capture_is_captured_and_its_unseen_frames_counted(pair, tmp_path):
    """Three veths made during the capture, their far ends in the peer namespace: one sends 30
    frames past the tap and stays, one does the same and is deleted before the end (its last
    counters come from the kernel's RTM_DELLINK), one sends 30 ordinary frames (captured)."""
    frame = _frame()
    steps = []
    for name, bypass in (("audmid0", "1"), ("audmid1", "1"), ("audmid2", "0")):
        steps += [
            ["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p", "netns", pair.peer],
            ["ip", "-n", pair.peer, "link", "set", name + "p", "up"],
            ["ip", "link", "set", name, "up"],
            [sys.executable, "-c", RAW_SENDER, name, "30", bypass, frame],
        ]
    # audmid1 also sends one ordinary frame before it goes: that flow still names it.
    steps.append([sys.executable, "-c", RAW_SENDER, "audmid1", "1", "0", _frame("203.0.113.98")])
    steps.append(["ip", "link", "del", "audmid1"])
    rc, r = _audit_during(pair, tmp_path, steps)
    kept, gone, seen = _row(r, "audmid0"), _row(r, "audmid1"), _row(r, "audmid2")
    assert (kept["appeared"], kept["vanished"], kept["sent"] - kept["seen"], kept["blind"]) == (True, False, 30, True)
    assert (gone["appeared"], gone["vanished"], gone["sent"] - gone["seen"], gone["blind"]) == (True, True, 30, True)
    assert (seen["appeared"], seen["sent"] == seen["seen"], seen["blind"]) == (True, True, False)
    assert _flow(r, "udp", "203.0.113.99", 9999)["interfaces"] == ["audmid2"]
    assert _flow(r, "udp", "203.0.113.98", 9999)["interfaces"] == ["audmid1"]
    assert (rc, r["verdict"]) == (1, "FAIL")  # the captured frames are egress; the finding outranks
    detail = control(r, "CAPTURE-001")["detail"]
    assert "audmid0 sent" in detail and "(appeared during the capture)" in detail and "audmid1 sent" in detail


def test_under_a_lan_policy_allowed_sends_are_counted_so_only_unseen_frames_are_blind(pair, tmp_path):
    """The LAN is allowed: its packets are filtered out as candidates, yet still counted as seen,
    so 40 allowed datagrams pass while 20 frames past the tap do not."""
    policy = tmp_path / "lan.yaml"
    policy.write_text("schema: 1\nallow:\n  networks: [198.51.100.0/24, 2001:db8:100::/64]\n")
    veth = pair.veth_host
    send = [
        sys.executable,
        "-c",
        f"import socket\ns=socket.socket(2,2)\n[s.sendto(b'x',('{PEER_V4}',9)) for _ in range(40)]",
    ]
    rc, r = _audit_during(pair, tmp_path, [send], extra=("--policy", str(policy)))
    assert (rc, r["verdict"], r["findings"]) == (0, "PASS", []), r["capture"]
    row = _row(r, veth)
    assert row["sent"] == row["seen"] >= 40 and row["blind"] is False, row
    bypass = [sys.executable, "-c", RAW_SENDER, veth, "20", "1", _frame(PEER_V4)]
    rc, r = _audit_during(pair, tmp_path, [send, bypass], extra=("--policy", str(policy)))
    row = _row(r, veth)
    assert (rc, r["verdict"], row["sent"] - row["seen"], row["blind"]) == (2, "INCONCLUSIVE", 20, True), row
