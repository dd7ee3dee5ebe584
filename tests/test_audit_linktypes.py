"""Every link type and encapsulation the audit decodes, judged against tshark's reading.

No tool here writes PPP, PPP-in-HDLC, 802.11, PPPoE or MPLS captures from real traffic (there is
no such link to capture on), so these frames are crafted with scapy; the ground truth of what
each frame carries is tshark's dissection of the same file, not the audit's.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from audit_support import control, report_of, run_toolkit
from conftest import require_binary
from scapy.all import IP, LLC, SNAP, TCP, Dot1Q, Ether, IPv6, Loopback, wrpcap
from scapy.contrib.mpls import MPLS
from scapy.layers.dot11 import Dot11, Dot11QoS, RadioTap
from scapy.layers.l2 import GRE, CookedLinux, CookedLinuxV2, Dot1AD
from scapy.layers.ppp import HDLC, PPP, PPPoE

from toolkit.audit.pcap import offline_capture
from toolkit.audit.policy import default_policy

WS, REMOTE, TUN = "192.0.2.10", "203.0.113.7", "198.51.100.9"
MAC = {"addr1": "02:00:00:00:00:02", "addr2": "02:00:00:00:00:01", "addr3": "02:00:00:00:00:03"}


def syn(src=WS, dst=REMOTE):
    return IP(src=src, dst=dst) / TCP(sport=50000, dport=443, flags="S")


# name: (link type written in the file, frame around an IP packet)
FRAMES = {
    "ethernet": (1, lambda ip: Ether() / ip),
    "802.1q": (1, lambda ip: Ether() / Dot1Q(vlan=5) / ip),
    "qinq": (1, lambda ip: Ether() / Dot1AD(vlan=7) / Dot1Q(vlan=5) / ip),
    "sll": (113, lambda ip: CookedLinux(pkttype=4, proto=0x0800) / ip),
    "sll2": (276, lambda ip: CookedLinuxV2(pkttype=4, proto=0x0800, ifindex=2) / ip),
    "raw-ip": (101, lambda ip: ip),
    "null": (0, lambda ip: Loopback(type=2) / ip),
    "ppp": (9, lambda ip: PPP(proto=0x0021) / ip),
    "ppp-hdlc": (50, lambda ip: HDLC() / PPP(proto=0x0021) / ip),
    "pppoe": (1, lambda ip: Ether(type=0x8864) / PPPoE(sessionid=7) / PPP(proto=0x0021) / ip),
    "mpls": (1, lambda ip: Ether(type=0x8847) / MPLS(label=100, s=0) / MPLS(label=200, s=1) / ip),
    "802.11": (105, lambda ip: Dot11(type=2, subtype=0, FCfield=0x01, **MAC) / LLC() / SNAP(code=0x0800) / ip),
    "802.11-qos-radiotap": (
        127,
        lambda ip: RadioTap() / Dot11(type=2, subtype=8, FCfield=0x01, **MAC) / Dot11QoS() / LLC() / SNAP() / ip,
    ),
}


def tshark_endpoints(path: Path) -> list[list[str]]:
    """(ip.src, ip.dst, tcp.dstport) per frame as tshark reads them: all layers, outer first."""
    tshark = require_binary("tshark")
    out = subprocess.run(
        [
            tshark,
            "-r",
            str(path),
            "-T",
            "fields",
            "-E",
            "occurrence=a",
            "-e",
            "ip.dst",
            "-e",
            "ipv6.dst",
            "-e",
            "tcp.dstport",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split("\t") for line in out.splitlines()]


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_each_link_type_decodes_the_egress_tshark_sees_and_drops_loopback_inside(name, tmp_path):
    linktype, frame = FRAMES[name]
    path = tmp_path / f"{name}.pcap"
    wrpcap(str(path), [frame(syn())], linktype=linktype)
    (fields,) = tshark_endpoints(path)
    assert REMOTE in fields[0].split(",") and fields[2] == "443", fields  # tshark reads it so
    r = offline_capture(path, default_policy())
    assert r.problems == [] and r.stats["undecoded"] == 0 and r.stats["short_packets"] == 0, r.stats
    assert [(f.protocol, f.local_address, f.remote_address, f.remote_port, f.direction) for f in r.flows] == [
        ("tcp", WS, REMOTE, 443, "outbound")
    ]
    # The same frame carrying loopback only: not egress, even where the BPF filter could not see
    # the addresses (PPPoE, MPLS, 802.11) and let the frame through to Python.
    lo = tmp_path / f"{name}-lo.pcap"
    wrpcap(str(lo), [frame(syn("127.0.0.1", "127.0.0.2"))], linktype=linktype)
    r = offline_capture(lo, default_policy())
    assert (r.flows, r.problems) == ([], [])


@pytest.mark.parametrize(
    "outer, inner_remote",
    [
        (lambda inner: IP(src=WS, dst=TUN) / GRE() / inner, REMOTE),
        (lambda inner: IP(src=WS, dst=TUN, proto=4) / inner, REMOTE),
        (lambda inner: IP(src=WS, dst=TUN) / GRE(proto=0x6558) / Ether() / inner, REMOTE),
    ],
    ids=["gre", "ipip", "gre-ethernet"],
)
def test_tunnel_gives_the_outer_flow_and_the_inner_one_beside_it(outer, inner_remote, tmp_path):
    path = tmp_path / "tun.pcap"
    wrpcap(str(path), [Ether() / outer(syn())])
    (fields,) = tshark_endpoints(path)
    assert fields[0].split(",") == [TUN, REMOTE], fields
    r = offline_capture(path, default_policy())
    assert r.problems == []
    got = sorted((f.protocol, f.remote_address, f.remote_port, f.tunnel) for f in r.flows)
    # Both go out from the workstation: the outer flow takes the inner SYN's direction.
    assert sorted((f.local_address, f.direction, f.direction_evidence) for f in r.flows) == [
        (WS, "outbound", "tcp-syn"),
        (WS, "outbound", "tunnel-tcp-syn"),
    ]
    proto = "ipip" if got[0][0] == "4" else "gre"
    assert got == sorted(
        [
            (got[0][0], TUN, 0, None),
            ("tcp", REMOTE, 443, f"{proto} {WS} > {TUN}"),
        ]
    )


def test_ipv6_in_ipv4_inner_flow_is_reported_with_its_tunnel(tmp_path):
    path = tmp_path / "6in4.pcap"
    inner = IPv6(src="2001:db8::10", dst="2001:db8:1::80") / TCP(sport=50001, dport=80, flags="S")
    wrpcap(str(path), [Ether() / IP(src=WS, dst=TUN) / inner])
    (fields,) = tshark_endpoints(path)
    assert (fields[0], fields[1]) == (TUN, "2001:db8:1::80"), fields
    r = offline_capture(path, default_policy())
    flows = {(f.protocol, f.remote_address, f.remote_port): f for f in r.flows}
    assert set(flows) == {("41", TUN, 0), ("tcp", "2001:db8:1::80", 80)}
    assert flows[("tcp", "2001:db8:1::80", 80)].tunnel == f"ip6-in-ip {WS} > {TUN}"


def test_tunnel_between_allowed_ends_still_shows_the_egress_it_carries(tmp_path):
    """A GRE tunnel inside the allowed LAN: the outer packet is allowed, the inner one leaves."""
    policy = tmp_path / "lan.yaml"
    policy.write_text("schema: 1\nallow:\n  networks: [192.0.2.0/24, 198.51.100.0/24]\n")
    path = tmp_path / "lan-gre.pcap"
    wrpcap(str(path), [Ether() / IP(src=WS, dst=TUN) / GRE() / syn()])
    r = report_of(run_toolkit("audit", "--pcap", str(path), "--json", "--policy", str(policy)))
    assert [(f["remote_address"], f["remote_port"], f["tunnel"]) for f in r["findings"]] == [
        (REMOTE, 443, f"gre {WS} > {TUN}")
    ]
    assert r["verdict"] == "FAIL"


@pytest.mark.parametrize(
    "linktype, frame, kind",
    [
        (105, Dot11(type=2, subtype=0, FCfield=0x41, **MAC) / bytes(64), "802.11 protected frame"),
        (147, Ether() / syn(), "link type 147"),
        (1, Ether(type=0x8847) / MPLS(s=1) / bytes(64), "mpls payload (pseudowire)"),
        (9, PPP(proto=0x00FD) / bytes(40), "ppp protocol 0x00fd"),
    ],
    ids=["wifi-encrypted", "unknown-link-type", "mpls-pseudowire", "ppp-compressed"],
)
def test_frames_the_audit_cannot_look_into_make_it_inconclusive_with_a_count(linktype, frame, kind, tmp_path):
    path = tmp_path / "undecodable.pcap"
    wrpcap(str(path), [frame] * 3, linktype=linktype)
    proc = run_toolkit("audit", "--pcap", str(path), "--json")
    r = report_of(proc)
    assert (proc.returncode, r["verdict"]) == (2, "INCONCLUSIVE"), r["capture"]
    assert r["capture"]["stats"]["undecoded_kinds"] == {kind: 3}
    assert f"3 candidate packet(s) could not be decoded ({kind}: 3)" in control(r, "CAPTURE-001")["detail"]
