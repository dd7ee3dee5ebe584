"""Where a URL really points, the way the WHATWG URL Standard (Node's ``new URL``) reads it.

Continue runs in Node and builds every request with ``new URL(path, apiBase)``, so a config is
local only if that parser finds a loopback host. Python's urllib disagrees with it on exactly the
strings an attacker would write: ``http://evil.example\\@127.0.0.1/`` (a backslash ends a special
URL's authority, so the host is evil.example), ``http://0x7f.1/`` (an IPv4 number in hex, short
form), ``http://%31%32%37.0.0.1/`` (percent-decoded before the host is parsed), full-width digits
and ideographic full stops (UTS #46 mapping), tabs and newlines anywhere (removed).

This is the host-finding part of https://url.spec.whatwg.org/#concept-basic-url-parser for an
absolute URL (no base): scheme, authority, userinfo, host (domain, IPv4, IPv6, opaque) and port.
tests/test_audit_urls.py compares it with Node's parser over a table of hostile URLs.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

SPECIAL = {"ftp": 21, "file": None, "http": 80, "https": 443, "ws": 80, "wss": 443}
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_FORBIDDEN_HOST = set("\0\t\n\r #/:<>?@[\\]^|")
_FORBIDDEN_DOMAIN = _FORBIDDEN_HOST | {chr(c) for c in range(0x20)} | {"%", "\x7f"}


class URLError(ValueError):
    """The URL Standard's "failure": Node throws TypeError [ERR_INVALID_URL]."""


@dataclass(frozen=True)
class URLHost:
    scheme: str
    hostname: str  # as Node's url.hostname: IPv6 in brackets, IPv4 dotted, domains lower-case ASCII
    port: int | None  # None: the scheme's default (or none given)

    @property
    def address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        h = self.hostname[1:-1] if self.hostname.startswith("[") else self.hostname
        try:
            return ipaddress.ip_address(h)
        except ValueError:
            return None


def parse_url(url: str) -> URLHost:
    """Scheme, host and port of an absolute URL, or URLError where Node would throw."""
    s = url.strip("".join(chr(c) for c in range(0x21)))
    s = s.replace("\t", "").replace("\n", "").replace("\r", "")
    scheme, colon, rest = s.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme):
        raise URLError("no scheme (a relative URL)")
    scheme = scheme.lower()
    special = scheme in SPECIAL
    if special and scheme != "file":
        rest = rest.lstrip("/\\")  # special authority (ignore) slashes states
    elif rest.startswith("//"):
        rest = rest[2:]
    else:
        return URLHost(scheme, "", None)  # no authority: no host at all
    ends = "/?#\\" if special else "/?#"
    cut = min((i for i in (rest.find(c) for c in ends) if i >= 0), default=len(rest))
    authority = rest[:cut]
    at = authority.rfind("@")
    hostport = authority[at + 1 :] if at >= 0 else authority
    if at >= 0 and not hostport:
        raise URLError("credentials without a host")
    host, port_text, brackets = "", None, False
    for i, c in enumerate(hostport):
        if c == "[":
            brackets = True
        elif c == "]":
            brackets = False
        elif c == ":" and not brackets:
            host, port_text = hostport[:i], hostport[i + 1 :]
            break
    else:
        host = hostport
    if scheme == "file":
        return URLHost(scheme, _host(host, True) if host and host != "localhost" else "", None)
    if special and not host:
        raise URLError("empty host")
    port = None
    if port_text:
        if not port_text.isdigit() or not port_text.isascii():
            raise URLError(f"invalid port {port_text!r}")
        port = int(port_text)
        if port > 65535:
            raise URLError(f"port {port} out of range")
        if port == SPECIAL.get(scheme):
            port = None
    return URLHost(scheme, _host(host, special), port)


def _host(text: str, special: bool) -> str:
    if text.startswith("["):
        if not text.endswith("]"):
            raise URLError("unclosed IPv6 address")
        inner = text[1:-1]
        if "%" in inner or not inner:
            raise URLError("invalid IPv6 address")
        try:
            return f"[{ipaddress.IPv6Address(inner).compressed}]"
        except ValueError:
            raise URLError("invalid IPv6 address") from None
    if not special:  # opaque host: forbidden code points fail, the rest is percent-encoded
        if any(c in _FORBIDDEN_HOST for c in text):
            raise URLError("forbidden code point in host")
        return "".join(
            c if " " < c <= "~" else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")) for c in text
        )
    domain = unquote_to_bytes(text).decode("utf-8", "replace")
    ascii_domain = _domain_to_ascii(domain)
    if any(c in _FORBIDDEN_DOMAIN for c in ascii_domain):
        raise URLError("forbidden code point in host")
    labels = ascii_domain.split(".")
    last = labels[-2] if labels[-1] == "" and len(labels) > 1 else labels[-1]
    if last and (last.isdigit() and last.isascii() or re.fullmatch(r"0[xX][0-9A-Fa-f]*", last)):
        return _ipv4(ascii_domain)
    return ascii_domain


def _domain_to_ascii(domain: str) -> str:
    """UTS #46 ToASCII with the URL Standard's flags (no STD3 rules, nontransitional)."""
    import idna

    try:
        mapped = idna.uts46_remap(domain, std3_rules=False, transitional=False)
    except (idna.IDNAError, ValueError) as err:
        raise URLError(f"host not valid under UTS #46: {err}") from None
    labels = []
    for label in mapped.split("."):
        if label.isascii():
            if label.lower().startswith("xn--") and not _valid_punycode(label, idna):
                raise URLError(f"invalid punycode label {label!r}")
            labels.append(label)
            continue
        try:
            labels.append("xn--" + label.encode("punycode").decode("ascii"))
        except UnicodeError:
            raise URLError(f"cannot encode label {label!r}") from None
    out = ".".join(labels)
    if not out:
        raise URLError("empty host")
    return out


def _valid_punycode(label: str, idna) -> bool:
    """UTS #46 validity of an xn-- label, as far as Node's parser checks it: the punycode
    decodes, and a non-ASCII result is unchanged by the mapping, has no unassigned code point
    and does not start with a combining mark."""
    try:
        decoded = label[4:].encode("ascii").decode("punycode")
    except UnicodeError:
        return False
    if not decoded:
        return False
    if decoded.isascii():
        return True
    try:
        if idna.uts46_remap(decoded, std3_rules=False, transitional=False) != decoded:
            return False
    except (idna.IDNAError, ValueError):
        return False
    return not unicodedata.category(decoded[0]).startswith("M") and all(
        unicodedata.category(c) != "Cn" for c in decoded
    )


def _ipv4(text: str) -> str:
    parts = text.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if len(parts) > 4:
        raise URLError("IPv4 address with more than four parts")
    numbers = []
    for p in parts:
        if p == "":
            raise URLError("empty IPv4 part")
        if p[:2] in ("0x", "0X"):
            digits, base = p[2:], 16
        elif len(p) > 1 and p[0] == "0":
            digits, base = p[1:], 8
        else:
            digits, base = p, 10
        if digits == "":
            numbers.append(0)
            continue
        allowed = {16: "0123456789abcdefABCDEF", 8: "01234567", 10: "0123456789"}[base]
        if any(c not in allowed for c in digits):
            raise URLError(f"invalid IPv4 part {p!r}")
        numbers.append(int(digits, base))
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise URLError("IPv4 part out of range")
    value = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        value += n * 256 ** (3 - i)
    return str(ipaddress.IPv4Address(value))


def is_loopback_url(url: str, local_names: list[str] | tuple[str, ...] = ("localhost",)) -> tuple[bool, str]:
    """(whether an HTTP client built on WHATWG URL connects to loopback, why). ``local_names``
    are host names that resolve to loopback (toolkit/data/audit_checks.yaml local_hosts)."""
    try:
        u = parse_url(url)
    except URLError as err:
        return False, f"not a valid URL ({err})"
    if u.scheme not in ("http", "https"):
        return False, f"scheme {u.scheme!r} is not http(s)"
    addr = u.address
    if addr is not None:
        mapped = getattr(addr, "ipv4_mapped", None)
        if addr.is_loopback or (mapped is not None and mapped.is_loopback):
            return True, f"host {u.hostname} is loopback"
        return False, f"host {u.hostname} is not loopback"
    if u.hostname in {n.lower() for n in local_names}:
        return True, f"host {u.hostname} is a loopback name"
    return False, f"host {u.hostname} is not local"
