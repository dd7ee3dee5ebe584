"""ssh's ProxyCommand for a podman host reached over SSH (the sandbox, the molecule scenarios, the
test fleets): stdin/stdout <-> one TCP connection to a loopback address inside the container's own
network namespace, so the controller sends nothing to any routable address (hosts here have
neither nc nor socat; this is the stdio bridge they would be).

    python -m toolkit.sandbox.nsbridge --container NAME 127.0.0.1 22   # enters NAME's netns itself
    nsenter --net=/proc/PID/ns/net python nsbridge.py 127.0.0.1 22      # already inside it

Standard library only, so it also runs as a plain script.
"""

from __future__ import annotations

import ipaddress
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys

# podman's own rule for container names
CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
USAGE = "usage: nsbridge.py [--container NAME] LOOPBACK-ADDRESS PORT"


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


def enter_container(name: str, host: str, port: str) -> int:
    """Re-run this bridge inside the running container's network namespace (never returns on success)."""
    if not CONTAINER_NAME.fullmatch(name):
        print(f"nsbridge.py: {name!r} is not a container name", file=sys.stderr)
        return 2
    for tool in ("podman", "nsenter"):
        if not shutil.which(tool):
            print(f"nsbridge.py: {tool} is not installed", file=sys.stderr)
            return 1
    r = subprocess.run(
        ["podman", "inspect", "--type", "container", "--format", "{{.State.Pid}}", name],
        capture_output=True,
        text=True,
    )
    pid = r.stdout.strip()
    if r.returncode != 0 or not pid.isdigit() or pid == "0":
        print(f"nsbridge.py: container {name} is not running", file=sys.stderr)
        return 1
    os.execvp("nsenter", ["nsenter", f"--net=/proc/{pid}/ns/net", "--", sys.executable, __file__, host, port])
    return 1  # not reached


def main(argv: list[str]) -> int:
    container = None
    if argv[:1] == ["--container"] and len(argv) >= 2:
        container, argv = argv[1], argv[2:]
    if len(argv) != 2 or not argv[1].isdigit():
        print(USAGE, file=sys.stderr)
        return 2
    try:
        loopback = ipaddress.ip_address(argv[0]).is_loopback
    except ValueError:
        loopback = False
    if not loopback:  # the bridge reaches loopback only (tests send nowhere else)
        print(f"nsbridge.py: {argv[0]!r} is not a loopback address", file=sys.stderr)
        return 2
    if container is not None:
        return enter_container(container, argv[0], argv[1])
    try:
        bridge(argv[0], int(argv[1]))
    except OSError as e:
        print(f"nsbridge.py: {argv[0]}:{argv[1]}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
