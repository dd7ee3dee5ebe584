"""Names that say what a flow was for: DNS queries and answers, TLS SNI, HTTP Host, QUIC.

Only packets that can name a flow get here (``wants_dissection`` decides from a few header bytes),
so the cost of dissection is paid for a handful of packets, not for the capture. DNS is dissected
with scapy; the TLS ClientHello is walked by hand because captures often cut it (snap length,
segmentation) and the SNI sits early enough to be read from a truncated record.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from dataclasses import dataclass, field

HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ")
DNS_PORTS = (53, 5353, 5355)


@dataclass
class NameBook:
    """Addresses mapped back to the DNS names that resolved to them (CNAME chains included)."""

    by_address: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    queried: set[str] = field(default_factory=set)

    def names_for(self, addr: str) -> set[str]:
        return set(self.by_address.get(addr, ()))


def is_tls_client_hello(payload: bytes) -> bool:
    return len(payload) > 5 and payload[0] == 0x16 and payload[1] == 0x03 and payload[5] == 0x01


def is_http_request(payload: bytes) -> bool:
    return payload[:8].startswith(HTTP_METHODS)


def is_quic_initial(payload: bytes) -> bool:
    # Long header (0b11......), packet type Initial (bits 4-5 == 0) in QUIC v1; v2 uses type 1.
    if len(payload) < 7 or payload[0] & 0xC0 != 0xC0:
        return False
    version = int.from_bytes(payload[1:5], "big")
    ptype = (payload[0] >> 4) & 0x03
    return (version == 1 and ptype == 0) or (version == 0x6B3343CF and ptype == 1) or version == 0


def tls_sni(payload: bytes) -> str | None:
    """The server_name of a TLS ClientHello, or None; tolerant of a truncated record."""
    try:
        p = 5 + 4 + 2 + 32  # record header, handshake header, legacy_version, random
        sid_len = payload[p]
        p += 1 + sid_len
        (cs_len,) = struct.unpack_from("!H", payload, p)
        p += 2 + cs_len
        p += 1 + payload[p]  # compression methods
        (ext_total,) = struct.unpack_from("!H", payload, p)
        p += 2
        end = min(len(payload), p + ext_total)
        while p + 4 <= end:
            etype, elen = struct.unpack_from("!HH", payload, p)
            p += 4
            if etype == 0:  # server_name: list length, type (0 = host_name), name length, name
                name_len = struct.unpack_from("!H", payload, p + 3)[0]
                raw = payload[p + 5 : p + 5 + name_len]
                return raw.decode("ascii", "replace").lower() if len(raw) == name_len else None
            p += elen
    except (IndexError, struct.error):
        return None
    return None


def http_host(payload: bytes) -> str | None:
    head = payload.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"host":
            host = value.strip().decode("ascii", "replace").lower()
            if host.startswith("["):
                return host[1:].split("]", 1)[0]
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return None


def dns_names(payload: bytes, book: NameBook) -> tuple[bool, list[str]]:
    """Dissect one DNS message with scapy: (is_query, names it carries); answers go into ``book``."""
    parsed = dissect_dns(payload)
    if parsed is None:
        return False, []
    is_query, names, answers = parsed
    if is_query:
        book.queried.update(names)
    for addr, chain in answers:
        book.by_address[addr].update(chain)
    return is_query, names


def dissect_dns(payload: bytes) -> tuple[bool, list[str], list[tuple[str, list[str]]]] | None:
    """(is_query, names, [(address, names that resolve to it)]) of one DNS message, or None when
    the payload is not DNS at all (pure)."""
    if len(payload) < 12:  # shorter than a DNS header: whatever it is, it names nothing
        return None
    from scapy.layers.dns import DNS  # imported here: only flows with DNS pay for it

    try:
        msg = DNS(payload)
    except Exception:  # scapy raises many types on garbage; a broken DNS packet names nothing
        return None
    names: list[str] = []
    for q in _records(getattr(msg, "qd", None)):
        qname = _text(getattr(q, "qname", b""))
        if qname:
            names.append(qname)
    if not msg.qr:
        return True, names, []
    answers: list[tuple[str, list[str]]] = []
    # Follow CNAMEs: every name in the chain is a name for the final addresses.
    alias_of: dict[str, set[str]] = defaultdict(set)
    for rr in _records(getattr(msg, "an", None)):
        rrname = _text(getattr(rr, "rrname", b""))
        if rr.type == 5:  # CNAME
            target = _text(rr.rdata)
            alias_of[target].add(rrname)
            alias_of[target].update(alias_of.get(rrname, set()))
        elif rr.type in (1, 28):  # A, AAAA
            chain = {rrname} | alias_of.get(rrname, set())
            for name in list(chain):
                chain |= alias_of.get(name, set())
            answers.append((str(rr.rdata), sorted(n for n in chain if n)))
            names.extend(sorted(chain))
    return False, sorted(set(names)), answers


def _records(section: object) -> list:
    if section is None:
        return []
    return list(section) if isinstance(section, list) else [section]


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).rstrip(".").lower()
