"""`toolkit models lock` and `pull` against a local fake hub serving the real MiniLM files.

The fake hub (tests/fakehub.py) stands in for huggingface.co: it answers the endpoints
huggingface-hub really calls, on 127.0.0.1. Not exercised: CDN redirects, auth, xet storage.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, require
from fakehub import FakeHub, FakeRepo, load_dir
from test_models_verify import (
    MINILM,
    MINILM_REPO,
    MINILM_REV,
    SAFETENSORS_SHA256,
    SAFETENSORS_SIZE,
    build_minilm_lock_data,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm_lock_data() -> dict:
    return build_minilm_lock_data()


@pytest.fixture(scope="module")
def hub():
    require((MINILM / "model.safetensors").is_file(), f"needs MiniLM weights in {MINILM}")
    files = load_dir(MINILM)
    # What the real repo also holds and a lock must leave out: pickle weights, other runtimes' exports.
    files["pytorch_model.bin"] = b"\x80\x04pickle stand-in"
    files["onnx/model.onnx"] = b"onnx stand-in"
    files["onnx/config.json"] = b"{}"
    with FakeHub(
        [FakeRepo(MINILM_REPO, MINILM_REV, files), FakeRepo("evilcorp/model", "e" * 40, {"a.json": b"{}"})]
    ) as h:
        yield h


def run_cli(hub: FakeHub, *args: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        HF_ENDPOINT=hub.endpoint,
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_ETAG_TIMEOUT="5",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="127.0.0.1",
        no_proxy="127.0.0.1",
    )
    env.pop("HF_HUB_OFFLINE", None)
    env["HF_HOME"] = "/nonexistent-toolkit-hf-home"  # no token, no cache from the user
    return subprocess.run(
        [sys.executable, "-m", "toolkit", "models", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )


def test_lock_records_hub_hashes_of_wanted_files_only(hub: FakeHub, tmp_path: Path, minilm_lock_data: dict) -> None:
    lock = tmp_path / "models.lock.yaml"
    r = run_cli(hub, "lock", MINILM_REPO, "--lock", str(lock))
    assert r.returncode == 0, r.stderr
    assert f"locked {MINILM_REPO}@{MINILM_REV}: 11 files" in r.stdout
    written = yaml.safe_load(lock.read_text())
    expected = sorted(minilm_lock_data["models"][0]["files"], key=lambda f: f["path"])
    assert written == {"version": 1, "models": [{"repo": MINILM_REPO, "revision": MINILM_REV, "files": expected}]}
    assert not list(tmp_path.glob(".models.lock.yaml.*"))  # no temp file left behind


def test_lock_refuses_org_outside_allowlist_unless_allowed(hub: FakeHub, tmp_path: Path) -> None:
    lock = tmp_path / "models.lock.yaml"
    r = run_cli(hub, "lock", "evilcorp/model", "--lock", str(lock))
    assert r.returncode == 2 and "organisation 'evilcorp' is not on the allowlist" in r.stderr
    assert not lock.exists()
    r = run_cli(hub, "lock", "evilcorp/model", "--lock", str(lock), "--allow-org", "evilcorp")
    assert r.returncode == 0, r.stderr
    r = run_cli(hub, "lock", MINILM_REPO, "--lock", str(lock), "--revision", "main")
    assert r.returncode == 0, r.stderr
    assert [m["repo"] for m in yaml.safe_load(lock.read_text())["models"]] == ["evilcorp/model", MINILM_REPO]


def test_lock_unknown_repo_or_revision_exits_2(hub: FakeHub, tmp_path: Path) -> None:
    lock = tmp_path / "models.lock.yaml"
    r = run_cli(hub, "lock", "Qwen/nothing-here", "--lock", str(lock))
    assert r.returncode == 2 and "Qwen/nothing-here: repository not found" in r.stderr, r.stderr
    r = run_cli(hub, "lock", MINILM_REPO, "--lock", str(lock), "--revision", "v9")
    assert r.returncode == 2 and "revision v9 not found" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.fixture
def lock_file(tmp_path: Path, minilm_lock_data: dict) -> Path:
    p = tmp_path / "models.lock.yaml"
    p.write_text(yaml.safe_dump(minilm_lock_data, sort_keys=False))
    return p


def test_pull_fetches_locked_files_into_hf_cache_layout_and_verifies(
    hub: FakeHub, lock_file: Path, tmp_path: Path
) -> None:
    mirror = tmp_path / "mirror"
    r = run_cli(hub, "pull", "--lock", str(lock_file), "--mirror", str(mirror))
    assert r.returncode == 0, r.stdout + r.stderr
    snap = mirror / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / MINILM_REV
    assert (snap / "model.safetensors").is_symlink()
    assert (snap / "model.safetensors").resolve().name == SAFETENSORS_SHA256
    assert not (snap / "pytorch_model.bin").exists() and not (snap / "README.md").exists()
    assert not any("pytorch_model.bin" in line for line in hub.log)
    r = run_cli(hub, "verify", "--lock", str(lock_file), str(mirror))
    assert r.returncode == 0, r.stdout + r.stderr


def test_pull_again_downloads_only_what_is_missing(hub: FakeHub, lock_file: Path, tmp_path: Path) -> None:
    # huggingface-hub 2.x resumes a file within a run (Range on retry) but not a partial file left by a
    # killed run; an interrupted pull therefore resumes per file: finished files are not fetched again.
    mirror = tmp_path / "mirror"
    assert run_cli(hub, "pull", "--lock", str(lock_file), "--mirror", str(mirror)).returncode == 0
    snap = mirror / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / MINILM_REV
    (snap / "tokenizer.json").resolve().unlink()
    (snap / "tokenizer.json").unlink()
    hub.log.clear()
    r = run_cli(hub, "pull", "--lock", str(lock_file), "--mirror", str(mirror))
    assert r.returncode == 0, r.stdout + r.stderr
    fetched = [line for line in hub.log if line.startswith("GET") and "/resolve/" in line]
    assert fetched == [f"GET /{MINILM_REPO}/resolve/{MINILM_REV}/tokenizer.json"]


def test_pull_quarantines_tampered_weights_and_names_both_hashes(hub: FakeHub, lock_file: Path, tmp_path: Path) -> None:
    data = bytearray((MINILM / "model.safetensors").read_bytes())
    data[12345] ^= 0xFF
    import hashlib

    bad_sha = hashlib.sha256(data).hexdigest()
    hub.repo(MINILM_REPO).tampered["model.safetensors"] = bytes(data)
    try:
        mirror = tmp_path / "mirror"
        r = run_cli(hub, "pull", "--lock", str(lock_file), "--mirror", str(mirror))
    finally:
        hub.repo(MINILM_REPO).tampered.clear()
    assert r.returncode == 1
    assert f"model.safetensors: sha256 expected {SAFETENSORS_SHA256}, found {bad_sha}" in r.stdout
    assert "toolkit: error: pull: 1 problem(s)" in r.stderr
    snap = mirror / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / MINILM_REV
    assert not (snap / "model.safetensors").exists() and not (snap / "model.safetensors").is_symlink()
    moved = list((mirror / "quarantine").rglob("model.safetensors.*"))
    assert len(moved) == 1 and moved[0].stat().st_size == SAFETENSORS_SIZE
    assert not (mirror / "models--sentence-transformers--all-MiniLM-L6-v2" / "blobs" / SAFETENSORS_SHA256).exists()
    # Next pull from an honest hub fetches it afresh and passes.
    r = run_cli(hub, "pull", "--lock", str(lock_file), "--mirror", str(mirror))
    assert r.returncode == 0, r.stdout + r.stderr
