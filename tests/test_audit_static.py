"""Static checks on real files the tests write: Continue, VS Code, systemd units, /proc tables."""

from __future__ import annotations

import json
from pathlib import Path

from audit_support import control, report_of, run_toolkit

from toolkit.audit.attribution import parse_socket_table
from toolkit.audit.static_checks import (
    StaticInputs,
    check_continue_config,
    check_continue_telemetry,
    check_units,
    check_vscode_telemetry,
    load_rules,
)

RULES = load_rules()


def _home(tmp: Path, name: str) -> Path:
    h = tmp / name
    (h / ".continue" / "index").mkdir(parents=True)
    return h


def test_continue_config_with_cloud_provider_or_remote_apibase_fails_and_local_passes(tmp_path):
    good = _home(tmp_path, "good")
    (good / ".continue/config.yaml").write_text(
        "name: local\nversion: 1.0.0\nschema: v1\nmodels:\n"
        "  - {name: chat, provider: openai, model: chat, apiBase: 'http://127.0.0.1:8000/v1'}\n"
        "  - {name: embed, provider: ollama, model: nomic-embed-text}\n"
    )
    assert check_continue_config([good], RULES["continue"]).status == "pass"
    bad = _home(tmp_path, "bad")
    (bad / ".continue/config.yaml").write_text(
        "models:\n"
        "  - {name: claude, provider: anthropic, model: claude-sonnet}\n"
        "  - {name: lan, provider: openai, model: x, apiBase: 'http://10.1.2.3:8000/v1'}\n"
        "  - {name: ok, provider: openai, model: x, apiBase: 'http://localhost:8000/v1'}\n"
        "  - uses: someone/some-block\n"
    )
    r = check_continue_config([good, bad], RULES["continue"])
    assert r.status == "fail"
    assert [i["model"] for i in r.items] == ["claude", "lan", "someone/some-block"]
    assert "cloud provider 'anthropic'" in r.items[0]["issue"]


def test_continue_telemetry_reads_sharedconfig_and_treats_unset_as_on(tmp_path):
    off = _home(tmp_path, "off")
    (off / ".continue/index/globalContext.json").write_text(
        json.dumps({"sharedConfig": {"allowAnonymousTelemetry": False}})
    )
    assert check_continue_telemetry([off], RULES["continue"]).status == "pass"
    unset = _home(tmp_path, "unset")
    on = _home(tmp_path, "on")
    (on / ".continue/config.json").write_text('{"allowAnonymousTelemetry": true, // legacy\n}')
    r = check_continue_telemetry([off, unset, on], RULES["continue"])
    assert r.status == "fail" and [i["home"] for i in r.items] == [str(unset), str(on)]
    assert check_continue_telemetry([tmp_path / "nobody"], RULES["continue"]).status == "skip"


def test_vscode_telemetry_level_must_be_off_and_jsonc_is_understood(tmp_path):
    h = tmp_path / "dev"
    settings = h / ".config/Code/User/settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text('{\n  // comment\n  "telemetry.telemetryLevel": "off", /* x */\n}\n')
    assert check_vscode_telemetry([h], RULES["vscode"]).status == "pass"
    settings.write_text('{"telemetry.telemetryLevel": "error"}')
    r = check_vscode_telemetry([h], RULES["vscode"])
    assert r.status == "fail" and "'error'" in r.items[0]["issue"]


def test_units_missing_opt_out_variables_fail_per_product(tmp_path):
    units = tmp_path / "units"
    units.mkdir()
    (units / "vllm-chat.service").write_text(
        "[Service]\nEnvironment=VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1\n"
        "EnvironmentFile=-/nonexistent/optional\n"
        "ExecStart=/opt/vllm/bin/python -m vllm.entrypoints.openai.api_server \\\n  --host 127.0.0.1\n"
    )
    dropin = units / "vllm-chat.service.d"
    dropin.mkdir()
    (dropin / "hub.conf").write_text('[Service]\nEnvironment="HF_HUB_OFFLINE=1"\n')
    (units / "ollama.service").write_text(
        "[Service]\nEnvironment=OLLAMA_HOST=0.0.0.0:11434\nEnvironment=OLLAMA_NO_CLOUD=1\n"
        "ExecStart=/usr/bin/ollama serve\n"
    )
    (units / "other.service").write_text("[Service]\nExecStart=/bin/true\n")
    vllm, ollama = check_units([units], RULES["units"])
    assert vllm.control == "TELEMETRY-003" and vllm.status == "fail"
    assert [i["issue"] for i in vllm.items] == ["HF_HUB_DISABLE_TELEMETRY not set (needs '1')"]
    assert ollama.control == "TELEMETRY-004" and ollama.status == "fail"
    assert "OLLAMA_HOST='0.0.0.0:11434' is not a loopback address" in ollama.items[0]["issue"]
    (dropin / "hub.conf").write_text("[Service]\nEnvironment=HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1\n")
    (units / "ollama.service").write_text("[Service]\nEnvironment=OLLAMA_NO_CLOUD=1\nExecStart=/usr/bin/ollama serve\n")
    assert [r.status for r in check_units([units], RULES["units"])] == ["pass", "pass"]


def test_proc_socket_tables_from_recorded_text():
    tcp = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000   998        0 4242 1\n"
        "   1: 00000000:2CE6 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1\n"
    )
    socks = parse_socket_table(tcp, "tcp")
    assert [(s.local, s.state, s.uid, s.inode) for s in socks] == [
        (("127.0.0.1", 8000), "0A", 998, 4242),
        (("0.0.0.0", 11494), "0A", 0, 4343),
    ]


def test_cli_static_checks_use_injected_homes_and_units(tmp_path):
    home = _home(tmp_path, "u")
    (home / ".continue/config.yaml").write_text("models:\n  - {name: gpt, provider: openai, model: gpt-4o}\n")
    pcap = Path(__file__).parent / "data" / "nonexistent"
    del pcap
    from scapy.all import IP, UDP, Ether, wrpcap

    cap = tmp_path / "lo.pcap"
    wrpcap(str(cap), [Ether() / IP(src="127.0.0.1", dst="127.0.0.1") / UDP()])
    units = tmp_path / "units"
    units.mkdir()
    proc = run_toolkit("audit", "--pcap", str(cap), "--static", "--home", str(home), "--unit-dir", str(units), "--json")
    r = report_of(proc)
    assert proc.returncode == 1
    assert control(r, "CONFIG-001")["status"] == "fail" and control(r, "TELEMETRY-001")["status"] == "fail"
    assert control(r, "TELEMETRY-003")["status"] == "skip"


def test_units_of_another_root_resolve_their_environment_files_inside_it(tmp_path):
    """--root: a workstation judged from outside (a container's /proc/PID/root): the unit's absolute
    EnvironmentFile= path is read inside that root, not on the auditing machine."""
    root = tmp_path / "ws"
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    (root / "etc" / "vllm").mkdir()
    (root / "etc" / "vllm" / "telemetry.env").write_text("HF_HUB_OFFLINE=1\nHF_HUB_DISABLE_TELEMETRY=1\n")
    (units / "vllm-chat.service").write_text(
        "[Service]\nEnvironment=VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1\nEnvironmentFile=/etc/vllm/telemetry.env\n"
        "ExecStart=/opt/vllm/bin/python -m vllm.entrypoints.openai.api_server --host 127.0.0.1\n"
    )
    inputs = StaticInputs(root=root)
    assert inputs.unit_directories() == [units]  # the only directory of systemd's search path there
    vllm = check_units(inputs.unit_directories(), RULES["units"], inputs.root)[0]
    assert vllm.status == "pass", vllm.items
    # Read on the auditing machine instead, the file is missing: that is what --root prevents.
    issues = [i["issue"] for i in check_units([units], RULES["units"])[0].items]
    assert "EnvironmentFile /etc/vllm/telemetry.env is missing" in issues


def test_config_files_shaped_to_break_a_reader_make_their_control_inconclusive_not_a_traceback(tmp_path):
    from toolkit.audit.static_checks import run_static_checks

    home = _home(tmp_path, "u")
    deep = "[" * 100_000 + "]" * 100_000
    (home / ".continue/config.json").write_text(deep)
    (home / ".continue/index/globalContext.json").write_text(deep)
    vs = home / ".config/Code/User/settings.json"
    vs.parent.mkdir(parents=True)
    vs.write_text(deep)
    units = tmp_path / "units"
    units.mkdir()
    by = {r.control: r for r in run_static_checks(StaticInputs(tmp_path / "proc", [home], [units], tmp_path))}
    for cid in ("CONFIG-001", "TELEMETRY-001", "TELEMETRY-002"):
        assert (by[cid].status, by[cid].detail[:27]) == ("inconclusive", "cannot judge: RecursionErro"), cid
    assert by["LISTEN-001"].status == "inconclusive"  # no /proc there


def test_ollama_host_is_read_as_ollama_reads_it():
    """envconfig.Host() in Ollama: scheme and path optional, Go's SplitHostPort, a bare address
    is the host, an empty host (":11434") listens on every address."""
    from toolkit.audit.static_checks import ollama_listen_host

    cases = {
        "0.0.0.0:11434": "0.0.0.0",
        "::1": "::1",
        "[::1]:11434": "::1",
        ":11434": "",
        "http://127.0.0.1:11434/x": "127.0.0.1",
        '"0.0.0.0"': "0.0.0.0",
        "": "127.0.0.1",
        "https://[::]:443": "::",
    }
    assert {v: ollama_listen_host(v) for v in cases} == cases


def test_units_of_another_root_follow_absolute_links_inside_it(tmp_path):
    """Debian links aliases absolutely (dbus-org.*.service -> /lib/systemd/system/...); judged from
    outside, such a link must resolve inside the judged root, not on the auditing machine."""
    root = tmp_path / "ws"
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    (root / "opt/units").mkdir(parents=True)
    (root / "opt/units/vllm-chat.service").write_text(
        "[Service]\nEnvironment=VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=0 HF_HUB_DISABLE_TELEMETRY=1\n"
        "EnvironmentFile=/etc/vllm.env\nExecStart=/opt/vllm/bin/python -m vllm.entrypoints.openai.api_server\n"
    )
    (root / "opt/units/real.env").write_text("HF_HUB_OFFLINE=1\n")
    (root / "etc/vllm.env").symlink_to("/opt/units/real.env")
    (units / "vllm-chat.service").symlink_to("/opt/units/vllm-chat.service")
    (units / "dbus-org.example.service").symlink_to("/lib/systemd/system/nowhere-on-this-host.service")
    inputs = StaticInputs(root=root)
    vllm = check_units(inputs.unit_directories(), RULES["units"], root)[0]
    assert (vllm.status, vllm.items) == ("pass", [])
