"""Process attribution, live mode: which process owned the socket a flow came from.

Method ("proc-net+fd-scan"): when the capture sees a new flow, a worker thread looks its local
endpoint up in /proc/net/{tcp,tcp6,udp,udp6} (this network namespace's socket tables: owner uid
and socket inode), then finds the process holding ``socket:[inode]`` among /proc/PID/fd.
Best effort, and honest about it: a short-lived socket (a resolver's UDP query lives for one round
trip) is often gone before the lookup; such flows say "unknown" and are counted as unattributed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import queue
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METHOD = "proc-net+fd-scan"
TCP_LISTEN, UDP_CLOSE = "0A", "07"


@dataclass(frozen=True)
class SocketEntry:
    proto: str  # tcp | udp
    local: tuple[str, int]
    remote: tuple[str, int]
    state: str
    uid: int
    inode: int


def _addr(hexaddr: str) -> tuple[str, int]:
    host, port = hexaddr.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    text = socket.inet_ntop(socket.AF_INET6, words)
    if text.startswith("::ffff:") and "." in text:  # v4-mapped: a dual-stack socket speaking IPv4
        text = text[7:]
    return text, int(port, 16)


def parse_socket_table(text: str, proto: str) -> list[SocketEntry]:
    """Parse one /proc/net/{tcp,udp}[6] table (pure)."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        try:
            out.append(SocketEntry(proto, _addr(f[1]), _addr(f[2]), f[3], int(f[7]), int(f[9])))
        except ValueError:
            continue
    return out


def read_sockets(proc_root: Path = Path("/proc")) -> list[SocketEntry]:
    out: list[SocketEntry] = []
    for name in ("tcp", "tcp6", "udp", "udp6"):
        with contextlib.suppress(OSError):
            out += parse_socket_table((proc_root / "net" / name).read_text(), name.rstrip("6"))
    return out


def inode_owners(proc_root: Path = Path("/proc")) -> dict[int, int]:
    """socket inode -> pid, from every /proc/PID/fd link we may read."""
    owners: dict[int, int] = {}
    for entry in os.scandir(proc_root):
        if not entry.name.isdigit():
            continue
        fd_dir = f"{entry.path}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owners.setdefault(int(link[8:-1]), int(entry.name))
    return owners


def user_name(uid: int, names: dict[int, str] | None = None) -> str:
    """This machine's name for uid, or the one in ``names`` (another root's users) when given."""
    if names is not None:
        return names.get(uid, str(uid))
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


REDACTED = "<redacted>"
# An option whose name says it carries a secret: --db-password, --hf-token, --api-key, --client-secret.
_SECRET_OPT = re.compile(r"(?i)-{1,2}[a-z0-9_.-]*(?:passw(?:or)?d|token|key|secret|credential)[a-z0-9_.-]*")
# NAME=value where NAME says so (env(1) prefixes, make variables): DB_PASSWORD=..., HF_TOKEN=...
_SECRET_ENV = re.compile(r"(?i)[a-z_][a-z0-9_]*(?:passw(?:or)?d|token|key|secret|credential)[a-z0-9_]*")
_AUTH_HEADER = re.compile(r"(?i)((?:proxy-)?authorization\s*:\s*|x-api-key\s*:\s*|cookie\s*:\s*)\S.*")
# The same inside one argument that holds a whole command (sh -c "... --password=x ...").
_INNER = re.compile(
    r"(?i)(-{1,2}[a-z0-9_.-]*(?:passw(?:or)?d|token|key|secret|credential)[a-z0-9_.-]*(?:=|\s+)['\"]?)[^\s'\"]+"
)
# scheme://userinfo@ up to the authority's last @ (the WHATWG reading, toolkit/audit/urls.py).
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\\\s]*@")


def redact_argv(argv: list[str]) -> list[str]:
    """argv with secret values replaced: values of options named like secrets (``--x=v`` and
    ``--x v``), secret-named NAME=value words, Authorization/X-Api-Key/Cookie header values,
    and the userinfo of URLs. What is kept shows what ran; what is replaced is said so."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next and not arg.startswith("--"):
            out.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        name, eq, _value = arg.partition("=")
        if _SECRET_OPT.fullmatch(name):
            if eq:
                arg = f"{name}={REDACTED}"
            else:
                hide_next = True
        elif eq and _SECRET_ENV.fullmatch(name):
            arg = f"{name}={REDACTED}"
        if any(c.isspace() for c in arg):
            arg = _INNER.sub(lambda m: m.group(1) + REDACTED, arg)
        arg = _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, arg)
        arg = _URL_USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", arg)
        out.append(arg)
    return out


def process_info(pid: int, proc_root: Path = Path("/proc")) -> dict[str, Any]:
    """pid, command line (secrets redacted: reports travel to controllers and CI) and comm."""
    info: dict[str, Any] = {"pid": pid}
    try:
        raw = (proc_root / str(pid) / "cmdline").read_bytes()
        argv = [p.decode("utf-8", "replace") for p in raw.split(b"\0") if p]
        info["cmdline"] = " ".join(redact_argv(argv))
        info["comm"] = (proc_root / str(pid) / "comm").read_text().strip()
    except OSError:
        info.setdefault("cmdline", None)
    return info


def match(entries: list[SocketEntry], proto: str, local: tuple[str, int], remote: tuple[str, int]):
    """The socket that owns ``local`` talking to ``remote``: exact 4-tuple first, then a bound
    (unconnected) socket on the local port, as UDP clients often use."""
    exact = [e for e in entries if e.proto == proto and e.local == local and e.remote == remote]
    if exact:
        return exact[0]
    bound = [
        e
        for e in entries
        if e.proto == proto
        and e.local[1] == local[1]
        and e.local[0] in (local[0], "0.0.0.0", "::")
        and e.remote[1] == 0
    ]
    return bound[0] if bound else None


@dataclass
class Attributor:
    """Looks flows up in a worker thread so the capture loop never waits on /proc."""

    proc_root: Path = Path("/proc")
    user_names: dict[int, str] | None = None  # uid -> name of the audited root, when not this machine's
    attempted: int = 0
    attributed: int = 0
    unattributed: int = 0
    _queue: queue.Queue = field(default_factory=queue.Queue)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-attribution", daemon=True)
        self._thread.start()

    def submit(self, target: Any, proto: str, local: tuple[str, int], remote: tuple[str, int]) -> None:
        """``target.attribution`` is set to the result when the lookup is done."""
        self._queue.put((target, proto, local, remote))

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)

    def stats(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "attempted": self.attempted,
            "attributed": self.attributed,
            "unattributed": self.unattributed,
        }

    def _run(self) -> None:
        done = False
        while not done:
            batch = [self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            if None in batch:
                done = True
                batch = [b for b in batch if b is not None]
            if batch:
                self.resolve(batch)

    def resolve(self, batch: list) -> None:
        entries = read_sockets(self.proc_root)
        owners = inode_owners(self.proc_root)
        for target, proto, local, remote in batch:
            self.attempted += 1
            result: dict[str, Any] = {"method": METHOD, "pid": None, "user": "unknown", "cmdline": "unknown"}
            entry = match(entries, proto, local, remote) if proto in ("tcp", "udp") else None
            if entry is not None and entry.inode:
                result["user"] = user_name(entry.uid, self.user_names)
                pid = owners.get(entry.inode)
                if pid is not None:
                    result.update(process_info(pid, self.proc_root))
            if result["pid"] is None:
                result["status"] = (
                    "unknown: socket gone before lookup" if entry is None else "unknown: no process holds the socket"
                )
                self.unattributed += 1
            else:
                result["status"] = "attributed"
                self.attributed += 1
            target.attribution = result
