"""Nothing in a packet can crash the audit: every dissector and the decoder under hypothesis,
plus the cases a review found (a DNS answer cut by a 96-byte snap length, names split over TCP
segments, fragments, ICMP errors, group addresses, LLMNR replies)."""

from __future__ import annotations

import contextlib
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import require_binary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import DNS, DNSQR, DNSRR, ICMP, IP, TCP, UDP, Ether, IPv6, fragment, wrpcap
from scapy.layers.inet6 import ICMPv6DestUnreach
from scapy.layers.tls.all import TLS, ServerName, TLS_Ext_ServerName, TLSClientHello

from toolkit.audit import names
from toolkit.audit.decode import SUPPORTED_LINK_TYPES, Processor
from toolkit.audit.flows import finalize
from toolkit.audit.pcap import offline_capture
from toolkit.audit.pcapfile import NotACapture, pcapng_needs_python, read_file
from toolkit.audit.policy import default_policy

WS, REMOTE = "192.0.2.10", "203.0.113.7"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LINK_TYPES = sorted(SUPPORTED_LINK_TYPES | {147, 65535})


@FUZZ
@given(st.binary(max_size=600))
def test_name_dissectors_never_raise_on_any_bytes(data):
    parsed = names.dissect_dns(data)
    assert parsed is None or (isinstance(parsed[0], bool) and all(isinstance(n, str) for n in parsed[1]))
    assert names.tls_sni(data) is None or isinstance(names.tls_sni(data), str)
    names.http_host(data)
    names.is_quic_initial(data)
    names.is_tls_client_hello(data)
    names.tls_record_length(data)
    names.dns_names(data, names.NameBook())
    assert names.quic_sni(data) is None or isinstance(names.quic_sni(data), str)
    names.quic_sni(b"\xc3\x00\x00\x00\x01" + data)  # past the version check, into the decryption


HEADERS = [
    bytes(Ether() / IP(src=WS, dst=REMOTE) / TCP(sport=5, dport=53)),
    bytes(Ether() / IP(src=WS, dst=REMOTE) / UDP(sport=5, dport=53)),
    bytes(Ether() / IP(src=WS, dst=REMOTE, proto=47)),
    bytes(Ether() / IP(src=WS, dst=REMOTE) / ICMP(type=3)),
    bytes(Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2", nh=44)),
    bytes(Ether(type=0x8864)),
    bytes(Ether(type=0x8847)),
]


@FUZZ
@given(
    st.sampled_from(LINK_TYPES),
    st.one_of(st.binary(max_size=300), st.tuples(st.sampled_from(HEADERS), st.binary(max_size=200))),
)
def test_decoder_never_raises_on_any_frame_of_any_link_type(dlt, data):
    """Random frames, and real headers with random bytes after them (the paths into DNS, TCP
    streams, tunnels and ICMP quotes), for every link type: no exception, and every frame is
    either filed, counted as short or undecoded, or allowed."""
    if isinstance(data, tuple):
        data = data[0][: len(data[0]) - len(data[1]) // 3] + data[1]
    proc = Processor(dlt, allowed=default_policy().networks)
    for _ in range(2):  # twice: the second pass goes through the caches and stream state
        proc.handle(0.0, len(data), data)
    proc.finish()
    finalize(proc.table, proc.book, default_policy().networks)


@FUZZ
@given(st.binary(max_size=400))
def test_capture_file_reader_never_raises_but_not_a_capture(data):
    with tempfile.TemporaryDirectory() as d:
        for head in (
            b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00" + bytes(8) + b"\xff\xff\x00\x00\x01\x00\x00\x00",
            b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x4d\x3c\x2b\x1a",
            b"",
        ):
            path = Path(d) / "f"
            path.write_bytes(head + data)
            with contextlib.suppress(NotACapture):
                read_file(path, Processor(0))


def test_dns_answer_cut_by_a_96_byte_snaplen_still_names_the_query(tmp_path):
    """editcap -s 96 cuts a DNS answer with many records; the audit reads what is left."""
    editcap = require_binary("editcap")
    answers = [DNSRR(rrname="cdn.example.net", type="A", rdata=f"203.0.113.{i}") for i in range(1, 20)]
    full = tmp_path / "full.pcap"
    wrpcap(
        str(full),
        [
            Ether()
            / IP(src=WS, dst="198.51.100.53")
            / UDP(sport=40000, dport=53)
            / DNS(qd=DNSQR(qname="cdn.example.net")),
            Ether()
            / IP(src="198.51.100.53", dst=WS)
            / UDP(sport=53, dport=40000)
            / DNS(qr=1, qd=DNSQR(qname="cdn.example.net"), an=answers),
        ],
    )
    cut = tmp_path / "cut96.pcap"
    subprocess.run([editcap, "-s", "96", str(full), str(cut)], check=True)
    r = offline_capture(cut, default_policy())
    (flow,) = r.flows
    assert flow.dns_queries == ["cdn.example.net"] and "cdn.example.net" in flow.names
    assert (flow.direction, flow.direction_evidence) == ("outbound", "dns-query")


def test_dns_over_tcp_split_in_one_byte_segments_and_a_tls_hello_over_three_segments(tmp_path):
    q = bytes(DNS(id=7, qd=DNSQR(qname="split.example.org")))
    msg = len(q).to_bytes(2, "big") + q
    hello = bytes(
        TLS(msg=TLSClientHello(ext=[TLS_Ext_ServerName(servernames=[ServerName(servername=b"hub.example")])]))
    )
    pkts = [Ether() / IP(src=WS, dst=REMOTE) / TCP(sport=40001, dport=53, flags="S", seq=99)]
    pkts += [
        Ether() / IP(src=WS, dst=REMOTE) / TCP(sport=40001, dport=53, flags="PA", seq=100 + i) / msg[i : i + 1]
        for i in range(len(msg))
    ]
    pkts.insert(5, pkts[4])  # a retransmission in the middle
    third = len(hello) // 3 + 1
    pkts += [
        Ether() / IP(src=WS, dst=REMOTE) / TCP(sport=40002, dport=443, flags="PA", seq=1000 + k) / hello[k : k + third]
        for k in range(0, len(hello), third)
    ]
    path = tmp_path / "split.pcap"
    wrpcap(str(path), pkts)
    flows = {f.remote_port: f for f in offline_capture(path, default_policy()).flows}
    assert flows[53].dns_queries == ["split.example.org"]
    assert flows[443].sni == ["hub.example"] and flows[443].direction_evidence == "tls-clienthello"


def test_fragments_join_their_flow_even_out_of_order_and_icmp_errors_join_the_quoted_flow(tmp_path):
    frags = fragment(IP(src=WS, dst=REMOTE, id=4242) / UDP(sport=40003, dport=9999) / bytes(3000), fragsize=1000)
    assert len(frags) == 4
    quoted = bytes(IP(src=WS, dst=REMOTE) / UDP(sport=40003, dport=9999))[:28]
    err4 = IP(src="198.51.100.1", dst=WS) / ICMP(type=3, code=3) / quoted
    v6q = bytes(IPv6(src="2001:db8::10", dst="2001:db8:1::80") / UDP(sport=40004, dport=9999) / b"x")
    pkts = [Ether() / p for p in [frags[2], frags[0], frags[1], frags[3], err4]]
    pkts += [Ether() / IPv6(src="2001:db8:1::80", dst="2001:db8::10") / ICMPv6DestUnreach(code=4) / v6q]
    path = tmp_path / "frag.pcap"
    wrpcap(str(path), pkts)
    flows = offline_capture(path, default_policy()).flows
    got = sorted((f.protocol, f.remote_address, f.remote_port, f.packets, f.icmp_errors) for f in flows)
    assert got == [("udp", "2001:db8:1::80", 9999, 0, 1), ("udp", REMOTE, 9999, 4, 1)]


def test_group_addresses_are_never_local_and_an_llmnr_reply_is_inbound(tmp_path):
    lan = [f"192.0.2.{i}" for i in range(20, 26)]
    pkts = [  # six LAN hosts ask mDNS: the group takes part in the most flows, still not local
        Ether() / IP(src=h, dst="224.0.0.251") / UDP(sport=5353, dport=5353) / DNS(qd=DNSQR(qname="printer.local"))
        for h in lan
    ]
    pkts.append(
        Ether()
        / IP(src="192.0.2.30", dst=WS)
        / UDP(sport=5355, dport=50123)
        / DNS(qr=1, qd=DNSQR(qname="nas"), an=DNSRR(rrname="nas", rdata="192.0.2.30"))
    )
    pkts.append(Ether() / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=40000, dport=9) / b"x")
    path = tmp_path / "groups.pcap"
    wrpcap(str(path), pkts)
    flows = offline_capture(path, default_policy()).flows
    assert {f.local_address for f in flows if f.remote_address == "224.0.0.251"} == set(lan)
    assert all(f.local_address not in ("224.0.0.251", "255.255.255.255") for f in flows)
    llmnr = next(f for f in flows if f.remote_port == 5355 or f.local_port == 5355)
    assert (llmnr.local_address, llmnr.remote_address, llmnr.direction, llmnr.direction_evidence) == (
        WS,
        "192.0.2.30",
        "inbound",
        "llmnr-response",
    )


@pytest.mark.parametrize("snap", [24, 40, 50])
def test_syn_cut_by_a_tiny_snaplen_is_counted_never_a_silent_pass(snap, tmp_path):
    """The case the BPF prefilter hid: a load past the captured bytes rejects the frame."""
    editcap = require_binary("editcap")
    full = tmp_path / "syn.pcap"
    wrpcap(str(full), [Ether() / IP(src=WS, dst=REMOTE) / TCP(sport=40005, dport=443, flags="S")])
    cut = tmp_path / "cut.pcap"
    subprocess.run([editcap, "-s", str(snap), str(full), str(cut)], check=True)
    r = offline_capture(cut, default_policy())
    assert r.stats["short_packets"] == 1 and r.stats["reader"] == "python"
    assert any("1 packet(s) cut before the end of their IP or transport header" in p for p in r.problems)


def quic_initial(dcid: bytes, hello: bytes) -> bytes:
    """A client's QUIC v1 Initial carrying ``hello`` in one CRYPTO frame, protected as RFC 9001
    section 5 says (the test's own encoder; tshark's decryption is the check on it)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, iv, hp = names.quic_initial_keys(dcid)
    frame = b"\x06\x00" + (0x4000 | len(hello)).to_bytes(2, "big") + hello
    plain = frame + bytes(1162 - len(frame))  # PADDING up to a 1200-byte datagram
    pn = b"\x00\x00\x00\x02"
    length = len(pn) + len(plain) + 16
    header = b"\xc3\x00\x00\x00\x01" + bytes([len(dcid)]) + dcid + b"\x00\x00" + (0x4000 | length).to_bytes(2, "big")
    nonce = (int.from_bytes(iv, "big") ^ int.from_bytes(pn, "big")).to_bytes(12, "big")
    sealed = AESGCM(key).encrypt(nonce, plain, header + pn)
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(sealed[:16]) + enc.finalize()  # sample starts 4 bytes after the packet number
    first = bytes([header[0] ^ (mask[0] & 0x0F)])
    return first + header[1:] + bytes(a ^ b for a, b in zip(pn, mask[1:5], strict=True)) + sealed


def test_quic_initial_keys_are_rfc_9001s_and_the_sni_is_read_as_tshark_decrypts_it(tmp_path):
    # RFC 9001 appendix A.1: the client's Initial keys for DCID 0x8394c8f03e515708.
    key, iv, hp = names.quic_initial_keys(bytes.fromhex("8394c8f03e515708"))
    assert (key.hex(), iv.hex(), hp.hex()) == (
        "1f369613dd76d5467730efcbe3b1a22d",
        "fa044b2f42a3fd3b46fb255c",
        "9f50449e04a0e810283a1e9933adedd2",
    )
    hello = bytes(TLSClientHello(ext=[TLS_Ext_ServerName(servernames=[ServerName(servername=b"quic.example.net")])]))
    path = tmp_path / "quic.pcap"
    wrpcap(
        str(path),
        [Ether() / IP(src=WS, dst=REMOTE) / UDP(sport=50002, dport=443) / quic_initial(bytes(range(8)), hello)],
    )
    tshark = require_binary("tshark")
    out = subprocess.run(
        [tshark, "-r", str(path), "-Y", "quic", "-T", "fields", "-e", "tls.handshake.extensions_server_name"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["quic.example.net"]
    (flow,) = offline_capture(path, default_policy()).flows
    assert (flow.protocol, flow.sni, flow.names, flow.direction_evidence) == (
        "quic",
        out,
        out,
        "quic-initial",
    )
    assert names.quic_sni(quic_initial(bytes(range(8)), hello)[:-1] + b"\x00") is None  # tag broken


_SHB = (
    b"\x0a\x0d\x0d\x0a"
    + struct.pack("<I", 28)
    + b"\x4d\x3c\x2b\x1a"
    + struct.pack("<HHq", 1, 0, -1)
    + struct.pack("<I", 28)
)
_IDB = struct.pack("<II", 1, 20) + struct.pack("<HHI", 1, 0, 65535) + struct.pack("<I", 20)


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from([1, 2, 3, 6, 0x0A0D0D0A, 5, 99]), st.integers(0, 64), st.binary(max_size=48)),
        max_size=6,
    )
)
def test_pcapng_blocks_of_any_type_and_length_never_raise(blocks):
    """Blocks whose stated lengths lie (shorter than their own fields, past the file's end)."""
    body = b"".join(struct.pack("<II", t, n) + data for t, n, data in blocks)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.pcapng"
        path.write_bytes(_SHB + _IDB + body)
        r = read_file(path, Processor(0))
        assert r.records >= 0 and r.interfaces >= 1
        pcapng_needs_python(path, 96)
