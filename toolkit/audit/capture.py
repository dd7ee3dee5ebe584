"""Packets in: live from libpcap on every interface, or offline from a pcap/pcapng file.

Both go through libpcap (scapy's ctypes binding, the library tcpdump uses): the policy's BPF filter
runs in the kernel (live) or inside libpcap (offline), so allowed traffic never reaches Python.
What passes is parsed from its headers with ``struct``; only packets that can name a flow (DNS,
TLS ClientHello, QUIC Initial, HTTP request line) are dissected further (names.py).

Fail closed. A live capture is INCONCLUSIVE when:
* it cannot start: libpcap missing, no privilege (CAP_NET_RAW), bad interface;
* the kernel dropped packets (pcap_stats ps_drop / ps_ifdrop);
* it did not see its own probes: at start and at the end the audit sends a UDP datagram with a
  random nonce to a port it bound on 127.0.0.1; the filter lets exactly that through. Seeing both
  proves that the socket, the filter and the reader were live for the whole window;
* an interface sent packets the capture never saw: /sys/class/net/*/statistics counts every
  packet the kernel transmitted, independent of the filter. Under a loopback-only policy every
  packet sent on a non-loopback interface is a candidate, so tx > 0 with zero captured on that
  interface means the capture was blind there.
Offline, a file that holds no packet at all is INCONCLUSIVE.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import secrets
import select
import socket
import struct
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from threading import Event
from typing import Any

from toolkit.audit import AuditUsageError
from toolkit.audit.attribution import Attributor
from toolkit.audit.flows import Flow, FlowTable, finalize
from toolkit.audit.names import (
    DNS_PORTS,
    NameBook,
    dissect_dns,
    http_host,
    is_http_request,
    is_quic_initial,
    is_tls_client_hello,
    tls_sni,
)
from toolkit.audit.policy import Policy, compile_filter

DLT_NULL, DLT_EN10MB, DLT_RAW, DLT_LOOP, DLT_LINUX_SLL, DLT_LINUX_SLL2 = 0, 1, 101, 108, 113, 276
DLT_IPV4, DLT_IPV6 = 228, 229
PACKET_OUTGOING = 4
PCAP_ERROR_PERM_DENIED, PCAP_ERROR_NO_SUCH_DEVICE = -8, -5
_inet4 = socket.AF_INET
_inet6 = socket.AF_INET6
_ntop = socket.inet_ntop


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


class Processor:
    """Per-packet work shared by live and offline capture: headers, flows, names, link-local."""

    def __init__(self, dlt: int, probe: tuple[int, bytes] | None = None) -> None:
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
        self.dns_cache: dict[bytes, tuple] = {}
        self.addr_cache: dict[bytes, str] = {}
        self.on_new_flow: Callable[[Any, str, tuple, tuple], None] | None = None

    # The hot path: keep it flat, no per-packet allocation beyond what the flow needs.
    def handle(self, ts: float, wirelen: int, data: bytes) -> None:
        self.packets += 1
        dlt = self.dlt
        ifindex = -1
        if dlt == DLT_LINUX_SLL2:
            etype, ifindex = struct.unpack_from("!HxxI", data, 0)
            if data[10] == PACKET_OUTGOING:
                self.out_by_ifindex[ifindex] += 1
            off = 20
        elif dlt == DLT_EN10MB:
            etype = (data[12] << 8) | data[13]
            off = 14
            while etype in (0x8100, 0x88A8) and len(data) >= off + 4:
                etype = (data[off + 2] << 8) | data[off + 3]
                off += 4
        elif dlt == DLT_LINUX_SLL:
            etype = (data[14] << 8) | data[15]
            off = 16
        elif dlt in (DLT_RAW, 12, 14, DLT_IPV4, DLT_IPV6):
            etype = 0x0800 if data[0] >> 4 == 4 else 0x86DD
            off = 0
        elif dlt in (DLT_NULL, DLT_LOOP):
            fam = struct.unpack_from("<I" if dlt == DLT_NULL else "!I", data, 0)[0]
            if fam > 0xFFFF:  # written on a host of the other byte order
                fam = struct.unpack_from(">I" if dlt == DLT_NULL else "<I", data, 0)[0]
            etype = 0x0800 if fam == 2 else 0x86DD
            off = 4
        else:
            self.undecoded += 1
            return
        if etype == 0x0800:
            vihl = data[off]
            ihl = (vihl & 0x0F) * 4
            total = (data[off + 2] << 8) | data[off + 3]
            frag = ((data[off + 6] << 8) | data[off + 7]) & 0x1FFF
            proto = data[off + 9]
            ac = self.addr_cache
            raw = data[off + 12 : off + 16]
            src = ac.get(raw) or self._addr(_inet4, raw)
            raw = data[off + 16 : off + 20]
            dst = ac.get(raw) or self._addr(_inet4, raw)
            l4 = off + ihl
            end = off + total if total else len(data)
            if frag:
                proto = -proto  # a later fragment: no transport header
        elif etype == 0x86DD:
            plen = (data[off + 4] << 8) | data[off + 5]
            proto = data[off + 6]
            ac = self.addr_cache
            raw = data[off + 8 : off + 24]
            src = ac.get(raw) or self._addr(_inet6, raw)
            raw = data[off + 24 : off + 40]
            dst = ac.get(raw) or self._addr(_inet6, raw)
            l4 = off + 40
            end = l4 + plen if plen else len(data)
            while proto in (0, 43, 60, 51, 44) and l4 + 8 <= len(data):
                if proto == 44:
                    if ((data[l4 + 2] << 8) | data[l4 + 3]) & 0xFFF8:
                        proto = -data[l4]
                        break
                    proto, l4 = data[l4], l4 + 8
                elif proto == 51:
                    proto, l4 = data[l4], l4 + (data[l4 + 1] + 2) * 4
                else:
                    proto, l4 = data[l4], l4 + (data[l4 + 1] + 1) * 8
        else:
            if etype == 0x0806 and len(data) >= off + 28 and data[off + 4] == 6 and data[off + 5] == 4:
                self._link("arp", _ntop(_inet4, data[off + 14 : off + 18]), _ntop(_inet4, data[off + 24 : off + 28]))
            else:
                self._link("arp" if etype == 0x0806 else f"ethertype-0x{etype:04x}", "-", "-")
            return
        sport = dport = 0
        flags = -1
        payload = b""
        if proto == 6 and l4 + 14 <= len(data):
            sport, dport = struct.unpack_from("!HH", data, l4)
            flags = data[l4 + 13]
            payload = data[l4 + (data[l4 + 12] >> 4) * 4 : end]
        elif proto == 17 and l4 + 8 <= len(data):
            sport, dport = struct.unpack_from("!HH", data, l4)
            probe = self.probe
            if probe is not None and dport == probe[0] and dst == "127.0.0.1" and data[l4 + 8 : end] == probe[1]:
                self.probes_seen += 1
                return
            payload = data[l4 + 8 : end]
            if sport in (67, 68, 546, 547) and dport in (67, 68, 546, 547):
                self._link("dhcp" if etype == 0x0800 else "dhcpv6", src, dst)
                return
        elif proto == 2:
            self._link("igmp", src, dst)
            return
        elif proto == 58 and l4 < len(data):
            itype = data[l4]
            if 133 <= itype <= 137:
                self._link("ndp", src, dst)
                return
            if itype in (130, 131, 132, 143):
                self._link("mld", src, dst)
                return
            flags = itype
        elif proto == 1 and l4 < len(data):
            flags = data[l4]
        if proto < 0:
            proto = -proto
        st, new = self.table.get(proto, (src, sport), (dst, dport), ts)
        st.last = ts
        st.packets += 1
        st.bytes += wirelen
        if ifindex >= 0:
            st.interfaces.add(ifindex)
        if new and self.on_new_flow is not None:
            self.on_new_flow(st, "tcp" if proto == 6 else "udp" if proto == 17 else "other", (src, sport), (dst, dport))
        if proto == 6:
            if flags & 0x12 == 0x02:
                st.opener, st.evidence = (src, sport), "tcp-syn"
            elif flags & 0x12 == 0x12 and st.opener is None:
                st.opener, st.evidence = (dst, dport), "tcp-synack"
            if payload and st.packets <= 12:
                if is_tls_client_hello(payload):
                    name = tls_sni(payload)
                    st.tags.add("tls")
                    if name:
                        st.sni.add(name)
                    if st.opener is None:
                        st.opener, st.evidence = (src, sport), "tls-clienthello"
                elif is_http_request(payload):
                    name = http_host(payload)
                    if name:
                        st.http_hosts.add(name)
                    if st.opener is None:
                        st.opener, st.evidence = (src, sport), "http-request"
        elif proto == 17 and payload:
            if sport in DNS_PORTS or dport in DNS_PORTS:
                # Clients repeat the same queries: dissect each distinct message (id aside) once.
                key = payload[2:]
                hit = self.dns_cache.get(key)
                if hit is None:
                    hit = dissect_dns(payload)
                    if len(self.dns_cache) < 10000:
                        self.dns_cache[key] = hit
                if hit is not None:
                    is_query, names, answers = hit
                    if is_query:
                        self.book.queried.update(names)
                    for addr, chain in answers:
                        self.book.by_address[addr].update(chain)
                    if is_query:
                        st.queried.update(names)
                        if st.opener is None or st.evidence != "dns-query":
                            st.opener, st.evidence = (src, sport), "dns-query"
                    else:
                        st.names.update(names)
                        if st.opener is None:
                            st.opener, st.evidence = (dst, dport), "dns-response"
            elif (dport == 443 or sport == 443) and is_quic_initial(payload):
                st.tags.add("quic")
                if dport == 443 and st.evidence != "quic-initial":
                    st.opener, st.evidence = (src, sport), "quic-initial"
        elif proto in (1, 58) and flags in (8, 128) and st.opener is None:
            st.opener, st.evidence = (src, 0), "icmp-echo-request"

    def _addr(self, family: int, raw: bytes) -> str:
        text = _ntop(family, raw)
        if len(self.addr_cache) < 65536:
            self.addr_cache[bytes(raw)] = text
        return text

    def _link(self, kind: str, src: str, dst: str) -> None:
        self.link[kind] += 1
        key = (kind, src, dst)
        if key in self.link_pairs or len(self.link_pairs) < 500:
            self.link_pairs[key] = self.link_pairs.get(key, 0) + 1

    def link_local(self) -> list[dict[str, Any]]:
        return [
            {"kind": k, "source": s, "destination": d, "packets": n} for (k, s, d), n in sorted(self.link_pairs.items())
        ]


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
            except (IndexError, struct.error, ValueError):
                proc.undecoded += 1  # truncated or malformed: counted, not fatal
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
    allowed set is a finding; the host's own addresses are unknown, so direction is inferred."""
    if not path.is_file():
        raise AuditUsageError(f"--pcap {path}: no such file")
    pcap = load_libpcap()
    expr = compile_filter(policy)
    errbuf = ctypes.create_string_buffer(pcap.PCAP_ERRBUF_SIZE)
    handle = pcap.pcap_open_offline(str(path).encode(), errbuf)
    if not handle:
        raise AuditUsageError(f"--pcap {path}: {errbuf.value.decode(errors='replace')}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="toolkit-audit-") as tmp:
        filtered = Path(tmp) / "candidates.pcap"
        try:
            dlt = pcap.pcap_datalink(handle)
            _compile(pcap, handle, expr)
            rc = _filter_to_file(pcap, handle, filtered)
            if rc == -1:
                raise AuditUsageError(f"--pcap {path}: {pcap.pcap_geterr(handle).decode(errors='replace')}")
        finally:
            pcap.pcap_close(handle)
        proc = Processor(dlt)
        _read_savefile(filtered, proc)
    elapsed = time.perf_counter() - started
    result = CaptureResult("offline", str(path), expr)
    result.stats = {
        "datalink": dlt,
        "candidate_packets": proc.packets,
        "undecoded": proc.undecoded,
        "seconds": round(elapsed, 4),
    }
    if proc.packets == 0 and not _has_any_packet(pcap, path):
        result.problems.append(f"the capture file {path} holds no packet: nothing was seen")
    _fill(result, proc, policy, set())
    return result


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
            except (IndexError, struct.error, ValueError):
                proc.undecoded += 1
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


def _fill(result: CaptureResult, proc: Processor, policy: Policy, local: set[str], live: bool = False) -> None:
    names = {}
    for ifindex in {i for st in proc.table.flows.values() for i in st.interfaces}:
        # Interface names only mean something on the machine that captured: offline, keep the index.
        try:
            names[ifindex] = socket.if_indextoname(ifindex) if live else f"ifindex {ifindex}"
        except OSError:
            names[ifindex] = f"ifindex {ifindex}"
    for st in proc.table.flows.values():
        st.interfaces = {names.get(i, str(i)) for i in st.interfaces}
    result.flows = finalize(proc.table, proc.book, policy.networks, local)
    result.link_local = proc.link_local()
    result.dns_queries = sorted(proc.book.queried)


# ---------------------------------------------------------------------------------------------
# Live


def local_addresses() -> set[str]:
    """This network namespace's own addresses (traffic between them never leaves)."""
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, check=True).stdout
        return {a["local"] for link in json.loads(out) for a in link.get("addr_info", []) if "local" in a}
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError):
        return set()


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
    local = local_addresses()
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    probe_port = receiver.getsockname()[1]
    nonce = b"toolkit-audit-probe-" + secrets.token_hex(16).encode()
    expr = compile_filter(policy, local, probe_port)
    result = CaptureResult("live", interface, expr)
    errbuf = ctypes.create_string_buffer(pcap.PCAP_ERRBUF_SIZE)
    handle = pcap.pcap_create(interface.encode(), errbuf)
    if not handle:
        receiver.close()
        raise CaptureUnavailable(f"cannot open {interface}: {errbuf.value.decode(errors='replace')}")
    attributor = Attributor(user_names=user_names) if attribute else None
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
        _compile(pcap, handle, expr)
        if pcap.pcap_setnonblock(handle, 1, errbuf) != 0:
            raise CaptureUnavailable(f"cannot make the capture non-blocking: {errbuf.value.decode(errors='replace')}")
        fd = pcap.pcap_get_selectable_fd(handle)
        proc = Processor(dlt, (probe_port, nonce))
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
        seen_before_end = proc.probes_seen
        if not probe_until_seen(seen_before_end):
            result.problems.append("the capture did not see its own end probe: it was not live to the end")
        stats = pcap.pcap_stat()
        have_stats = pcap.pcap_stats(handle, ctypes.byref(stats)) == 0
        sender.close()
    finally:
        pcap.pcap_close(handle)
        receiver.close()
        if attributor is not None:
            attributor.stop()
    elapsed = time.monotonic() - started
    drops = {"kernel_dropped": stats.ps_drop, "interface_dropped": stats.ps_ifdrop} if have_stats else {}
    if not have_stats:
        result.problems.append("libpcap gave no capture statistics: drops cannot be ruled out")
    elif stats.ps_drop or stats.ps_ifdrop:
        result.problems.append(
            f"the kernel dropped {stats.ps_drop} packet(s) (interface: {stats.ps_ifdrop}): what was lost is unknown"
        )
    sent = {
        name: c["tx_packets"] - counters_start[name]["tx_packets"]
        for name, c in counters_end.items()
        if name in counters_start
    }
    seen_out = {name: proc.out_by_ifindex.get(c["ifindex"], 0) for name, c in counters_end.items()}
    if dlt == DLT_LINUX_SLL2 and policy.loopback_only:
        blind = blind_interfaces(sent, seen_out)
        if blind:
            result.problems.append(
                "interface(s) sent packets the capture never saw: " + ", ".join(f"{n} sent {sent[n]}" for n in blind)
            )
    result.stats = {
        "datalink": dlt,
        "interface": interface,
        "started": wall_start,
        "seconds": round(elapsed, 3),
        "interrupted": interrupted,
        "candidate_packets": proc.packets - proc.probes_seen,
        "probes_seen": proc.probes_seen,
        "probe_port": probe_port,
        "undecoded": proc.undecoded,
        **drops,
        "interfaces_sent_packets": sent,
        "interfaces_seen_sending": seen_out if dlt == DLT_LINUX_SLL2 else None,
        "local_addresses": sorted(local),
    }
    _fill(result, proc, policy, local, live=True)
    if attributor is not None:
        result.attribution = attributor.stats()
    return result


def blind_interfaces(sent: dict[str, int], seen_out: dict[str, int]) -> list[str]:
    """Interfaces that sent packets (kernel counters) of which the capture saw none (pure).
    Only meaningful under a loopback-only policy, where every such packet is a candidate."""
    # lo is allowed traffic; ifb devices re-inject tc-shaped traffic without passing packet taps.
    return [
        n
        for n, s in sorted(sent.items())
        if n != "lo" and not n.startswith("ifb") and s > 0 and seen_out.get(n, 0) == 0
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
