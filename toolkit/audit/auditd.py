"""Exact attribution from the Linux audit subsystem: who called connect()/sendto() to where.

Method ("auditd"): keyed audit rules make the kernel log, at the exit of every connect() with an
IPv4 or IPv6 address (and of sendto()/sendmsg() by the users named), a SYSCALL record (pid, ppid,
uid, comm, exe) with a SOCKADDR record (the destination) and a PROCTITLE record (the command line).
The kernel writes them synchronously, before the syscall returns, so a process that exits right
after sending is still named: what /proc scanning (attribution.py) misses by design.

Records are read from the audit netlink multicast group (AUDIT_NLGRP_READLOG, kernel >= 3.16):
a read-only copy of every record that does not compete with auditd for the daemon's socket, so
this works whether auditd runs or not. The kernel only multicasts in the initial network
namespace; the socket is opened there even when the audit itself runs inside another one.

A record names a destination, not the local port: a captured flow is matched to the unused
record for the same destination address and port closest before it (the audit clock is coarse,
jiffies). Sequential senders to one destination are matched in order; senders racing to one
destination within a few milliseconds could be swapped, and such matches say "match": "ordered"
with the number of candidates. The kernel counts records it lost (``auditctl -s``: lost); any
loss during a run is reported and makes unmatched flows count as unattributed, never as clean.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from toolkit.audit.policy import Policy

METHOD = "auditd"
KEY = "toolkit-egress"
NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1
SYSCALL, PATH, SOCKADDR, CWD, EOE, PROCTITLE = 1300, 1302, 1306, 1307, 1320, 1327
AF_INET, AF_INET6 = 2, 10
# The kernel stamps records with its coarse clock (the last tick: never later than the syscall),
# printed to the millisecond like the flows' first_seen; 1 ms covers the rounding of both.
CLOCK_SLACK = 0.001
# A send recorded this long before a flow's first packet is not taken as its cause (glibc's
# address-sorting connect() on UDP sockets, or an old connected socket): /proc decides those.
HORIZON = 10.0
MAX_EVENTS = 200_000
SELF_TEST = ("192.0.2.1", 9)  # TEST-NET-1, discard: a UDP connect() there sends no packet
SELF_TEST_SECONDS = 5.0
# The probe child: a process forked after the rules were added. The kernel gives a task its audit
# context at fork, and only once the audit subsystem has ever been enabled (auditsc.c,
# audit_alloc), so processes older than the first `auditctl -e 1` since boot are never audited.
_PROBE = (
    "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    f"try:\n    s.connect({SELF_TEST!r})\nexcept OSError:\n    pass\n"
)

_HDR = re.compile(r"audit\((\d+)\.(\d+):(\d+)\): ?")
_FIELD = re.compile(r'(\w+)=("[^"]*"|\S*)')
_SECRET_FLAG = re.compile(r"-{1,2}[\w-]*(key|token|secret|passw(or)?d|auth|credential)[\w-]*", re.IGNORECASE)
_SECRET_KV = re.compile(r"([\w-]*(key|token|secret|passw(or)?d|auth|credential)[\w-]*=)\S+", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(\w+://)[^/@\s]+@")


class AuditUnavailable(Exception):
    """The audit subsystem cannot be used here; the message says why (attribution falls back to /proc)."""


@dataclass(frozen=True)
class SendEvent:
    """One connect/sendto/sendmsg to an internet address, as the kernel logged it."""

    serial: int
    ts: float
    syscall: int
    success: bool
    pid: int
    ppid: int
    uid: int
    comm: str
    exe: str
    cmdline: str
    family: int
    address: str
    port: int

    def process(self, user: str) -> dict[str, Any]:
        return {
            "method": METHOD,
            "pid": self.pid,
            "ppid": self.ppid,
            "uid": self.uid,
            "user": user,
            "comm": self.comm,
            "exe": self.exe,
            "cmdline": self.cmdline,
            "syscall": {42: "connect", 44: "sendto", 46: "sendmsg"}.get(self.syscall, str(self.syscall)),
            "audit_serial": self.serial,
            "status": "attributed",
        }


def redact_cmdline(cmdline: str) -> str:
    """Mask values that look like secrets: --api-key X, token=X, https://user:pass@host."""
    words = cmdline.split(" ")
    out = []
    hide_next = False
    for w in words:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        if _SECRET_FLAG.fullmatch(w):
            hide_next = True
            out.append(w)
            continue
        w = _SECRET_KV.sub(r"\1***", w)
        out.append(_URL_USERINFO.sub(r"\1***@", w))
    return " ".join(out)


def parse_sockaddr(hexstr: str) -> tuple[int, str, int] | None:
    """(family, address, port) of an AF_INET/AF_INET6 sockaddr in hex, else None (pure)."""
    try:
        raw = bytes.fromhex(hexstr)
    except ValueError:
        return None
    if len(raw) < 8:
        return None
    family = struct.unpack_from("<H", raw)[0]
    if family == AF_INET and len(raw) >= 8:
        return AF_INET, socket.inet_ntop(socket.AF_INET, raw[4:8]), struct.unpack_from("!H", raw, 2)[0]
    if family == AF_INET6 and len(raw) >= 24:
        addr = ipaddress.ip_address(raw[8:24])
        text = str(addr.ipv4_mapped) if addr.ipv4_mapped else str(addr)  # a dual-stack socket speaking IPv4
        return AF_INET6, text, struct.unpack_from("!H", raw, 2)[0]
    return None


def _value(v: str) -> str:
    return v[1:-1] if len(v) >= 2 and v[0] == '"' and v[-1] == '"' else v


def decode_proctitle(v: str) -> str:
    """PROCTITLE is hex (argv joined by NUL) unless it is printable, then quoted (pure)."""
    if v.startswith('"'):
        return _value(v)
    try:
        raw = bytes.fromhex(v)
    except ValueError:
        return v
    return " ".join(p.decode("utf-8", "replace") for p in raw.split(b"\0") if p)


class Assembler:
    """Joins the records of one audit event (same serial) and keeps the keyed sends (pure)."""

    def __init__(self, key: str = KEY) -> None:
        self.key = key
        self.pending: dict[int, dict[str, Any]] = {}

    def feed(self, rtype: int, text: str) -> SendEvent | None:
        m = _HDR.match(text)
        if not m:
            return None
        serial = int(m.group(3))
        body = text[m.end() :]
        if rtype == EOE:
            return self._finish(serial)
        ev = self.pending.setdefault(serial, {"ts": int(m.group(1)) + int(m.group(2)) / 1000})
        fields = {k: v for k, v in _FIELD.findall(body)}
        if rtype == SYSCALL:
            ev["syscall"] = fields
        elif rtype == SOCKADDR:
            ev["saddr"] = fields.get("saddr", "")
        elif rtype == PROCTITLE:
            ev["proctitle"] = decode_proctitle(fields.get("proctitle", ""))
        if len(self.pending) > 4096:  # events whose EOE never came (lost): forget the oldest
            for old in sorted(self.pending)[:1024]:
                del self.pending[old]
        return None

    def _finish(self, serial: int) -> SendEvent | None:
        ev = self.pending.pop(serial, None)
        if not ev or "syscall" not in ev or "saddr" not in ev:
            return None
        sc = ev["syscall"]
        if _value(sc.get("key", "")) != self.key:
            return None
        addr = parse_sockaddr(ev["saddr"])
        if addr is None:
            return None
        try:
            return SendEvent(
                serial=serial,
                ts=ev["ts"],
                syscall=int(sc.get("syscall", "-1")),
                success=sc.get("success") == "yes",
                pid=int(sc["pid"]),
                ppid=int(sc.get("ppid", "0")),
                uid=int(sc.get("uid", "-1")),
                comm=_value(sc.get("comm", "")),
                exe=_value(sc.get("exe", "")),
                cmdline=redact_cmdline(ev.get("proctitle", "")),
                family=addr[0],
                address=addr[1],
                port=addr[2],
            )
        except (KeyError, ValueError):
            return None


def audit_rules(uids: Iterable[int] = (), key: str = KEY) -> list[list[str]]:
    """auditctl rule arguments (without -a/-d). connect() only with an inet sockaddr (addrlen 16
    or 28: a2), which leaves out the busy AF_UNIX traffic; sendto/sendmsg for the named users."""
    rules = [["always,exit", "-F", "arch=b64", "-S", "connect", "-F", f"a2={n}", "-k", key] for n in (16, 28)]
    for uid in sorted(set(uids)):
        rules.append(["always,exit", "-F", "arch=b64", "-S", "sendto,sendmsg", "-F", f"uid={uid}", "-k", key])
    return rules


def audit_status(run=subprocess.run) -> dict[str, int]:
    out = run(["auditctl", "-s"], capture_output=True, text=True, check=True).stdout
    status = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].lstrip("-").isdigit():
            status[parts[0]] = int(parts[1])
    return status


def _libc_setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def _initial_netns_socket() -> socket.socket:
    """A NETLINK_AUDIT socket in the initial network namespace, where the kernel multicasts.
    Where pid 1's namespace cannot be read (a sandbox), this process's own is used: run the agent
    in the initial namespace and let it enter the audited one (enter_netns) after this."""
    try:
        own, init = os.stat("/proc/self/ns/net"), os.stat("/proc/1/ns/net")
        same = (own.st_dev, own.st_ino) == (init.st_dev, init.st_ino)
    except OSError:
        same = True
    if same:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
    back = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open("/proc/1/ns/net", os.O_RDONLY)
    try:
        try:
            _libc_setns(target)
        except OSError as err:
            raise AuditUnavailable(f"cannot enter the initial network namespace: {err}") from None
        try:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
        finally:
            _libc_setns(back)
    finally:
        os.close(back)
        os.close(target)


def enter_netns(path: Path) -> None:
    """Move this thread (the capture's, and every thread and child it starts) into a network
    namespace, e.g. /run/netns/NAME; sockets opened before keep theirs."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _libc_setns(fd)
    finally:
        os.close(fd)


@dataclass
class AuditSource:
    """Installs the keyed rules, reads the sends in a thread, removes the rules on stop."""

    policy: Policy
    uids: tuple[int, ...] = ()
    key: str = KEY
    events: list[SendEvent] = field(default_factory=list)
    records: int = 0
    lost_at_start: int = 0
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _restore: dict[str, int] = field(default_factory=dict)
    _added: list[list[str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _probe_pids: set[int] = field(default_factory=set)
    _seen_pids: set[int] = field(default_factory=set)
    older_processes_audited: bool = False
    _pid: int = field(default_factory=os.getpid)

    def start(self) -> None:
        if shutil.which("auditctl") is None:
            raise AuditUnavailable("auditctl not found (Debian package auditd)")
        try:
            status = audit_status()
        except (OSError, subprocess.CalledProcessError) as err:
            raise AuditUnavailable(f"auditctl -s failed: {getattr(err, 'stderr', '') or err}") from None
        try:
            sock = _initial_netns_socket()
            sock.bind((0, AUDIT_NLGRP_READLOG))
        except OSError as err:
            raise AuditUnavailable(f"cannot join the audit multicast group (needs CAP_AUDIT_READ): {err}") from None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.settimeout(0.2)
        self._sock = sock
        self.lost_at_start = status.get("lost", 0)
        self._restore = {"enabled": status.get("enabled", 0), "backlog_limit": status.get("backlog_limit", 64)}
        try:
            # A bigger backlog: bursts of short-lived senders must not overflow the kernel's queue.
            self._auditctl("-b", str(max(8192, self._restore["backlog_limit"])))
            for rule in audit_rules(self.uids, self.key):
                self._auditctl("-a", *rule)
                self._added.append(rule)
            if self._restore["enabled"] == 0:
                self._auditctl("-e", "1")
        except AuditUnavailable:
            self.stop()
            raise
        self._thread = threading.Thread(target=self._run, name="audit-netlink", daemon=True)
        self._thread.start()
        self._self_test()

    def _self_test(self) -> None:
        """Prove that records reach us: a child forked now connect()s a UDP socket (which sends
        nothing) to TEST-NET-1 and we wait for its record. In a container's network namespace the
        kernel does not multicast there, and exact attribution would silently see nothing. This
        process connects too: its record says whether processes started before the rules (the
        agent among them) are audited at all. The probes are repeated each second for 5 s: on a
        loaded host one record can come late or be lost."""
        deadline = time.monotonic() + SELF_TEST_SECONDS
        next_probe = 0.0
        children: list[subprocess.Popen] = []
        try:
            while time.monotonic() < deadline:
                if time.monotonic() >= next_probe:
                    own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    try:
                        own.connect(SELF_TEST)
                    except OSError:
                        pass  # no route: the syscall is still audited
                    finally:
                        own.close()
                    child = subprocess.Popen([sys.executable, "-I", "-S", "-c", _PROBE], stdin=subprocess.DEVNULL)
                    with self._lock:
                        self._probe_pids.add(child.pid)
                    children.append(child)
                    next_probe = time.monotonic() + 1.0
                with self._lock:
                    if self._seen_pids & self._probe_pids:
                        # Our own connect() went before the child's: its record, if any, is in.
                        self.older_processes_audited = self._pid in self._seen_pids
                        return
                time.sleep(0.02)
        finally:
            for child in children:
                child.wait()
        self.stop()
        raise AuditUnavailable(
            f"the audit subsystem's records do not reach this process (none of its probes' connect() calls "
            f"was seen in {SELF_TEST_SECONDS:g} s)"
        )

    def _auditctl(self, *args: str) -> None:
        proc = subprocess.run(["auditctl", *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise AuditUnavailable(f"auditctl {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")

    def _run(self) -> None:
        asm = Assembler(self.key)
        sock = self._sock
        while not self._stop.is_set():
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue  # ENOBUFS: records were lost; the kernel's lost counter tells
            off = 0
            while off + 16 <= len(data):
                length, rtype = struct.unpack_from("=IH", data, off)
                if length < 16:
                    break
                self.records += 1
                text = data[off + 16 : off + length].rstrip(b"\0").decode("utf-8", "replace")
                ev = asm.feed(rtype, text)
                if (
                    ev is not None
                    and (ev.address, ev.port) == SELF_TEST
                    and (ev.pid == self._pid or ev.pid in self._probe_pids)
                ):
                    with self._lock:
                        self._seen_pids.add(ev.pid)
                elif ev is not None and not self.policy.allows(ev.address):
                    with self._lock:
                        if len(self.events) < MAX_EVENTS:
                            self.events.append(ev)
                off += (length + 3) & ~3

    def lost(self) -> int:
        try:
            return max(0, audit_status().get("lost", 0) - self.lost_at_start)
        except (OSError, subprocess.CalledProcessError):
            return -1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for rule in reversed(self._added):
            subprocess.run(["auditctl", "-d", *rule], capture_output=True)
        self._added.clear()
        if self._restore:
            subprocess.run(["auditctl", "-b", str(self._restore["backlog_limit"])], capture_output=True)
            if self._restore["enabled"] == 0:
                subprocess.run(["auditctl", "-e", "0"], capture_output=True)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def snapshot(self) -> list[SendEvent]:
        with self._lock:
            return list(self.events)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def attribute_findings(
    findings: list[dict[str, Any]],
    events: list[SendEvent],
    used: set[int],
    user_name=lambda uid: str(uid),
    lost: int = 0,
) -> dict[str, Any]:
    """Set each finding's ``process`` from the audit records; keep /proc's answer as fallback.

    ``used`` holds the serials already matched (in earlier windows) and is updated. Returns the
    counts the report shows: flows attributed by each method, and those nobody could attribute.
    """
    by_dest: dict[tuple[str, int], list[SendEvent]] = {}
    for ev in sorted(events, key=lambda e: e.serial):
        by_dest.setdefault((ev.address, ev.port), []).append(ev)
    methods: dict[str, int] = {}
    unattributed = 0
    ordered = 0
    for f in sorted(findings, key=lambda f: f["first_seen"]):
        if f.get("direction") == "inbound":
            cands = []
        else:
            ts = _epoch(f["first_seen"])
            cands = [
                e
                for e in by_dest.get((f["remote_address"], f["remote_port"]), [])
                if e.serial not in used and ts - HORIZON <= e.ts <= ts + CLOCK_SLACK
            ]
        if cands:
            ev = cands[0]  # the oldest unused send to that destination: senders in order
            # The same process's sends there within 5 ms (glibc's probing connect, then the real one)
            # belong to this flow too; left unused they would shift the next sender's match.
            used.update(e.serial for e in cands if e.pid == ev.pid and e.ts <= ev.ts + 0.005)
            proc = ev.process(user_name(ev.uid))
            proc["match"] = "unique" if len(cands) == 1 else "ordered"
            if len(cands) > 1:
                proc["candidates"] = len(cands)
                ordered += 1
            fallback = f.get("process")
            if fallback and fallback.get("pid") is not None:
                proc["proc_scan"] = {"pid": fallback.get("pid"), "agrees": fallback.get("pid") == ev.pid}
            f["process"] = proc
            methods[METHOD] = methods.get(METHOD, 0) + 1
        elif f.get("process") and f["process"].get("pid") is not None:
            m = f["process"].get("method", "proc")
            methods[m] = methods.get(m, 0) + 1
        else:
            unattributed += 1
            f["process"] = {
                **(f.get("process") or {}),
                "pid": None,
                "method": None,
                "status": "unknown: no audit record for this destination"
                + (f" (the kernel lost {lost} audit record(s))" if lost else ""),
            }
    return {
        "methods": methods,
        "unattributed": unattributed,
        "ordered_matches": ordered,
        "audit_records_lost": lost,
    }


def wait_for_records(source: AuditSource, settle: float = 0.3) -> None:
    """Let records still in flight (the kernel queue, the reader thread) arrive."""
    before = -1
    deadline = time.monotonic() + 5
    while source.records != before and time.monotonic() < deadline:
        before = source.records
        time.sleep(settle)
