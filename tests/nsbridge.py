"""ssh's ProxyCommand for the fleet hosts (tests/fleet.py): stdin/stdout <-> one TCP connection to a
loopback address. Run under ``nsenter --net=/proc/PID/ns/net``, it reaches the sshd that listens on
a container's own 127.0.0.1, so the controller sends nothing to any routable address (the host has
neither nc nor socat; this is the stdio bridge they would be)."""

from __future__ import annotations

import ipaddress
import os
import selectors
import socket
import sys


def bridge(host: str, port: int) -> None:
    sock = socket.create_connection((host, port), timeout=10)
    sock.settimeout(None)
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ, "stdin")
    sel.register(sock, selectors.EVENT_READ, "sock")
    while True:
        for key, _ in sel.select():
            if key.data == "stdin":
                data = os.read(0, 65536)
                if not data:  # ssh closed its side: half-close, keep reading sshd's last bytes
                    sel.unregister(0)
                    sock.shutdown(socket.SHUT_WR)
                    continue
                sock.sendall(data)
            else:
                data = sock.recv(65536)
                if not data:
                    return
                view = memoryview(data)
                while view:
                    view = view[os.write(1, view) :]


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: nsbridge.py LOOPBACK-ADDRESS PORT", file=sys.stderr)
        return 2
    try:
        loopback = ipaddress.ip_address(argv[0]).is_loopback
    except ValueError:
        loopback = False
    if not loopback:  # tests send only to loopback (or to namespaces they made)
        print(f"nsbridge.py: {argv[0]!r} is not a loopback address", file=sys.stderr)
        return 2
    try:
        bridge(argv[0], int(argv[1]))
    except OSError as e:
        print(f"nsbridge.py: {argv[0]}:{argv[1]}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
