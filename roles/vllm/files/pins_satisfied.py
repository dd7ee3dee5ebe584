"""Print "satisfied" when the venv running this already holds every exact pin, else "install".

argv: the pinned requirements file on the host ("" for none), then the single pin name==version.
Only plain `name==version` lines count as satisfiable; anything else (markers, hashes, ranges, options,
a missing file) prints "install", so pip decides as before. Reads dist-info only: ~50 ms, where
`pip install -r` resolves the whole list for seconds and reports changed in check mode regardless.
"""

import importlib.metadata as md
import re
import sys

PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)")


def satisfied(requirements: str, pin: str) -> bool:
    try:
        lines = open(requirements, encoding="utf-8").read().splitlines() if requirements else [pin]
    except OSError:
        return False
    pins = [line.split("#", 1)[0].strip() for line in lines]
    pins = [p for p in pins if p]
    if not pins:
        return False
    for p in pins:
        m = PIN.fullmatch(p)
        if m is None:
            return False
        try:
            if md.version(m[1]) != m[2]:
                return False
        except md.PackageNotFoundError:
            return False
    return True


print("satisfied" if satisfied(sys.argv[1], sys.argv[2]) else "install")
