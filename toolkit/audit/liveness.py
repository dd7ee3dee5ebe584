"""Whether a live capture saw everything the host sent: interface counters against what the
capture saw, and the interfaces that appeared or vanished while it ran.

/proc/net/dev counts every packet the kernel transmitted, independent of any packet tap, so frames
that bypass the tap (a packet socket with PACKET_QDISC_BYPASS, XDP) show as sent but not seen.
Interfaces that appear during the capture are watched through rtnetlink: `any` captures them, and
one that vanishes leaves its last counters in the kernel's RTM_DELLINK message. An interface that
sent more than SENT_SEEN_TOLERANCE packets beyond what the capture saw makes the run INCONCLUSIVE.
"""

from __future__ import annotations

import errno
import socket
import struct
from pathlib import Path
from typing import Any

# Packets an interface may send beyond what the capture saw before the run is INCONCLUSIVE.
# Zero: the tap sits before the driver, so every packet a counter counts has already passed it,
# and packets in flight at either end are seen (the read goes on until the end probe is seen).
SENT_SEEN_TOLERANCE = 0


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
