"""The model_verify Ansible module run by real ansible on this machine (no container): marker,
idempotence, check mode, quarantine. Proves the module_utils file ships and imports as
ansible.module_utils.model_verify. The container path is covered by tests/test_models_role.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, require, require_binary
from test_models_verify import MINILM, MINILM_REPO, MINILM_REV

SMALL = ("vocab.txt", "config.json", "1_Pooling/config.json")
MARKER = f"models--sentence-transformers--all-MiniLM-L6-v2@{MINILM_REV}"


@pytest.fixture
def setup(tmp_path: Path) -> dict:
    require((MINILM / "vocab.txt").is_file(), f"needs MiniLM files in {MINILM}")
    git = require_binary("git")
    snap = tmp_path / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / MINILM_REV
    files = []
    for rel in SMALL:
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(MINILM / rel, snap / rel)
        blob = subprocess.run([git, "hash-object", str(MINILM / rel)], capture_output=True, text=True, check=True)
        files.append({"path": rel, "size": (MINILM / rel).stat().st_size, "git_sha1": blob.stdout.strip()})
    lock = {"version": 1, "models": [{"repo": MINILM_REPO, "revision": MINILM_REV, "files": files}]}
    args = {
        "lock": lock,
        "cache_dir": str(tmp_path / "hub"),
        "marker_dir": str(tmp_path / "verified"),
        "quarantine_dir": str(tmp_path / "quarantine"),
    }
    return {"args": args, "snap": snap, "tmp": tmp_path}


def run_module(args: dict, check: bool = False) -> tuple[int, dict]:
    ansible = shutil.which("ansible", path=str(Path(sys.executable).parent)) or require_binary("ansible")
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_STDOUT_CALLBACK="json",
        ANSIBLE_NOCOLOR="1",
    )
    cmd = [
        ansible,
        "localhost",
        "-c",
        "local",
        "-i",
        "localhost,",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-m",
        "model_verify",
        "-a",
        json.dumps(args),
    ] + (["--check"] if check else [])
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    out = json.loads(r.stdout)
    return r.returncode, out["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_module_marks_good_model_once_and_is_idempotent(setup: dict) -> None:
    rc, res = run_module(setup["args"])
    assert rc == 0, res
    assert res["changed"] and res["verified"] == [MINILM_REPO]
    assert res["ansible_facts"]["model_store_verified"] == [MINILM_REPO]
    assert len((setup["tmp"] / "verified" / MARKER).read_text().strip()) == 64
    rc, res = run_module(setup["args"])
    assert rc == 0 and not res["changed"]


def test_module_check_mode_reports_tampering_without_touching_anything(setup: dict) -> None:
    assert run_module(setup["args"])[0] == 0
    with open(setup["snap"] / "vocab.txt", "ab") as fh:
        fh.write(b"x")
    rc, res = run_module(setup["args"], check=True)
    assert rc != 0 and "vocab.txt: size expected 231508, found 231509" in res["msg"]
    assert (setup["tmp"] / "verified" / MARKER).exists() and setup["snap"].is_dir()


def test_module_unmarks_and_quarantines_tampered_model(setup: dict) -> None:
    assert run_module(setup["args"])[0] == 0
    (setup["snap"] / "config.json").write_text('{"evil": true}')
    rc, res = run_module(setup["args"])
    assert rc != 0
    assert "config.json: size expected" in res["msg"] and f"nothing of {MINILM_REPO} is servable" in res["msg"]
    assert res["verified"] == [] and res["ansible_facts"]["model_store_verified"] == []
    assert not (setup["tmp"] / "verified" / MARKER).exists()
    assert not setup["snap"].exists()
    assert len(list((setup["tmp"] / "quarantine").glob("models--*/*"))) == 1


def test_module_refuses_bad_lock_with_one_line(setup: dict) -> None:
    args = dict(setup["args"], lock={"version": 1, "models": [{"repo": MINILM_REPO, "revision": "main", "files": []}]})
    rc, res = run_module(args)
    assert rc != 0 and res["msg"].startswith("bad model lock: models[0]") and "revision must be" in res["msg"]
