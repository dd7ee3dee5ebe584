"""Capture files read in Python, record by record: classic pcap (all four magics) and pcapng with
any number of sections and interfaces, each with its own link type, snap length and time unit.

libpcap's reader is the fast path (its BPF filter skips the allowed bulk in C), but it refuses a
pcapng whose interfaces have different link types, stops with an error at a record cut short (a
file copied while still being written) and its filter silently rejects a frame too short for the
filter's loads. Those files come here: every record is handed to the Processor, a cut record ends
the reading with the count of whole records before it, and nothing before the cut is lost.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.audit.decode import Processor


def _guarded(proc: Processor):
    handle = proc.handle

    def run(ts: float, wirelen: int, data: bytes) -> None:
        try:
            handle(ts, wirelen, data)
        except (IndexError, struct.error, ValueError):  # a decoder bug: counted, never fatal
            proc._undecoded("malformed")

    return run


PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"


class NotACapture(Exception):
    """The file is neither pcap nor pcapng (the message says what it starts with)."""


@dataclass
class FileReading:
    records: int = 0
    truncated: bool = False
    link_types: dict[int, int] = field(default_factory=dict)  # link type -> records
    snaplens: set[int] = field(default_factory=set)
    interfaces: int = 0


def file_kind(path: Path) -> str:
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic in PCAP_MAGICS:
        return "pcap"
    if magic == PCAPNG_SHB:
        return "pcapng"
    return "unknown"


def read_file(path: Path, proc: Processor) -> FileReading:
    """Every record of ``path`` through ``proc`` (its ``dlt`` set per record's interface)."""
    if path.stat().st_size == 0:
        raise NotACapture("the file is empty")
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        magic = data[:4]
        if magic in PCAP_MAGICS:
            return _read_pcap(data, proc)
        if magic == PCAPNG_SHB:
            out = FileReading()
            try:
                _read_pcapng(data, proc, out)
            except (struct.error, IndexError):  # a block shorter than its own fields: a cut
                out.truncated = True
            return out
    raise NotACapture(f"not a pcap or pcapng file (starts with {magic.hex()})")


def _read_pcap(data, proc: Processor) -> FileReading:
    out = FileReading(interfaces=1)
    endian, scale = PCAP_MAGICS[data[:4]]
    size = len(data)
    if size < 24:
        out.truncated = True
        return out
    snaplen, linktype = struct.unpack_from(endian + "II", data, 16)
    linktype &= 0xFFFF  # the upper bits carry an FCS length, not the type
    proc.dlt = linktype
    out.snaplens.add(snaplen)
    rec = struct.Struct(endian + "IIII").unpack_from
    handle = _guarded(proc)
    off = 24
    records = 0
    while off < size:
        if off + 16 > size:
            out.truncated = True
            break
        sec, frac, caplen, wirelen = rec(data, off)
        if off + 16 + caplen > size:
            out.truncated = True
            break
        off += 16
        handle(sec + frac * scale, wirelen, data[off : off + caplen])
        off += caplen
        records += 1
    out.records = records
    if records:
        out.link_types[linktype] = records
    return out


def _read_pcapng(data, proc: Processor, out: FileReading) -> FileReading:
    size = len(data)
    off = 0
    endian = "<"
    ifaces: list[tuple[int, int, float]] = []  # (link type, snap length, seconds per unit)
    handle = _guarded(proc)
    while off < size:
        if off + 12 > size:
            out.truncated = True
            break
        btype = data[off : off + 4]
        if btype == PCAPNG_SHB:
            bom = data[off + 8 : off + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            elif out.records or ifaces or off:
                out.truncated = True  # a corrupt later section: judged as a cut
                break
            else:
                raise NotACapture("pcapng section header with an unknown byte-order magic")
            ifaces = []  # interface ids are per section
        btype_n, blen = struct.unpack_from(endian + "II", data, off)
        if blen < 12 or blen % 4:
            if out.records or ifaces or off:
                out.truncated = True  # a corrupt block: judged as a cut
                break
            raise NotACapture(f"pcapng block of impossible length {blen}")
        if off + blen > size:
            out.truncated = True
            break
        body = off + 8
        if btype_n == 1:  # interface description
            if blen < 20:
                out.truncated = True
                break
            linktype, snaplen = struct.unpack_from(endian + "HxxI", data, body)
            ifaces.append((linktype, snaplen, _tsresol(data, body + 8, off + blen - 4, endian)))
            out.snaplens.add(snaplen)
            out.interfaces += 1
        elif btype_n in (6, 2):  # enhanced / obsolete packet block
            if blen < 32:
                out.truncated = True
                break
            if btype_n == 6:
                iface, tsh, tsl, caplen, wirelen = struct.unpack_from(endian + "IIIII", data, body)
            else:
                iface, _drops, tsh, tsl, caplen, wirelen = struct.unpack_from(endian + "HHIIII", data, body)
            start = body + 20
            if iface >= len(ifaces) or start + caplen > off + blen - 4:
                out.truncated = True  # a record that points nowhere: stop as at a cut
                break
            linktype, _, unit = ifaces[iface]
            proc.dlt = linktype
            handle(((tsh << 32) | tsl) * unit, wirelen, data[start : start + caplen])
            out.records += 1
            out.link_types[linktype] = out.link_types.get(linktype, 0) + 1
        elif btype_n == 3:  # simple packet block: interface 0, no time stamp
            if not ifaces or blen < 16:
                out.truncated = True
                break
            (wirelen,) = struct.unpack_from(endian + "I", data, body)
            linktype, snaplen, _ = ifaces[0]
            caplen = min(wirelen, snaplen or wirelen, blen - 16)
            proc.dlt = linktype
            handle(0.0, wirelen, data[body + 4 : body + 4 + caplen])
            out.records += 1
            out.link_types[linktype] = out.link_types.get(linktype, 0) + 1
        off += blen
    return out


def pcapng_needs_python(path: Path, min_caplen: int) -> bool:
    """True when a pcapng file has what libpcap's path would misjudge: interfaces of several link
    types, a cut or corrupt block, or a record cut below ``min_caplen`` bytes (a tool that cut
    records afterwards, e.g. ``editcap -s``, leaves the interface's snap length as it was, so
    only the records tell). Reads block headers only."""
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        size = len(data)
        off = 0
        endian = "<"
        types: set[int] = set()
        unpack = struct.unpack_from
        while off < size:
            if off + 12 > size:
                return True
            if data[off : off + 4] == PCAPNG_SHB:
                endian = "<" if data[off + 8 : off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            btype, blen = unpack(endian + "II", data, off)
            if blen < 12 or blen % 4 or off + blen > size:
                return True
            if btype == 6 and blen >= 32:
                caplen, wirelen = unpack(endian + "II", data, off + 20)
                if caplen < wirelen and caplen < min_caplen:
                    return True
            elif btype == 1:
                types.add(unpack(endian + "H", data, off + 8)[0])
                if len(types) > 1:
                    return True
            off += blen
    return False


def _tsresol(data, p: int, end: int, endian: str) -> float:
    """if_tsresol of an interface block's options: seconds per time-stamp unit (default 1 µs)."""
    while p + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", data, p)
        if code == 0:
            break
        if code == 9 and length >= 1 and p + 5 <= end:
            v = data[p + 4]
            return 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0**-v
        p += 4 + ((length + 3) & ~3)
    return 1e-6
