"""The flow table: packets counted from their headers, direction inferred, names attached.

A flow is a protocol and two endpoints, whichever way packets go. Direction is who opened it:
the sender of a TCP SYN (without ACK), of a DNS query, of a QUIC Initial or an ICMP echo request;
failing that, the end with the higher (ephemeral) port. The local end is the one inside the
allowed set or among the host's own addresses; offline, with neither end known, it is the address
that takes part in more flows (the capture's vantage point), else the opener.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from toolkit.audit.names import NameBook

PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 2: "igmp", 47: "gre", 50: "esp", 132: "sctp"}

Endpoint = tuple[str, int]


@dataclass
class FlowState:
    proto: int
    a: Endpoint
    b: Endpoint
    first: float
    last: float
    packets: int = 0
    bytes: int = 0
    opener: Endpoint | None = None
    evidence: str = ""
    names: set[str] = field(default_factory=set)
    queried: set[str] = field(default_factory=set)
    sni: set[str] = field(default_factory=set)
    http_hosts: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)
    interfaces: set[str] = field(default_factory=set)
    attribution: dict[str, Any] | None = None
    tunnel: str | None = None  # "gre 192.0.2.1 > 203.0.113.5": the outer flow that carried it
    icmp_errors: int = 0  # ICMP errors that quoted this flow's packets
    streams: dict | None = None  # TCP bytes kept per sender while a name may still come


@dataclass
class Flow:
    """One egress finding, as reports show it."""

    protocol: str
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    direction: str  # outbound | inbound | unknown
    direction_evidence: str
    first_seen: str
    last_seen: str
    packets: int
    bytes: int
    names: list[str]
    dns_queries: list[str]
    sni: list[str]
    http_host: list[str]
    quic: bool
    interfaces: list[str]
    process: dict[str, Any] | None = None
    tunnel: str | None = None
    icmp_errors: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FlowTable:
    def __init__(self) -> None:
        self.flows: dict[tuple, FlowState] = {}

    def get(self, proto: int, src: Endpoint, dst: Endpoint, ts: float) -> tuple[FlowState, bool]:
        key = (proto, src, dst) if src <= dst else (proto, dst, src)
        st = self.flows.get(key)
        if st is None:
            st = self.flows[key] = FlowState(proto, key[1], key[2], ts, ts)
            return st, True
        return st, False


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_local(addr: str, allowed, local_addresses: set[str]) -> bool:
    if addr in local_addresses:
        return True
    ip = ipaddress.ip_address(addr)
    return any(ip.version == n.version and ip in n for n in allowed)


def is_group(addr: str) -> bool:
    """A multicast or broadcast address: the destination of a packet, never a host's own end."""
    # A subnet's directed broadcast cannot be told from a host without the netmask: not guessed.
    return addr == "255.255.255.255" or ipaddress.ip_address(addr).is_multicast


def finalize(table: FlowTable, book: NameBook, allowed=(), local_addresses: set[str] | None = None) -> list[Flow]:
    """Turn flow states into findings: pick the local end, infer direction, attach every name."""
    local_addresses = local_addresses or set()
    # Offline the host's addresses are unknown: the capture's vantage point is the address that
    # takes part in the most flows, so it is taken as local where a flow has no other clue.
    local_cache: dict[str, bool] = {}

    def local(addr: str) -> bool:
        hit = local_cache.get(addr)
        if hit is None:
            hit = local_cache[addr] = _is_local(addr, allowed, local_addresses)
        return hit

    # Both ends allowed: not egress (the packet filter passed it only because it could not read
    # the addresses under an encapsulation, or it was read without the filter).
    flows = [st for st in table.flows.values() if not (local(st.a[0]) and local(st.b[0]))]
    seen_in: Counter = Counter()
    for st in flows:
        seen_in[st.a[0]] += 1
        seen_in[st.b[0]] += 1
    out: list[Flow] = []
    for st in flows:
        a_local = local(st.a[0])
        b_local = local(st.b[0])
        evidence = st.evidence
        a_group, b_group = is_group(st.a[0]), is_group(st.b[0])
        if a_group != b_group:
            # A group address is where a packet goes, never the host's own end.
            local_end, remote = (st.b, st.a) if a_group else (st.a, st.b)
            if st.opener is None:
                st.opener, evidence = local_end, "group-destination"
        elif a_local != b_local:
            local_end, remote = (st.a, st.b) if a_local else (st.b, st.a)
        elif not local_addresses and seen_in[st.a[0]] != seen_in[st.b[0]]:
            local_end, remote = (st.a, st.b) if seen_in[st.a[0]] > seen_in[st.b[0]] else (st.b, st.a)
        elif st.opener is not None:
            local_end = st.opener
            remote = st.b if st.opener == st.a else st.a
            if st.evidence in ("llmnr-response", "mdns-response"):
                # A responder answering a query the host sent to a group: the host is the asker.
                local_end, remote = remote, local_end
        else:
            # Neither end known and no opener seen: the well-known (lower) port is the server's.
            local_end, remote = (st.a, st.b) if st.a[1] >= st.b[1] else (st.b, st.a)
        if st.opener is not None:
            direction = "outbound" if st.opener == local_end else "inbound"
        elif st.proto in (6, 17) and local_end[1] != remote[1] and min(local_end[1], remote[1]) < 1024:
            direction = "outbound" if remote[1] < local_end[1] else "inbound"
            evidence = "port-heuristic"
        else:
            direction, evidence = "unknown", "none"
        names = set(st.names) | st.sni | st.http_hosts | book.names_for(remote[0])
        if remote[1] in (53, 5353, 5355):
            names |= st.queried
        quic = "quic" in st.tags
        proto = "quic" if quic else PROTO_NAMES.get(st.proto, str(st.proto))
        out.append(
            Flow(
                protocol=proto,
                local_address=local_end[0],
                local_port=local_end[1],
                remote_address=remote[0],
                remote_port=remote[1],
                direction=direction,
                direction_evidence=evidence,
                first_seen=_iso(st.first),
                last_seen=_iso(st.last),
                packets=st.packets,
                bytes=st.bytes,
                names=sorted(names),
                dns_queries=sorted(st.queried),
                sni=sorted(st.sni),
                http_host=sorted(st.http_hosts),
                quic=quic,
                interfaces=sorted(st.interfaces),
                process=st.attribution,
                tunnel=st.tunnel,
                icmp_errors=st.icmp_errors,
            )
        )
    out.sort(key=lambda f: (f.first_seen, f.remote_address, f.remote_port))
    return out
