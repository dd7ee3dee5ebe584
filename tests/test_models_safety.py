"""Hostile input to the shared verify code, on the real MiniLM files: bad lock bytes, alias bombs,
duplicate keys, trailing newlines, traversal, disguised pickles, symlinks out of the cache, a file
truncated while it is hashed, a hub that answers garbage, disconnects or says nothing.

The hub is tests/fakehub.py (a loopback stand-in: it does not exercise CDN redirects, auth or xet);
everything else is real files and the real CLI as a subprocess.
"""

from __future__ import annotations

import copy
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, require
from fakehub import FakeHub, FakeRepo
from test_models_verify import (
    MINILM,
    MINILM_REPO,
    MINILM_REV,
    SAFETENSORS_SHA256,
    SAFETENSORS_SIZE,
    build_minilm_lock_data,
)

from toolkit.module_utils.model_lock import LockError, parse_lock
from toolkit.module_utils.model_verify import FileChanged, hash_file, snapshot_path, verify_models

MODEL_DIR = "models--sentence-transformers--all-MiniLM-L6-v2"


def run_cli(*args: str, env: dict | None = None, limit_as: int | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", **(env or {})}

    def cap() -> None:
        if limit_as:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    return subprocess.run(
        [sys.executable, "-m", "toolkit", "models", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=full_env,
        timeout=180,
        preexec_fn=cap,
    )


@pytest.fixture(scope="module")
def lock_data() -> dict:
    return build_minilm_lock_data()


@pytest.fixture
def snapshot(tmp_path: Path, lock_data: dict) -> Path:
    d = tmp_path / "snap"
    for f in lock_data["models"][0]["files"]:
        (d / f["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(MINILM / f["path"], d / f["path"])
    return d


def hf_cache(root: Path, lock_data: dict) -> Path:
    """The layout snapshot_download writes: snapshots/REV/<path> -> ../../blobs/<sha256>."""
    model = root / MODEL_DIR
    snap = model / "snapshots" / MINILM_REV
    (model / "blobs").mkdir(parents=True)
    for f in lock_data["models"][0]["files"]:
        blob = model / "blobs" / hash_file(str(MINILM / f["path"]), "sha256")
        shutil.copyfile(MINILM / f["path"], blob)
        link = snap / f["path"]
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


# ---------------------------------------------------------------- bad lock bytes, via the CLI (exit 2)

ALIAS_BOMB = "a: &a ['x','x','x','x','x','x','x','x','x']\n" + "".join(
    f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"version: 1\nmodels: []\n# caf\xe9\n", "byte 27: not valid UTF-8"),
        (b"version: 1\x00\nmodels: []\n", "byte 10: NUL byte in the lock"),
        (ALIAS_BOMB.encode(), "line 2: YAML aliases (*name) are not allowed in a lock"),
        (b"version: 1\nversion: 2\nmodels: []\n", "line 2: duplicate key 'version'"),
        (b"version: 1\nmodels: [" + b"[" * 5000 + b"]" * 5000 + b"]\n", "not valid YAML: nested too deeply"),
        (b"#" * (4 * 1024 * 1024 + 1), "larger than 4194304 bytes: not a model lock"),
    ],
    ids=["not-utf8", "nul", "alias-bomb", "duplicate-key", "deep-nesting", "oversized"],
)
def test_bad_lock_bytes_exit_2_with_one_line_naming_the_file(
    tmp_path: Path, snapshot: Path, content: bytes, message: str
) -> None:
    assert len(ALIAS_BOMB) < 2048  # the 2 KB bomb: 9**9 references if aliases were expanded
    lock = tmp_path / "models.lock.yaml"
    lock.write_bytes(content)
    # 1 GiB of address space: an expanded bomb (1.6 GB before this fix) would die of MemoryError.
    r = run_cli("verify", "--lock", str(lock), str(snapshot), limit_as=1 << 30)
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"toolkit: error: {lock}: {message}\n"
    assert r.stdout == ""


def test_unreadable_lock_exits_2(tmp_path: Path, snapshot: Path) -> None:
    (tmp_path / "dir.lock.yaml").mkdir()
    os.mkfifo(tmp_path / "fifo.lock.yaml")  # must not hang the run waiting for a writer
    for name, message in (("dir.lock.yaml", "not a regular file"), ("fifo.lock.yaml", "not a regular file")):
        r = run_cli("verify", "--lock", str(tmp_path / name), str(snapshot))
        assert (r.returncode, r.stderr) == (2, f"toolkit: error: {tmp_path / name}: {message}\n")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["models"][0].update(repo=MINILM_REPO + "\n"), "repo must be ORG/NAME, got "),
        (lambda d: d["models"][0].update(revision=MINILM_REV + "\n"), "revision must be a full 40-character"),
        (lambda d: d["models"][0]["files"][0].update(sha256=SAFETENSORS_SHA256 + "\n"), "sha256 must be 64"),
        (lambda d: d["models"][0]["files"][1].update(git_sha1="f" * 40 + "\n"), "git_sha1 must be 40"),
        (lambda d: d["models"][0].update(repo="sentence-transformers/.."), "repo must be ORG/NAME"),
        (
            lambda d: d["models"][0]["files"][0].update(path="../../../../../controller_secret/id_rsa"),
            "must be relative",
        ),
        (lambda d: d["models"][0]["files"][0].update(path="/etc/shadow"), "must be relative"),
        (lambda d: d["models"][0]["files"][0].update(path="1_Pooling/../../x.json"), "must be relative"),
        (lambda d: d["models"][0]["files"][0].update(path="model.safetensors\n"), "must be relative"),
        (lambda d: d["models"][0]["files"][0].update(size=True), "size must be a non-negative integer"),
        (lambda d: d.update(version=True), "version must be 1, got True"),
    ],
    ids=[
        "repo-newline",
        "revision-newline",
        "sha256-newline",
        "git-sha1-newline",
        "repo-dotdot",
        "traversal",
        "absolute",
        "inner-dotdot",
        "path-newline",
        "bool-size",
        "bool-version",
    ],
)
def test_lock_values_are_matched_as_whole_strings(lock_data: dict, edit, message: str) -> None:
    data = copy.deepcopy(lock_data)
    edit(data)
    with pytest.raises(LockError) as err:
        parse_lock(data)
    assert message in str(err.value) and "\n" not in str(err.value).replace("\\n", "")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("model.bin ", "must be relative"),  # a trailing space hides .bin from a suffix test
        ("model.pth.tar", "pickle format refused"),
        ("model.joblib", "pickle format refused"),
        ("embeddings.npy", "pickle format refused"),
        ("pytorch_model.bin", "pickle format refused"),
        ("modeling_evil.py", "remote code (*.py) refused"),
        ("model.h5", "format not on the allowlist"),
        ("README.md", "format not on the allowlist"),
    ],
)
def test_disguised_pickles_code_and_unknown_formats_are_refused(lock_data: dict, path: str, message: str) -> None:
    data = copy.deepcopy(lock_data)
    data["models"][0]["files"].append({"path": path, "size": 1, "sha256": "0" * 64})
    with pytest.raises(LockError) as err:
        parse_lock(data)
    assert message in str(err.value)


def test_remote_code_and_other_formats_need_their_own_flags(lock_data: dict) -> None:
    data = copy.deepcopy(lock_data)
    data["models"][0]["files"] += [
        {"path": "modeling_x.py", "size": 1, "sha256": "0" * 64},
        {"path": "README.md", "size": 1, "sha256": "0" * 64},
    ]
    data["models"][0]["allow_pickle"] = True  # does not let code or unknown formats in
    with pytest.raises(LockError, match="remote code"):
        parse_lock(data)
    data["models"][0].update(allow_code=True, allow_files=["*.md"])
    model = parse_lock(data).models[0]
    assert model.allow_code and model.allow_files == ("*.md",)


# ---------------------------------------------------------------- content, symlinks, truncation


def test_verify_refuses_content_that_is_not_its_format_even_when_the_hash_matches(
    tmp_path: Path, snapshot: Path, lock_data: dict
) -> None:
    pickle_bytes = b"\x80\x04\x95 cos\nsystem\n(S'id'\ntR."
    (snapshot / "model.safetensors").write_bytes(pickle_bytes)
    (snapshot / "config.json").write_bytes(b"PK\x03\x04 torch zip")
    data = copy.deepcopy(lock_data)
    for f in data["models"][0]["files"]:
        if f["path"] in ("model.safetensors", "config.json"):
            content = (snapshot / f["path"]).read_bytes()
            f.update(size=len(content), sha256=hash_file(str(snapshot / f["path"]), "sha256"))
            f.pop("git_sha1", None)
    report = verify_models([(parse_lock(data).models[0], str(snapshot))])
    bad = {r.path: (r.status, r.reason) for r in report.problems}
    assert bad == {
        "model.safetensors": (
            "refused",
            f"not safetensors: header length {int.from_bytes(pickle_bytes[:8], 'little')} "
            f"does not fit a file of {len(pickle_bytes)} bytes",
        ),
        "config.json": ("refused", "not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    }


def test_verify_accepts_real_minilm_content(snapshot: Path, lock_data: dict) -> None:
    report = verify_models([(parse_lock(lock_data).models[0], str(snapshot))])
    assert report.ok and len(report.results) == 11


def test_snapshot_symlink_outside_the_cache_blobs_is_refused_even_with_the_right_bytes(
    tmp_path: Path, lock_data: dict
) -> None:
    snap = hf_cache(tmp_path / "hub", lock_data)
    model = parse_lock(lock_data).models[0]
    assert verify_models([(model, str(snap))]).ok
    outside = tmp_path / "elsewhere" / "vocab.txt"  # same bytes, but its target can change later
    outside.parent.mkdir()
    shutil.copyfile(MINILM / "vocab.txt", outside)
    (snap / "vocab.txt").unlink()
    (snap / "vocab.txt").symlink_to(outside)
    pooling = snap / "1_Pooling"
    shutil.move(pooling, tmp_path / "elsewhere" / "pool")
    pooling.symlink_to(tmp_path / "elsewhere" / "pool")
    report = verify_models([(model, str(snap))])
    bad = {r.path: (r.status, r.reason) for r in report.problems}
    assert bad == {
        "vocab.txt": ("refused", f"symlink points outside the cache's blobs/: {outside}"),
        "1_Pooling/config.json": ("refused", "a directory on its path is a symlink"),
        "1_Pooling": ("unexpected", ""),
    }


def test_symlink_in_a_plain_snapshot_directory_is_refused(snapshot: Path, tmp_path: Path, lock_data: dict) -> None:
    target = tmp_path / "vocab-copy.txt"
    shutil.move(snapshot / "vocab.txt", target)
    (snapshot / "vocab.txt").symlink_to(target)
    report = verify_models([(parse_lock(lock_data).models[0], str(snapshot))])
    assert [(r.path, r.status, r.reason) for r in report.problems] == [
        ("vocab.txt", "refused", f"is a symlink (to {target}) outside a Hugging Face cache")
    ]


def test_file_truncated_while_hashed_is_a_clear_error_not_sigbus(tmp_path: Path) -> None:
    require((MINILM / "model.safetensors").is_file(), f"needs MiniLM weights in {MINILM}")
    victim = tmp_path / "model.safetensors"
    shutil.copyfile(MINILM / "model.safetensors", victim)
    seen = []

    def truncate_after_first_chunk(done: int) -> None:
        if not seen:
            os.truncate(victim, 1000)  # another process shrinking the file under the reader
        seen.append(done)

    with pytest.raises(FileChanged) as err:
        hash_file(str(victim), "sha256", on_chunk=truncate_after_first_chunk)
    assert str(err.value) == f"changed while being hashed (size {SAFETENSORS_SIZE} before, {seen[-1]} read, 1000 after)"
    assert seen == [4 * 1024 * 1024]  # one chunk read, then end of file: no SIGBUS, no garbage hash


# ---------------------------------------------------------------- pull quarantine never follows a link


def test_quarantine_never_follows_a_planted_symlink(tmp_path: Path, lock_data: dict) -> None:
    from toolkit.models.pull import verify_and_quarantine

    mirror = tmp_path / "mirror"
    snap = hf_cache(mirror, lock_data)
    secret = tmp_path / "etc" / "shadow"
    secret.parent.mkdir()
    secret.write_text("root:$6$secret\n")
    (snap / "config.json").unlink()
    (snap / "config.json").symlink_to(secret)  # planted by anyone who can write the shared mirror
    (snap / "extra.json").symlink_to(secret)
    model = parse_lock(lock_data).models[0]
    report = verify_and_quarantine(mirror, [model])
    assert {r.path: r.status for r in report.problems} == {"config.json": "refused", "extra.json": "unexpected"}
    assert secret.read_text() == "root:$6$secret\n"  # still there, untouched
    assert not os.path.lexists(snap / "config.json") and not os.path.lexists(snap / "extra.json")
    assert list((mirror / "quarantine").rglob("*")) == [
        mirror / "quarantine" / MODEL_DIR,
        mirror / "quarantine" / MODEL_DIR / MINILM_REV,
    ]


def test_quarantine_moves_a_tampered_blob_but_refuses_a_symlinked_quarantine(tmp_path: Path, lock_data: dict) -> None:
    from toolkit.errors import EnvironmentProblem
    from toolkit.models.pull import verify_and_quarantine

    mirror = tmp_path / "mirror"
    snap = hf_cache(mirror, lock_data)
    blob = (snap / "vocab.txt").resolve()
    with open(blob, "ab") as fh:
        fh.write(b"x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (mirror / "quarantine").symlink_to(elsewhere)
    model = parse_lock(lock_data).models[0]
    with pytest.raises(EnvironmentProblem, match="not a real directory"):
        verify_and_quarantine(mirror, [model])
    assert list(elsewhere.iterdir()) == [] and blob.exists()
    (mirror / "quarantine").unlink()
    report = verify_and_quarantine(mirror, [model])
    moved = Path(report.problems[0].quarantined)
    assert moved.parent == mirror / "quarantine" / MODEL_DIR / MINILM_REV and moved.name.startswith("vocab.txt.")
    assert not blob.exists() and not os.path.lexists(snap / "vocab.txt")
    assert snapshot_path(str(mirror), model) == str(snap)


# ---------------------------------------------------------------- a hostile hub: one line, exit 3


@pytest.fixture(scope="module")
def small_hub():
    require((MINILM / "config.json").is_file(), f"needs MiniLM files in {MINILM}")
    files = {p: (MINILM / p).read_bytes() for p in ("config.json", "vocab.txt")}
    files["../../escape.json"] = b"{}"
    with FakeHub([FakeRepo(MINILM_REPO, MINILM_REV, dict(files))]) as hub:
        yield hub


def hub_env(hub: FakeHub) -> dict:
    return {
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": "/nonexistent-toolkit-hf-home",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOOLKIT_HUB_TIMEOUT": "2",
        "HF_HUB_OFFLINE": "0",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }


def test_lock_under_python_O_refuses_a_hub_listing_a_traversal_path(small_hub: FakeHub, tmp_path: Path) -> None:
    lock = tmp_path / "models.lock.yaml"
    r = subprocess.run(
        [sys.executable, "-O", "-m", "toolkit", "models", "lock", MINILM_REPO, "--lock", str(lock),
         "--include", "*escape*"],
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ, **hub_env(small_hub)), timeout=120,
    )  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert r.stderr.startswith(f"toolkit: error: the hub's answer for {MINILM_REPO} does not make a valid lock entry:")
    assert "'../../escape.json' must be relative" in r.stderr and r.stderr.count("\n") == 1
    assert not lock.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("mode", "commands"),
    [("garbage", ("lock",)), ("disconnect", ("lock",)), ("silent", ("lock", "pull"))],
)
def test_hostile_hub_is_one_line_and_exit_3(
    small_hub: FakeHub, tmp_path: Path, mode: str, commands: tuple, lock_data: dict
) -> None:
    # pull reaches the hub through the same guarded client; it is run against the silent hub only
    # (the library retries 5 times with back-off, ~25 s per run).
    lock = tmp_path / "models.lock.yaml"
    files = [f for f in lock_data["models"][0]["files"] if f["path"] in ("config.json", "vocab.txt")]
    lock.write_text(yaml.safe_dump({"version": 1, "models": [dict(lock_data["models"][0], files=files)]}))
    before = lock.read_bytes()
    argv = {
        "lock": ("lock", MINILM_REPO, "--lock", str(lock)),
        "pull": ("pull", "--lock", str(lock), "--mirror", str(tmp_path / "m")),
    }
    expected = {
        "garbage": "the hub answered something unusable (",
        "disconnect": "cannot reach the hub: RemoteProtocolError: Server disconnected without sending a response.",
        "silent": "cannot reach the hub: ",
    }[mode]
    small_hub.misbehave = mode
    try:
        for command in commands:
            started = time.monotonic()
            r = run_cli(*argv[command], env=hub_env(small_hub))
            elapsed = time.monotonic() - started
            lines = r.stderr.splitlines()
            assert r.returncode == 3, (mode, command, r.stdout, r.stderr)
            assert lines[-1].startswith(f"toolkit: error: {MINILM_REPO}: {expected}"), r.stderr
            assert all(x.startswith("pulling ") for x in lines[:-1]) and "Traceback" not in r.stderr, r.stderr
            assert elapsed < 60, elapsed  # 2 s timeouts; without one, "silent" hangs for good
    finally:
        small_hub.misbehave = None
    assert lock.read_bytes() == before  # nothing half-written
    snap = tmp_path / "m" / MODEL_DIR / "snapshots" / MINILM_REV
    assert not snap.exists() or not any(snap.iterdir())
    if mode == "silent":
        assert "ReadTimeout" in r.stderr
