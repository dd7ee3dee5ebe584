"""TELEMETRY-003 reads a vLLM unit's environment the way systemd builds it, proven against systemd.

Every case is a set of unit files, drop-ins and environment files that a user (or an attacker
undoing the opt-outs) could write. The pure tests judge them with check_units; the podman test
installs every case into a real systemd (252, the Debian 12 of the workstations) inside the test
image, starts each unit and compares the environment its process really got with the one the
audit computed: systemd is the ground truth, not the audit.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from toolkit.audit.static_checks import StaticInputs, _in_root, check_units, exec_environment, load_rules
from toolkit.audit.systemd_unit import parse_env_file, parse_unit_file, service_environment, split_words

RULES = {"vllm": load_rules()["units"]["vllm"]}
ALL = "Environment=VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1\n"
WATCHED = ("VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")
ETC = "etc/systemd/system"


def _unit(body: str, section: str = "[Service]\n") -> str:
    # The ExecStart names vllm (what TELEMETRY-003 matches); in the container it dumps its env.
    return f"{section}Type=oneshot\nExecStart=/usr/local/bin/vllm-envdump %n\n{body}"


# case -> (files relative to the root, expected status, one expected issue or None)
CASES: dict[str, tuple[dict[str, str], str, str | None]] = {
    "tc1-vllm": ({f"{ETC}/tc1-vllm.service": _unit(ALL)}, "pass", None),
    "tc2-vllm": (  # a drop-in's empty Environment= resets every earlier assignment
        {
            f"{ETC}/tc2-vllm.service": _unit(ALL),
            f"{ETC}/tc2-vllm.service.d/50-reset.conf": "[Service]\nEnvironment=\nEnvironment=T_OTHER=x\n",
        },
        "fail",
        "VLLM_NO_USAGE_STATS not set (needs '1')",
    ),
    "tc3-vllm": (  # EnvironmentFile= overrides Environment=, even when listed first
        {
            f"{ETC}/tc3-vllm.service": _unit("EnvironmentFile=/etc/tk-test/tc3.env\n" + ALL),
            "etc/tk-test/tc3.env": "VLLM_NO_USAGE_STATS=0\n",
        },
        "fail",
        "VLLM_NO_USAGE_STATS='0', needs '1'",
    ),
    "tc4-vllm": (  # UnsetEnvironment= by name removes; by NAME=VALUE only that exact value
        {
            f"{ETC}/tc4-vllm.service": _unit(ALL),
            f"{ETC}/tc4-vllm.service.d/unset.conf": "[Service]\nUnsetEnvironment=VLLM_NO_USAGE_STATS DO_NOT_TRACK=0\n",
        },
        "fail",
        "VLLM_NO_USAGE_STATS not set (needs '1')",
    ),
    "tc5-vllm": (  # unbalanced quote: systemd keeps T_A and ignores the rest; cannot pass
        {
            f"{ETC}/tc5-vllm.service": _unit(ALL),
            f"{ETC}/tc5-vllm.service.d/q.conf": '[Service]\nEnvironment=T_A=1 "HF_HUB_OFFLINE=0 T_B=2\n',
        },
        "inconclusive",
        'q.conf:2: Environment= unbalanced " quote: systemd ignores the rest of the line',
    ),
    "tc6-vllm": (  # the only assignment is unbalanced: nothing is set, a finding
        {f"{ETC}/tc6-vllm.service": _unit('Environment="' + ALL.split("=", 1)[1])},
        "fail",
        "VLLM_NO_USAGE_STATS not set (needs '1')",
    ),
    "tc7-vllm": (  # drop-ins apply in lexical order of their names: 20-b after 10-a
        {
            f"{ETC}/tc7-vllm.service": _unit(""),
            f"{ETC}/tc7-vllm.service.d/20-b.conf": "[Service]\nEnvironment=VLLM_NO_USAGE_STATS=0\n",
            f"{ETC}/tc7-vllm.service.d/10-a.conf": "[Service]\n" + ALL,
        },
        "fail",
        "VLLM_NO_USAGE_STATS='0', needs '1'",
    ),
    "tc8-vllm": (  # C escapes are decoded: \x30 is "0"
        {f"{ETC}/tc8-vllm.service": _unit(ALL + "Environment=VLLM_NO_USAGE_STATS=\\x30\n")},
        "fail",
        "VLLM_NO_USAGE_STATS='0', needs '1'",
    ),
    "tc9-vllm": (  # a dash-prefix drop-in directory applies to tc9-*.service
        {
            f"{ETC}/tc9-vllm.service": _unit(ALL),
            f"{ETC}/tc9-.service.d/x.conf": "[Service]\nEnvironment=HF_HUB_OFFLINE=0\n",
        },
        "fail",
        "HF_HUB_OFFLINE='0', needs '1'",
    ),
    "tc10-vllm": (  # Environment= outside [Service] is ignored by systemd
        {f"{ETC}/tc10-vllm.service": "[Unit]\n" + ALL + _unit("")},
        "fail",
        "VLLM_NO_USAGE_STATS not set (needs '1')",
    ),
    "tc11-vllm": (  # a comment line inside a continued line is skipped, the continuation goes on
        {
            f"{ETC}/tc11-vllm.service": _unit(
                "Environment=VLLM_NO_USAGE_STATS=1 \\\n# DO_NOT_TRACK=0\n DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 \\\n"
                "  HF_HUB_DISABLE_TELEMETRY=1\n"
            )
        },
        "pass",
        None,
    ),
    "tc12-vllm": (  # environment file quoting: quotes removed, no inline comments
        {
            f"{ETC}/tc12-vllm.service": _unit(ALL + "EnvironmentFile=/etc/tk-test/tc12.env\n"),
            "etc/tk-test/tc12.env": 'HF_HUB_OFFLINE="0"\nDO_NOT_TRACK=1 # on\nexport HF_HUB_DISABLE_TELEMETRY=0\n',
        },
        "fail",
        "HF_HUB_OFFLINE='0', needs '1'",
    ),
    "tc13-vllm": (  # quotes inside a word and escapes inside quotes
        {
            f"{ETC}/tc13-vllm.service": _unit(
                'Environment=VLLM_NO_USAGE_STATS="1" \'DO_NOT_TRACK\'=1 "HF_HUB_OFFLINE=\\x31" '
                "HF_HUB_DISABLE_TELEMETRY=1\n"
            )
        },
        "pass",
        None,
    ),
    "tc14-vllm": (  # an optional missing EnvironmentFile is fine
        {f"{ETC}/tc14-vllm.service": _unit(ALL + "EnvironmentFile=-/etc/tk-test/none.env\n")},
        "pass",
        None,
    ),
    "tc15-vllm": (  # a later assignment of a name replaces the earlier one
        {f"{ETC}/tc15-vllm.service": _unit(ALL + "Environment=DO_NOT_TRACK=0\n")},
        "fail",
        "DO_NOT_TRACK='0', needs '1'",
    ),
    "tc16-vllm": (  # an empty EnvironmentFile= in a drop-in drops the unit's files
        {
            f"{ETC}/tc16-vllm.service": _unit(ALL + "EnvironmentFile=/etc/tk-test/tc16.env\n"),
            "etc/tk-test/tc16.env": "VLLM_NO_USAGE_STATS=0\n",
            f"{ETC}/tc16-vllm.service.d/r.conf": "[Service]\nEnvironmentFile=\n",
        },
        "pass",
        None,
    ),
    "tc17-vllm": (  # an unknown escape is invalid syntax: the rest of that line is ignored
        {f"{ETC}/tc17-vllm.service": _unit(ALL + "Environment=T_A=1 VLLM_NO_USAGE_STATS=\\q\n")},
        "inconclusive",
        "tc17-vllm.service:5: Environment= unknown escape \\q: systemd ignores the rest of the line",
    ),
    "tc18-vllm": (  # drop-ins from /run and /etc merge by name: /etc's 50.conf hides /run's, 60 applies
        {
            f"{ETC}/tc18-vllm.service": _unit(""),
            f"{ETC}/tc18-vllm.service.d/50.conf": "[Service]\n" + ALL,
            "run/systemd/system/tc18-vllm.service.d/50.conf": "[Service]\nEnvironment=VLLM_NO_USAGE_STATS=0\n",
            "run/systemd/system/tc18-vllm.service.d/60.conf": "[Service]\nEnvironment=DO_NOT_TRACK=0\n",
        },
        "fail",
        "DO_NOT_TRACK='0', needs '1'",
    ),
    "tc19-vllm": (  # env(1) in front of the command changes what the process gets
        {
            f"{ETC}/tc19-vllm.service": "[Service]\nType=oneshot\n"
            + ALL
            + "ExecStart=/usr/bin/env -u DO_NOT_TRACK VLLM_NO_USAGE_STATS=0 /usr/local/bin/vllm-envdump %n\n"
        },
        "fail",
        "VLLM_NO_USAGE_STATS='0', needs '1'",
    ),
}


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


@pytest.mark.parametrize("case", sorted(CASES))
def test_vllm_unit_environment_is_judged_as_systemd_builds_it(tmp_path, case):
    files, status, issue = CASES[case]
    _write(tmp_path, files)
    inputs = StaticInputs(root=tmp_path)
    (result,) = check_units(inputs.unit_directories(), RULES, tmp_path)
    assert (result.status, result.control) == (status, "TELEMETRY-003"), result.items
    if issue is not None:
        assert issue in [i["issue"] for i in result.items]


def test_systemd_word_splitting_and_environment_file_syntax_from_recorded_text():
    assert split_words('A=1 "B=2 3" C=\'x y\'z "D=\\x31\\s"') == (["A=1", "B=2 3", "C=x yz", "D=1 "], None)
    assert split_words('A=1 "B=2') == (["A=1"], 'unbalanced " quote')
    assert split_words("A=1 B=\\q C=3") == (["A=1"], "unknown escape \\q")
    env, notes = parse_env_file("A= x y  \nB='1\n2'\nC=\"a\\$b\\qc\"\n# c\\\nD=1\n;E=2\nF\\\n=3\n")
    assert env == {"A": "x y", "B": "1\n2", "C": "a$b\\qc", "D": "1"}
    assert notes == ["line 5: a comment ends in a backslash (before systemd 254 the next line is comment too)"]
    assignments, problems = parse_unit_file("[Service\nEnvironment=A=1\n", "x.service")
    assert problems == ["x.service:1: invalid section header (systemd refuses the unit)"]


def test_unparsable_unit_files_never_raise_and_make_the_control_inconclusive(tmp_path):
    bad = [
        '[Service]\nExecStart=/usr/bin/vllm\nEnvironment="VLLM_NO_USAGE_STATS=1\n' + ALL,
        "[Service]\nExecStart=/usr/bin/vllm\n" + ALL + "Environment=X=%z\n",
        "[Service]\nExecStart=/usr/bin/vllm\n" + ALL + "Environment=X=\\x00\n",
        "[Service]\nExecStart=/usr/bin/vllm\n" + ALL + "Environment='\n",
        "[Service]\nExecStart=/usr/bin/vllm\n" + ALL + "Environment=\\\n",
        "[Service\nExecStart=/usr/bin/vllm\n" + ALL,
    ]
    for n, text in enumerate(bad):
        d = tmp_path / str(n) / ETC
        d.mkdir(parents=True)
        (d / "vllm.service").write_bytes(text.encode() + b"Environment=Y=\xff\n")
        (result,) = check_units([d], RULES, tmp_path / str(n))
        assert result.status == "inconclusive", (text, result.items)


@pytest.mark.podman
@pytest.mark.slow
def test_real_systemd_gives_each_case_the_environment_the_audit_computed(tmp_path):
    """Ground truth: systemd 252 in the test image starts every case's unit; its process dumps
    the environment it got. The audit's computed environment must equal it for every watched
    variable (and the T_ ones the cases set), and no case may PASS whose real env fails."""
    from roles_molecule import IMAGE, require_podman_image

    require_podman_image()
    merged = tmp_path / "all"
    for files, _, _ in CASES.values():
        _write(merged, files)
    dump = "#!/bin/sh\nmkdir -p /run/envdump\nexec env -0 > /run/envdump/$1\n"
    _write(merged, {"usr/local/bin/vllm-envdump": dump})
    (merged / "usr/local/bin/vllm-envdump").chmod(0o755)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for top in merged.iterdir():  # not "." itself: that would set the mode of the container's /
            tar.add(top, arcname=top.name)
    name = f"tk-sd-{uuid.uuid4().hex[:6]}"

    def podman(*args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["podman", *args], capture_output=True, check=True, timeout=120, **kw)

    try:
        podman("run", "-d", "--name", name, "--systemd=always", IMAGE)
        podman(
            "exec",
            name,
            "sh",
            "-c",
            "for i in $(seq 60); do s=$(systemctl is-system-running 2>/dev/null);"
            " case $s in running|degraded) exit 0;; esac; sleep 1; done; exit 1",
        )
        podman("exec", "-i", name, "tar", "-C", "/", "--no-same-owner", "-xf", "-", input=buf.getvalue())
        units = " ".join(f"{c}.service" for c in CASES)
        podman("exec", name, "sh", "-c", f"systemctl daemon-reload && for u in {units}; do systemctl start $u; done")
        log = podman("exec", name, "journalctl", "-b", "-o", "cat", "--no-pager").stdout.decode(errors="replace")
        real: dict[str, dict[str, str]] = {}
        for case in CASES:
            raw = podman("exec", name, "cat", f"/run/envdump/{case}.service").stdout.decode()
            real[case] = dict(e.split("=", 1) for e in raw.split("\0") if e)
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True, timeout=60)
    # Where the audit says INCONCLUSIVE for syntax, systemd itself complained about that line.
    assert "/etc/systemd/system/tc5-vllm.service.d/q.conf:2: Invalid syntax, ignoring" in log, log[-3000:]
    assert "/etc/systemd/system/tc17-vllm.service:5: Invalid syntax, ignoring" in log, log[-3000:]
    for case, (files, status, _) in CASES.items():
        root = tmp_path / case
        _write(root, files)
        read, glob = _in_root(root)
        se = service_environment(f"{case}.service", StaticInputs(root=root).unit_directories(), read, glob, root)
        for line in se.exec_start:
            se.environment, _ = exec_environment(line, se.environment, set(WATCHED))
        keys = set(WATCHED) | {k for k in real[case] if k.startswith("T_")} | {k for k in se.environment}
        keys -= {"PATH", "LANG"}  # none of the cases sets these; systemd adds them
        got = {k: real[case].get(k) for k in sorted(keys)}
        want = {k: se.environment.get(k) for k in sorted(keys)}
        assert want == got, f"{case}: audit computed {want}, systemd gave {got}"
        real_ok = all(real[case].get(k) == "1" for k in WATCHED)
        assert real_ok or status != "pass", f"{case} would pass while systemd's env lacks an opt-out"


def test_env_and_shell_wrappers_in_execstart_change_or_hide_the_environment(tmp_path):
    cases = {
        "ExecStart=/usr/bin/env VLLM_NO_USAGE_STATS=0 /opt/vllm/bin/python -m vllm.entrypoints.openai.api_server": (
            "fail",
            "VLLM_NO_USAGE_STATS='0', needs '1'",
        ),
        "ExecStart=env -u HF_HUB_OFFLINE /opt/vllm/bin/python -m vllm": ("fail", "HF_HUB_OFFLINE not set (needs '1')"),
        "ExecStart=/usr/bin/env -i /opt/vllm/bin/python -m vllm": ("fail", "DO_NOT_TRACK not set (needs '1')"),
        "ExecStart=/bin/sh -c 'DO_NOT_TRACK=0 exec /opt/vllm/bin/python -m vllm'": (
            "inconclusive",
            "ExecStart runs a shell that names DO_NOT_TRACK",
        ),
        "ExecStart=/usr/bin/env HOME=/srv /opt/vllm/bin/python -m vllm --regex '\\d+'": ("pass", None),
    }
    for n, (line, (status, issue)) in enumerate(cases.items()):
        d = tmp_path / str(n)
        d.mkdir()
        (d / "vllm.service").write_text("[Service]\n" + ALL + line + "\n")
        (result,) = check_units([d], RULES, d)
        assert result.status == status, (line, result.items)
        if issue:
            assert issue in [i["issue"] for i in result.items], (line, result.items)
