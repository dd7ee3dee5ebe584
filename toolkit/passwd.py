"""User accounts of another file system (a container seen from outside through /proc/PID/root).

The kernel matches a container's uids as they are, so its users must be read from its own
/etc/passwd, not looked up in this machine's.
"""

from __future__ import annotations

from pathlib import Path


def parse_passwd(text: str) -> dict[str, int]:
    """User name -> uid from passwd(5) text (pure); the first entry of a name wins, as in NSS."""
    uids: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            uids.setdefault(parts[0], int(parts[2]))
    return uids


def read_passwd(root: Path) -> dict[str, int]:
    """The users of the file system at ``root``; empty when it has no readable /etc/passwd."""
    try:
        return parse_passwd((root / "etc" / "passwd").read_text())
    except OSError:
        return {}
