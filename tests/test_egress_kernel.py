"""The egress guard's ruleset, loaded into real kernels: network namespaces these tests create.

Each test renders the role's own template (roles/egress_guard/templates/egress_guard.nft.j2) with
the role's defaults, checks it with ``nft -c``, loads it into a workstation namespace joined by a
veth to a peer namespace (198.51.100.0/24 and 203.0.113.0/24 only), then sends as throwaway service
users and as root. Nothing leaves the namespaces.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import require_binary, require_root
from egress_support import (
    OTHER_USER,
    PEER_ADDR,
    PEER_ADDR2,
    SERVICE_USERS,
    WS_ADDR,
    Pair,
    attempt,
    delete_pair,
    load,
    make_pair,
    nsx,
    render_ruleset,
    safe_values,
    sh,
    tcp_listener,
    throwaway_users,
)

from toolkit.guard import (
    GuardState,
    collect_guard_state,
    guard_findings,
    load_phone_home,
    parse_ruleset,
    read_ruleset,
    resolve_users,
)
from toolkit.module_utils.egress_intent import intent_problems

pytestmark = [pytest.mark.root]

# The guard answers a blocked TCP connect with a local reset (no SYN leaves, no hang); the
# listeners on the peer are up, so a refusal can only come from the guard, and counters confirm it.
REFUSED = "ECONNREFUSED"


@pytest.fixture(scope="module")
def users() -> Iterator[dict[str, int]]:
    require_root()
    require_binary("useradd")
    with throwaway_users() as uids:
        yield uids


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    require_root()
    require_binary("nft")
    require_binary("setpriv")
    p = make_pair()
    try:
        yield p
    finally:
        delete_pair(p)


@pytest.fixture(scope="module")
def listeners(pair: Pair) -> Iterator[None]:
    """TCP listeners on the peer: 8080 and 8081 on 198.51.100.2, 8080 on 203.0.113.2."""
    procs = [
        tcp_listener(pair.peer, PEER_ADDR, 8080),
        tcp_listener(pair.peer, PEER_ADDR, 8081),
        tcp_listener(pair.peer, PEER_ADDR2, 8080),
    ]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _service_uids(users: dict[str, int]) -> list[tuple[str, int]]:
    return [(n, users[n]) for n in SERVICE_USERS]


def _counter(ns: str, name: str) -> int:
    out = nsx(ns, "nft", "-j", "list", "counter", "inet", "toolkit_egress_guard", name).stdout
    import json

    return next(it["counter"]["packets"] for it in json.loads(out)["nftables"] if "counter" in it)


def test_rendered_ruleset_passes_nft_check_in_both_modes(pair: Pair, users: dict[str, int], tmp_path: Path) -> None:
    for extra in (
        {},
        {
            "egress_guard_mode": "host_wide",
            "egress_guard_allowlist": [
                {"cidr": "198.51.100.2/32", "proto": "tcp", "ports": [8080]},
                {"cidr": "2001:db8::/64", "proto": "any"},
            ],
            "egress_guard_sinkhole_addresses": ["203.0.113.9", "2001:db8::9"],
        },
    ):
        path = tmp_path / "check.nft"
        path.write_text(render_ruleset(_service_uids(users), **extra))
        assert nsx(pair.ws, "nft", "-c", "-f", str(path), check=False).returncode == 0


def test_service_user_udp_to_peer_is_refused_with_eperm_and_counted(
    pair: Pair, users: dict[str, int], tmp_path: Path
) -> None:
    load(pair.ws, render_ruleset(_service_uids(users)), tmp_path)
    assert attempt(pair.ws, "egress-t-vllm", "udp", PEER_ADDR, 9) == "EPERM"
    assert attempt(pair.ws, "egress-t-ollama", "udp", PEER_ADDR2, 53) == "EPERM"
    assert _counter(pair.ws, f"blocked_uid_{users['egress-t-vllm']}") == 1
    assert _counter(pair.ws, f"blocked_uid_{users['egress-t-ollama']}") == 1


def test_service_user_tcp_connect_to_peer_is_refused(
    pair: Pair, users: dict[str, int], listeners: None, tmp_path: Path
) -> None:
    load(pair.ws, render_ruleset(_service_uids(users)), tmp_path)
    # The peer counts what arrives from the workstation on 8080: the refusal must be local.
    nsx(
        pair.peer,
        "nft",
        "-f",
        "-",
        input=(
            "table inet egr_peer {\n counter seen {\n }\n chain input {\n"
            " type filter hook input priority 0;\n"
            f" ip saddr {WS_ADDR} tcp dport 8080 counter name seen\n }}\n}}\n"
        ),
    )
    try:
        assert attempt(pair.ws, "egress-t-vllm", "tcp", PEER_ADDR, 8080) == REFUSED
        assert _counter(pair.ws, f"blocked_uid_{users['egress-t-vllm']}") >= 1
        seen = nsx(pair.peer, "nft", "-j", "list", "counter", "inet", "egr_peer", "seen").stdout
        assert '"packets": 0' in seen
        assert attempt(pair.ws, None, "tcp", PEER_ADDR, 8080) == "connected"  # the counter does count
        seen = nsx(pair.peer, "nft", "-j", "list", "counter", "inet", "egr_peer", "seen").stdout
        assert '"packets": 0' not in seen
    finally:
        nsx(pair.peer, "nft", "delete", "table", "inet", "egr_peer", check=False)


def test_service_user_still_reaches_loopback(pair: Pair, users: dict[str, int], tmp_path: Path) -> None:
    load(pair.ws, render_ruleset(_service_uids(users)), tmp_path)
    server = tcp_listener(pair.ws, "127.0.0.1", 8000)
    try:
        assert attempt(pair.ws, "egress-t-vllm", "tcp", "127.0.0.1", 8000) == "connected"
        assert attempt(pair.ws, "egress-t-vllm", "udp", "127.0.0.1", 9) == "sent"
    finally:
        server.kill()
        server.wait()
    assert _counter(pair.ws, f"blocked_uid_{users['egress-t-vllm']}") == 0


def test_root_and_other_users_still_send_in_service_users_mode(
    pair: Pair, users: dict[str, int], listeners: None, tmp_path: Path
) -> None:
    load(pair.ws, render_ruleset(_service_uids(users)), tmp_path)
    assert attempt(pair.ws, None, "tcp", PEER_ADDR, 8080) == "connected"
    assert attempt(pair.ws, OTHER_USER, "tcp", PEER_ADDR, 8081) == "connected"
    assert attempt(pair.ws, OTHER_USER, "udp", PEER_ADDR2, 9) == "sent"


def test_host_wide_allowlist_lets_exactly_what_it_names_through(
    pair: Pair, users: dict[str, int], listeners: None, tmp_path: Path
) -> None:
    allow = [{"cidr": f"{PEER_ADDR}/32", "proto": "tcp", "ports": [8080], "comment": "internal model mirror"}]
    load(
        pair.ws,
        render_ruleset(_service_uids(users), egress_guard_mode="host_wide", egress_guard_allowlist=allow),
        tmp_path,
    )
    # Named: root and a developer get through; the established connection's replies too.
    assert attempt(pair.ws, None, "tcp", PEER_ADDR, 8080) == "connected"
    assert attempt(pair.ws, OTHER_USER, "tcp", PEER_ADDR, 8080) == "connected"
    # Not named: another port, another protocol, another address.
    assert attempt(pair.ws, None, "tcp", PEER_ADDR, 8081) == REFUSED
    assert attempt(pair.ws, None, "udp", PEER_ADDR, 8080) == "EPERM"
    assert attempt(pair.ws, None, "tcp", PEER_ADDR2, 8080) == REFUSED
    # Service users stay blocked even towards what the allowlist names.
    assert attempt(pair.ws, "egress-t-vllm", "tcp", PEER_ADDR, 8080) == REFUSED
    assert _counter(pair.ws, "blocked_host") == 3
    assert _counter(pair.ws, f"blocked_uid_{users['egress-t-vllm']}") == 1


def test_phone_home_address_set_blocks_every_user(
    pair: Pair, users: dict[str, int], listeners: None, tmp_path: Path
) -> None:
    load(
        pair.ws,
        render_ruleset(_service_uids(users), egress_guard_sinkhole_addresses=[f"{PEER_ADDR2}/32"]),
        tmp_path,
    )
    assert attempt(pair.ws, OTHER_USER, "tcp", PEER_ADDR2, 8080) == REFUSED
    assert attempt(pair.ws, OTHER_USER, "tcp", PEER_ADDR, 8080) == "connected"
    assert _counter(pair.ws, "blocked_phone_home") == 1


def test_reloading_replaces_the_table_atomically_and_touches_no_other_table(
    pair: Pair, users: dict[str, int], tmp_path: Path
) -> None:
    nsx(pair.ws, "nft", "add", "table", "inet", "egr_neighbour")
    try:
        rules = render_ruleset(_service_uids(users))
        load(pair.ws, rules, tmp_path)
        load(pair.ws, rules, tmp_path)
        tables = nsx(pair.ws, "nft", "list", "tables").stdout.split("\n")
        assert sorted(t.strip() for t in tables if t.strip()) == [
            "table inet egr_neighbour",
            "table inet toolkit_egress_guard",
        ]
        # The stateless listing is what the role compares to decide whether to reload.
        first = nsx(pair.ws, "nft", "-s", "list", "table", "inet", "toolkit_egress_guard").stdout
        load(pair.ws, rules, tmp_path)
        assert nsx(pair.ws, "nft", "-s", "list", "table", "inet", "toolkit_egress_guard").stdout == first
    finally:
        nsx(pair.ws, "nft", "delete", "table", "inet", "egr_neighbour", check=False)


@pytest.fixture
def netns_kernel_log() -> Iterator[None]:
    """The kernel logs netfilter packets of non-initial namespaces only with nf_log_all_netns=1;
    turned on for the test and restored after, so the guard's log lines from our namespace show."""
    key = Path("/proc/sys/net/netfilter/nf_log_all_netns")
    if not key.exists():
        sh("modprobe", "nf_log_syslog", check=False)
    before = key.read_text().strip()
    key.write_text("1")
    try:
        yield
    finally:
        key.write_text(before)


def test_guard_state_reports_loaded_guard_and_the_blocked_attempt(
    pair: Pair, users: dict[str, int], netns_kernel_log: None, tmp_path: Path
) -> None:
    load(pair.ws, render_ruleset(_service_uids(users)), tmp_path)
    assert attempt(pair.ws, "egress-t-vllm", "udp", PEER_ADDR, 4242) == "EPERM"
    vllm_uid = users["egress-t-vllm"]

    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n0.0.0.0 stats.vllm.ai\n")
    state = collect_guard_state(users=(*SERVICE_USERS, "egress-t-absent"), hosts_file=hosts, netns=pair.ws)
    assert state.ruleset.present and state.ruleset.hooked
    assert set(state.ruleset.covered_uids) == {users[n] for n in SERVICE_USERS}

    findings = guard_findings(state)
    by = {(f.control, f.status) for f in findings}
    assert ("GUARD-001", "pass") in by
    blocked = [f for f in findings if f.control == "GUARD-002" and f.status == "blocked"]
    assert [f.evidence["packets"] for f in blocked] == [1]
    assert blocked[0].evidence["uid"] == vllm_uid
    assert state.log_source in ("dmesg", "journal")
    mine = [a for a in state.attempts if a.uid == vllm_uid and a.dport == 4242 and a.dst == PEER_ADDR]
    assert mine and mine[-1].proto == "UDP" and mine[-1].reason == "service"
    assert f"{PEER_ADDR}:4242/udp" in blocked[0].detail
    # Only one of the expected phone-home names is in this hosts file: GUARD-003 names the rest.
    g3 = next(f for f in findings if f.control == "GUARD-003")
    expected = sorted(e.host for e in load_phone_home() if e.sinkhole)
    assert g3.status == "fail" and g3.evidence["missing"] == [n for n in expected if n != "stats.vllm.ai"]


def test_guard_state_reports_missing_guard_as_failure(pair: Pair, users: dict[str, int]) -> None:
    nsx(pair.ws, "nft", "delete", "table", "inet", "toolkit_egress_guard", check=False)
    state = collect_guard_state(users=SERVICE_USERS, hosts_file=None, netns=pair.ws)
    g1 = next(f for f in guard_findings(state) if f.control == "GUARD-001")
    assert (g1.status, g1.detail) == ("fail", "table inet toolkit_egress_guard is not loaded")


def test_user_missing_from_the_ruleset_is_reported_uncovered(pair: Pair, users: dict[str, int], tmp_path: Path) -> None:
    load(pair.ws, render_ruleset([("egress-t-vllm", users["egress-t-vllm"])]), tmp_path)
    state = collect_guard_state(users=SERVICE_USERS, hosts_file=None, netns=pair.ws)
    g1 = next(f for f in guard_findings(state) if f.control == "GUARD-001")
    assert g1.status == "fail"
    assert g1.detail == f"not covered: egress-t-ollama (uid {users['egress-t-ollama']})"


def test_nft_check_refuses_a_bad_address_before_anything_is_loaded(
    pair: Pair, users: dict[str, int], tmp_path: Path
) -> None:
    """The role validates entries before rendering; nft -c is the last line, shown here on its own."""
    nsx(pair.ws, "nft", "delete", "table", "inet", "toolkit_egress_guard", check=False)
    bad = render_ruleset(
        _service_uids(users),
        egress_guard_mode="host_wide",
        # Past the role's filters on purpose (they refuse it first): nft -c on its own.
        _egress_guard_allowlist=[
            {"family": "ip", "cidr": "198.51.100.300/32", "proto": "any", "ports": [], "comment": "x"}
        ],
    )
    path = tmp_path / "bad.nft"
    path.write_text(bad)
    proc = nsx(pair.ws, "nft", "-c", "-f", str(path), check=False)
    assert proc.returncode != 0
    assert "198.51.100.300" in proc.stderr
    assert (
        subprocess.run(
            ["ip", "netns", "exec", pair.ws, "nft", "list", "tables"], capture_output=True, text=True
        ).stdout.strip()
        == ""
    )


def test_audit_in_the_namespace_reports_the_guard_and_what_it_blocked(
    pair: Pair, users: dict[str, int], netns_kernel_log: None, tmp_path: Path
) -> None:
    """`toolkit audit --guard`, run inside the guarded namespace while a service user tries to leave:
    the guard is reported loaded (GUARD-001), the attempt as blocked (GUARD-002), and no packet of it
    escaped onto the wire (EGRESS-001)."""
    import json
    import sys
    import threading
    import time

    from conftest import REPO

    load(pair.ws, render_ruleset(_service_uids(users)), tmp_path)
    ready = tmp_path / "ready"
    argv = [
        "ip",
        "netns",
        "exec",
        pair.ws,
        sys.executable,
        "-m",
        "toolkit",
        "audit",
        "--guard",
        "--no-static",
        "--duration",
        "4",
        "--json",
        "--ready-file",
        str(ready),
    ]
    for name in SERVICE_USERS:
        argv += ["--guard-user", name]
    out: dict = {}

    def run_audit() -> None:
        out["r"] = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120)

    t = threading.Thread(target=run_audit)
    t.start()
    for _ in range(300):
        if ready.exists():
            break
        time.sleep(0.1)
    assert ready.exists(), "the audit's capture never became ready"
    assert attempt(pair.ws, "egress-t-vllm", "udp", PEER_ADDR, 4343) == "EPERM"
    t.join()
    report = json.loads(out["r"].stdout)
    ctl = {c["id"]: c for c in report["controls"]}
    assert ctl["GUARD-001"]["status"] == "pass", ctl["GUARD-001"]
    assert ctl["GUARD-002"]["status"] == "blocked" and f"{PEER_ADDR}:4343/udp" in json.dumps(ctl["GUARD-002"])
    assert ctl["EGRESS-001"]["status"] == "pass"  # blocked before the wire: nothing escaped
    assert not [f for f in report["findings"] if f.get("remote_port") == 4343]


def test_block_scalar_allowlist_is_refused_and_what_it_used_to_render_is_caught_loaded(
    pair: Pair, users: dict[str, int], tmp_path: Path
) -> None:
    """A YAML `|` block gives "192.0.2.0/24\\n". The filters refuse it; rendered past them (as the
    old template did) it splits into a bare match and an unconditional accept, which lets root
    reach the peer; the intent check and GUARD-001 name that rule once it is loaded."""
    entry = yaml.safe_load("cidr: |\n  192.0.2.0/24\nproto: any\n")
    assert entry["cidr"] == "192.0.2.0/24\n"
    with pytest.raises(safe_values.UnsafeValue, match="control character"):
        render_ruleset(_service_uids(users), egress_guard_mode="host_wide", egress_guard_allowlist=[entry])

    # What the refused value renders when it gets past validation:
    unsafe = [{"family": "ip", "cidr": entry["cidr"], "proto": "any", "ports": [], "comment": "admin net"}]
    load(
        pair.ws,
        render_ruleset(_service_uids(users), egress_guard_mode="host_wide", _egress_guard_allowlist=unsafe),
        tmp_path,
    )
    assert attempt(pair.ws, None, "udp", PEER_ADDR, 9) == "sent"  # the hole the newline opened
    doc, err = read_ruleset(netns=pair.ws)
    intent = {"uids": [u for _, u in _service_uids(users)], "host_wide": True, "allowlist": [{"cidr": "192.0.2.0/24"}]}
    problems = intent_problems(doc, intent)
    assert "output rule 8 accepts everything (it carries no match)" in problems, problems
    state = GuardState(table="toolkit_egress_guard", ruleset=parse_ruleset(doc), users=resolve_users(SERVICE_USERS))
    g1 = guard_findings(state)[0]
    assert g1.status == "fail" and "accepts everything" in g1.detail, g1

    # The same allowlist without the newline: the peer (not in it) is blocked for root too.
    load(
        pair.ws,
        render_ruleset(
            _service_uids(users),
            egress_guard_mode="host_wide",
            egress_guard_allowlist=[{"cidr": "192.0.2.0/24", "proto": "any"}],
        ),
        tmp_path,
    )
    assert attempt(pair.ws, None, "udp", PEER_ADDR, 9) == "EPERM"
    doc, err = read_ruleset(netns=pair.ws)
    assert intent_problems(doc, intent) == []
