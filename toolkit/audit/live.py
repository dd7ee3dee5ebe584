"""The live capture: libpcap on every interface (pcap.py) for a duration or until stopped, judged
as it goes.

Fail closed. A live capture is INCONCLUSIVE when:
* it cannot start: libpcap missing, no privilege (CAP_NET_RAW), bad interface;
* the kernel dropped packets (pcap_stats ps_drop / ps_ifdrop);
* it did not see its own probes: at start and at the end the audit sends a UDP datagram with a
  random nonce to a port it bound on 127.0.0.1; the filter lets exactly that through. Seeing both
  proves that the socket, the filter and the reader were live for the whole window;
* an interface sent more packets than the capture saw it send (liveness.py).
"""

from __future__ import annotations

import ctypes
import json
import secrets
import socket
import subprocess
import time
from collections.abc import Callable
from threading import Event
from typing import Any

from toolkit.audit.attribution import Attributor
from toolkit.audit.decode import DLT_EN10MB, DLT_LINUX_SLL2, Processor
from toolkit.audit.liveness import SENT_SEEN_TOLERANCE, LinkWatch, interface_counters, sent_vs_seen
from toolkit.audit.pcap import (
    PCAP_ERROR_PERM_DENIED,
    CaptureResult,
    CaptureUnavailable,
    candidate_filter,
    decode_problems,
    fill_result,
    load_libpcap,
    read_packets,
    set_filter,
)
from toolkit.audit.policy import Policy


def local_addresses() -> set[str]:
    """This network namespace's own addresses (traffic between them never leaves)."""
    return namespace_links()[0]


def namespace_links() -> tuple[set[str], dict[int, dict[str, Any]]]:
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
    local, links = namespace_links()
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
        set_filter(pcap, handle, expr)
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
            read_packets(pcap, handle, proc, lambda: proc.probes_seen > count_before or time.monotonic() > deadline, fd)
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
            rc = read_packets(pcap, handle, proc, done, fd)
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
    decode_problems(result, proc)
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
    fill_result(result, proc, policy, local, live=True, gone=gone)
    if attributor is not None:
        result.attribution = attributor.stats()
    return result


def _attribution_hook(attributor: Attributor, local: set[str], policy: Policy):
    def hook(st: Any, proto: str, src: tuple, dst: tuple) -> None:
        if proto not in ("tcp", "udp"):
            return
        if src[0] in local or policy.allows(src[0]):
            attributor.submit(st, proto, src, dst)
        elif dst[0] in local or policy.allows(dst[0]):
            attributor.submit(st, proto, dst, src)

    return hook
