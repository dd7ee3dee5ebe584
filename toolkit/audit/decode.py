"""Packets to flows: link layers, IP, tunnels and transports read from their headers.

``Processor.handle`` takes one captured frame of a given link type (the DLT libpcap names, or the
LINKTYPE a pcapng interface block names) and files it into the flow table. It is the hot path:
flat code, ``struct`` only where it pays, and every read bounded by the bytes captured, so no
frame, however cut or forged, raises. What it cannot read is counted, never dropped silently:

* ``short``: the frame ends before its IP and transport headers do (snap length too small);
* ``undecoded``: a link type or encapsulation it cannot look into (``undecoded_kinds`` says which),
  e.g. an encrypted 802.11 frame or an MPLS pseudowire.

Tunnels (GRE, IP-in-IP, IPv6-in-IPv4) give two flows: the outer one, and the inner one with
``tunnel`` naming the outer. A packet whose two ends are allowed is not egress; it is dropped
here too, because the kernel filter cannot see addresses under an encapsulation it does not know.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from toolkit.audit.flows import FlowState, FlowTable
from toolkit.audit.names import (
    DNS_PORTS,
    NameBook,
    dissect_dns,
    http_host,
    is_http_request,
    is_quic_initial,
    is_tls_client_hello,
    quic_sni,
    tls_record_length,
    tls_sni,
)

# DLT values as libpcap's pcap_datalink gives them on Linux, and LINKTYPE values from files.
DLT_NULL, DLT_EN10MB, DLT_PPP, DLT_RAW = 0, 1, 9, 12
DLT_PPP_SERIAL, DLT_PPP_ETHER, LINKTYPE_RAW, DLT_C_HDLC = 50, 51, 101, 104
DLT_IEEE802_11, DLT_LOOP, DLT_LINUX_SLL, DLT_IEEE802_11_RADIO = 105, 108, 113, 127
DLT_PPP_WITH_DIR, DLT_MPLS, DLT_IPV4, DLT_IPV6, DLT_LINUX_SLL2 = 204, 219, 228, 229, 276
RAW_TYPES = (DLT_RAW, 14, LINKTYPE_RAW, DLT_IPV4, DLT_IPV6)
PPP_TYPES = (DLT_PPP, DLT_PPP_SERIAL, DLT_C_HDLC, DLT_PPP_WITH_DIR, DLT_PPP_ETHER)
SUPPORTED_LINK_TYPES = frozenset(
    (DLT_NULL, DLT_EN10MB, DLT_LOOP, DLT_LINUX_SLL, DLT_LINUX_SLL2, DLT_IEEE802_11, DLT_IEEE802_11_RADIO, DLT_MPLS)
    + RAW_TYPES
    + PPP_TYPES
)
PACKET_OUTGOING = 4
# AF_INET6 as BSD loopback headers write it: Linux, NetBSD/OpenBSD, FreeBSD, macOS.
_AF_INET6_NULL = (10, 24, 28, 30)
# PPP protocol field -> ethertype of what it carries.
_PPP_NET = {0x0021: 0x0800, 0x0057: 0x86DD, 0x0281: 0x8847, 0x0283: 0x8848}
_TUNNEL_NAMES = {4: "ipip", 41: "ip6-in-ip", 47: "gre"}
_OPENING_EVIDENCE = frozenset(
    ("tcp-syn", "dns-query", "tls-clienthello", "http-request", "quic-initial", "icmp-echo-request")
)
_MAX_DEPTH = 4  # tunnels inside tunnels: deeper than this is counted as undecoded
_STREAM_LIMIT = {"tls": 16384, "http": 8192, "dns": 70000}
_inet4 = socket.AF_INET
_inet6 = socket.AF_INET6
_ntop = socket.inet_ntop
_u16 = struct.Struct("!H").unpack_from
_ports_seq = struct.Struct("!HHI").unpack_from


class Processor:
    """Per-packet work shared by live and offline capture: headers, flows, names, link-local."""

    def __init__(
        self,
        dlt: int,
        probe: tuple[int, bytes] | None = None,
        allowed: Iterable[Any] = (),
        local: Iterable[str] = (),
    ) -> None:
        self.dlt = dlt
        self.table = FlowTable()
        self.book = NameBook()
        self.link = Counter()
        self.link_pairs: dict[tuple[str, str, str], int] = {}
        self.packets = 0
        self.probe = probe
        self.probes_seen = 0
        self.out_by_ifindex: Counter = Counter()
        self.undecoded = 0
        self.undecoded_kinds: Counter = Counter()
        self.short = 0
        self.allowed_packets = 0
        self.dns_cache: dict[bytes, tuple | None] = {}
        self.addr_cache: dict[bytes, str] = {}
        self.allowed_nets = tuple(allowed)
        self.local = set(local)
        self.allow_cache: dict[str, bool] = {}
        self.frag_flows: dict[tuple, FlowState] = {}
        self.frag_pending: dict[tuple, list] = {}
        # Single-interface Ethernet capture: frames from these MACs count as that interface's sends.
        self.own_macs: set[bytes] | None = None
        self.own_ifindex = -1
        self.on_new_flow: Callable[[Any, str, tuple, tuple], None] | None = None
        self._last_filed: FlowState | None = None  # the flow the last IP packet went to (tunnels)

    # ---- link layers -------------------------------------------------------------------------
    def handle(self, ts: float, wirelen: int, data: bytes) -> None:
        self.packets += 1
        dlt = self.dlt
        n = len(data)
        ifindex = -1
        if dlt == DLT_EN10MB:
            if n < 14:
                self.short += 1
                return
            etype = (data[12] << 8) | data[13]
            off = 14
            if self.own_macs is not None and data[6:12] in self.own_macs:
                self.out_by_ifindex[self.own_ifindex] += 1
        elif dlt == DLT_LINUX_SLL2:
            if n < 20:
                self.short += 1
                return
            etype, ifindex = struct.unpack_from("!HxxI", data, 0)
            if data[10] == PACKET_OUTGOING:
                self.out_by_ifindex[ifindex] += 1
            off = 20
        elif dlt == DLT_LINUX_SLL:
            if n < 16:
                self.short += 1
                return
            etype = (data[14] << 8) | data[15]
            off = 16
        elif dlt in RAW_TYPES:
            if n < 1:
                self.short += 1
                return
            etype = {4: 0x0800, 6: 0x86DD}.get(data[0] >> 4, -1)
            off = 0
        elif dlt in (DLT_NULL, DLT_LOOP):
            if n < 4:
                self.short += 1
                return
            fam = struct.unpack_from("<I" if dlt == DLT_NULL else "!I", data, 0)[0]
            if fam > 0xFFFF:  # written on a host of the other byte order
                fam = struct.unpack_from(">I" if dlt == DLT_NULL else "<I", data, 0)[0]
            etype = 0x0800 if fam == 2 else 0x86DD if fam in _AF_INET6_NULL else -1
            off = 4
        elif dlt in PPP_TYPES:
            etype, off = self._ppp_link(data, dlt)
        elif dlt in (DLT_IEEE802_11, DLT_IEEE802_11_RADIO):
            etype, off = self._wifi(data, dlt)
        elif dlt == DLT_MPLS:
            etype, off = 0x8847, 0
        else:
            self._undecoded(f"link type {dlt}")
            return
        if etype == 0x0800:
            self._ip(ts, wirelen, data, off, False, ifindex, 0, None)
        elif etype == 0x86DD:
            self._ip(ts, wirelen, data, off, True, ifindex, 0, None)
        elif etype >= 0:
            self._ether(ts, wirelen, data, etype, off, ifindex, 0, None)
        elif etype == -1:
            self._undecoded(f"link type {dlt} payload")
        # etype -2: already counted (short, link-local or undecoded)

    def _ppp_link(self, data: bytes, dlt: int) -> tuple[int, int]:
        n = len(data)
        off = 0
        if dlt == DLT_PPP_WITH_DIR:
            off = 1
        elif dlt == DLT_PPP_ETHER:
            off = 6  # PPPoE header without the Ethernet one
        if n < off + 4:
            self.short += 1
            return -2, 0
        if dlt == DLT_C_HDLC or (dlt == DLT_PPP_SERIAL and data[off] in (0x0F, 0x8F)):
            etype = (data[off + 2] << 8) | data[off + 3]  # Cisco HDLC: address, control, ethertype
            if etype in (0x0800, 0x86DD, 0x8847, 0x8848):
                return etype, off + 4
            self._link("cisco-hdlc-control", "-", "-")
            return -2, 0
        return self._ppp(data, off)

    def _ppp(self, data: bytes, off: int) -> tuple[int, int]:
        """A PPP header at ``off`` (HDLC address/control optional, protocol field compressible)."""
        n = len(data)
        if data[off : off + 2] == b"\xff\x03":
            off += 2
        if n < off + 1:
            self.short += 1
            return -2, 0
        if data[off] & 1:  # protocol-field compression: one byte
            proto = data[off]
            off += 1
        elif n < off + 2:
            self.short += 1
            return -2, 0
        else:
            proto = (data[off] << 8) | data[off + 1]
            off += 2
        etype = _PPP_NET.get(proto)
        if etype is not None:
            return etype, off
        if proto >= 0x8000:  # LCP, NCPs, authentication: link control, no user data
            self._link("ppp-control", "-", "-")
        else:  # a network protocol not read here (compressed, encrypted, VJ): cannot judge it
            self._undecoded(f"ppp protocol 0x{proto:04x}")
        return -2, 0

    def _wifi(self, data: bytes, dlt: int) -> tuple[int, int]:
        n = len(data)
        off = 0
        if dlt == DLT_IEEE802_11_RADIO:
            if n < 4:
                self.short += 1
                return -2, 0
            off = data[2] | (data[3] << 8)
        if n < off + 2:
            self.short += 1
            return -2, 0
        fc, fl = data[off], data[off + 1]
        ftype = (fc >> 2) & 3
        if ftype != 2:
            self._link(("802.11-management", "802.11-control", "802.11-data", "802.11-extension")[ftype], "-", "-")
            return -2, 0
        sub = fc >> 4
        if sub & 4:  # null data: no payload
            self._link("802.11-null", "-", "-")
            return -2, 0
        hdr = 24 + (6 if fl & 3 == 3 else 0) + (2 if sub & 8 else 0) + (4 if sub & 8 and fl & 0x80 else 0)
        if fl & 0x40:  # protected: the IP inside is encrypted
            self._undecoded("802.11 protected frame")
            return -2, 0
        off += hdr
        if n < off + 8:
            self.short += 1
            return -2, 0
        if data[off : off + 3] != b"\xaa\xaa\x03":
            self._undecoded("802.11 frame without LLC/SNAP")
            return -2, 0
        return (data[off + 6] << 8) | data[off + 7], off + 8

    def _ether(self, ts: float, wirelen: int, data: bytes, etype: int, off: int, ifindex: int, depth: int, tunnel):
        """Ethertype-labelled payload at ``off``: VLAN tags, PPPoE, MPLS, LLC/SNAP, Ethernet in GRE."""
        n = len(data)
        for _ in range(16):
            if etype == 0x0800 or etype == 0x86DD:
                self._ip(ts, wirelen, data, off, etype == 0x86DD, ifindex, depth, tunnel)
                return
            if etype in (0x8100, 0x88A8, 0x9100):
                if n < off + 4:
                    self.short += 1
                    return
                etype = (data[off + 2] << 8) | data[off + 3]
                off += 4
            elif etype == 0x8864:  # PPPoE session: ver/type, code, session, length, PPP protocol
                if n < off + 8:
                    self.short += 1
                    return
                etype, off = self._ppp(data, off + 6)
                if etype < 0:
                    return
            elif etype in (0x8847, 0x8848):  # MPLS: labels down to the bottom of the stack
                while True:
                    if n < off + 4:
                        self.short += 1
                        return
                    bos = data[off + 2] & 1
                    off += 4
                    if bos:
                        break
                if n <= off:
                    self.short += 1
                    return
                etype = {4: 0x0800, 6: 0x86DD}.get(data[off] >> 4, -1)
                if etype < 0:
                    self._undecoded("mpls payload (pseudowire)")
                    return
            elif etype < 0x0600:  # an 802.3 length: LLC follows, SNAP carries an ethertype
                if n >= off + 8 and data[off : off + 3] == b"\xaa\xaa\x03":
                    etype = (data[off + 6] << 8) | data[off + 7]
                    off += 8
                else:
                    self._link("llc", "-", "-")
                    return
            elif etype == 0x6558:  # Ethernet bridged in GRE
                if n < off + 14:
                    self.short += 1
                    return
                etype = (data[off + 12] << 8) | data[off + 13]
                off += 14
            elif etype == 0x880B:  # PPP in (PPTP) GRE
                etype, off = self._ppp(data, off)
                if etype < 0:
                    return
            elif etype == 0x0806:
                if n >= off + 28 and data[off + 4] == 6 and data[off + 5] == 4:
                    self._link(
                        "arp", _ntop(_inet4, data[off + 14 : off + 18]), _ntop(_inet4, data[off + 24 : off + 28])
                    )
                else:
                    self._link("arp", "-", "-")
                return
            else:
                self._link("pppoe-discovery" if etype == 0x8863 else f"ethertype-0x{etype:04x}", "-", "-")
                return
        self._undecoded("too many nested headers")

    # ---- IP and transports -------------------------------------------------------------------
    def _ip(self, ts: float, wirelen: int, data: bytes, off: int, v6: bool, ifindex: int, depth: int, tunnel):
        n = len(data)
        ac = self.addr_cache
        frag_id = None
        later = False  # a fragment after the first: no transport header
        if not v6:
            if n < off + 20:
                self.short += 1
                return
            vihl = data[off]
            ihl = (vihl & 0x0F) * 4
            if vihl >> 4 != 4 or ihl < 20:
                self._undecoded("not an IPv4 header")
                return
            total = (data[off + 2] << 8) | data[off + 3]
            fragw = (data[off + 6] << 8) | data[off + 7]
            proto = data[off + 9]
            raw = data[off + 12 : off + 16]
            src = ac.get(raw) or self._addr(_inet4, raw)
            raw = data[off + 16 : off + 20]
            dst = ac.get(raw) or self._addr(_inet4, raw)
            l4 = off + ihl
            end = off + total if total else n
            if fragw & 0x3FFF:  # more-fragments set or an offset: part of a fragmented datagram
                frag_id = (src, dst, proto, (data[off + 4] << 8) | data[off + 5])
                later = bool(fragw & 0x1FFF)
        else:
            if n < off + 40:
                self.short += 1
                return
            if data[off] >> 4 != 6:
                self._undecoded("not an IPv6 header")
                return
            plen = (data[off + 4] << 8) | data[off + 5]
            proto = data[off + 6]
            raw = data[off + 8 : off + 24]
            src = ac.get(raw) or self._addr(_inet6, raw)
            raw = data[off + 24 : off + 40]
            dst = ac.get(raw) or self._addr(_inet6, raw)
            l4 = off + 40
            end = l4 + plen if plen else n
            while proto in (0, 43, 60, 51, 44):
                if l4 + 8 > n:
                    proto = -1  # extension headers cut: the transport is unknown
                    break
                if proto == 44:
                    fo = ((data[l4 + 2] << 8) | data[l4 + 3]) & 0xFFF8
                    frag_id = (src, dst, data[l4], bytes(data[l4 + 4 : l4 + 8]))
                    proto = data[l4]
                    l4 += 8
                    if fo:
                        later = True
                        break
                elif proto == 51:
                    proto, l4 = data[l4], l4 + (data[l4 + 1] + 2) * 4
                else:
                    proto, l4 = data[l4], l4 + (data[l4 + 1] + 1) * 8
        ag = self.allow_cache.get
        sa = ag(src)
        if sa is None:
            sa = self._allowed(src)
        da = ag(dst)
        if da is None:
            da = self._allowed(dst)
        both_allowed = sa and da
        if both_allowed:
            probe = self.probe
            if (
                probe is not None
                and proto == 17
                and dst == "127.0.0.1"
                and l4 + 8 <= n
                and _u16(data, l4 + 2)[0] == probe[0]
                and data[l4 + 8 : end] == probe[1]
            ):
                self.probes_seen += 1
                return
            if proto not in _TUNNEL_NAMES or later:
                self.allowed_packets += 1
                return
        if later:
            st = self.frag_flows.get(frag_id)
            if st is not None:
                st.packets += 1
                st.bytes += wirelen
                st.last = ts
            elif len(self.frag_pending) < 65536:
                pend = self.frag_pending.setdefault(frag_id, [ts, ts, 0, 0, ifindex, tunnel])
                pend[1] = ts
                pend[2] += 1
                pend[3] += wirelen
            return
        if proto < 0:
            self.short += 1
            proto = 0
        sport = dport = seq = 0
        flags = -1
        payload = b""
        seglen = 0
        if proto == 6:
            if l4 + 20 <= n:
                sport, dport, seq = _ports_seq(data, l4)
                flags = data[l4 + 13]
                start = l4 + (data[l4 + 12] >> 4) * 4
                payload = data[start:end]
                seglen = end - start
            else:
                self.short += 1
                if l4 + 4 <= n:
                    sport, dport = struct.unpack_from("!HH", data, l4)
        elif proto == 17:
            if l4 + 8 <= n:
                sport, dport = struct.unpack_from("!HH", data, l4)
                payload = data[l4 + 8 : end]
                if sport in (67, 68, 546, 547) and dport in (67, 68, 546, 547):
                    self._link("dhcp" if not v6 else "dhcpv6", src, dst)
                    return
            else:
                self.short += 1
                if l4 + 4 <= n:
                    sport, dport = struct.unpack_from("!HH", data, l4)
        elif proto == 2:
            self._link("igmp", src, dst)
            return
        elif proto == 58 or proto == 1:
            if l4 + 4 <= n:
                flags = data[l4]
                if proto == 58 and 133 <= flags <= 137:
                    self._link("ndp", src, dst)
                    return
                if proto == 58 and flags in (130, 131, 132, 143):
                    self._link("mld", src, dst)
                    return
                is_error = flags in ((3, 4, 5, 11, 12) if proto == 1 else (1, 2, 3, 4))
                if is_error and self._icmp_error(ts, wirelen, data, l4 + 8, ifindex, tunnel):
                    return
            else:
                self.short += 1
        if both_allowed:  # an allowed tunnel: only what it carries can be egress
            self._tunnel(ts, wirelen, data, proto, l4, src, dst, ifindex, depth)
            return
        st, new = self.table.get(proto, (src, sport), (dst, dport), ts)
        self._last_filed = st
        st.last = ts
        st.packets += 1
        st.bytes += wirelen
        if ifindex >= 0:
            st.interfaces.add(ifindex)
        if tunnel is not None and st.tunnel is None:
            st.tunnel = tunnel
        if frag_id is not None and len(self.frag_flows) < 65536:
            self.frag_flows[frag_id] = st
            pend = self.frag_pending.pop(frag_id, None)
            if pend is not None:
                st.first = min(st.first, pend[0])
                st.packets += pend[2]
                st.bytes += pend[3]
        if new and self.on_new_flow is not None:
            self.on_new_flow(st, "tcp" if proto == 6 else "udp" if proto == 17 else "other", (src, sport), (dst, dport))
        if proto == 6:
            if flags & 0x12 == 0x02:
                st.opener, st.evidence = (src, sport), "tcp-syn"
            elif flags & 0x12 == 0x12 and st.opener is None:
                st.opener, st.evidence = (dst, dport), "tcp-synack"
            if seglen > 0 and (st.packets <= 12 or st.streams is not None):
                self._tcp_payload(st, (src, sport), (dst, dport), seq, payload, seglen)
        elif proto == 17 and payload:
            if sport in DNS_PORTS or dport in DNS_PORTS:
                self._dns(st, (src, sport), (dst, dport), payload)
            elif (dport == 443 or sport == 443) and is_quic_initial(payload):
                st.tags.add("quic")
                if dport == 443 and st.evidence != "quic-initial":
                    st.opener, st.evidence = (src, sport), "quic-initial"
                if dport == 443 and st.packets <= 12:
                    name = quic_sni(payload)
                    if name:
                        st.sni.add(name)
        elif proto in (1, 58) and flags in (8, 128) and st.opener is None:
            st.opener, st.evidence = (src, 0), "icmp-echo-request"
        elif proto in _TUNNEL_NAMES:
            self._last_filed = None
            self._tunnel(ts, wirelen, data, proto, l4, src, dst, ifindex, depth)
            inner = self._last_filed
            if st.opener is None and inner is not None and inner.packets == 1 and inner.evidence in _OPENING_EVIDENCE:
                # This packet carried the one that opened the inner flow (each of those opening
                # kinds names its sender), so the outer flow was opened from its source too.
                st.opener, st.evidence = (src, 0), "tunnel-" + inner.evidence

    def _tunnel(self, ts, wirelen, data, proto, l4, src, dst, ifindex, depth) -> None:
        """The packet an IP-in-IP, IPv6-in-IPv4 or GRE header carries, filed as its own flow."""
        if depth >= _MAX_DEPTH:
            self._undecoded("tunnels nested too deep")
            return
        label = f"{_TUNNEL_NAMES[proto]} {src} > {dst}"
        if proto == 4:
            self._ip(ts, wirelen, data, l4, False, ifindex, depth + 1, label)
            return
        if proto == 41:
            self._ip(ts, wirelen, data, l4, True, ifindex, depth + 1, label)
            return
        n = len(data)
        if l4 + 4 > n:
            self.short += 1
            return
        f1, f2 = data[l4], data[l4 + 1]
        etype = (data[l4 + 2] << 8) | data[l4 + 3]
        off = l4 + 4 + (4 if f1 & 0x80 else 0) + (4 if f1 & 0x20 else 0) + (4 if f1 & 0x10 else 0)
        if f2 & 0x07 == 1 and f2 & 0x80:  # enhanced GRE (PPTP): acknowledgment number
            off += 4
        self._ether(ts, wirelen, data, etype, off, ifindex, depth + 1, label)

    def _icmp_error(self, ts, wirelen, data, q: int, ifindex: int, tunnel) -> bool:
        """Tie an ICMP error to the flow of the packet it quotes; False when it quotes nothing usable."""
        n = len(data)
        if q + 20 <= n and data[q] >> 4 == 4:
            qihl = (data[q] & 0x0F) * 4
            qproto = data[q + 9]
            qsrc, qdst = _ntop(_inet4, data[q + 12 : q + 16]), _ntop(_inet4, data[q + 16 : q + 20])
            p = q + qihl
        elif q + 40 <= n and data[q] >> 4 == 6:
            qproto = data[q + 6]
            qsrc, qdst = _ntop(_inet6, data[q + 8 : q + 24]), _ntop(_inet6, data[q + 24 : q + 40])
            p = q + 40
        else:
            return False
        if qproto not in (6, 17) or p + 4 > n or (self._allowed(qsrc) and self._allowed(qdst)):
            return False
        qsport, qdport = struct.unpack_from("!HH", data, p)
        st, new = self.table.get(qproto, (qsrc, qsport), (qdst, qdport), ts)
        # Counted apart: ``packets`` stays the flow's own; the error came from a router or the peer.
        st.icmp_errors += 1
        st.last = max(st.last, ts)
        if ifindex >= 0:
            st.interfaces.add(ifindex)
        if tunnel is not None and st.tunnel is None:
            st.tunnel = tunnel
        if st.opener is None:  # the quoted packet was sent by its source
            st.opener, st.evidence = (qsrc, qsport), "icmp-error-quote"
        if new and self.on_new_flow is not None:
            self.on_new_flow(st, "tcp" if qproto == 6 else "udp", (qsrc, qsport), (qdst, qdport))
        return True

    # ---- names ---------------------------------------------------------------------------------
    def _dns(self, st: FlowState, src: tuple, dst: tuple, msg: bytes) -> None:
        # Clients repeat the same queries: dissect each distinct message (id aside) once.
        key = bytes(msg[2:])
        hit = self.dns_cache.get(key, False)
        if hit is False:
            hit = dissect_dns(msg)
            if len(self.dns_cache) < 10000:
                self.dns_cache[key] = hit
        if hit is None:
            return
        is_query, names, answers = hit
        for addr, chain in answers:
            self.book.by_address[addr].update(chain)
        if is_query:
            self.book.queried.update(names)
            st.queried.update(names)
            if st.opener is None or st.evidence != "dns-query":
                st.opener, st.evidence = src, "dns-query"
        else:
            st.names.update(names)
            if st.opener is None:
                if src[1] in (5353, 5355) and dst[1] not in (5353, 5355):
                    # mDNS/LLMNR answer a query sent to a group: this unicast flow is the responder's.
                    st.opener, st.evidence = src, "llmnr-response" if src[1] == 5355 else "mdns-response"
                else:
                    st.opener, st.evidence = dst, "dns-response"

    def _tcp_payload(self, st: FlowState, src: tuple, dst: tuple, seq: int, payload: bytes, seglen: int) -> None:
        """Follow a sender's bytes in sequence while a name may still come: DNS messages (length
        prefixed, any number), a TLS ClientHello or an HTTP request head split over segments."""
        streams = st.streams
        if streams is None:
            streams = st.streams = {}
        s = streams.get(src)
        if s is None:
            if src[1] in DNS_PORTS or dst[1] in DNS_PORTS:
                kind = "dns"
            elif st.packets > 12:  # names come early in a flow; only DNS carries them later
                streams[src] = False
                return
            elif tls_record_length(payload) is not None and (len(payload) < 6 or payload[5] == 1):
                kind = "tls"
                if is_tls_client_hello(payload):
                    st.tags.add("tls")
                    if st.opener is None:
                        st.opener, st.evidence = src, "tls-clienthello"
            elif is_http_request(payload):
                kind = "http"
                if st.opener is None:
                    st.opener, st.evidence = src, "http-request"
            else:
                streams[src] = False
                return
            s = streams[src] = [seq, bytearray(), kind]
        elif s is False:
            return
        expected, buf, kind = s
        behind = (expected - seq) & 0xFFFFFFFF
        if behind and behind < 0x80000000:  # a retransmission overlapping what we have
            if behind >= seglen:
                return
            payload = payload[behind:]
            seglen -= behind
        elif seq != expected:  # a segment is missing: what follows cannot be placed
            streams[src] = False
            return
        cut = len(payload) < seglen  # the snap length cut this segment
        buf += payload
        s[0] = (expected + seglen) & 0xFFFFFFFF
        if kind == "dns":
            while len(buf) >= 2:
                mlen = (buf[0] << 8) | buf[1]
                if len(buf) < 2 + mlen:
                    if cut:
                        self._dns(st, src, dst, bytes(buf[2:]))
                    break
                self._dns(st, src, dst, bytes(buf[2 : 2 + mlen]))
                del buf[: 2 + mlen]
            done = cut or len(buf) > _STREAM_LIMIT["dns"]
        elif kind == "tls":
            need = tls_record_length(buf) or 0
            done = cut or len(buf) >= need or len(buf) > _STREAM_LIMIT["tls"]
            if done and is_tls_client_hello(buf):
                name = tls_sni(bytes(buf[:need]))
                if name:
                    st.sni.add(name)
        else:
            done = cut or b"\r\n\r\n" in buf or len(buf) > _STREAM_LIMIT["http"]
            if done:
                name = http_host(bytes(buf))
                if name:
                    st.http_hosts.add(name)
        if done:
            streams[src] = False

    # ---- helpers -------------------------------------------------------------------------------
    def finish(self) -> None:
        """Fragments whose first fragment never came: flows without ports, still egress."""
        for (src, dst, proto, _), (first, last, packets, size, ifindex, tunnel) in self.frag_pending.items():
            st, _ = self.table.get(proto, (src, 0), (dst, 0), first)
            st.first = min(st.first, first)
            st.last = max(st.last, last)
            st.packets += packets
            st.bytes += size
            if ifindex >= 0:
                st.interfaces.add(ifindex)
            if tunnel is not None and st.tunnel is None:
                st.tunnel = tunnel
        self.frag_pending.clear()

    def _allowed(self, addr: str) -> bool:
        hit = addr in self.local
        if not hit:
            ip = ipaddress.ip_address(addr)
            hit = any(ip.version == n.version and ip in n for n in self.allowed_nets)
        if len(self.allow_cache) < 65536:
            self.allow_cache[addr] = hit
        return hit

    def _addr(self, family: int, raw: bytes) -> str:
        text = _ntop(family, raw)
        if len(self.addr_cache) < 65536:
            self.addr_cache[bytes(raw)] = text
        return text

    def _undecoded(self, kind: str) -> None:
        self.undecoded += 1
        self.undecoded_kinds[kind] += 1

    def _link(self, kind: str, src: str, dst: str) -> None:
        self.link[kind] += 1
        key = (kind, src, dst)
        if key in self.link_pairs or len(self.link_pairs) < 500:
            self.link_pairs[key] = self.link_pairs.get(key, 0) + 1

    def link_local(self) -> list[dict[str, Any]]:
        return [
            {"kind": k, "source": s, "destination": d, "packets": n} for (k, s, d), n in sorted(self.link_pairs.items())
        ]
