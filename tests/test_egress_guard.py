"""Pure parts of the egress guard: parsing recorded nft JSON and kernel log lines, the audit
findings, the phone-home data, and the role's own consistency (specs, README, defaults).

tests/data/egress/host-wide-table.json was recorded from a real kernel: the role's template in
host_wide mode loaded in a test namespace, after two blocked sends by a service user (uid 999)
and one by root (blocked by the host-wide policy).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from toolkit import roledoc
from toolkit.errors import UsageError
from toolkit.guard import (
    GuardState,
    ServiceUser,
    collect_guard_state,
    guard_findings,
    load_phone_home,
    match_phone_home,
    parse_hosts_sinkhole,
    parse_log_lines,
    parse_ruleset,
)

REPO = Path(__file__).resolve().parent.parent
ROLE = REPO / "roles" / "egress_guard"
RECORDED = json.loads((REPO / "tests" / "data" / "egress" / "host-wide-table.json").read_text())

DMESG_LINE = (
    "2026-11-25T02:24:29,759856+00:00 egress-guard service: IN= OUT=egrw90e901 SRC=198.51.100.1 "
    "DST=198.51.100.2 LEN=45 TOS=0x00 PREC=0x00 TTL=64 ID=12771 DF PROTO=UDP SPT=36371 DPT=4242 "
    "LEN=25 UID=999 GID=995 "
)
# The same event as `journalctl -k -o short-iso` prints it.
JOURNAL_LINE = (
    "2026-11-25T02:24:29+0000 ws01 kernel: egress-guard host: IN= OUT=eth0 SRC=192.0.2.5 "
    "DST=203.0.113.7 LEN=60 TOS=0x00 PREC=0x00 TTL=64 ID=1 DF PROTO=TCP SPT=40000 DPT=443 "
    "WINDOW=64240 RES=0x00 SYN URGP=0 UID=0 GID=0 "
)


def _state(**kw) -> GuardState:
    base = dict(
        table="toolkit_egress_guard",
        ruleset=parse_ruleset(RECORDED),
        users=(ServiceUser("vllm", 999), ServiceUser("ollama", 995)),
    )
    base.update(kw)
    return GuardState(**base)


def test_recorded_table_parses_to_covered_uids_counters_and_mode() -> None:
    view = parse_ruleset(RECORDED)
    assert view.present and view.hooked and view.host_wide
    assert view.covered_uids == (995, 999)
    counts = {c.name: c.packets for c in view.counters}
    assert counts == {"blocked_uid_999": 2, "blocked_uid_995": 0, "blocked_host": 1}


RECORDED_INTENT = {
    "uids": [999, 995],
    "host_wide": True,
    "allowlist": [{"cidr": "198.51.100.2/32", "proto": "tcp", "ports": [8080]}],
    "controller": "",
    "sinkhole_addresses": [],
}


def test_recorded_table_matches_its_intent_and_guard_001_passes() -> None:
    view = parse_ruleset(RECORDED, RECORDED_INTENT)
    assert view.problems == ()
    (g1,) = [f for f in guard_findings(_state(ruleset=view, intent_source="intent.json")) if f.control == "GUARD-001"]
    assert g1.status == "pass" and g1.evidence["intent"] == "intent.json"


def test_guard_001_fails_when_the_loaded_allowlist_differs_from_the_intent() -> None:
    intent = {**RECORDED_INTENT, "allowlist": [{"cidr": "198.51.100.2/32", "proto": "tcp", "ports": [443]}]}
    view = parse_ruleset(RECORDED, intent)
    assert view.problems == (
        "intended rule missing: ip daddr 198.51.100.2 tcp dport 443 accept",
        "rule not in the intent: ip daddr 198.51.100.2 tcp dport 8080 accept",
    )
    g1 = guard_findings(_state(ruleset=view, intent_source="/var/lib/toolkit/egress_guard/intent.json"))[0]
    assert g1.status == "fail"
    assert g1.detail.startswith("loaded ruleset differs from intent /var/lib/toolkit/egress_guard/intent.json: ")


def test_guard_001_fails_on_an_unconditional_accept_even_without_an_intent() -> None:
    doc = json.loads(json.dumps(RECORDED))
    rules = [it["rule"] for it in doc["nftables"] if "rule" in it and it["rule"]["chain"] == "output"]
    allow = next(r for r in rules if any("accept" in e for e in r["expr"]) and "198.51.100.2" in json.dumps(r))
    allow["expr"] = [{"accept": None}]  # what "cidr: 198.51.100.2/32\\n" used to render
    g1 = guard_findings(_state(ruleset=parse_ruleset(doc)))[0]
    assert g1.status == "fail"
    assert "output rule 7 accepts everything (it carries no match)" in g1.detail


def test_no_table_parses_to_absent() -> None:
    assert not parse_ruleset(None).present


def test_log_lines_from_dmesg_and_journal_give_destination_port_and_uid() -> None:
    unrelated = "2026-11-25T02:00:00,0+00:00 cni-podman0: port 3 entered disabled state"
    got = parse_log_lines([DMESG_LINE, unrelated, JOURNAL_LINE])
    assert [(a.reason, a.dst, a.proto, a.dport, a.uid) for a in got] == [
        ("service", "198.51.100.2", "UDP", 4242, 999),
        ("host", "203.0.113.7", "TCP", 443, 0),
    ]
    assert got[0].time == "2026-11-25T02:24:29,759856+00:00"


def test_findings_pass_guard_001_and_report_blocked_attempts_apart() -> None:
    findings = guard_findings(_state(attempts=tuple(parse_log_lines([DMESG_LINE, JOURNAL_LINE]))))
    g1 = [f for f in findings if f.control == "GUARD-001"]
    assert [(f.status, f.detail) for f in g1] == [
        ("pass", "loaded, drops non-loopback egress of vllm (uid 999), ollama (uid 995)")
    ]
    g2 = [f for f in findings if f.control == "GUARD-002"]
    assert [(f.status, f.evidence["counter"], f.evidence["packets"]) for f in g2] == [
        ("blocked", "blocked_uid_999", 2),
        ("blocked", "blocked_host", 1),
    ]
    assert g2[0].detail == "vllm (uid 999): 2 packet(s) dropped (logged destinations: 198.51.100.2:4242/udp)"
    assert g2[1].evidence["recent_log_lines"] == [JOURNAL_LINE.strip()]
    assert all(f.status != "fail" for f in findings if f.control != "GUARD-003")


def test_findings_fail_when_a_service_user_is_not_covered() -> None:
    state = _state(users=(ServiceUser("vllm", 999), ServiceUser("ollama", 1234), ServiceUser("gone", None)))
    g1 = guard_findings(state)[0]
    assert (g1.control, g1.status, g1.detail) == ("GUARD-001", "fail", "not covered: ollama (uid 1234)")


def test_findings_fail_when_nft_cannot_be_read() -> None:
    g1 = guard_findings(_state(ruleset=parse_ruleset(None), nft_error="Operation not permitted"))[0]
    assert (g1.status, g1.detail) == ("fail", "cannot read the ruleset: Operation not permitted")


def test_sinkhole_finding_names_what_still_resolves() -> None:
    hosts = "127.0.0.1 localhost\n0.0.0.0 stats.vllm.ai # guard\n:: huggingface.co\n192.0.2.1 mirror\n"
    present = tuple(parse_hosts_sinkhole(hosts))
    assert present == ("huggingface.co", "stats.vllm.ai")
    expected = ("huggingface.co", "stats.vllm.ai", "us.i.posthog.com")
    g3 = guard_findings(_state(sinkhole_expected=expected, sinkhole_present=present))[-1]
    assert (g3.control, g3.status, g3.evidence["missing"]) == ("GUARD-003", "fail", ["us.i.posthog.com"])
    g3 = guard_findings(_state(sinkhole_expected=expected[:2], sinkhole_present=present))[-1]
    assert g3.status == "pass"


def test_phone_home_list_cites_a_source_for_every_unique_entry() -> None:
    endpoints = load_phone_home()
    hosts = [e.host for e in endpoints]
    assert len(hosts) == len(set(hosts))
    assert {e.component for e in endpoints} >= {
        "vllm",
        "huggingface-hub",
        "ollama",
        "continue",
        "vscode",
        "pip",
    }
    for e in endpoints:
        assert re.fullmatch(r"[a-z0-9.-]+\.[a-z]+", e.host), e.host
        assert e.kind in {
            "telemetry",
            "update-check",
            "model-hub",
            "extension-gallery",
            "package-registry",
            "account",
        }
        assert "https://" in e.source or "/" in e.source, e.host
        assert len(e.reason) > 20, e.host
    # Registries the developer needs are reported, never sinkholed.
    assert not any(e.sinkhole for e in endpoints if e.kind == "package-registry")


def test_dns_query_names_match_phone_home_entries_case_and_dot_insensitively() -> None:
    endpoints = load_phone_home()
    assert match_phone_home("Stats.VLLM.ai.", endpoints).component == "vllm"
    assert match_phone_home("example.org", endpoints) is None


def test_malformed_phone_home_file_is_one_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "ph.yaml"
    bad.write_text("endpoints:\n  - host: x\n")
    with pytest.raises(UsageError, match="not a phone-home list"):
        load_phone_home(bad)


def _units_module():
    path = REPO / "plugins" / "modules" / "egress_guard_units.py"
    spec = importlib.util.spec_from_file_location("egress_guard_units", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_cgroup_mode_tells_unified_from_hybrid_and_legacy() -> None:
    mod = _units_module()
    assert mod.cgroup_mode("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n") == "unified"
    hybrid = "tmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    assert mod.cgroup_mode(hybrid) == "hybrid"
    assert mod.cgroup_mode("tmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n") == "legacy"


def test_unit_filter_check_reads_systemd_show_output() -> None:
    mod = _units_module()
    # systemctl show prints IPAddressDeny=any as the two all-covering networks.
    assert mod.denies_all("0.0.0.0/0 ::/0") and mod.denies_all("any")
    assert not mod.denies_all("")
    assert mod.allows_only_localhost("127.0.0.0/8 ::1/128")
    assert not mod.allows_only_localhost("127.0.0.0/8 ::1/128 192.0.2.0/24")
    assert not mod.allows_only_localhost("")


def test_every_role_default_is_specified_and_documented() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    spec = roledoc.load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    readme = (ROLE / "README.md").read_text()
    assert set(defaults) == set(spec)
    for name in defaults:
        assert f"`{name}`" in readme, name


def test_guard_state_of_another_root_takes_its_users_and_hosts_file_not_this_machines(tmp_path: Path) -> None:
    """A container judged from outside (`toolkit audit --guard --root /proc/PID/root`): its passwd and
    /etc/hosts decide. The ruleset comes from a recorded nft answer; no kernel is asked."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nvllm:x:999:995::/opt/vllm:/usr/sbin/nologin\n")
    names = [e.host for e in load_phone_home() if e.sinkhole]
    (tmp_path / "etc" / "hosts").write_text("".join(f"0.0.0.0 {n}\n" for n in names))

    def fake_nft(cmd, **_):
        out = json.dumps(RECORDED) if "nft" in cmd[0] else ""
        return subprocess.CompletedProcess(cmd, 0 if "nft" in cmd[0] else 1, out, "")

    state = collect_guard_state(users=("vllm", "ollama"), root=tmp_path, run=fake_nft)
    assert state.users == (ServiceUser("vllm", 999), ServiceUser("ollama", None))
    assert sorted(state.sinkhole_present) == sorted(names)
    found = {f.control: f.status for f in guard_findings(state)}
    assert found["GUARD-001"] == "pass" and found["GUARD-003"] == "pass"


def test_guard_judges_the_users_the_role_wrote_into_its_intent_a_renamed_service_user_included(
    tmp_path: Path,
) -> None:
    """vllm_user renamed to aiserve: the role guards aiserve and says so in intent.json; without
    --user, GUARD-001 judges aiserve (the recorded ruleset is another's: fail), not the built-in names."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\naiserve:x:990:990::/:/usr/sbin/nologin\n")
    intent = tmp_path / "var" / "lib" / "toolkit" / "intent.json"
    intent.parent.mkdir(parents=True)
    intent.write_text(json.dumps({"table": "toolkit_egress_guard", "uids": [990], "users": ["aiserve"]}))

    def fake_nft(cmd, **_):
        out = json.dumps(RECORDED) if "nft" in cmd[0] else ""
        return subprocess.CompletedProcess(cmd, 0 if "nft" in cmd[0] else 1, out, "")

    state = collect_guard_state(root=tmp_path, run=fake_nft, hosts_file=None, intent_file=intent)
    assert state.users == (ServiceUser("aiserve", 990),)
    g1 = next(f for f in guard_findings(state) if f.control == "GUARD-001")
    assert g1.status == "fail" and g1.evidence["users"] == {"aiserve": 990}, g1
    # An intent written before the names were recorded keeps the built-in list.
    intent.write_text(json.dumps({"table": "toolkit_egress_guard", "uids": [999]}))
    state = collect_guard_state(root=tmp_path, run=fake_nft, hosts_file=None, intent_file=intent)
    assert [u.name for u in state.users] == ["vllm", "ollama"]


def test_passwd_of_another_root_names_its_uids_and_the_first_entry_wins() -> None:
    from toolkit.passwd import parse_passwd

    text = "root:x:0:0::/root:/bin/sh\nvllm:x:999:995::/opt/vllm:/usr/sbin/nologin\nvllm:x:5:5::/:/bin/sh\nbad line\n"
    assert parse_passwd(text) == {"root": 0, "vllm": 999}


def test_audit_of_another_root_names_flows_after_its_users_not_this_machines(tmp_path: Path) -> None:
    from toolkit.audit.attribution import user_name
    from toolkit.audit.run import _user_names

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("vllm:x:0:0::/:/bin/sh\nroot:x:0:0::/root:/bin/sh\n")
    names = _user_names(tmp_path)
    assert names == {0: "vllm"}  # the container's name for uid 0, not this machine's "root"
    assert user_name(0, names) == "vllm" and user_name(4242, names) == "4242"
    assert _user_names(Path("/")) is None and user_name(0) == "root"
