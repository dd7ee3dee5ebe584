"""Names from packets and reports made safe for the place they are shown.

A DNS name, an SNI or a host name in a report is attacker-chosen text. JSON keeps it exactly
(json.dumps escapes what JSON needs); everything a person reads gets ``visible()``: every control,
format (bidi overrides, zero-width), surrogate, private-use and unassigned code point, and the
backslash itself, written as a Python-style escape, so ``ESC [8m`` can neither hide text nor move
the cursor, and two different names never look the same. Each renderer then applies its own
syntax escaping on top (rich markup, HTML, XML, Prometheus label quoting).
"""

from __future__ import annotations

import unicodedata
from typing import Any


def _esc(ch: str) -> str:
    o = ord(ch)
    if o < 0x100:
        return f"\\x{o:02x}"
    return f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def visible(value: Any) -> str:
    """``value`` as text a terminal, browser or CI page shows literally (idempotent-safe:
    a backslash is doubled, so the escaped form of one name is never another name)."""
    s = "" if value is None else str(value)
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == " " or (ch.isprintable() and unicodedata.category(ch)[0] != "C"):
            out.append(ch)
        else:
            out.append(_esc(ch))
    return "".join(out)


def visible_lines(value: Any) -> str:
    """Like visible(), but keeps newlines (for multi-line details, e.g. in JUnit bodies)."""
    return "\n".join(visible(part) for part in ("" if value is None else str(value)).split("\n"))
