"""Offline audits of captures crafted with scapy in the test (pcap and pcapng)."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_support import control, report_of, run_toolkit
from scapy.all import ARP, BOOTP, DHCP, DNS, DNSQR, DNSRR, IP, TCP, UDP, Ether, IPv6, wrpcap
from scapy.layers.inet6 import ICMPv6ND_NS
from scapy.layers.tls.all import TLS, ServerName, TLS_Ext_ServerName, TLSClientHello
from scapy.utils import PcapNgWriter

from toolkit.audit.pcap import offline_capture
from toolkit.audit.policy import default_policy, parse_policy

E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
WS, DNS_SRV, HUB, QUIC_SRV = "192.0.2.10", "198.51.100.53", "203.0.113.7", "203.0.113.9"


def phone_home_packets() -> list:
    hello = TLS(msg=TLSClientHello(ext=[TLS_Ext_ServerName(servernames=[ServerName(servername=b"huggingface.co")])]))
    return [
        E / IP(src="127.0.0.1", dst="127.0.0.1") / TCP(sport=40000, dport=8000, flags="S"),
        E / IP(src=WS, dst=DNS_SRV) / UDP(sport=40001, dport=53) / DNS(rd=1, qd=DNSQR(qname="huggingface.co")),
        E
        / IP(src=DNS_SRV, dst=WS)
        / UDP(sport=53, dport=40001)
        / DNS(
            qr=1,
            qd=DNSQR(qname="huggingface.co"),
            an=[
                DNSRR(rrname="huggingface.co", type="CNAME", rdata="hub.cdn.example"),
                DNSRR(rrname="hub.cdn.example", type="A", rdata=HUB),
            ],
        ),
        E / IP(src=WS, dst=HUB) / TCP(sport=50000, dport=443, flags="S"),
        E / IP(src=HUB, dst=WS) / TCP(sport=443, dport=50000, flags="SA"),
        E / IP(src=WS, dst=HUB) / TCP(sport=50000, dport=443, flags="PA") / bytes(hello),
        E
        / IPv6(src="2001:db8::10", dst="2001:db8:1::80")
        / TCP(sport=50001, dport=80, flags="PA")
        / b"GET /update HTTP/1.1\r\nHost: update.example.org\r\n\r\n",
        E / IP(src=WS, dst=QUIC_SRV) / UDP(sport=50002, dport=443) / (bytes([0xC3, 0, 0, 0, 1, 8]) + bytes(1200)),
        # Someone from outside opens a connection to the workstation: inbound, by its SYN.
        E / IP(src="198.51.100.99", dst=WS) / TCP(sport=61000, dport=22, flags="S"),
        E / IP(src=WS, dst="198.51.100.99") / TCP(sport=22, dport=61000, flags="SA"),
    ]


def link_local_packets() -> list:
    return [
        E / ARP(psrc="192.0.2.10", pdst="192.0.2.1"),
        E / IPv6(src="fe80::1", dst="ff02::1:ff00:2") / ICMPv6ND_NS(tgt="fe80::2"),
        E
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
        / BOOTP()
        / DHCP(options=[("message-type", "discover"), "end"]),
        E / IP(src="192.0.2.10", dst="224.0.0.22", proto=2) / bytes.fromhex("2200f9020000000104000000e00000fb"),
    ]


def by_remote(report, addr, port):
    return next(f for f in report["findings"] if f["remote_address"] == addr and f["remote_port"] == port)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audoff") / "phone_home.pcap"
    wrpcap(str(path), phone_home_packets() + link_local_packets())
    return path


def test_offline_names_every_egress_flow_by_dns_sni_http_host_and_flags_quic(crafted):
    proc = run_toolkit("audit", "--pcap", str(crafted), "--json")
    assert proc.returncode == 1, proc.stderr
    r = report_of(proc)
    assert r["verdict"] == "FAIL" and r["mode"] == "offline"
    dns = by_remote(r, DNS_SRV, 53)
    assert dns["dns_queries"] == ["huggingface.co"] and dns["direction_evidence"] == "dns-query"
    tls = by_remote(r, HUB, 443)
    # The SNI and the DNS answer (through the CNAME) both name the address.
    assert tls["sni"] == ["huggingface.co"]
    assert set(tls["names"]) == {"huggingface.co", "hub.cdn.example"}
    assert (tls["packets"], tls["direction"], tls["local_address"]) == (3, "outbound", WS)
    http = by_remote(r, "2001:db8:1::80", 80)
    assert http["http_host"] == ["update.example.org"] and http["local_address"] == "2001:db8::10"
    quic = by_remote(r, QUIC_SRV, 443)
    assert quic["protocol"] == "quic" and quic["quic"] is True and quic["direction_evidence"] == "quic-initial"
    assert len(r["findings"]) == 5  # the loopback SYN is not among them


def test_offline_infers_inbound_direction_from_who_sent_the_syn(crafted):
    r = offline_capture(crafted, default_policy())
    ssh = next(f for f in r.flows if 22 in (f.local_port, f.remote_port))
    assert (ssh.direction, ssh.direction_evidence) == ("inbound", "tcp-syn")
    assert (ssh.local_address, ssh.local_port, ssh.remote_address) == (WS, 22, "198.51.100.99")


def test_offline_link_local_noise_is_reported_under_its_own_heading(tmp_path):
    path = tmp_path / "ll.pcap"
    wrpcap(str(path), link_local_packets())
    r = report_of(run_toolkit("audit", "--pcap", str(path), "--json"))
    kinds = {x["kind"]: x for x in r["link_local"]}
    assert set(kinds) == {"arp", "ndp", "dhcp", "igmp"}
    assert (kinds["arp"]["source"], kinds["arp"]["destination"]) == ("192.0.2.10", "192.0.2.1")
    ll = control(r, "LINK-001")
    assert ll["status"] == "info" and "4 link-local packet(s)" in ll["detail"]
    assert r["findings"] == [] and r["verdict"] == "PASS"


def test_offline_pcapng_written_by_scapy_gives_the_same_findings_as_pcap(crafted, tmp_path):
    ng = tmp_path / "phone_home.pcapng"
    with PcapNgWriter(str(ng)) as w:
        for p in phone_home_packets():
            w.write(p)
    a = {
        (f.protocol, f.remote_address, f.remote_port, tuple(f.names))
        for f in offline_capture(crafted, default_policy()).flows
    }
    b = {
        (f.protocol, f.remote_address, f.remote_port, tuple(f.names))
        for f in offline_capture(ng, default_policy()).flows
    }
    assert a == b and len(a) == 5


def test_offline_loopback_only_capture_passes_with_exit_0(tmp_path):
    path = tmp_path / "lo.pcap"
    wrpcap(
        str(path),
        [
            E / IP(src="127.0.0.1", dst="127.0.0.2") / UDP(sport=1, dport=2),
            E / IPv6(src="::1", dst="::1") / TCP(sport=3, dport=4, flags="S"),
        ]
        * 50,
    )
    proc = run_toolkit("audit", "--pcap", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert report_of(proc)["verdict"] == "PASS"


def test_offline_empty_capture_is_inconclusive_not_pass(tmp_path):
    path = tmp_path / "empty.pcap"
    wrpcap(str(path), [])
    proc = run_toolkit("audit", "--pcap", str(path), "--json")
    assert proc.returncode == 2, proc.stderr
    r = report_of(proc)
    assert r["verdict"] == "INCONCLUSIVE" and "holds no packet" in control(r, "CAPTURE-001")["detail"]


def test_policy_lan_network_is_allowed_and_compiled_into_the_filter(crafted, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("schema: 1\nallow:\n  networks: [192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24]\n")
    r = report_of(run_toolkit("audit", "--pcap", str(crafted), "--json", "--policy", str(policy)))
    assert "src net 198.51.100.0/24" in r["capture"]["bpf_filter"]
    # Only the IPv6 HTTP flow leaves the allowed networks now.
    assert [(f["remote_address"], f["remote_port"]) for f in r["findings"]] == [("2001:db8:1::80", 80)]


def test_policy_rejects_bad_input_with_one_line_and_exit_64(tmp_path, crafted):
    bad = tmp_path / "bad.yaml"
    bad.write_text("allow:\n  networks: [not-a-cidr]\n")
    proc = run_toolkit("audit", "--pcap", str(crafted), "--policy", str(bad))
    assert proc.returncode == 64 and "not an address or CIDR" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    with pytest.raises(Exception, match="unknown key"):
        parse_policy({"allowed": {}})


def test_unreadable_pcap_and_unknown_option_exit_64_not_2(tmp_path):
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture")
    proc = run_toolkit("audit", "--pcap", str(junk))
    assert proc.returncode == 64 and "Traceback" not in proc.stderr
    assert run_toolkit("audit", "--no-such-option").returncode == 64
    assert run_toolkit("audit", "--pcap", str(tmp_path / "missing.pcap")).returncode == 64


def test_garbage_on_port_53_names_nothing_and_does_not_decide_direction(tmp_path):
    path = tmp_path / "junk53.pcap"
    wrpcap(str(path), [E / IP(src=WS, dst=DNS_SRV) / UDP(sport=40009, dport=53) / b"x"])
    (flow,) = offline_capture(path, default_policy()).flows
    assert flow.names == [] and flow.direction_evidence != "dns-response"
    assert (flow.direction, flow.remote_port) == ("outbound", 53)  # by port: 53 is the server's
