"""The audit policy (what may be reached) and its compilation into a kernel BPF filter.

Policy file (YAML)::

    schema: 1
    allow:
      networks: [10.20.0.0/16, "fd00:20::/64"]   # LAN ranges that count as "not leaving"
      hosts: [mirror.corp.example]               # resolved when the audit starts

Loopback (127.0.0.0/8 and ::1) is always allowed; with no file, nothing else is. Networks that
together cover every IPv4 or every IPv6 address (``0.0.0.0/0``, ``::/0``, or halves that add up)
would make the audit blind: the file must say ``allow_everything: true`` to be accepted, and even
then POLICY-001 fails in every report (a waiver can accept it, in writing). The filter
passes every packet that is NOT between two allowed ends, so allowed traffic is dropped in the
kernel and never reaches Python. Non-IP frames (ARP) pass the filter: they are reported under
link-local, never dropped silently.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from toolkit.audit import AuditUsageError
from toolkit.audit.controls import Control, Result, register, register_check

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Policy:
    networks: tuple[Network, ...] = LOOPBACK
    hosts: tuple[str, ...] = ()
    resolved: dict[str, list[str]] = field(default_factory=dict)
    unresolved: tuple[str, ...] = ()
    source: str = "default (loopback only)"
    allow_everything: bool = False

    @property
    def covers_everything(self) -> list[str]:
        """The address families whose every address the allowed networks cover ("IPv4", "IPv6")."""
        out = []
        for version, whole, name in ((4, "0.0.0.0/0", "IPv4"), (6, "::/0", "IPv6")):
            nets = [n for n in self.networks if n.version == version]
            if nets and ipaddress.ip_network(whole) in ipaddress.collapse_addresses(nets):
                out.append(name)
        return out

    @property
    def loopback_only(self) -> bool:
        return set(self.networks) <= set(LOOPBACK)

    def allows(self, addr: str) -> bool:
        ip = ipaddress.ip_address(addr)
        return any(ip.version == n.version and ip in n for n in self.networks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "networks": [str(n) for n in self.networks],
            "hosts": list(self.hosts),
            "resolved": self.resolved,
            "unresolved": list(self.unresolved),
            "allow_everything": self.allow_everything,
        }


def default_policy() -> Policy:
    return Policy()


def load_policy(path: Path | None, resolve: bool = True) -> Policy:
    """Read and validate a policy file; host names are resolved now (the filter needs addresses)."""
    if path is None:
        return default_policy()
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as err:
        raise AuditUsageError(f"policy {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise AuditUsageError(f"policy {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return parse_policy(doc, str(path), resolve=resolve)


def parse_policy(doc: Any, where: str = "policy", resolve: bool = True) -> Policy:
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise AuditUsageError(f"{where}: expected a mapping with 'allow'")
    unknown = set(doc) - {"schema", "allow", "allow_everything"}
    if unknown:
        raise AuditUsageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if doc.get("schema", 1) != 1:
        raise AuditUsageError(f"{where}: unsupported schema {doc.get('schema')!r} (expected 1)")
    allow = doc.get("allow") or {}
    if not isinstance(allow, dict) or set(allow) - {"networks", "hosts"}:
        raise AuditUsageError(f"{where}: 'allow' takes only 'networks' and 'hosts' lists")
    nets: list[Network] = list(LOOPBACK)
    for raw in _str_list(allow.get("networks"), f"{where}: allow.networks"):
        try:
            net = ipaddress.ip_network(raw, strict=False)
        except ValueError:
            raise AuditUsageError(f"{where}: allow.networks: {raw!r} is not an address or CIDR") from None
        if net not in nets:
            nets.append(net)
    hosts = tuple(_str_list(allow.get("hosts"), f"{where}: allow.hosts"))
    resolved: dict[str, list[str]] = {}
    unresolved: list[str] = []
    for host in hosts if resolve else ():
        addrs = _resolve(host)
        if addrs:
            resolved[host] = addrs
            for a in addrs:
                net = ipaddress.ip_network(a)
                if net not in nets:
                    nets.append(net)
        else:
            unresolved.append(host)
    everything = doc.get("allow_everything", False)
    if not isinstance(everything, bool):
        raise AuditUsageError(f"{where}: allow_everything must be true or false")
    policy = Policy(tuple(nets), hosts, resolved, tuple(unresolved), where, everything)
    wide = policy.covers_everything
    if wide and not everything:
        raise AuditUsageError(
            f"{where}: allow.networks cover every {' and every '.join(wide)} address, so the audit could see "
            "nothing leave; set allow_everything: true to run anyway (POLICY-001 then fails)"
        )
    return policy


register(
    Control(
        "POLICY-001",
        "The policy does not allow every address",
        "high",
        "A policy whose networks cover all of IPv4 or IPv6 hides every flow from the audit; it runs only "
        "with allow_everything: true, and this control then fails (accept it with a waiver, in writing).",
    )
)


def policy_results(policy: Policy) -> list[Result]:
    """POLICY-001 only where it fails: a narrow policy adds nothing to the report."""
    wide = policy.covers_everything
    if not wide:
        return []
    nets = ", ".join(str(n) for n in policy.networks if n not in LOOPBACK)
    return [Result("POLICY-001", "fail", f"{policy.source} allows every {' and '.join(wide)} address ({nets})")]


register_check("POLICY-001", lambda context: policy_results(context["options"].policy))


def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise AuditUsageError(f"{where}: expected a list of strings")
    return value


def _resolve(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return sorted({str(i[4][0]) for i in infos})


def compile_filter(policy: Policy, local_addresses: Iterable[str] = (), probe_port: int | None = None) -> str:
    """The BPF expression that passes only candidates: packets with an end outside the allowed set.

    ``local_addresses`` (live mode: this host's own addresses) join the allowed set, so traffic from
    the host to itself through lo is not a candidate. ``probe_port`` lets the audit's own
    loopback probe through, which proves the capture is live (see live.py).
    """
    nets = list(policy.networks)
    for a in sorted(local_addresses):
        net = ipaddress.ip_network(a)
        if not any(net.version == n.version and net.subnet_of(n) for n in nets):
            nets.append(net)
    parts = []
    for version, proto in ((4, "ip"), (6, "ip6")):
        vnets = [str(n) for n in nets if n.version == version]
        if not vnets:
            continue
        src = " or ".join(f"src net {n}" for n in vnets)
        dst = " or ".join(f"dst net {n}" for n in vnets)
        parts.append(f"({proto} and ({src}) and ({dst}))")
    expr = f"not ({' or '.join(parts)})"
    if probe_port is not None:
        expr = f"({expr}) or (udp and dst host 127.0.0.1 and dst port {int(probe_port)})"
    return expr
