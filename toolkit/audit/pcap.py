"""Packets in through libpcap (scapy's ctypes binding, the library tcpdump uses): loading it,
compiling and setting the policy's BPF filter, reading packets into the decoder, and the offline
capture of a pcap/pcapng file. The live capture (live.py) reads through the same pieces.

The policy's BPF filter runs in the kernel (live) or inside libpcap (offline), so allowed traffic
never reaches Python. What passes is parsed from its headers (decode.py); only packets that can
name a flow (DNS, TLS ClientHello, QUIC Initial, HTTP request head) are dissected further (names.py).

Fail closed. Offline, a file that holds no packet, a file cut mid-record (what came before the cut
is still judged: a finding there is a FAIL), packets the decoder cannot look into and packets cut
by the snap length before their headers end are INCONCLUSIVE, each with its count.
"""

from __future__ import annotations

import ctypes
import mmap
import select
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.audit import AuditUsageError
from toolkit.audit.decode import SUPPORTED_LINK_TYPES, Processor
from toolkit.audit.flows import Flow, finalize
from toolkit.audit.pcapfile import NotACapture, file_kind, pcapng_needs_python, read_file
from toolkit.audit.policy import Policy, compile_filter

PCAP_ERROR_PERM_DENIED, PCAP_ERROR_NO_SUCH_DEVICE = -8, -5
# Below this snap length libpcap's filter can reject a frame only because a load falls beyond
# the bytes captured (BPF rejects on an out-of-bounds load): such files are read in Python.
# A classic pcap's header snap length is trusted (tcpdump, dumpcap and editcap -F pcap -s write
# it); in a pcapng every record's length is checked, as editcap -s leaves the interface's as it was.
FAST_PATH_MIN_SNAPLEN = 96
# Tunnels always reach Python, whatever their outer ends: the filter cannot see what they carry.
TUNNEL_FILTER = "ip proto 4 or ip proto 41 or ip proto 47 or ip6 proto 4 or ip6 proto 41 or ip6 proto 47"


def candidate_filter(policy: Policy, local: set[str] | None = None, probe_port: int | None = None) -> str:
    """The policy's filter, plus every tunnel packet where the policy allows more than loopback
    (a tunnel between two loopback or own addresses never leaves the host, so the default
    policy keeps the shorter program on the hot path)."""
    expr = compile_filter(policy, local or (), probe_port)
    return expr if policy.loopback_only else f"({expr}) or {TUNNEL_FILTER}"


class CaptureUnavailable(Exception):
    """The capture could not start; the message says why (the run becomes INCONCLUSIVE)."""


@dataclass
class CaptureResult:
    mode: str  # live | offline
    source: str
    bpf_filter: str
    flows: list[Flow] = field(default_factory=list)
    link_local: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    dns_queries: list[str] = field(default_factory=list)
    attribution: dict[str, Any] | None = None


def load_libpcap():
    """scapy's libpcap binding, or CaptureUnavailable when libpcap cannot be loaded."""
    try:
        import scapy.libs.winpcapy as pcap
    except (OSError, ImportError) as err:
        raise CaptureUnavailable(f"libpcap is not available ({err})") from None
    return pcap


def set_filter(pcap, handle, expr: str) -> Any:
    prog = pcap.bpf_program()
    if pcap.pcap_compile(handle, ctypes.byref(prog), expr.encode(), 1, 0xFFFFFFFF) != 0:
        raise CaptureUnavailable(f"BPF filter rejected: {pcap.pcap_geterr(handle).decode(errors='replace')}")
    if pcap.pcap_setfilter(handle, ctypes.byref(prog)) != 0:
        raise CaptureUnavailable(f"cannot set BPF filter: {pcap.pcap_geterr(handle).decode(errors='replace')}")
    return prog


def read_packets(pcap, handle, proc: Processor, until: Callable[[], bool] | None = None, fd: int = -1) -> int:
    """Feed packets to ``proc`` until EOF (offline) or ``until()`` (live: the handle is non-blocking
    and we wait on its selectable fd, so the deadline is kept even when no packet comes)."""
    hdr = ctypes.POINTER(pcap.pcap_pkthdr)()
    data = ctypes.POINTER(ctypes.c_ubyte)()
    next_ex = pcap.pcap_next_ex
    string_at = ctypes.string_at
    handle_pkt = proc.handle
    byref = ctypes.byref
    n = 0
    check_every = 256
    while True:
        rc = next_ex(handle, byref(hdr), byref(data))
        if rc == 1:
            h = hdr.contents
            try:
                handle_pkt(h.ts.tv_sec + h.ts.tv_usec / 1e6, h.len, string_at(data, h.caplen))
            except (IndexError, struct.error, ValueError):  # a decoder bug: counted, never fatal
                proc._undecoded("malformed")
            n += 1
            if until is not None and n % check_every == 0 and until():
                return rc
        elif rc == 0:
            if until is not None and until():
                return rc
            if fd >= 0:
                select.select([fd], [], [], 0.1)
        else:
            return rc


def offline_capture(path: Path, policy: Policy) -> CaptureResult:
    """Audit a capture file (pcap or pcapng, any tool): every packet with an end outside the
    allowed set is a finding; the host's own addresses are unknown, so direction is inferred.

    A single-link-type file takes libpcap's path (BPF in C over the bulk); a pcapng with several
    link types, a file cut mid-record, a short snap length or no libpcap: every record in Python."""
    if not path.is_file():
        raise AuditUsageError(f"--pcap {path}: no such file")
    if file_kind(path) == "unknown":
        raise AuditUsageError(f"--pcap {path}: not a pcap or pcapng file")
    expr = candidate_filter(policy)
    started = time.perf_counter()
    try:
        pcap = load_libpcap()
    except CaptureUnavailable:
        pcap = None
    fast = _offline_fast(pcap, path, policy, expr) if pcap is not None else None
    result = CaptureResult("offline", str(path), expr if fast is not None else "none (every record read in Python)")
    if fast is not None:
        proc, dlt = fast
        stats: dict[str, Any] = {"reader": "libpcap", "datalink": dlt}
        empty = proc.packets == 0 and not _has_any_packet(pcap, path)
    else:
        proc = Processor(-1, allowed=policy.networks)
        try:
            reading = read_file(path, proc)
        except NotACapture as err:
            raise AuditUsageError(f"--pcap {path}: {err}") from None
        stats = {
            "reader": "python",
            "datalink": sorted(reading.link_types)[0] if len(reading.link_types) == 1 else None,
            "link_types": {str(k): v for k, v in sorted(reading.link_types.items())},
            "interfaces": reading.interfaces,
            "records": reading.records,
            "truncated": reading.truncated,
        }
        empty = reading.records == 0 and not reading.truncated
        if reading.truncated:
            result.problems.append(
                f"file truncated after {reading.records} records: what came after the cut is unknown"
            )
    proc.finish()
    stats.update(
        {
            "candidate_packets": proc.packets - proc.allowed_packets,
            "undecoded": proc.undecoded,
            "undecoded_kinds": dict(sorted(proc.undecoded_kinds.items())),
            "short_packets": proc.short,
            "seconds": round(time.perf_counter() - started, 4),
        }
    )
    result.stats = stats
    if empty:
        result.problems.append(f"the capture file {path} holds no packet: nothing was seen")
    decode_problems(result, proc)
    fill_result(result, proc, policy, set())
    return result


def decode_problems(result: CaptureResult, proc: Processor) -> None:
    if proc.undecoded:
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(proc.undecoded_kinds.items()))
        result.problems.append(
            f"{proc.undecoded} candidate packet(s) could not be decoded ({kinds}): what they carried is unknown"
        )
    if proc.short:
        result.problems.append(
            f"{proc.short} packet(s) cut before the end of their IP or transport header (snap length too "
            "short): what they carried is unknown"
        )


def _offline_fast(pcap, path: Path, policy: Policy, expr: str) -> tuple[Processor, int] | None:
    """libpcap reads the file and its BPF filter keeps only candidates; None where that path
    cannot judge every record (libpcap refuses the file, stops mid-way, or the snap length or
    link type would make the filter blind), so the caller reads the file in Python instead."""
    if file_kind(path) == "pcapng" and pcapng_needs_python(path, FAST_PATH_MIN_SNAPLEN):
        return None
    errbuf = ctypes.create_string_buffer(pcap.PCAP_ERRBUF_SIZE)
    handle = pcap.pcap_open_offline(str(path).encode(), errbuf)
    if not handle:
        return None
    with tempfile.TemporaryDirectory(prefix="toolkit-audit-") as tmp:
        filtered = Path(tmp) / "candidates.pcap"
        try:
            dlt = pcap.pcap_datalink(handle)
            snapshot = pcap._lib.pcap_snapshot
            snapshot.argtypes, snapshot.restype = [ctypes.c_void_p], ctypes.c_int
            if (
                dlt not in SUPPORTED_LINK_TYPES
                or snapshot(ctypes.cast(handle, ctypes.c_void_p)) < FAST_PATH_MIN_SNAPLEN
            ):
                return None
            try:
                set_filter(pcap, handle, expr)
            except CaptureUnavailable:
                return None
            if _filter_to_file(pcap, handle, filtered) == -1:
                return None  # a cut record, an interface of another link type: read in Python
        finally:
            pcap.pcap_close(handle)
        proc = Processor(dlt, allowed=policy.networks)
        _read_savefile(filtered, proc)
    return proc, dlt


def _filter_to_file(pcap, handle, out: Path) -> int:
    """Run the whole file through the BPF filter inside libpcap and let libpcap's own pcap_dump
    write what passes: no Python runs per packet while the (mostly allowed) bulk is skipped."""
    dumper = pcap.pcap_dump_open(handle, str(out).encode())
    if not dumper:
        raise CaptureUnavailable(f"cannot write {out}: {pcap.pcap_geterr(handle).decode(errors='replace')}")
    try:
        callback = pcap.pcap_handler(ctypes.cast(pcap._lib.pcap_dump, ctypes.c_void_p).value)
        return pcap.pcap_dispatch(handle, -1, callback, ctypes.cast(dumper, ctypes.POINTER(ctypes.c_ubyte)))
    finally:
        pcap.pcap_dump_close(dumper)


def _read_savefile(path: Path, proc: Processor) -> None:
    """Feed the records of a classic pcap file (as pcap_dump wrote it) to ``proc``, from headers."""
    if path.stat().st_size <= 24:
        return
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        magic = data[:4]
        endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
        scale = 1e-9 if nano else 1e-6
        rec = struct.Struct(endian + "IIII")
        unpack_from = rec.unpack_from
        handle = proc.handle
        off, size = 24, len(data)
        while off + 16 <= size:
            sec, frac, caplen, wirelen = unpack_from(data, off)
            off += 16
            try:
                handle(sec + frac * scale, wirelen, data[off : off + caplen])
            except (IndexError, struct.error, ValueError):  # a decoder bug: counted, never fatal
                proc._undecoded("malformed")
            off += caplen


def _has_any_packet(pcap, path: Path) -> bool:
    errbuf = ctypes.create_string_buffer(pcap.PCAP_ERRBUF_SIZE)
    handle = pcap.pcap_open_offline(str(path).encode(), errbuf)
    if not handle:
        return False
    hdr = ctypes.POINTER(pcap.pcap_pkthdr)()
    data = ctypes.POINTER(ctypes.c_ubyte)()
    try:
        return pcap.pcap_next_ex(handle, ctypes.byref(hdr), ctypes.byref(data)) == 1
    finally:
        pcap.pcap_close(handle)


def fill_result(
    result: CaptureResult,
    proc: Processor,
    policy: Policy,
    local: set[str],
    live: bool = False,
    gone: dict[int, str] | None = None,
) -> None:
    names = {}
    for ifindex in {i for st in proc.table.flows.values() for i in st.interfaces}:
        # Interface names only mean something on the machine that captured: offline, keep the index.
        try:
            names[ifindex] = socket.if_indextoname(ifindex) if live else f"ifindex {ifindex}"
        except OSError:  # deleted during the capture: its name from rtnetlink, if it was read
            names[ifindex] = (gone or {}).get(ifindex) or f"ifindex {ifindex}"
    for st in proc.table.flows.values():
        st.interfaces = {names.get(i, str(i)) for i in st.interfaces}
    result.flows = finalize(proc.table, proc.book, policy.networks, local)
    result.link_local = proc.link_local()
    result.dns_queries = sorted(proc.book.queried)
