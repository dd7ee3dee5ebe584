"""Validation and escaping of every inventory value that lands in a unit, a ruleset or a config.

One home for the rules (the vllm, ollama and egress_guard roles depend on this role, which is how
Ansible makes a role's filter plugins visible to them). Each filter either returns the value in
the form its target needs or raises one clear line naming the variable; nothing is repaired
silently. Plain Python on purpose: the tests import it to render templates with plain jinja2.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

try:
    from ansible.errors import AnsibleFilterError as _Base
except ImportError:  # imported by the tests without Ansible
    _Base = ValueError  # type: ignore[misc,assignment]


class UnsafeValue(_Base):  # type: ignore[misc,valid-type]
    """An inventory value that would change what the unit, ruleset or config says."""


# C0 and C1 controls (NEL is U+0085), DEL, the Unicode line and paragraph separators and the BOM:
# every one of them ends or splits a line for some parser (systemd, nft, YAML, Python's splitlines).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIGITS = re.compile(r"[0-9]{1,5}")
DEFAULT_NAME = r"[A-Za-z_][A-Za-z0-9_.-]{0,63}"
# argparse (allow_abbrev) takes any unique prefix of a long option; these must never be given twice.
_LOOPBACK_OPTIONS = ("--host", "--port")
# Options that could move the listener or put the key where every local user can read it.
_REFUSED_OPTIONS = ("--api-key", "--config", "--uds")


def _show(value: Any) -> str:
    return ascii(value) if isinstance(value, str) else repr(value)


def safe_text(value: Any, what: str = "value") -> str:
    """A scalar as text, refused when it is a bool, a container or holds a control character."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UnsafeValue(f"{what} must be a string or a number, not {type(value).__name__} {_show(value)}")
    text = str(value)
    m = _CONTROL.search(text)
    if m:
        raise UnsafeValue(f"{what} {_show(text)} holds the control character {ascii(m.group())}")
    return text


def safe_port(value: Any, what: str = "port") -> int:
    """A TCP/UDP port 1-65535: an int or a string of digits, never a bool."""
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and _DIGITS.fullmatch(value))):
        raise UnsafeValue(f"{what} must be an integer 1-65535, not {_show(value)}")
    port = int(value)
    if not 1 <= port <= 65535:
        raise UnsafeValue(f"{what} must be an integer 1-65535, not {port}")
    return port


def safe_name(value: Any, what: str = "name", pattern: str = DEFAULT_NAME) -> str:
    """A name matched whole (fullmatch) against ``pattern``."""
    if not isinstance(value, str) or not re.fullmatch(pattern, value):
        raise UnsafeValue(f"{what} {_show(value)} does not match {pattern}")
    return value


def safe_path(value: Any, what: str = "path") -> str:
    """An absolute path of plain characters (no spaces, quotes, specifiers or '..'), as systemd
    directives and nft include it unquoted."""
    if not isinstance(value, str) or not re.fullmatch(r"/[A-Za-z0-9._+@/-]*", value) or "/../" in value + "/":
        raise UnsafeValue(f"{what} {_show(value)} is not an absolute path of letters, digits and ._+@/-")
    return value


def _ip_text(value: Any, what: str) -> str:
    text = safe_text(value, what) if isinstance(value, str) else None
    if text is None:
        raise UnsafeValue(f"{what} must be an IP address string, not {_show(value)}")
    # ipaddress takes scope ids ("fe80::1%eth0") and netmask forms; nft takes neither the same way.
    if not re.fullmatch(r"[0-9A-Fa-f:.]+(/[0-9]{1,3})?", text):
        raise UnsafeValue(f"{what} {_show(text)} is not an IPv4/IPv6 address or network")
    return text


def safe_cidr(value: Any, what: str = "cidr") -> str:
    """An IPv4/IPv6 address or network, parsed by ipaddress; host bits must be zero."""
    text = _ip_text(value, what)
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as err:
        raise UnsafeValue(f"{what} {_show(text)} is not an address or network: {err}") from None
    return net.with_prefixlen if "/" in text else str(net.network_address)


def safe_address(value: Any, what: str = "address") -> str:
    """One IPv4/IPv6 address, parsed by ipaddress."""
    text = _ip_text(value, what)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as err:
        raise UnsafeValue(f"{what} {_show(text)} is not an IP address: {err}") from None


def _systemd_quote(value: Any, what: str, dollar: bool) -> str:
    text = safe_text(value, what)
    text = text.replace("\\", "\\\\").replace("'", "\\'").replace("%", "%%")
    if dollar:
        text = text.replace("$", "$$")
    return f"'{text}'"


def systemd_exec_arg(value: Any, what: str = "argument") -> str:
    """One ExecStart= word: single-quoted, \\ and ' escaped, %-specifiers and $-expansion doubled."""
    return _systemd_quote(value, what, dollar=True)


def systemd_env(value: Any, what: str = "environment entry") -> str:
    """One Environment= assignment: quoted and %-escaped. systemd does no $ expansion there, so a
    doubled $ would reach the service as two."""
    return _systemd_quote(value, what, dollar=False)


def nft_string(value: Any, what: str = "nft string", max_len: int = 127) -> str:
    """Text for a double-quoted nft string (comments): nft has no escapes, so \" and \\ are refused."""
    text = safe_text(value, what)
    if '"' in text or "\\" in text:
        raise UnsafeValue(f"{what} {_show(text)} may not hold a double quote or a backslash")
    if len(text.encode()) > max_len:
        raise UnsafeValue(f"{what} {_show(text)} is longer than {max_len} bytes")
    return text


def service_env(
    base: Any,
    extra: Any = None,
    required: Any = None,
    locked: Any = None,
    fixed: Any = None,
    what: str = "service",
    required_name: str = "required env",
    extra_name: str = "extra env",
) -> dict[str, str]:
    """The unit's final environment: base (the plan's), then extra, then required, then fixed.

    Every name in ``locked`` (telemetry off, offline, loopback) must end with exactly its locked
    value: a different value anywhere, or its absence from ``required``, fails naming it.
    """
    layers = []
    for name, layer in (("plan env", base), (extra_name, extra), (required_name, required), ("fixed env", fixed)):
        layer = {} if layer is None else layer
        if not isinstance(layer, dict):
            raise UnsafeValue(f"{what}: {name} must be a mapping, not {_show(layer)}")
        layers.append((name, layer))
    env: dict[str, str] = {}
    source: dict[str, str] = {}
    for name, layer in layers:
        for key, value in layer.items():
            if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
                raise UnsafeValue(f"{what}: {name} has the invalid variable name {_show(key)}")
            env[key] = safe_text(value, f"{what}: {key}")
            source[key] = name
    for key, want in (locked or {}).items():
        want = str(want)
        for name, layer in layers:
            if key in layer and str(layer[key]) != want:
                got = _show(str(layer[key]))
                raise UnsafeValue(f"{what}: {key} must stay {want}; {name} sets it to {got}")
        if key not in (required or {}):
            raise UnsafeValue(f"{what}: {required_name} lacks {key}={want}, which may not be dropped")
    return env


def loopback_argv(args: Any, host: str, port: Any, what: str = "service") -> list[str]:
    """The final argv, checked with argparse's semantics: exactly one --host (the loopback address)
    and one --port (the service's), in either "--opt value" or "--opt=value" form, no
    abbreviation of them, no "--" end of options and none of the refused options."""
    if not isinstance(args, list):
        raise UnsafeValue(f"{what}: the arguments must be a list, not {type(args).__name__} {_show(args)}")
    argv = [safe_text(a, f"{what}: argument {i}") for i, a in enumerate(args)]
    want = {"--host": str(host), "--port": str(safe_port(port, f"{what}: port"))}
    seen: dict[str, list[str]] = {"--host": [], "--port": []}
    for i, token in enumerate(argv):
        if token == "--":
            raise UnsafeValue(f"{what}: '--' would end option parsing; it is refused")
        if not token.startswith("--"):
            continue
        opt, eq, val = token.partition("=")
        if opt in _REFUSED_OPTIONS:
            raise UnsafeValue(f"{what}: {opt} is refused in the arguments")
        if opt in _LOOPBACK_OPTIONS:
            if not eq:
                if i + 1 >= len(argv):
                    raise UnsafeValue(f"{what}: {opt} has no value")
                val = argv[i + 1]
            seen[opt].append(val)
        elif len(opt) > 2 and any(full.startswith(opt) for full in _LOOPBACK_OPTIONS):
            raise UnsafeValue(f"{what}: {opt} abbreviates --host or --port (argparse would take it); refused")
    for opt, values in seen.items():
        if values != [want[opt]]:
            raise UnsafeValue(
                f"{what}: the arguments must give {opt} exactly once, as {want[opt]} (they give {values});"
                " --host and --port are the role's, not extra arguments'"
            )
    return argv


_ALLOWLIST_KEYS = frozenset({"cidr", "proto", "ports", "comment"})


def nft_allowlist(entries: Any, what: str = "egress_guard_allowlist") -> list[dict[str, Any]]:
    """The host-wide allowlist as the ruleset template needs it: family (ip/ip6), the normalised
    cidr, proto tcp|udp|any, ports 1-65535 (none with any) and an nft-safe comment."""
    if not isinstance(entries, list):
        raise UnsafeValue(f"{what} must be a list of entries, not {_show(entries)}")
    out = []
    for i, entry in enumerate(entries):
        where = f"{what}[{i}]"
        if not isinstance(entry, dict) or "cidr" not in entry or set(entry) - _ALLOWLIST_KEYS:
            raise UnsafeValue(f"{where} must be a mapping with cidr and only proto, ports, comment: {_show(entry)}")
        cidr = safe_cidr(entry["cidr"], f"{where}.cidr")
        proto = entry.get("proto", "any")
        if proto not in ("tcp", "udp", "any"):
            raise UnsafeValue(f"{where}.proto must be tcp, udp or any, not {_show(proto)}")
        ports = entry.get("ports", [])
        if not isinstance(ports, list):
            raise UnsafeValue(f"{where}.ports must be a list of ports, not {_show(ports)}")
        ports = [safe_port(p, f"{where}.ports") for p in ports]
        if proto == "any" and ports:
            raise UnsafeValue(f"{where}: ports need proto tcp or udp")
        comment = nft_string(entry.get("comment", cidr), f"{where}.comment", max_len=100)
        family = "ip6" if ":" in cidr else "ip"
        out.append({"family": family, "cidr": cidr, "proto": proto, "ports": ports, "comment": comment})
    return out


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "safe_text": safe_text,
            "safe_port": safe_port,
            "safe_name": safe_name,
            "safe_path": safe_path,
            "safe_cidr": safe_cidr,
            "safe_address": safe_address,
            "systemd_exec_arg": systemd_exec_arg,
            "systemd_env": systemd_env,
            "nft_string": nft_string,
            "service_env": service_env,
            "loopback_argv": loopback_argv,
            "nft_allowlist": nft_allowlist,
        }
