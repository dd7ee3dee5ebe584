"""The continuous audit agent: windows, retention, the textfile, and the pure pieces of exact
attribution (audit record parsing, matching, redaction) on records as the kernel wrote them.

The live test is real: the agent captures inside a namespace pair the test creates, attribution
from kernel audit records, a sender that exits right after one unconnected sendto() as nobody."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.audit_support import PEER_V4, drop_pair, make_pair, quiet_static, toolkit_cmd
from toolkit.audit.agent import AgentState, prune, render_textfile, window_name
from toolkit.audit.auditd import (
    AF_INET,
    AF_INET6,
    Assembler,
    SendEvent,
    attribute_findings,
    audit_rules,
    parse_sockaddr,
    redact_cmdline,
)

PROMTOOL = shutil.which("promtool")

# One connect() as the kernel logged it here (auditctl -a always,exit -F arch=b64 -S connect -k ...),
# to 198.51.100.2:9 by a bash that then exited.
RECORDS = [
    (
        1300,
        "audit(1796153103.511:3): arch=c000003e syscall=42 success=no exit=-111 a0=3 a1=7fff5bf591f0 a2=10 "
        "a3=0 items=0 ppid=24777 pid=24778 auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 "
        'fsgid=0 tty=(none) ses=4294967295 comm="bash" exe="/usr/bin/bash" key="toolkit-egress"',
    ),
    (1306, "audit(1796153103.511:3): saddr=02000009C6336402" + "00" * 8),
    (1327, "audit(1796153103.511:3): proctitle=62617368002D630063757266002D2D746F6B656E00733363726574"),
    (1320, "audit(1796153103.511:3): "),
]


def test_assembler_joins_syscall_sockaddr_and_proctitle_of_one_event_into_a_send():
    asm = Assembler()
    got = [asm.feed(t, text) for t, text in RECORDS]
    assert got[:3] == [None, None, None]
    assert got[3] == SendEvent(
        serial=3,
        ts=1796153103.511,
        syscall=42,
        success=False,
        pid=24778,
        ppid=24777,
        uid=0,
        comm="bash",
        exe="/usr/bin/bash",
        cmdline="bash -c curf --token ***",
        family=AF_INET,
        address="198.51.100.2",
        port=9,
    )
    assert asm.pending == {}


def test_assembler_ignores_events_of_other_keys_and_unix_sockets():
    asm = Assembler()
    other = [(t, text.replace('key="toolkit-egress"', 'key="someone-else"')) for t, text in RECORDS]
    assert [asm.feed(t, x) for t, x in other][-1] is None
    unix = [(1306, "audit(1.000:9): saddr=01002F7661722F72756E") if t == 1306 else (t, x) for t, x in RECORDS]
    unix = [(t, x.replace("1796153103.511:3", "1.000:9")) for t, x in unix]
    assert [asm.feed(t, x) for t, x in unix][-1] is None


def test_sockaddr_v4_v6_and_v4_mapped():
    assert parse_sockaddr("0200" + "01BB" + "C0000201" + "00" * 8) == (AF_INET, "192.0.2.1", 443)
    v6 = "0A00" + "0035" + "00000000" + "20010db8000000000000000000000001" + "00000000"
    assert parse_sockaddr(v6) == (AF_INET6, "2001:db8::1", 53)
    mapped = "0A00" + "0050" + "00000000" + "00000000000000000000ffffc6336402" + "00000000"
    assert parse_sockaddr(mapped) == (AF_INET6, "198.51.100.2", 80)
    assert parse_sockaddr("0100") is None and parse_sockaddr("zz") is None


def test_redaction_masks_flag_values_key_values_and_url_passwords():
    assert redact_cmdline("curl --api-key abc -H x https://u:p@h/ password=hunter2 --keep me") == (
        "curl --api-key *** -H x https://***@h/ password=*** --keep me"
    )


def test_audit_rules_cover_inet_connects_and_only_the_named_users_sends():
    assert audit_rules((998, 65534, 998)) == [
        ["always,exit", "-F", "arch=b64", "-S", "connect", "-F", "a2=16", "-k", "toolkit-egress"],
        ["always,exit", "-F", "arch=b64", "-S", "connect", "-F", "a2=28", "-k", "toolkit-egress"],
        ["always,exit", "-F", "arch=b64", "-S", "sendto,sendmsg", "-F", "uid=998", "-k", "toolkit-egress"],
        ["always,exit", "-F", "arch=b64", "-S", "sendto,sendmsg", "-F", "uid=65534", "-k", "toolkit-egress"],
    ]


def _ev(serial: int, ts: float, pid: int, port: int = 9) -> SendEvent:
    return SendEvent(serial, ts, 42, True, pid, 1, 0, "bash", "/usr/bin/bash", "bash", AF_INET, PEER_V4, port)


def _flow(first: str, port: int = 9, proc=None) -> dict:
    return {
        "remote_address": PEER_V4,
        "remote_port": port,
        "first_seen": first,
        "direction": "outbound",
        "process": proc,
    }


def test_matching_takes_senders_in_order_and_counts_what_it_cannot_attribute():
    # 100.000: two senders to :9 within one coarse tick; the third flow has no record at all but
    # /proc found its owner; the fourth has neither.
    events = [_ev(1, 1800000000.000, 11), _ev(2, 1800000000.000, 12), _ev(3, 1799999000.0, 13, port=53)]
    flows = [
        _flow("2027-01-15T08:00:00.003Z"),
        _flow("2027-01-15T08:00:00.001Z"),
        _flow("2027-01-15T08:00:00.004Z", 53, {"pid": 77, "method": "proc-net+fd-scan"}),
        _flow("2027-01-15T08:00:00.004Z", 443),
    ]
    used: set[int] = set()
    counts = attribute_findings(flows, events, used)
    assert [f["process"]["pid"] for f in flows] == [12, 11, 77, None]
    assert [f["process"].get("match") for f in flows[:2]] == ["unique", "ordered"]
    assert flows[1]["process"]["candidates"] == 2
    assert flows[3]["process"]["status"] == "unknown: no audit record for this destination"
    assert counts == {
        "methods": {"auditd": 2, "proc-net+fd-scan": 1},
        "unattributed": 1,
        "ordered_matches": 1,
        "audit_records_lost": 0,
    }
    assert used == {1, 2}  # the :53 record is older than the horizon: not this flow's cause


def sample_report(verdict: str = "PASS") -> dict:
    return {
        "host": 'ws"1',
        "verdict": verdict,
        "exit_code": 0,
        "timestamp": 1_800_000_000.5,
        "policy": {"networks": ["127.0.0.0/8", "::1/128"]},
        "controls": [{"id": "CAPTURE-001", "severity": "critical", "status": "pass", "items": []}],
        "findings": [],
        "capture": {
            "stats": {"interfaces_sent_packets": {"lo": 4, "veth0": 2}, "interfaces_seen_sending": {"veth0": 2}}
        },
    }


def test_textfile_says_when_no_window_completed_and_escapes_the_host():
    text = render_textfile(sample_report(), AgentState(), 300)
    assert 'toolkit_audit_agent_last_complete_window_timestamp_seconds{host="ws\\"1"} 0.000\n' in text
    assert 'toolkit_audit_interface_sent_packets{host="ws\\"1",interface="veth0"} 2\n' in text
    assert 'toolkit_audit_interface_seen_packets{host="ws\\"1",interface="lo"} 0\n' in text
    assert "toolkit_guard_dropped_packets_total" not in text


def test_textfile_omits_seen_packets_when_the_policy_allows_a_lan():
    report = sample_report()
    report["policy"]["networks"].append("192.168.0.0/16")
    assert "toolkit_audit_interface_seen_packets" not in render_textfile(report, AgentState(), 300)


def test_prune_keeps_the_newest_windows(tmp_path):
    stamps = [window_name(1_800_000_000 + 300 * i) for i in range(5)]
    for s in stamps:
        (tmp_path / f"{s}.json").write_text("{}")
        (tmp_path / f"{s}.junit.xml").write_text("<x/>")
    removed = prune(tmp_path, 2)
    assert len(removed) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{s}.json" for s in stamps[3:]] + [f"{s}.junit.xml" for s in stamps[3:]]
    )


@pytest.fixture
def pair():
    p = make_pair("agt")
    yield p
    drop_pair(p)


def _wait(cond, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"agent exited early: {proc.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, "timed out waiting on the agent"
        time.sleep(0.05)


SENDTO = "import os, socket; print(os.getpid(), flush=True); socket.socket(2, 2).sendto(b'x', ('{peer}', 7))"


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.skipif(PROMTOOL is None or shutil.which("auditctl") is None, reason="needs promtool and auditctl")
def test_agent_windows_retention_textfile_and_a_failing_window_naming_an_exited_sender(pair, tmp_path):
    out, ready, textfile = tmp_path / "out", tmp_path / "ready", tmp_path / "prom" / "toolkit_audit.prom"
    agent = subprocess.Popen(
        [
            *toolkit_cmd("audit-agent"),
            "--netns", f"/run/netns/{pair.host}", "--window", "3", "--windows", "3", "--keep", "2",
            "--out", str(out), "--textfile", str(textfile), "--ready-file", str(ready),
            "--audit-user", "nobody", "--no-static", *quiet_static(tmp_path),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait(ready.exists, agent)  # window 0 is live (3 s: time enough to see window 1 start)
        ready.unlink()
        _wait(ready.exists, agent)  # window 1 is live: window 0 closed with nothing sent
        first = textfile.read_text()
        sender = pair.run(
            pair.host, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
            "python3", "-c", SENDTO.format(peer=PEER_V4), timeout=30,
        )  # fmt: skip
        sender_pid = int(sender.stdout)
        stdout, err = agent.communicate(timeout=60)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, err[-2000:]
    assert [line.split(":")[1].split()[0] for line in stdout.splitlines()] == ["PASS", "FAIL", "PASS"]
    windows = sorted((out / "windows").glob("*.json"))
    assert len(windows) == 2 and len(list((out / "windows").glob("*.junit.xml"))) == 2
    failing = json.loads(windows[0].read_text())
    assert (failing["window"]["index"], failing["verdict"]) == (1, "FAIL")
    # The datagram; the peer's ICMP port-unreachable answer (nothing listens on :7 there) is tied to
    # the flow it quotes, not a flow of its own.
    flows = {f["protocol"]: f for f in failing["findings"]}
    assert sorted(flows) == ["udp"], json.dumps(failing["findings"], indent=1)[:3000]
    flow = flows["udp"]
    assert (flow["remote_address"], flow["remote_port"], flow["direction"]) == (PEER_V4, 7, "outbound")
    assert flow["icmp_errors"] == 1
    attribution = failing["attribution"]
    assert attribution.get("exact") == "auditd", attribution  # else it says why the audit records were not used
    # The sender was forked after the rules: audited either way. Processes older than the agent are
    # audited only if the audit subsystem was enabled before they started (not so on a fresh boot).
    assert attribution["older_processes"] == "audited" or attribution["older_processes"].startswith(
        "not audited: the audit subsystem was first enabled after they started"
    ), attribution
    assert attribution["methods"] == {"auditd": 1} and attribution["unattributed"] == 0, attribution
    proc = flow["process"]
    assert (proc["method"], proc["pid"], proc["uid"], proc["user"], proc["syscall"]) == (
        "auditd",
        sender_pid,
        65534,
        "nobody",
        "sendto",
    )
    assert proc["comm"] == "python3" and Path(proc["exe"]).name.startswith("python3")
    assert json.loads((out / "audit.json").read_text())["window"]["index"] == 2
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=textfile.read_text(), capture_output=True, text=True)
    assert (check.returncode, check.stdout + check.stderr) == (0, "")
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in textfile.read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert values['toolkit_audit_agent_windows_total{host="' + failing["host"] + '",verdict="pass"}'] == 2
    assert values['toolkit_audit_agent_windows_total{host="' + failing["host"] + '",verdict="fail"}'] == 1
    assert values['toolkit_audit_verdict{host="' + failing["host"] + '",verdict="pass"}'] == 1
    last = values['toolkit_audit_agent_last_complete_window_timestamp_seconds{host="' + failing["host"] + '"}']
    first_last = float(
        next(x for x in first.splitlines() if x.startswith("toolkit_audit_agent_last_complete")).rsplit(" ", 1)[1]
    )
    assert 6 <= last - first_last <= 30  # two more windows of 3 s (plus probes and reports)
    assert not list(textfile.parent.glob(".*"))  # no temp file left behind
    # toolkit report still sums up what the agent leaves: one host (the window files are not counted).
    summary = subprocess.run([*toolkit_cmd("report"), str(out), "--json"], capture_output=True, text=True)
    assert summary.returncode == 0, summary.stderr
    assert [(h["host"], h["verdict"]) for h in json.loads(summary.stdout)["hosts"]] == [(failing["host"], "PASS")]


@pytest.mark.root
@pytest.mark.skipif(shutil.which("auditctl") is None, reason="needs auditctl")
def test_agent_inside_a_namespace_the_kernel_does_not_multicast_to_says_exact_attribution_is_unavailable(
    pair, tmp_path
):
    """Started inside the namespace (not entering it with --netns), the agent's audit socket gets
    no records: its self-test connect() goes unseen and the report says so instead of staying silent."""
    before = subprocess.run(["auditctl", "-l"], capture_output=True, text=True).stdout
    out = tmp_path / "out"
    run = pair.run(
        pair.host, *toolkit_cmd("audit-agent"), "--window", "1", "--windows", "1", "--out", str(out),
        "--no-static", check=False, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((out / "audit.json").read_text())
    assert report["attribution"]["exact"] == (
        "unavailable: the audit subsystem's records do not reach this process "
        "(none of its probes' connect() calls was seen in 5 s)"
    )
    assert subprocess.run(["auditctl", "-l"], capture_output=True, text=True).stdout == before
