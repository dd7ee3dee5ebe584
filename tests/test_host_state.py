"""pca.toolkit.host_state and the state_has_* filters, proven against the modules whose work they skip.

The roles skip a copy, file, blockinfile, user or systemd task when the filters say its target
already matches. That is only safe if the filter never says "matches" where the real module would
change something. Here the real modules (ansible.builtin.copy, file, blockinfile in check mode)
judge the same hostile cases on this machine as the filters do, in one playbook: a link, another
owner, a numeric group, a missing newline at the end, two blocks, markers in the wrong order,
CRLF, a form feed (str.splitlines would split there, blockinfile does not).
Not exercised here: systemd (no systemd on the controller); the sandbox and molecule runs cover
the units, and parse_show is tested on systemctl's own output shape.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    # The filter plugin and the module share the file name host_state.py: load each by its path.
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


filters = _load("host_state_filters", REPO / "plugins/filter/host_state.py")
module = _load("host_state_module", REPO / "plugins/modules/host_state.py")

PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
MARKER = "# {mark} test block"
BLOCK = "a\nb"


def _cases(tmp: Path) -> dict:
    """Files and directories on disk, and what each task would be asked to make of them."""
    nobody = pwd.getpwnam("nobody")
    body = "line one\nline two\n"
    files = {
        "same": (body, "0644"),
        "other_content": ("line one\n", "0644"),
        "other_mode": (body, "0600"),
        "other_owner": (body, "0644"),
        "numeric_group": (body, "0644"),
        "no_final_newline": (body.rstrip("\n"), "0644"),
    }
    for name, (text, mode) in files.items():
        p = tmp / name
        p.write_text(text)
        p.chmod(int(mode, 8))
    os.chown(tmp / "other_owner", nobody.pw_uid, 0)
    (tmp / "link").symlink_to(tmp / "same")
    file_cases = [
        {"path": str(tmp / n), "content": body, "owner": "root", "group": "root", "mode": "0644"}
        for n in ("same", "other_content", "other_mode", "other_owner", "no_final_newline", "link", "missing")
    ] + [{"path": str(tmp / "numeric_group"), "content": body, "owner": "0", "group": "0", "mode": "0644"}]

    (tmp / "dir_same").mkdir(mode=0o750)
    (tmp / "dir_same").chmod(0o750)
    (tmp / "dir_mode").mkdir()
    (tmp / "dir_mode").chmod(0o755)
    (tmp / "dir_link").symlink_to(tmp / "dir_same")
    dir_cases = [
        {"path": str(tmp / n), "owner": "root", "group": "root", "mode": "0750"}
        for n in ("dir_same", "dir_mode", "dir_link", "same", "dir_missing")
    ]

    begin, end = "# BEGIN test block\n", "# END test block\n"
    blocks = {
        "block_same": "x\n" + begin + "a\nb\n" + end + "y\n",
        "block_at_end": "x\n" + begin + "a\nb\n" + end,
        "block_no_final_newline": "x\n" + begin + "a\nb\n" + end.rstrip("\n"),
        "block_other": begin + "a\nc\n" + end,
        "block_twice_last_same": begin + "old\n" + end + begin + "a\nb\n" + end,
        "block_twice_last_other": begin + "a\nb\n" + end + begin + "old\n" + end,
        "block_reversed": end + "a\nb\n" + begin,
        "block_crlf": begin.replace("\n", "\r\n") + "a\r\nb\r\n" + end.replace("\n", "\r\n"),
        "block_form_feed": begin + "a\x0cb\n" + end,
        "block_absent": "x\n",
    }
    for name, text in blocks.items():
        p = tmp / name
        p.write_bytes(text.encode())
        p.chmod(0o644)
    block_cases = [{"path": str(tmp / n), "owner": "root", "group": "root", "mode": "0644"} for n in blocks]
    block_cases.append({"path": str(tmp / "block_same"), "owner": "root", "group": "root", "mode": "0600"})
    return {"files": file_cases, "dirs": dir_cases, "blocks": block_cases}


def _play(cases: dict, out: Path) -> list:
    every = [c["path"] for group in cases.values() for c in group]
    return [{
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {"cases": cases, "block": BLOCK, "marker": MARKER},
        "tasks": [
            {"name": "Read", "pca.toolkit.host_state": {
                "paths": every, "read": [c["path"] for c in cases["blocks"]],
                "users": ["root", "no-such-user-here"], "groups": ["root", "no-such-group-here"]},
             "register": "state"},
            {"name": "copy", "ansible.builtin.copy": {
                "content": "{{ item.content }}", "dest": "{{ item.path }}", "owner": "{{ item.owner }}",
                "group": "{{ item.group }}", "mode": "{{ item.mode }}"},
             "check_mode": True, "loop": "{{ cases.files }}", "register": "copy_runs"},
            {"name": "file", "ansible.builtin.file": {
                "path": "{{ item.path }}", "state": "directory", "owner": "{{ item.owner }}",
                "group": "{{ item.group }}", "mode": "{{ item.mode }}"},
             # On a regular file it fails: not ok either, which is what the filter must see.
             "check_mode": True, "ignore_errors": True, "loop": "{{ cases.dirs }}", "register": "dir_runs"},
            {"name": "blockinfile", "ansible.builtin.blockinfile": {
                "path": "{{ item.path }}", "block": "{{ block }}", "marker": "{{ marker }}",
                "owner": "{{ item.owner }}", "group": "{{ item.group }}", "mode": "{{ item.mode }}"},
             "check_mode": True, "loop": "{{ cases.blocks }}", "register": "block_runs"},
            {"name": "Write what each side said", "ansible.builtin.copy": {
                "dest": str(out), "mode": "0600",
                "content": "{{ {'state': state, "
                "'files': copy_runs.results | map(attribute='changed') | list, "
                "'dirs': dir_runs.results | map(attribute='changed') | list, "
                "'dirs_failed': dir_runs.results | map(attribute='failed', default=false) | list, "
                "'blocks': block_runs.results | map(attribute='changed') | list} | to_json }}"}},
        ],
    }]


@pytest.mark.root
def test_filters_say_match_exactly_where_the_real_modules_change_nothing(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (files owned by another user)")
    work = tmp_path / "cases"
    work.mkdir()
    cases = _cases(work)
    out = tmp_path / "out.json"
    pb = tmp_path / "play.yml"
    pb.write_text(yaml.safe_dump(_play(cases, out)))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    r = subprocess.run([str(PLAYBOOK), "-i", "localhost,", "-c", "local", "-e",
                        f"ansible_python_interpreter={sys.executable}", str(pb)],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    said = json.loads(out.read_text())
    state = said["state"]
    said["dirs"] = [c or f for c, f in zip(said["dirs"], said["dirs_failed"], strict=True)]

    got = {
        "files": [filters.state_has_file(state, c["path"], c["owner"], c["group"], c["mode"], c["content"])
                  for c in cases["files"]],
        "dirs": [filters.state_has_dir(state, c["path"], c["owner"], c["group"], c["mode"]) for c in cases["dirs"]],
        "blocks": [filters.state_has_block(state, c["path"], BLOCK, MARKER, c["owner"], c["group"], c["mode"])
                   for c in cases["blocks"]],
    }
    for kind in ("files", "dirs", "blocks"):
        for case, match, changed in zip(cases[kind], got[kind], said[kind], strict=True):
            name = Path(case["path"]).name
            # The safety property: a match is never claimed where the module would change something.
            assert not (match and changed), f"{kind} {name}: filter says match, {kind} module would change it"
            # Links are never taken for their target (the task decides); everything else agrees exactly.
            if "link" not in name:
                assert match == (not changed), f"{kind} {name}: filter {match}, module changed={changed}"
    # The cases do reach both answers.
    assert got["files"].count(True) == 2 and got["blocks"].count(True) == 3 and got["dirs"].count(True) == 1, got

    assert state["users"]["root"]["home"] == pwd.getpwnam("root").pw_dir
    assert "no-such-user-here" not in state["users"] and "no-such-group-here" not in state["groups"]
    assert state["paths"][str(work / "missing")] == {"exists": False}
    assert state["paths"][str(work / "link")]["type"] == "link"
    assert base64.b64decode(state["contents"][str(work / "block_form_feed")]) == (work / "block_form_feed").read_bytes()


def _state(**path) -> dict:
    base = {"exists": True, "type": "file", "owner": "root", "group": "root", "uid": 0, "gid": 0, "mode": "0644",
            "checksum": None}
    return {"paths": {"/p": {**base, **path}}}


def test_filters_refuse_what_they_cannot_compare():
    with pytest.raises(filters.StateQueryError, match="octal modes"):
        filters.state_has_dir(_state(type="directory"), "/p", "root", "root", "u=rwx")
    # Refused even where another attribute already differs: a wrong mode is a mistake in the role.
    with pytest.raises(filters.StateQueryError, match="octal modes"):
        filters.state_has_file(_state(owner="nobody", uid=65534), "/p", "root", "root", "0o644")
    with pytest.raises(filters.StateQueryError, match="did not read"):
        filters.state_has_file(_state(), "/elsewhere", "root", "root", "0644")
    # An unreadable path (exists None) is never a match, whatever else is asked.
    unreadable = {"paths": {"/p": {"exists": None, "error": "denied"}}}
    assert not filters.state_has_file(unreadable, "/p", "root", "root", "0644")
    # A file whose sha1 could not be read matches attributes, never content.
    assert filters.state_has_file(_state(), "/p", "root", "root", "0644")
    assert not filters.state_has_file(_state(), "/p", "root", "root", "0644", "text")


def test_user_group_and_unit_answers():
    state = {
        "users": {"vllm": {"uid": 990, "gid": 985, "group": "vllm", "home": "/var/lib/vllm",
                           "shell": "/usr/sbin/nologin"}},
        "groups": {"vllm": {"gid": 985}},
        "units": {"a.service": {"LoadState": "loaded", "ActiveState": "active", "UnitFileState": "enabled",
                                "NeedDaemonReload": "no"},
                  "b.service": {"LoadState": "loaded", "ActiveState": "active", "UnitFileState": "enabled",
                                "NeedDaemonReload": "yes"},
                  "c.service": {"LoadState": "loaded", "ActiveState": "activating", "UnitFileState": "enabled",
                                "NeedDaemonReload": "no"}},
    }
    assert filters.state_has_user(state, "vllm", "vllm", "/var/lib/vllm", "/usr/sbin/nologin")
    assert filters.state_has_user(state, "vllm", "985", "/var/lib/vllm", "/usr/sbin/nologin")
    assert not filters.state_has_user(state, "vllm", "vllm", "/home/vllm", "/usr/sbin/nologin")
    assert not filters.state_has_user(state, "vllm", "vllm", "/var/lib/vllm", "/bin/bash")
    assert not filters.state_has_user(state, "ollama", "ollama", "/x", "/y")
    assert filters.state_has_group(state, "vllm") and not filters.state_has_group(state, "ollama")
    assert filters.state_unit_running(state, "a.service")
    assert not filters.state_unit_running(state, "a.service", enabled=False)
    assert not filters.state_unit_running(state, "b.service")  # a daemon-reload is due
    assert not filters.state_unit_running(state, "c.service")  # not up yet: the start task waits for it
    assert not filters.state_unit_running(state, "d.service")
    assert filters.state_unit_enabled(state, "a.service") and not filters.state_unit_enabled(state, "b.service")


def test_parse_show_reads_systemctls_blocks_in_order_and_refuses_another_shape():
    out = "LoadState=loaded\nActiveState=active\n\nLoadState=not-found\nActiveState=inactive\n"
    assert module.parse_show(out, ["a.service", "b.service"]) == {
        "a.service": {"LoadState": "loaded", "ActiveState": "active"},
        "b.service": {"LoadState": "not-found", "ActiveState": "inactive"},
    }
    # One block for two units: which is which cannot be told, so nothing is reported.
    assert module.parse_show("LoadState=loaded\n", ["a.service", "b.service"]) == {}
