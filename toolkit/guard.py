"""The egress guard's live state, read from the kernel, and the audit findings it supports.

The egress_guard role loads an nftables table (family inet) that drops, counts and logs what the
AI service users send beyond loopback. This module reads it back:

* ``nft -j list table inet <name>``: is the table there, is its output hook loaded, which uids do
  its rules cover, what did its counters count;
* the kernel log (journal, else dmesg): recent dropped attempts, by the role's log prefix;
* the hosts file: which known phone-home names are sinkholed.

``collect_guard_state`` does the I/O; ``parse_ruleset``, ``parse_log_lines`` and
``guard_findings`` are pure, so the audit's logic is tested on recorded input.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from toolkit.errors import UsageError
from toolkit.module_utils.egress_intent import intent_problems, structural_problems
from toolkit.passwd import read_passwd
from toolkit.planning import load_tiers

DEFAULT_TABLE = "toolkit_egress_guard"
DEFAULT_LOG_PREFIX = "egress-guard"
# Where the role writes what the ruleset is meant to do (egress_guard_state_dir/intent.json).
DEFAULT_INTENT = Path("/var/lib/toolkit/egress_guard/intent.json")
# What the role writes. 127.0.0.1 is not counted: a local server could answer there.
SINKHOLE_ADDRESSES = frozenset({"0.0.0.0", "::"})

# Counter names the role's template gives; the uid is part of the name so the audit needs no lookup.
_UID_COUNTER = re.compile(r"^blocked_uid_(\d+)$")


@dataclass(frozen=True)
class PhoneHomeEndpoint:
    host: str
    component: str
    kind: str
    sinkhole: bool
    reason: str
    source: str


@dataclass(frozen=True)
class GuardCounter:
    name: str
    packets: int
    bytes: int
    comment: str = ""

    @property
    def uid(self) -> int | None:
        m = _UID_COUNTER.match(self.name)
        return int(m.group(1)) if m else None


@dataclass(frozen=True)
class RulesetView:
    """What the guard's table says about itself (parsed from ``nft -j``)."""

    present: bool
    hooked: bool  # an output-hook base chain exists, so the rules run
    covered_uids: tuple[int, ...]
    host_wide: bool
    counters: tuple[GuardCounter, ...]
    # Against the role's intent when it could be read, else the intent-free checks (an accept
    # that matches nothing, a service-user rule after an accept, a blocked chain without drop).
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class BlockedAttempt:
    """One kernel log line of a dropped packet (the log is rate-limited; counters count all)."""

    reason: str  # service | host | phone-home
    dst: str
    proto: str
    dport: int | None
    uid: int | None
    time: str | None
    line: str


@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int | None  # None: no such user on this host (service not installed)


@dataclass(frozen=True)
class GuardState:
    table: str
    ruleset: RulesetView
    users: tuple[ServiceUser, ...]
    attempts: tuple[BlockedAttempt, ...] = ()
    sinkhole_expected: tuple[str, ...] = ()
    sinkhole_present: tuple[str, ...] = ()
    nft_error: str | None = None
    log_source: str | None = None
    intent_source: str | None = None  # the intent file compared with, None: structural checks only


@dataclass(frozen=True)
class GuardFinding:
    """One audit finding. status: pass | fail | blocked (the guard stopped something) | skip."""

    control: str
    status: str
    title: str
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Data: the phone-home list


def load_phone_home(path: Path | None = None) -> list[PhoneHomeEndpoint]:
    """The known phone-home endpoints (toolkit/data/phone_home.yaml unless a path is given)."""
    if path is None:
        text = resources.files("toolkit").joinpath("data/phone_home.yaml").read_text()
        where = "toolkit/data/phone_home.yaml"
    else:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise UsageError(f"cannot read phone-home list {path}: {err.strerror}") from None
        where = str(path)
    try:
        doc = yaml.safe_load(text)
        return [
            PhoneHomeEndpoint(
                host=str(e["host"]).lower().rstrip("."),
                component=str(e["component"]),
                kind=str(e["kind"]),
                sinkhole=bool(e["sinkhole"]),
                reason=" ".join(str(e["reason"]).split()),
                source=" ".join(str(e["source"]).split()),
            )
            for e in doc["endpoints"]
        ]
    except (yaml.YAMLError, KeyError, TypeError) as err:
        raise UsageError(f"{where}: not a phone-home list ({type(err).__name__}: {err})") from None


def match_phone_home(qname: str, endpoints: Iterable[PhoneHomeEndpoint]) -> PhoneHomeEndpoint | None:
    """The endpoint a DNS query name asks for, if any (exact name, case and trailing dot ignored)."""
    name = qname.lower().rstrip(".")
    for ep in endpoints:
        if ep.host == name:
            return ep
    return None


# ---------------------------------------------------------------------------------------------
# Pure parsers


def parse_ruleset(doc: dict[str, Any] | None, intent: dict[str, Any] | None = None) -> RulesetView:
    """Reads ``nft -j list table inet NAME`` output; None (no table) gives an absent view. With the
    role's intent, ``problems`` lists every rule that differs from it."""
    if not doc:
        return RulesetView(present=False, hooked=False, covered_uids=(), host_wide=False, counters=())
    items = doc.get("nftables", [])
    present = any("table" in it for it in items)
    hooked = any(it.get("chain", {}).get("hook") == "output" for it in items)
    counters = tuple(
        GuardCounter(
            name=c["name"],
            packets=int(c.get("packets", 0)),
            bytes=int(c.get("bytes", 0)),
            comment=c.get("comment", ""),
        )
        for c in (it["counter"] for it in items if "counter" in it)
    )
    uids: set[int] = set()
    for it in items:
        rule = it.get("rule")
        if not rule:
            continue
        uids.update(_skuid_matches(rule.get("expr", [])))
    host_wide = any(c.name == "blocked_host" for c in counters)
    problems = intent_problems(doc, intent) if intent is not None else structural_problems(doc)
    return RulesetView(
        present=present,
        hooked=hooked,
        covered_uids=tuple(sorted(uids)),
        host_wide=host_wide,
        counters=counters,
        problems=tuple(problems),
    )


def _skuid_matches(exprs: Sequence[dict[str, Any]]) -> set[int]:
    """uids that a rule matches with ``meta skuid`` and then drops (directly or by jumping)."""
    uids: set[int] = set()
    verdict_drops = any("drop" in e or ("jump" in e and "blocked" in str(e["jump"].get("target"))) for e in exprs)
    if not verdict_drops:
        return uids
    for e in exprs:
        match = e.get("match")
        if not match or match.get("left", {}).get("meta", {}).get("key") != "skuid":
            continue
        if match.get("op") not in ("==", "in"):
            continue
        right = match.get("right")
        if isinstance(right, int):
            uids.add(right)
        elif isinstance(right, dict) and "set" in right:
            uids.update(v for v in right["set"] if isinstance(v, int))
    return uids


_LOG_KV = re.compile(r"(\w+)=(\S*)")


def parse_log_lines(lines: Iterable[str], prefix: str = DEFAULT_LOG_PREFIX) -> list[BlockedAttempt]:
    """Kernel log lines of the guard (``<prefix> <reason>: IN= OUT=... DST=... UID=...``)."""
    pattern = re.compile(re.escape(prefix) + r" (service|host|phone-home): (.*)$")
    attempts = []
    for line in lines:
        m = pattern.search(line)
        if not m:
            continue
        kv = dict(_LOG_KV.findall(m.group(2)))
        first = line.split(maxsplit=1)[0] if line.strip() else ""
        time = first if re.match(r"^\d{4}-\d\d-\d\dT", first) else None
        attempts.append(
            BlockedAttempt(
                reason=m.group(1),
                dst=kv.get("DST", ""),
                proto=kv.get("PROTO", ""),
                dport=int(kv["DPT"]) if kv.get("DPT", "").isdigit() else None,
                uid=int(kv["UID"]) if kv.get("UID", "").isdigit() else None,
                time=time,
                line=line.strip(),
            )
        )
    return attempts


def parse_hosts_sinkhole(text: str) -> list[str]:
    """Names a hosts file points at the unroutable addresses 0.0.0.0 or ::."""
    names: list[str] = []
    for raw in text.splitlines():
        fields = raw.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0] in SINKHOLE_ADDRESSES:
            names.extend(n.lower() for n in fields[1:])
    return sorted(set(names))


# ---------------------------------------------------------------------------------------------
# Findings (pure): what the audit registers as GUARD-001, GUARD-002 and GUARD-003


def guard_findings(state: GuardState) -> list[GuardFinding]:
    """The audit's view of the guard: present and covering (001), what it blocked (002),
    phone-home names sinkholed (003). Blocked attempts are status "blocked", never "fail":
    the guard worked; the audit shows them apart from "escaped" traffic seen on the wire."""
    return [_guard_001(state), *_guard_002(state), _guard_003(state)]


def _guard_001(state: GuardState) -> GuardFinding:
    rs = state.ruleset
    title = "Egress guard loaded and covering the AI service users"
    installed = [u for u in state.users if u.uid is not None]
    evidence: dict[str, Any] = {
        "table": f"inet {state.table}",
        "present": rs.present,
        "output_hook": rs.hooked,
        "covered_uids": list(rs.covered_uids),
        "mode": "host_wide" if rs.host_wide else "service_users",
        "users": {u.name: u.uid for u in state.users},
        "intent": state.intent_source,
        "problems": list(rs.problems),
    }
    if state.nft_error:
        return GuardFinding("GUARD-001", "fail", title, f"cannot read the ruleset: {state.nft_error}", evidence)
    if not rs.present:
        return GuardFinding("GUARD-001", "fail", title, f"table inet {state.table} is not loaded", evidence)
    if not rs.hooked:
        return GuardFinding("GUARD-001", "fail", title, "the table has no output hook chain", evidence)
    if rs.problems:
        against = f"intent {state.intent_source}" if state.intent_source else "the guard's invariants"
        shown = "; ".join(rs.problems[:3]) + ("; ..." if len(rs.problems) > 3 else "")
        return GuardFinding("GUARD-001", "fail", title, f"loaded ruleset differs from {against}: {shown}", evidence)
    uncovered = [u for u in installed if u.uid not in rs.covered_uids]
    if uncovered:
        names = ", ".join(f"{u.name} (uid {u.uid})" for u in uncovered)
        return GuardFinding("GUARD-001", "fail", title, f"not covered: {names}", evidence)
    if not installed:
        return GuardFinding(
            "GUARD-001", "fail", title, "none of the service users exists here, nothing to cover", evidence
        )
    names = ", ".join(f"{u.name} (uid {u.uid})" for u in installed)
    return GuardFinding("GUARD-001", "pass", title, f"loaded, drops non-loopback egress of {names}", evidence)


def _guard_002(state: GuardState) -> list[GuardFinding]:
    title = "Egress attempts blocked by the guard"
    names = {u.uid: u.name for u in state.users if u.uid is not None}
    findings = []
    for c in state.ruleset.counters:
        if c.packets == 0:
            continue
        uid = c.uid
        if uid is not None:
            who = f"{names.get(uid, 'uid')} (uid {uid})" if uid in names else f"uid {uid}"
            attempts = [a for a in state.attempts if a.reason == "service" and a.uid == uid]
        elif c.name == "blocked_host":
            who, attempts = "host-wide policy", [a for a in state.attempts if a.reason == "host"]
        else:
            who, attempts = "phone-home addresses", [a for a in state.attempts if a.reason == "phone-home"]
        dsts = sorted({f"{a.dst}:{a.dport}/{a.proto.lower()}" if a.dport else a.dst for a in attempts})
        detail = f"{who}: {c.packets} packet(s) dropped"
        if dsts:
            detail += " (logged destinations: " + ", ".join(dsts[:5]) + (", ..." if len(dsts) > 5 else "") + ")"
        findings.append(
            GuardFinding(
                "GUARD-002",
                "blocked",
                title,
                detail,
                {
                    "counter": c.name,
                    "packets": c.packets,
                    "bytes": c.bytes,
                    "uid": uid,
                    "recent_log_lines": [a.line for a in attempts[-10:]],
                    "log_source": state.log_source,
                },
            )
        )
    if not findings:
        detail = "no blocked attempts counted" if state.ruleset.present else "guard not loaded, nothing counted"
        status = "pass" if state.ruleset.present else "skip"
        findings.append(GuardFinding("GUARD-002", status, title, detail, {"log_source": state.log_source}))
    return findings


def _guard_003(state: GuardState) -> GuardFinding:
    title = "Known phone-home names sinkholed"
    if not state.sinkhole_expected:
        return GuardFinding("GUARD-003", "skip", title, "no phone-home names to check", {})
    present = set(state.sinkhole_present)
    missing = [n for n in state.sinkhole_expected if n not in present]
    evidence = {"expected": list(state.sinkhole_expected), "missing": missing}
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        return GuardFinding("GUARD-003", "fail", title, f"{len(missing)} name(s) still resolve: {shown}", evidence)
    return GuardFinding("GUARD-003", "pass", title, f"all {len(state.sinkhole_expected)} names sinkholed", evidence)


# ---------------------------------------------------------------------------------------------
# I/O: collect the live state

Runner = Callable[..., subprocess.CompletedProcess]


def read_ruleset(
    table: str = DEFAULT_TABLE, netns: str | None = None, run: Runner = subprocess.run
) -> tuple[dict[str, Any] | None, str | None]:
    """(nft JSON of the table or None when it does not exist, error text when nft cannot be asked)."""
    nft = shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)
    if nft is None:
        return None, "nft is not installed"
    cmd = [nft, "-j", "list", "table", "inet", table]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        err = proc.stderr.strip()
        if "No such file or directory" in err or "does not exist" in err:
            return None, None
        return None, (err.splitlines() or ["nft failed"])[-1]
    try:
        return json.loads(proc.stdout), None
    except json.JSONDecodeError:
        return None, "nft printed no JSON"


def read_kernel_log(prefix: str = DEFAULT_LOG_PREFIX, run: Runner = subprocess.run) -> tuple[list[str], str | None]:
    """Recent kernel log lines with the prefix: the journal where journald runs, else dmesg."""
    if Path("/run/systemd/journal").is_dir() and shutil.which("journalctl"):
        proc = run(
            ["journalctl", "-k", "-b", "-o", "short-iso", "--no-pager", "-g", re.escape(prefix)],
            capture_output=True,
            text=True,
        )
        if proc.returncode in (0, 1):  # 1: no match
            return [ln for ln in proc.stdout.splitlines() if prefix in ln], "journal"
    if shutil.which("dmesg"):
        proc = run(["dmesg", "--time-format", "iso"], capture_output=True, text=True)
        if proc.returncode == 0:
            return [ln for ln in proc.stdout.splitlines() if prefix in ln], "dmesg"
    return [], None


def resolve_users(names: Iterable[str], root: Path | None = None) -> tuple[ServiceUser, ...]:
    """uids of the service users: this machine's, or those of the file system at ``root`` (a
    container's /proc/PID/root), whose uids the kernel matches in its network namespace."""
    if root is not None:
        table = read_passwd(root)
        return tuple(ServiceUser(name, table.get(name)) for name in names)
    users = []
    for name in names:
        try:
            users.append(ServiceUser(name, pwd.getpwnam(name).pw_uid))
        except KeyError:
            users.append(ServiceUser(name, None))
    return tuple(users)


def collect_guard_state(
    table: str = DEFAULT_TABLE,
    users: Iterable[str] | None = None,
    log_prefix: str = DEFAULT_LOG_PREFIX,
    hosts_file: Path | None = Path("/etc/hosts"),
    phone_home: Sequence[PhoneHomeEndpoint] | None = None,
    netns: str | None = None,
    run: Runner = subprocess.run,
    root: Path | None = None,
    intent_file: Path | None = DEFAULT_INTENT,
) -> GuardState:
    """Reads the guard from this host (or from inside network namespace ``netns``). With ``root``,
    the users and the hosts file are those of that file system (a container seen from outside).
    ``users`` None: the users the role guarded (its intent.json), else default_users()."""
    if root is not None and hosts_file is not None and not hosts_file.is_relative_to(root):
        hosts_file = root / hosts_file.relative_to("/")
    doc, err = read_ruleset(table, netns=netns, run=run)
    intent, intent_source = read_intent(intent_file, root)
    lines, source = read_kernel_log(log_prefix, run=run)
    endpoints = load_phone_home() if phone_home is None else phone_home
    expected = tuple(sorted(e.host for e in endpoints if e.sinkhole)) if hosts_file else ()
    present: tuple[str, ...] = ()
    if hosts_file is not None:
        try:
            present = tuple(parse_hosts_sinkhole(Path(hosts_file).read_text()))
        except OSError:
            present = ()
    return GuardState(
        table=table,
        ruleset=parse_ruleset(doc, intent),
        users=resolve_users(users if users is not None else intent_users(intent), root),
        attempts=tuple(parse_log_lines(lines, log_prefix)),
        sinkhole_expected=expected,
        sinkhole_present=present,
        nft_error=err,
        log_source=source,
        intent_source=intent_source,
    )


def intent_users(intent: dict[str, Any] | None) -> tuple[str, ...]:
    """The user names the role wrote into its intent (renamed service users included); an intent
    from before the names were written, or none at all, gives default_users()."""
    names = (intent or {}).get("users")
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return tuple(names)
    return default_users()


def default_users() -> tuple[str, ...]:
    """The service accounts the roles create by default: tiers.yaml service_users, their one home."""
    return tuple(dict.fromkeys(load_tiers()["service_users"].values()))


def read_intent(path: Path | None, root: Path | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """The role's intent.json (None when there is none: the structural checks still apply)."""
    if path is None:
        return None, None
    if root is not None and not path.is_relative_to(root):
        path = root / path.relative_to("/")
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"cannot read the guard's intent {path}: {err}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: not a guard intent (a JSON object)")
    return doc, str(path)
