"""Names that say what a flow was for: DNS queries and answers, TLS SNI, HTTP Host, QUIC.

Only packets that can name a flow get here, so the cost of dissection is paid for a handful of
packets, not for the capture. Every dissector reads bytes from the wire, written by anyone: each
one bounds every read by the buffer it was given, returns what it could read before the bytes
ran out (a capture cut by its snap length still names its flow) and never raises.
"""

from __future__ import annotations

import socket
import struct
from collections import defaultdict
from dataclasses import dataclass, field

HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ")
DNS_PORTS = (53, 5353, 5355)
_MAX_RECORDS = 256  # a DNS message cannot hold more in 64 KiB that would name anything new
_MAX_JUMPS = 64  # compression pointers followed per name: more is a loop


@dataclass
class NameBook:
    """Addresses mapped back to the DNS names that resolved to them (CNAME chains included)."""

    by_address: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    queried: set[str] = field(default_factory=set)

    def names_for(self, addr: str) -> set[str]:
        return set(self.by_address.get(addr, ()))


def is_tls_client_hello(payload: bytes) -> bool:
    return len(payload) > 5 and payload[0] == 0x16 and payload[1] == 0x03 and payload[5] == 0x01


def tls_record_length(payload: bytes) -> int | None:
    """Bytes the first TLS record needs in all (header included), or None if not a handshake."""
    if len(payload) < 5 or payload[0] != 0x16 or payload[1] != 0x03:
        return None
    return 5 + ((payload[3] << 8) | payload[4])


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
    """The server_name of a TLS ClientHello (record header first), or None; a record cut before
    the name gives None, one cut after it still gives the name."""
    n = len(payload)
    try:
        p = 5 + 4 + 2 + 32  # record header, handshake header, legacy_version, random
        if p >= n:
            return None
        p += 1 + payload[p]  # session id
        if p + 2 > n:
            return None
        p += 2 + ((payload[p] << 8) | payload[p + 1])  # cipher suites
        if p >= n:
            return None
        p += 1 + payload[p]  # compression methods
        if p + 2 > n:
            return None
        ext_total = (payload[p] << 8) | payload[p + 1]
        p += 2
        end = min(n, p + ext_total)
        while p + 4 <= end:
            etype, elen = struct.unpack_from("!HH", payload, p)
            p += 4
            if etype == 0:  # server_name: list length, type (0 = host_name), name length, name
                if p + 5 > n or payload[p + 2] != 0:
                    return None
                name_len = (payload[p + 3] << 8) | payload[p + 4]
                raw = payload[p + 5 : p + 5 + name_len]
                return raw.decode("ascii", "replace").lower() if len(raw) == name_len and raw else None
            p += elen
    except (IndexError, struct.error):  # bounded above; kept as the last word on hostile bytes
        return None
    return None


def http_host(payload: bytes) -> str | None:
    head = payload.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"host":
            host = value.strip().decode("ascii", "replace").lower()
            if host.startswith("["):
                return host[1:].split("]", 1)[0] or None
            host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
            return host or None
    return None


def dns_names(payload: bytes, book: NameBook) -> tuple[bool, list[str]]:
    """Dissect one DNS message: (is_query, names it carries); answers go into ``book``."""
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
    nothing in it reads as DNS (pure). A message cut short gives what came before the cut."""
    try:
        return _dissect_dns(bytes(payload))
    except (IndexError, struct.error, ValueError, OSError):  # never expected: reads are bounded
        return None


def _dissect_dns(msg: bytes) -> tuple[bool, list[str], list[tuple[str, list[str]]]] | None:
    if len(msg) < 12:  # shorter than a DNS header: whatever it is, it names nothing
        return None
    flags, qdcount, ancount = struct.unpack_from("!HHH", msg, 2)
    is_query = not flags & 0x8000
    p = 12
    names: list[str] = []
    for _ in range(min(qdcount, _MAX_RECORDS)):
        name, p = _name(msg, p)
        if name is None or p + 4 > len(msg):
            if name:
                names.append(name)
            p = -1
            break
        if name:
            names.append(name)
        p += 4
    if is_query:
        return (True, names, []) if names else None
    answers: list[tuple[str, list[str]]] = []
    alias_of: dict[str, set[str]] = defaultdict(set)
    for _ in range(min(ancount, _MAX_RECORDS) if p >= 0 else 0):
        rrname, p = _name(msg, p)
        if rrname is None or p + 10 > len(msg):
            break
        rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", msg, p)
        p += 10
        rdata = msg[p : p + rdlen]
        if len(rdata) < rdlen:
            break
        if rtype == 5:  # CNAME: every name in the chain is a name for the final addresses
            target, _ = _name(msg, p)
            if target:
                alias_of[target].add(rrname)
                alias_of[target].update(alias_of.get(rrname, set()))
        elif (rtype, rdlen) in ((1, 4), (28, 16)):
            chain = {rrname} | alias_of.get(rrname, set())
            for alias in list(chain):
                chain |= alias_of.get(alias, set())
            chain.discard("")
            addr = socket.inet_ntop(socket.AF_INET if rtype == 1 else socket.AF_INET6, rdata)
            answers.append((addr, sorted(chain)))
            names.extend(chain)
        p += rdlen
    if not names and not answers:
        return None
    return False, sorted(set(names)), answers


def _name(msg: bytes, p: int) -> tuple[str | None, int]:
    """A (possibly compressed) name at ``p`` and the offset after it; None when it is cut or
    malformed (a label type other than 0 and pointer, a pointer loop, a name over 255 bytes)."""
    labels: list[bytes] = []
    end = -1
    jumps = 0
    total = 0
    n = len(msg)
    while True:
        if p >= n:
            return None, n
        ln = msg[p]
        if ln == 0:
            p += 1
            break
        if ln & 0xC0 == 0xC0:
            if p + 1 >= n or jumps >= _MAX_JUMPS:
                return None, n
            if end < 0:
                end = p + 2
            p = ((ln & 0x3F) << 8) | msg[p + 1]
            jumps += 1
            continue
        if ln & 0xC0:
            return None, n
        label = msg[p + 1 : p + 1 + ln]
        if len(label) < ln:
            return None, n
        total += ln + 1
        if total > 255:
            return None, n
        labels.append(label)
        p += 1 + ln
    text = b".".join(labels).decode("ascii", "replace").lower()
    return text, end if end >= 0 else p


_QUIC_V1_SALT = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")


def _varint(buf: bytes, p: int) -> tuple[int, int]:
    """A QUIC variable-length integer at ``p``: (value, offset after); IndexError when cut."""
    first = buf[p]
    size = 1 << (first >> 6)
    if p + size > len(buf):
        raise IndexError("varint cut")
    value = first & 0x3F
    for b in buf[p + 1 : p + size]:
        value = (value << 8) | b
    return value, p + size


def _hkdf_label(secret: bytes, label: bytes, length: int) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def quic_initial_keys(dcid: bytes) -> tuple[bytes, bytes, bytes]:
    """The client's Initial (key, iv, header-protection key) for a Destination Connection ID,
    as RFC 9001 section 5.2 derives them for QUIC v1."""
    from cryptography.hazmat.primitives import hashes, hmac

    h = hmac.HMAC(_QUIC_V1_SALT, hashes.SHA256())
    h.update(dcid)
    client = _hkdf_label(h.finalize(), b"client in", 32)
    return (
        _hkdf_label(client, b"quic key", 16),
        _hkdf_label(client, b"quic iv", 12),
        _hkdf_label(client, b"quic hp", 16),
    )


def quic_sni(payload: bytes) -> str | None:
    """The SNI of the ClientHello in a client's QUIC v1 Initial packet, or None. Initial packets
    are encrypted with keys anyone can derive from the packet's own connection ID (RFC 9001
    5.2): remove the header protection, decrypt, gather the CRYPTO frames from offset 0 and
    read the ClientHello as from TLS."""
    try:
        return _quic_sni(bytes(payload))
    except (IndexError, ValueError, struct.error, ImportError):
        return None
    except Exception as err:  # cryptography's InvalidTag: not an Initial we can open
        if type(err).__name__ == "InvalidTag":
            return None
        raise


def _quic_sni(pkt: bytes) -> str | None:
    if len(pkt) < 7 or pkt[0] & 0xF0 != 0xC0 or pkt[1:5] != b"\x00\x00\x00\x01":
        return None  # not a v1 Initial (long header, type 0)
    p = 5
    dlen = pkt[p]
    dcid = pkt[p + 1 : p + 1 + dlen]
    if len(dcid) != dlen or dlen > 20:
        return None
    p += 1 + dlen
    p += 1 + pkt[p]  # source connection ID
    token_len, p = _varint(pkt, p)
    p += token_len
    length, pn_off = _varint(pkt, p)
    end = pn_off + length
    if end > len(pkt) or length < 20:
        return None
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, iv, hp = quic_initial_keys(dcid)
    sample = pkt[pn_off + 4 : pn_off + 20]
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    first = pkt[0] ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    pn = bytes(b ^ m for b, m in zip(pkt[pn_off : pn_off + pn_len], mask[1 : 1 + pn_len], strict=True))
    header = bytes([first]) + pkt[1:pn_off] + pn
    nonce = (int.from_bytes(iv, "big") ^ int.from_bytes(pn, "big")).to_bytes(12, "big")
    plain = AESGCM(key).decrypt(nonce, pkt[pn_off + pn_len : end], header)
    crypto: dict[int, bytes] = {}
    q = 0
    while q < len(plain):
        ftype = plain[q]
        if ftype in (0x00, 0x01):  # PADDING, PING
            q += 1
        elif ftype == 0x06:  # CRYPTO: offset, length, data
            off, q = _varint(plain, q + 1)
            ln, q = _varint(plain, q)
            crypto[off] = plain[q : q + ln]
            q += ln
        else:  # ACK or anything else: the CRYPTO frames before it are what we read
            break
    hello = b""
    while len(hello) in crypto:
        hello += crypto.pop(len(hello))
    if not hello or hello[0] != 0x01:
        return None
    return tls_sni(b"\x16\x03\x01" + len(hello).to_bytes(2, "big") + hello)
