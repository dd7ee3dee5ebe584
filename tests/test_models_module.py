"""The pca.toolkit.model_verify Ansible module run by real ansible on this machine (no container):
marker, idempotence, check mode, quarantine. Proves the module_utils file ships and imports as
ansible_collections.pca.toolkit.plugins.module_utils.model_verify. The container path is covered
by tests/test_models_role.py.
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
        "pca.toolkit.model_verify",
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


def test_module_never_writes_through_a_planted_symlink_at_the_marker(setup: dict) -> None:
    victim = setup["tmp"] / "etc-victim"
    victim.write_text("untouched\n")
    verified = setup["tmp"] / "verified"
    verified.mkdir(mode=0o700)
    (verified / MARKER).symlink_to(victim)  # the marker's own name
    (verified / f"{MARKER}.tmp").symlink_to(victim)  # the temp name the module used to write through
    rc, res = run_module(setup["args"])
    assert rc == 0, res
    assert victim.read_text() == "untouched\n"
    marker = verified / MARKER
    assert not marker.is_symlink() and len(marker.read_text().strip()) == 64
    assert (verified / f"{MARKER}.tmp").is_symlink()  # left alone: the module no longer uses that name


def test_module_refuses_a_shared_state_directory(setup: dict) -> None:
    verified = setup["tmp"] / "verified"
    verified.mkdir(mode=0o777)
    verified.chmod(0o777)  # a service user could forge or remove markers
    rc, res = run_module(setup["args"])
    assert rc != 0 and res["msg"].startswith(f"unsafe state directory: {verified} must be owned by uid")
    assert list(verified.iterdir()) == []


def test_markers_mode_gates_serving_on_the_locked_revision(setup: dict) -> None:
    args = {k: setup["args"][k] for k in ("lock", "marker_dir")}
    rc, res = run_module(dict(args, mode="markers"))
    assert rc != 0 and res["msg"].startswith(f"no valid verification marker for the locked revision of: {MINILM_REPO}@")
    assert run_module(setup["args"])[0] == 0
    rc, res = run_module(dict(args, mode="markers"))
    assert rc == 0 and res["verified"] == [MINILM_REPO]
    other = json.loads(json.dumps(args["lock"]))
    other["models"][0]["files"] = other["models"][0]["files"][:1]  # a different lock entry, same revision
    rc, res = run_module(dict(args, mode="markers", lock=other))
    assert rc != 0 and res["missing"] == [MINILM_REPO]


def test_store_mode_refuses_symlinked_or_foreign_directories(setup: dict) -> None:
    args = {"mode": "store", "lock": setup["args"]["lock"], "cache_dir": setup["args"]["cache_dir"]}
    if os.geteuid() != 0:
        pytest.skip("the store check requires root ownership; run as root")
    rc, res = run_module(args)
    assert rc == 0, res
    pooling = setup["snap"] / "1_Pooling"
    elsewhere = setup["tmp"] / "elsewhere"
    shutil.move(pooling, elsewhere)
    pooling.symlink_to(elsewhere)
    rc, res = run_module(args)
    assert rc != 0 and res["problems"] == [f"{pooling}: not a real directory (a symlink?)"]
    pooling.unlink()
    shutil.move(elsewhere, pooling)
    os.chown(setup["snap"], 65534, 65534)  # owned by a service user: it could swap the files
    rc, res = run_module(args)
    assert rc != 0 and res["problems"] == [
        f"{setup['snap']}: must be owned by root and writable only by root (uid 65534, mode 755)"
    ]


def test_validate_mode_refuses_traversal_before_anything_and_resolves_mirror_paths(setup: dict) -> None:
    lock = setup["tmp"] / "models.lock.yaml"
    data = json.loads(json.dumps(setup["args"]["lock"]))
    data["models"][0]["files"].append({"path": "../../../../../secret/id_rsa", "size": 1, "sha256": "0" * 64})
    lock.write_text(json.dumps(data))
    rc, res = run_module({"mode": "validate", "lock_file": str(lock)})
    assert rc != 0 and res["msg"].startswith(f"bad model lock: {lock}: models[0] ({MINILM_REPO}) files[3]: path ")
    data["models"][0]["files"].pop()
    lock.write_text(json.dumps(data))
    mirror = setup["tmp"]  # holds hub/: the mirror is an HF cache
    rc, res = run_module({"mode": "validate", "lock_file": str(lock), "mirror_dir": str(mirror / "hub")})
    assert rc == 0, res
    assert [f["src"] for f in res["files"]] == [str(setup["snap"] / rel) for rel in SMALL]
    assert res["dirs"] == [
        f"models--sentence-transformers--all-MiniLM-L6-v2/snapshots/{MINILM_REV}",
        f"models--sentence-transformers--all-MiniLM-L6-v2/snapshots/{MINILM_REV}/1_Pooling",
    ]
    secret = setup["tmp"] / "secret"
    secret.write_text("id_rsa\n")
    (setup["snap"] / "vocab.txt").unlink()
    (setup["snap"] / "vocab.txt").symlink_to(secret)
    rc, res = run_module({"mode": "validate", "lock_file": str(lock), "mirror_dir": str(mirror / "hub")})
    assert rc != 0 and res["problems"] == [
        f"{MINILM_REPO}: vocab.txt: symlink points outside the cache's blobs/: {secret}"
    ]


def run_gate(tmp: Path, lock_file: Path, state_dir: Path, model: str) -> tuple[int, str]:
    """The vllm role's gate (roles/vllm/tasks/verified_models.yml) in a real playbook on this machine."""
    playbook = tmp / "gate.yml"
    services = {"embed": {"args": ["--model", model, "--port", "8000"]}, "chat": {"args": ["--model", "/srv/x"]}}
    playbook.write_text(
        json.dumps(
            [
                {
                    "hosts": "localhost",
                    "gather_facts": False,
                    "vars": {
                        "vllm_services": services,
                        "vllm_model_lock_file": str(lock_file),
                        "model_store_state_dir": str(state_dir),
                    },
                    "tasks": [
                        {"ansible.builtin.include_tasks": str(REPO / "roles/vllm/tasks/verified_models.yml")},
                        {"ansible.builtin.debug": {"msg": "REVISIONS={{ vllm_model_revisions | to_json }}"}},
                    ],
                }
            ]
        )
    )
    playbook_bin = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) or "ansible-playbook"
    r = subprocess.run(
        [playbook_bin, "-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}",
         str(playbook)],
        cwd=REPO, env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1"),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    return r.returncode, r.stdout + r.stderr


def test_vllm_gate_starts_a_hub_model_only_with_a_valid_marker(setup: dict) -> None:
    lock_file = setup["tmp"] / "models.lock.yaml"
    lock_file.write_text(json.dumps(setup["args"]["lock"]))
    state = setup["tmp"] / "state"
    rc, out = run_gate(setup["tmp"], lock_file, state, MINILM_REPO)
    assert rc != 0 and f"no valid verification marker for the locked revision of: {MINILM_REPO}@{MINILM_REV}" in out
    state.mkdir(mode=0o700)
    args = dict(setup["args"], marker_dir=str(state / "verified"), quarantine_dir=str(state / "quarantine"))
    assert run_module(args)[0] == 0
    rc, out = run_gate(setup["tmp"], lock_file, state, MINILM_REPO)
    assert rc == 0, out
    assert f'REVISIONS={{"{MINILM_REPO}": "{MINILM_REV}"}}' in out
    rc, out = run_gate(setup["tmp"], lock_file, state, "Qwen/not-locked")
    assert rc != 0 and "repo Qwen/not-locked is not in the lock" in out
