"""Captures written by real tools from real clients, read offline: the ground truth is tshark's.

In a namespace pair (the host routes everything to the peer), curl, dig (UDP and TCP) and
openssl s_client talk to servers in the peer while tcpdump and dumpcap write what passes:
a full pcap, one with a 24-byte snap length, a pcapng from dumpcap on two interfaces of different
link types (Ethernet and Linux cooked), and copies of files cut mid-record as a copy of a file
still being written is.
"""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from audit_support import PEER_V4, control, drop_pair, make_pair, report_of, run_toolkit
from conftest import require_binary, require_root

pytestmark = [pytest.mark.root]

ANSWER = "203.0.113.80"
SERVERS = r"""
import socket, struct, sys, threading, http.server
peer, answer = sys.argv[1], socket.inet_aton(sys.argv[2])
def reply(q):
    end = 12
    while q[end]:
        end += q[end] + 1
    question = q[12:end + 5]
    head = q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
    return head + question + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + answer
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((peer, 53))
    while True:
        q, a = s.recvfrom(4096); s.sendto(reply(q), a)
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((peer, 53)); s.listen()
    while True:
        c, _ = s.accept(); n = struct.unpack("!H", c.recv(2))[0]; q = b""
        while len(q) < n:
            q += c.recv(n - len(q))
        r = reply(q); c.sendall(struct.pack("!H", len(r)) + r); c.close()
def tls_sink():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((peer, 4433)); s.listen()
    while True:
        c, _ = s.accept(); c.recv(65536); c.close()
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass
for f in (udp, tcp, tls_sink):
    threading.Thread(target=f, daemon=True).start()
srv = http.server.ThreadingHTTPServer((peer, 8080), Quiet)
print("ready", flush=True)
srv.serve_forever()
"""


def tshark_fields(path: Path, display: str, *fields: str) -> list[tuple[str, ...]]:
    args = [require_binary("tshark"), "-r", str(path), "-Y", display, "-T", "fields"]
    for f in fields:
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True).stdout
    return [tuple(line.split("\t")) for line in out.splitlines()]


def record_ends(path: Path) -> list[int]:
    """Byte offset of the end of each record of a classic pcap file."""
    data = path.read_bytes()
    off, ends = 24, []
    while off + 16 <= len(data):
        caplen = struct.unpack_from("<I", data, off + 8)[0]
        off += 16 + caplen
        ends.append(off)
    return ends


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    require_root()
    tcpdump, dumpcap = require_binary("tcpdump"), require_binary("dumpcap")
    for tool in ("curl", "dig", "openssl"):
        require_binary(tool)
    tmp = tmp_path_factory.mktemp("audcaps")
    pair = make_pair("cp")
    veth = pair.veth_host  # type: ignore[attr-defined]
    procs: list[subprocess.Popen] = []
    try:
        servers = pair.popen(
            pair.peer, sys.executable, "-c", SERVERS, PEER_V4, ANSWER, stdout=subprocess.PIPE, text=True
        )
        procs.append(servers)
        assert servers.stdout.readline().strip() == "ready"
        files = {
            "full": tmp / "full.pcap",
            "short": tmp / "short.pcap",
            "mixed": tmp / "mixed.pcapng",
            "lo": tmp / "lo.pcap",
            "sll2": tmp / "sll2.pcap",
        }
        writers = [
            pair.popen(
                pair.host, tcpdump, "-i", veth, "-U", "-w", str(files["full"]), stderr=subprocess.PIPE, text=True
            ),
            pair.popen(
                pair.host,
                tcpdump,
                "-i",
                veth,
                "-s",
                "24",
                "-U",
                "-w",
                str(files["short"]),
                stderr=subprocess.PIPE,
                text=True,
            ),
            pair.popen(pair.host, tcpdump, "-i", "lo", "-U", "-w", str(files["lo"]), stderr=subprocess.PIPE, text=True),
            pair.popen(
                pair.host,
                tcpdump,
                "-i",
                "any",
                "-y",
                "LINUX_SLL2",
                "-U",
                "-w",
                str(files["sll2"]),
                stderr=subprocess.PIPE,
                text=True,
            ),
            pair.popen(
                pair.host,
                dumpcap,
                "-q",
                "-i",
                veth,
                "-i",
                "any",
                "-w",
                str(files["mixed"]),
                stderr=subprocess.PIPE,
                text=True,
            ),
        ]
        procs += writers
        for w, text in zip(writers, ("listening", "listening", "listening", "listening", "Capturing"), strict=True):
            for _ in range(10):
                if text in w.stderr.readline():
                    break
        time.sleep(1)
        clients = [
            ("curl", "-s", "-m", "5", "-o", "/dev/null", "-H", "Host: update.example.org", f"http://{PEER_V4}:8080/"),
            ("dig", "+tcp", "+tries=1", "+time=3", f"@{PEER_V4}", "telemetry.example.net", "A"),
            ("dig", "+notcp", "+tries=1", "+time=3", f"@{PEER_V4}", "stats.example.com", "A"),
            ("openssl", "s_client", "-connect", f"{PEER_V4}:4433", "-servername", "hub.example.org"),
            ("curl", "-s", "-m", "5", "-o", "/dev/null", "http://127.0.0.1:9/"),  # loopback only, refused
            # 4000 bytes to a closed port: the kernel fragments it, the peer answers ICMP port unreachable.
            (sys.executable, "-c", f"import socket; socket.socket(2, 2).sendto(bytes(4000), ('{PEER_V4}', 9998))"),
            ("dig", "+tries=1", "+time=1", "-p", "5353", "@224.0.0.251", "printer.local"),  # mDNS to its group
        ]
        for c in clients:
            pair.run(pair.host, "timeout", "8", *c, check=False, stdin=subprocess.DEVNULL)
        time.sleep(1)
        for w in writers:
            w.send_signal(signal.SIGINT)
            w.wait(timeout=20)
        yield files
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        drop_pair(pair)


def audit(path: Path) -> tuple[int, dict]:
    proc = run_toolkit("audit", "--pcap", str(path), "--json")
    return proc.returncode, report_of(proc)


def test_real_clients_named_by_http_host_dns_over_tcp_and_udp_and_tls_sni_as_tshark_names_them(captures):
    path = captures["full"]
    rc, r = audit(path)
    assert (rc, r["verdict"]) == (1, "FAIL"), r["capture"]
    shark_http = {h for (h,) in tshark_fields(path, "http.request", "http.host")}
    shark_sni = {h for (h,) in tshark_fields(path, "tls.handshake.type == 1", "tls.handshake.extensions_server_name")}
    shark_dns_tcp = {n for (n,) in tshark_fields(path, "tcp && dns.flags.response == 0", "dns.qry.name")}
    shark_dns_udp = {n for (n,) in tshark_fields(path, "udp.dstport == 53 && dns.flags.response == 0", "dns.qry.name")}
    assert (shark_http, shark_sni, shark_dns_tcp, shark_dns_udp) == (
        {"update.example.org"},
        {"hub.example.org"},
        {"telemetry.example.net"},
        {"stats.example.com"},
    )
    flows = {(f["protocol"], f["remote_port"]): f for f in r["findings"] if f["remote_address"] == PEER_V4}
    assert flows[("tcp", 8080)]["http_host"] == sorted(shark_http)
    assert flows[("tcp", 4433)]["sni"] == sorted(shark_sni)
    assert flows[("tcp", 53)]["dns_queries"] == sorted(shark_dns_tcp)
    assert flows[("udp", 53)]["dns_queries"] == sorted(shark_dns_udp)
    # The TCP answer is read too: the answered address is named by the query.
    assert "telemetry.example.net" in flows[("tcp", 53)]["names"]
    shark_syns = {(d, int(p)) for d, p in tshark_fields(path, "tcp.flags == 0x002", "ip.dst", "tcp.dstport")}
    assert shark_syns == {(f["remote_address"], f["remote_port"]) for f in r["findings"] if f["protocol"] == "tcp"}
    assert all(f["direction"] == "outbound" for f in r["findings"])


def test_pcapng_from_dumpcap_on_two_link_types_is_read_whole(captures):
    path = captures["mixed"]
    idbs = {t for (t,) in tshark_fields(path, "frame", "frame.encap_type")}
    assert len(idbs) == 2, idbs  # Ethernet from the veth, Linux cooked from any
    rc, r = audit(path)
    assert (rc, r["verdict"]) == (1, "FAIL"), r["capture"]
    stats = r["capture"]["stats"]
    assert stats["reader"] == "python" and sorted(stats["link_types"]) == ["1", "113"]
    assert stats["records"] == len(tshark_fields(path, "frame", "frame.number"))
    syns = tshark_fields(path, "tcp.flags == 0x002 && !(ip.dst == 127.0.0.0/8)", "ip.dst", "tcp.dstport")
    assert {(d, int(p)) for d, p in syns} == {
        (f["remote_address"], f["remote_port"]) for f in r["findings"] if f["protocol"] == "tcp"
    }


def test_24_byte_snaplen_is_inconclusive_with_the_count_of_cut_ip_packets(captures):
    path = captures["short"]
    rc, r = audit(path)
    ip_frames = len(tshark_fields(path, "eth.type == 0x0800 || eth.type == 0x86dd", "frame.number"))
    assert ip_frames >= 10
    assert (rc, r["verdict"]) == (2, "INCONCLUSIVE")
    assert r["capture"]["stats"]["short_packets"] == ip_frames
    assert (
        f"{ip_frames} packet(s) cut before the end of their IP or transport header"
        in control(r, "CAPTURE-001")["detail"]
    )


def test_file_cut_mid_record_judges_everything_before_the_cut(captures, tmp_path):
    full = captures["full"]
    ends = record_ends(full)
    syn = int(tshark_fields(full, "tcp.flags == 0x002 && tcp.dstport == 8080", "frame.number")[0][0])
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(full.read_bytes()[: ends[syn] + 20])  # inside the record after the SYN
    whole = len(tshark_fields(cut, "frame", "frame.number"))
    assert whole == syn + 1  # tshark reads the whole records before the cut
    rc, r = audit(cut)
    assert (rc, r["verdict"]) == (1, "FAIL")
    assert f"file truncated after {whole} records" in control(r, "CAPTURE-001")["detail"]
    assert (PEER_V4, 8080) in {(f["remote_address"], f["remote_port"]) for f in r["findings"]}


def test_loopback_only_file_cut_mid_record_is_inconclusive_not_pass(captures, tmp_path):
    lo = captures["lo"]
    ends = record_ends(lo)
    assert len(ends) >= 2
    cut = tmp_path / "lo-cut.pcap"
    cut.write_bytes(lo.read_bytes()[: ends[-1] - 3])
    whole = len(tshark_fields(cut, "frame", "frame.number"))
    rc, r = audit(cut)
    assert (rc, r["verdict"], r["findings"]) == (2, "INCONCLUSIVE", [])
    assert control(r, "CAPTURE-001")["detail"].startswith(f"file truncated after {whole} records")


def test_kernel_fragments_join_one_flow_and_the_icmp_error_joins_it_as_tshark_counts(captures):
    path = captures["full"]
    frags = tshark_fields(path, f"ip.dst == {PEER_V4} && (ip.flags.mf == 1 || ip.frag_offset > 0)", "frame.number")
    errors = tshark_fields(path, "icmp.type == 3 && icmp.code == 3 && udp.dstport == 9998", "frame.number")
    assert (len(frags), len(errors)) == (3, 1)  # 4000 bytes over a 1500-byte MTU; one error
    _, r = audit(path)
    udp = [
        f for f in r["findings"] if f["remote_address"] == PEER_V4 and f["protocol"] == "udp" and f["remote_port"] != 53
    ]
    assert [(f["remote_port"], f["packets"], f["icmp_errors"]) for f in udp] == [(9998, 3, 1)]
    assert not [f for f in r["findings"] if f["protocol"] == "icmp"]  # the error is not a flow of its own


def test_a_multicast_group_is_the_remote_end_of_a_real_mdns_query(captures):
    path = captures["full"]
    (q,) = tshark_fields(path, "mdns && ip.dst == 224.0.0.251", "ip.src", "dns.qry.name")
    _, r = audit(path)
    (mdns,) = [f for f in r["findings"] if "224.0.0.251" in (f["local_address"], f["remote_address"])]
    assert (mdns["local_address"], mdns["remote_address"], mdns["remote_port"]) == (q[0], "224.0.0.251", 5353)
    assert mdns["dns_queries"] == [q[1]] and mdns["direction"] == "outbound"


def test_mergecap_of_an_ethernet_and_an_sll2_capture_is_read_whole(captures, tmp_path):
    mergecap = require_binary("mergecap")
    merged = tmp_path / "merged.pcapng"
    subprocess.run([mergecap, "-w", str(merged), str(captures["full"]), str(captures["sll2"])], check=True)
    rc, r = audit(merged)
    stats = r["capture"]["stats"]
    assert (rc, stats["reader"], sorted(stats["link_types"])) == (1, "python", ["1", "276"]), stats
    assert stats["records"] == len(tshark_fields(merged, "frame", "frame.number"))
    _, full = audit(captures["full"])
    assert {(f["protocol"], f["remote_address"], f["remote_port"]) for f in full["findings"]} <= {
        (f["protocol"], f["remote_address"], f["remote_port"]) for f in r["findings"]
    }
