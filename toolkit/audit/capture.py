"""Packets in: live from libpcap on every interface, or offline from a pcap/pcapng file.

Both go through libpcap (scapy's ctypes binding, the library tcpdump uses) where it can: the
policy's BPF filter runs in the kernel (live) or inside libpcap (offline), so allowed traffic never
reaches Python. What passes is parsed from its headers (decode.py); only packets that can name a
flow (DNS, TLS ClientHello, QUIC Initial, HTTP request head) are dissected further (names.py).

Fail closed. A live capture is INCONCLUSIVE when:
* it cannot start: libpcap missing, no privilege (CAP_NET_RAW), bad interface;
* the kernel dropped packets (pcap_stats ps_drop / ps_ifdrop);
* it did not see its own probes: at start and at the end the audit sends a UDP datagram with a
  random nonce to a port it bound on 127.0.0.1; the filter lets exactly that through. Seeing both
  proves that the socket, the filter and the reader were live for the whole window;
* an interface sent more packets than the capture saw it send: /proc/net/dev counts every packet
  the kernel transmitted, independent of any packet tap, so frames that bypass the tap (a packet
  socket with PACKET_QDISC_BYPASS, XDP) show as sent but not seen. Interfaces that appear during
  the capture are watched through rtnetlink: `any` captures them, and one that vanishes leaves
  its last counters in the kernel's RTM_DELLINK message. The tolerance is SENT_SEEN_TOLERANCE.
Offline, a file that holds no packet, a file cut mid-record (what came before the cut is still
judged: a finding there is a FAIL), packets the decoder cannot look into and packets cut by the
snap length before their headers end are INCONCLUSIVE, each with its count.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import secrets
import select
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from threading import Event
from typing import Any

from toolkit.audit import AuditUsageError
from toolkit.audit.attribution import Attributor
from toolkit.audit.decode import DLT_EN10MB, DLT_LINUX_SLL2, SUPPORTED_LINK_TYPES, Processor
from toolkit.audit.flows import Flow, finalize
from toolkit.audit.pcapfile import NotACapture, file_kind, pcapng_needs_python, read_file
from toolkit.audit.policy import Policy, compile_filter

PCAP_ERROR_PERM_DENIED, PCAP_ERROR_NO_SUCH_DEVICE = -8, -5
# Packets an interface may send beyond what the capture saw before the run is INCONCLUSIVE.
# Zero: the tap sits before the driver, so every packet a counter counts has already passed it,
# and packets in flight at either end are seen (the read goes on until the end probe is seen).
SENT_SEEN_TOLERANCE = 0
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


def _compile(pcap, handle, expr: str) -> Any:
    prog = pcap.bpf_program()
    if pcap.pcap_compile(handle, ctypes.byref(prog), expr.encode(), 1, 0xFFFFFFFF) != 0:
        raise CaptureUnavailable(f"BPF filter rejected: {pcap.pcap_geterr(handle).decode(errors='replace')}")
    if pcap.pcap_setfilter(handle, ctypes.byref(prog)) != 0:
        raise CaptureUnavailable(f"cannot set BPF filter: {pcap.pcap_geterr(handle).decode(errors='replace')}")
    return prog


def _read(pcap, handle, proc: Processor, until: Callable[[], bool] | None = None, fd: int = -1) -> int:
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
    _decode_problems(result, proc)
    _fill(result, proc, policy, set())
    return result


def _decode_problems(result: CaptureResult, proc: Processor) -> None:
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
                _compile(pcap, handle, expr)
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


def _fill(
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


# ---------------------------------------------------------------------------------------------
# Live


def local_addresses() -> set[str]:
    """This network namespace's own addresses (traffic between them never leaves)."""
    return _links()[0]


def _links() -> tuple[set[str], dict[int, dict[str, Any]]]:
    """(own addresses, ifindex -> {name, mac, mtu}) of this network namespace."""
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, check=True).stdout
        links = json.loads(out)
        addrs = {a["local"] for link in links for a in link.get("addr_info", []) if "local" in a}
        info = {
            int(link["ifindex"]): {"name": link.get("ifname"), "mac": link.get("address"), "mtu": link.get("mtu")}
            for link in links
            if "ifindex" in link
        }
        return addrs, info
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError, TypeError):
        return set(), {}


def interface_counters(proc_net_dev: Path = Path("/proc/net/dev")) -> dict[str, dict[str, int]]:
    """Every packet each interface sent and received, counted by the kernel (no filter).

    /proc/net/dev, not /sys/class/net: /proc/net follows this process's network namespace, while
    sysfs shows the namespace it was mounted in, so an audit entered into a container's namespace
    (nsenter --net) would compare its capture with the host's interfaces.
    """
    out: dict[str, dict[str, int]] = {}
    try:
        lines = proc_net_dev.read_text().splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) < 10:
            continue
        name = name.strip()
        try:
            ifindex = socket.if_nametoindex(name)
        except OSError:
            continue  # gone since the read
        out[name] = {"tx_packets": int(fields[9]), "rx_packets": int(fields[1]), "ifindex": ifindex}
    return out


class LinkWatch:
    """Interfaces that appear or vanish during the capture, from rtnetlink's link group.

    The kernel's RTM_DELLINK message carries the interface's last counters (IFLA_STATS64), so one
    created and deleted between two reads of /proc/net/dev still shows what it sent."""

    RTMGRP_LINK, RTM_NEWLINK, RTM_DELLINK, IFLA_IFNAME, IFLA_STATS64 = 1, 16, 17, 3, 23

    def __init__(self) -> None:
        self.appeared: dict[int, str] = {}
        self.vanished: dict[int, tuple[str, int]] = {}  # ifindex -> (name, tx_packets at the end)
        self.overflowed = False
        self.error: str | None = None
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.bind((0, self.RTMGRP_LINK))
        except OSError as err:
            self.sock = None
            self.error = f"cannot watch for new interfaces (rtnetlink: {err.strerror or err})"

    def poll(self) -> None:
        while self.sock is not None:
            try:
                buf = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno == errno.ENOBUFS:  # events were lost: what they said is unknown
                    self.overflowed = True
                    continue
                self.error = f"rtnetlink read failed: {err.strerror or err}"
                return
            self._parse(buf)

    def _parse(self, buf: bytes) -> None:
        off = 0
        while off + 32 <= len(buf):
            mlen, mtype = struct.unpack_from("=IH", buf, off)
            if mlen < 16 or off + mlen > len(buf):
                return
            if mtype in (self.RTM_NEWLINK, self.RTM_DELLINK):
                ifindex = struct.unpack_from("=i", buf, off + 20)[0]
                name, tx = f"ifindex {ifindex}", None
                p, end = off + 32, off + mlen
                while p + 4 <= end:
                    alen, atype = struct.unpack_from("=HH", buf, p)
                    if alen < 4:
                        break
                    if atype == self.IFLA_IFNAME:
                        name = buf[p + 4 : p + alen].split(b"\0", 1)[0].decode(errors="replace")
                    elif atype == self.IFLA_STATS64 and alen >= 4 + 16:
                        tx = struct.unpack_from("=Q", buf, p + 4 + 8)[0]
                    p += (alen + 3) & ~3
                if mtype == self.RTM_NEWLINK:
                    self.appeared.setdefault(ifindex, name)
                else:
                    self.vanished[ifindex] = (name, tx or 0)
            off += (mlen + 3) & ~3

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def live_capture(
    policy: Policy,
    duration: float | None,
    interface: str = "any",
    stop: Event | None = None,
    buffer_kib: int = 32768,
    progress: Callable[[float, int], None] | None = None,
    attribute: bool = True,
    probe_wait: float = 3.0,
    on_live: Callable[[], None] | None = None,
    user_names: dict[int, str] | None = None,
) -> CaptureResult:
    """Capture for ``duration`` seconds (None: until Ctrl-C or ``stop``) and audit what passed."""
    pcap = load_libpcap()
    local, links = _links()
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    probe_port = receiver.getsockname()[1]
    nonce = b"toolkit-audit-probe-" + secrets.token_hex(16).encode()
    expr = candidate_filter(policy, local, probe_port)
    result = CaptureResult("live", interface, expr)
    errbuf = ctypes.create_string_buffer(pcap.PCAP_ERRBUF_SIZE)
    handle = pcap.pcap_create(interface.encode(), errbuf)
    if not handle:
        receiver.close()
        raise CaptureUnavailable(f"cannot open {interface}: {errbuf.value.decode(errors='replace')}")
    attributor = Attributor(user_names=user_names) if attribute else None
    watch = LinkWatch()
    try:
        pcap.pcap_set_snaplen(handle, 65535)
        pcap.pcap_set_promisc(handle, 0)
        pcap.pcap_set_timeout(handle, 100)
        # Immediate mode: packets are handed over one by one as they come (TPACKET_V2), so the
        # probes and short flows are seen at once; only candidates wake us, so it costs little.
        pcap._lib.pcap_set_immediate_mode(handle, 1)
        pcap.pcap_set_buffer_size(handle, buffer_kib * 1024)
        rc = pcap.pcap_activate(handle)
        if rc < 0:
            msg = pcap.pcap_geterr(handle).decode(errors="replace")
            if rc == PCAP_ERROR_PERM_DENIED:
                raise CaptureUnavailable(f"no privilege to capture on {interface} (needs root or CAP_NET_RAW): {msg}")
            raise CaptureUnavailable(f"cannot capture on {interface}: {msg}")
        if interface == "any":
            pcap.pcap_set_datalink(handle, DLT_LINUX_SLL2)  # carries the ifindex; SLL if refused
        dlt = pcap.pcap_datalink(handle)
        own_ifindex = next((i for i, x in links.items() if x["name"] == interface), -1)
        counting = dlt == DLT_LINUX_SLL2 or (dlt == DLT_EN10MB and own_ifindex >= 0)
        if counting and not policy.loopback_only:
            # Allowed packets are filtered out, yet they must be counted against the interface
            # counters: let every packet this host sends beyond lo through, to be counted and
            # dropped in Python. (Under loopback-only every such packet is a candidate anyway.)
            mac = links.get(own_ifindex, {}).get("mac")
            extra = "(outbound and not ifindex 1)" if dlt == DLT_LINUX_SLL2 else f"(ether src {mac})"
            expr = result.bpf_filter = f"({expr}) or {extra}"
        _compile(pcap, handle, expr)
        if pcap.pcap_setnonblock(handle, 1, errbuf) != 0:
            raise CaptureUnavailable(f"cannot make the capture non-blocking: {errbuf.value.decode(errors='replace')}")
        fd = pcap.pcap_get_selectable_fd(handle)
        proc = Processor(dlt, (probe_port, nonce), allowed=policy.networks, local=local)
        if dlt == DLT_EN10MB and own_ifindex >= 0 and links[own_ifindex].get("mac"):
            proc.own_macs = {bytes.fromhex(links[own_ifindex]["mac"].replace(":", ""))}
            proc.own_ifindex = own_ifindex
        if attributor is not None:
            attributor.start()
            proc.on_new_flow = _attribution_hook(attributor, local, policy)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

        def probe_until_seen(count_before: int) -> bool:
            deadline = time.monotonic() + probe_wait
            sender.sendto(nonce, ("127.0.0.1", probe_port))
            _read(pcap, handle, proc, lambda: proc.probes_seen > count_before or time.monotonic() > deadline, fd)
            return proc.probes_seen > count_before

        if not probe_until_seen(0):
            result.problems.append(
                f"the capture on {interface} did not see its own start probe "
                f"(UDP to 127.0.0.1:{probe_port}): it is not seeing loopback traffic"
            )
        counters_start = interface_counters()
        if on_live is not None:
            on_live()
        started = time.monotonic()
        wall_start = time.time()
        last_progress = [started]

        def done() -> bool:
            now = time.monotonic()
            watch.poll()
            if progress is not None and now - last_progress[0] >= 1.0:
                last_progress[0] = now
                progress(now - started, proc.packets)
            return (duration is not None and now - started >= duration) or (stop is not None and stop.is_set())

        interrupted = False
        try:
            rc = _read(pcap, handle, proc, done, fd)
            if rc == -1:
                result.problems.append(f"capture error: {pcap.pcap_geterr(handle).decode(errors='replace')}")
        except KeyboardInterrupt:
            interrupted = True
        counters_end = interface_counters()
        watch.poll()
        seen_before_end = proc.probes_seen
        if not probe_until_seen(seen_before_end):
            result.problems.append("the capture did not see its own end probe: it was not live to the end")
        stats = pcap.pcap_stat()
        have_stats = pcap.pcap_stats(handle, ctypes.byref(stats)) == 0
        sender.close()
    finally:
        pcap.pcap_close(handle)
        receiver.close()
        watch.close()
        if attributor is not None:
            attributor.stop()
    proc.finish()
    elapsed = time.monotonic() - started
    drops = {"kernel_dropped": stats.ps_drop, "interface_dropped": stats.ps_ifdrop} if have_stats else {}
    if not have_stats:
        result.problems.append("libpcap gave no capture statistics: drops cannot be ruled out")
    elif stats.ps_drop or stats.ps_ifdrop:
        result.problems.append(
            f"the kernel dropped {stats.ps_drop} packet(s) (interface: {stats.ps_ifdrop}): what was lost is unknown"
        )
    table = sent_vs_seen(counters_start, counters_end, watch, proc.out_by_ifindex if counting else None)
    sent = {row["interface"]: row["sent"] for row in table}
    seen_out = {row["interface"]: row["seen"] for row in table}
    blind = [row for row in table if row["blind"]]
    if blind:
        result.problems.append(
            "interface(s) sent more packets than the capture saw (tolerance "
            f"{SENT_SEEN_TOLERANCE}): "
            + ", ".join(
                f"{r['interface']} sent {r['sent']}, seen {'uncounted' if r['seen'] is None else r['seen']}"
                + (" (appeared during the capture)" if r["appeared"] else "")
                + (" (vanished during the capture)" if r["vanished"] else "")
                for r in blind
            )
        )
    if watch.error or watch.overflowed:
        result.problems.append(watch.error or "interface events were lost (rtnetlink overflow): new interfaces unknown")
    _decode_problems(result, proc)
    result.stats = {
        "datalink": dlt,
        "interface": interface,
        "started": wall_start,
        "seconds": round(elapsed, 3),
        "interrupted": interrupted,
        "candidate_packets": proc.packets - proc.probes_seen - proc.allowed_packets,
        "probes_seen": proc.probes_seen,
        "probe_port": probe_port,
        "undecoded": proc.undecoded,
        "undecoded_kinds": dict(sorted(proc.undecoded_kinds.items())),
        "short_packets": proc.short,
        **drops,
        "interfaces_sent_packets": sent,
        "interfaces_seen_sending": seen_out if counting else None,
        "sent_vs_seen": table,
        "sent_seen_tolerance": SENT_SEEN_TOLERANCE,
        "local_addresses": sorted(local),
    }
    gone = {**watch.appeared, **{i: name for i, (name, _) in watch.vanished.items()}}
    _fill(result, proc, policy, local, live=True, gone=gone)
    if attributor is not None:
        result.attribution = attributor.stats()
    return result


def sent_vs_seen(
    start: dict[str, dict[str, int]],
    end: dict[str, dict[str, int]],
    watch: LinkWatch | None,
    seen_by_ifindex: dict[int, int] | None,
) -> list[dict[str, Any]]:
    """Per interface: packets the kernel counted as sent during the capture and packets the
    capture saw it send (None: this capture cannot tell interfaces apart), and whether that gap
    makes the capture blind there (pure but for the LinkWatch record it reads)."""
    by_index_start = {c["ifindex"]: c["tx_packets"] for c in start.values()}
    rows: dict[int, dict[str, Any]] = {}
    appeared = watch.appeared if watch is not None else {}
    vanished = watch.vanished if watch is not None else {}
    for name, c in end.items():
        i = c["ifindex"]
        new = i not in by_index_start
        rows[i] = {
            "interface": name,
            "ifindex": i,
            "sent": c["tx_packets"] - by_index_start.get(i, 0),
            "appeared": new or i in appeared,
            "vanished": False,
        }
    for i, (name, tx) in vanished.items():
        if i in rows:
            continue
        rows[i] = {
            "interface": name,
            "ifindex": i,
            "sent": max(0, tx - by_index_start.get(i, 0)),
            "appeared": i not in by_index_start,
            "vanished": True,
        }
    for i in by_index_start:
        if i not in rows:  # gone, and its RTM_DELLINK was not read: what it sent is unknown
            name = next(n for n, c in start.items() if c["ifindex"] == i)
            rows[i] = {"interface": name, "ifindex": i, "sent": None, "appeared": False, "vanished": True}
    out = []
    for i, row in sorted(rows.items()):
        seen = None if seen_by_ifindex is None else seen_by_ifindex.get(i, 0)
        row["seen"] = seen
        name = row["interface"]
        exempt = name == "lo" or name.startswith("ifb")
        row["blind"] = not exempt and (
            row["sent"] is None or (row["sent"] > 0 and (seen is None or row["sent"] - seen > SENT_SEEN_TOLERANCE))
        )
        out.append(row)
    return out


def blind_interfaces(sent: dict[str, int], seen_out: dict[str, int], tolerance: int = SENT_SEEN_TOLERANCE) -> list[str]:
    """Interfaces that sent more packets (kernel counters) than the capture saw them send, by more
    than ``tolerance`` (pure). lo carries allowed traffic only; ifb devices re-inject tc-shaped
    traffic without passing packet taps."""
    return [
        n
        for n, s in sorted(sent.items())
        if n != "lo" and not n.startswith("ifb") and s - seen_out.get(n, 0) > tolerance
    ]


def _attribution_hook(attributor: Attributor, local: set[str], policy: Policy):
    def hook(st: Any, proto: str, src: tuple, dst: tuple) -> None:
        if proto not in ("tcp", "udp"):
            return
        if src[0] in local or policy.allows(src[0]):
            attributor.submit(st, proto, src, dst)
        elif dst[0] in local or policy.allows(dst[0]):
            attributor.submit(st, proto, dst, src)

    return hook
