"""The model lock: reading, parsing and validating models.lock.yaml, and which formats it may name.
Shared by the CLI and the model_verify module (model_verify.py checks the files against it).

Standard library only at import time and no imports from the toolkit package: Ansible ships this file
to managed hosts as ``ansible_collections.pca.toolkit.plugins.module_utils.model_lock``, so the
controller and every host read a lock with the same code. Only ``read_lock`` needs PyYAML,
imported when it is called (the controller always has it; hosts get the lock already parsed and
validated by the controller).

The lock (``models.lock.yaml``):

    version: 1
    models:
      - repo: ORG/NAME
        revision: 40-hex commit
        allow_pickle: false            # optional: pickle formats (.bin .pt .pth .npy .joblib ...)
        allow_code: false              # optional: *.py remote code
        allow_files: []                # optional: globs of other formats accepted as they are
        files:
          - {path: model.safetensors, size: 90868376, sha256: 64-hex}
          - {path: vocab.txt, size: 231508, git_sha1: 40-hex}

A file's format is judged by its name here (file_kind, format_refusal) and by its content when it is
verified (model_verify.check_content).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass

LOCK_VERSION = 1
# A lock for a 70B model in 30 shards is ~10 KB; anything near this is not a lock.
MAX_LOCK_BYTES = 4 * 1024 * 1024
# Any suffix of these marks a pickle (model.pth.tar, x.npy): loading one can run code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".tar", ".mar")
MODEL_KEYS = {"repo", "revision", "files", "allow_pickle", "allow_code", "allow_files"}
FILE_KEYS = {"path", "size", "sha256", "git_sha1"}
TOP_KEYS = {"version", "models"}
TEXT_FILES = ("vocab.txt", "merges.txt")
SENTENCEPIECE_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_-])?"
_REPO = REPO_PATTERN = re.compile(_NAME + "/" + _NAME)
# One path component: no leading dot (no '..', no hidden files), no spaces or control characters.
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,199}")
MAX_PATH = 1024


class LockError(ValueError):
    """The lock is malformed or unreadable; the message is one line naming where and what."""


@dataclass(frozen=True)
class LockedFile:
    path: str
    size: int
    sha256: str | None = None
    git_sha1: str | None = None


@dataclass(frozen=True)
class LockedModel:
    repo: str
    revision: str
    files: tuple[LockedFile, ...]
    allow_pickle: bool = False
    allow_code: bool = False
    allow_files: tuple[str, ...] = ()

    @property
    def cache_dirname(self) -> str:
        """Directory name of this repo in a Hugging Face cache: ``models--ORG--NAME``."""
        return "models--" + self.repo.replace("/", "--")


@dataclass(frozen=True)
class Lock:
    version: int
    models: tuple[LockedModel, ...]

    def model(self, repo: str) -> LockedModel:
        for m in self.models:
            if m.repo == repo:
                return m
        raise LockError(f"repo {repo} is not in the lock (it has: {', '.join(m.repo for m in self.models) or 'none'})")


def _strict_yaml_loader(yaml):
    """A SafeLoader that refuses aliases (no alias bombs: a lock never needs them) and duplicate keys."""

    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise LockError(f"line {event.start_mark.line + 1}: YAML aliases (*name) are not allowed in a lock")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    raise LockError(f"line {key_node.start_mark.line + 1}: a mapping key must be a scalar") from None
                if duplicate:
                    raise LockError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def lock_data_from_bytes(raw: bytes) -> object:
    """Parse lock bytes into plain data: size, UTF-8, NUL, YAML (no aliases, no duplicate keys)."""
    if len(raw) > MAX_LOCK_BYTES:
        raise LockError(f"larger than {MAX_LOCK_BYTES} bytes: not a model lock")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LockError(f"byte {err.start}: not valid UTF-8") from None
    if "\0" in text:
        raise LockError(f"byte {raw.index(0)}: NUL byte in the lock")
    try:
        import yaml
    except ImportError:
        raise LockError("reading a lock file needs PyYAML on this machine") from None
    try:
        return yaml.load(text, Loader=_strict_yaml_loader(yaml))  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise LockError(f"{where}not valid YAML: {problem}") from None
    except RecursionError:
        raise LockError("not valid YAML: nested too deeply") from None


def read_lock(path: str, allow_pickle: bool = False) -> Lock:
    """Read, parse and validate a lock file. Every problem is a LockError of one line (without the path)."""
    try:
        # O_NONBLOCK: a FIFO planted at the lock's name must not hang the run (refused as not regular below).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise LockError(f"cannot read: {err.strerror or err}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LockError("not a regular file")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            chunks.append(chunk)
            if total > MAX_LOCK_BYTES:
                break
    except OSError as err:
        raise LockError(f"cannot read: {err.strerror or err}") from None
    finally:
        os.close(fd)
    return parse_lock(lock_data_from_bytes(b"".join(chunks)), allow_pickle=allow_pickle)


def file_kind(path: str) -> str:
    """The format a path's name claims: safetensors | json | text | sentencepiece | code | pickle | other."""
    name = path.rsplit("/", 1)[-1].lower()
    suffixes = ["." + s for s in name.split(".")[1:]]
    if any(s in PICKLE_SUFFIXES for s in suffixes):
        return "pickle"
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith(".json"):
        return "json"
    if name in TEXT_FILES or name.endswith(".tiktoken"):
        return "text"
    if name in SENTENCEPIECE_FILES:
        return "sentencepiece"
    if name.endswith(".py"):
        return "code"
    return "other"


def format_refusal(path: str, allow_pickle: bool, allow_code: bool, allow_files: tuple[str, ...] | list[str]) -> str:
    """Why a path may not be locked (empty when it may)."""
    kind = file_kind(path)
    if kind == "pickle" and not allow_pickle:
        return "pickle format refused (it can run code when loaded); use safetensors or set allow_pickle: true"
    if kind == "code" and not allow_code:
        return "remote code (*.py) refused; set allow_code: true to run the repo's own code"
    if kind == "other" and not any(fnmatch.fnmatchcase(path, g) for g in allow_files):
        return (
            "format not on the allowlist (safetensors, JSON, tokenizer and vocabulary files); "
            "name it in allow_files to accept it"
        )
    return ""


def _where(i: int, repo: object = None) -> str:
    return f"models[{i}]" + (f" ({repo})" if isinstance(repo, str) and _REPO.fullmatch(repo) else "")


def check_path(p: object, where: str) -> str:
    """A lock path: relative, '/'-separated, each part a plain name (no '..', no leading dot or '/')."""
    if not isinstance(p, str) or not p:
        raise LockError(f"{where}: path must be a non-empty string")
    if len(p) > MAX_PATH or not all(_PART.fullmatch(part) for part in p.split("/")):
        raise LockError(
            f"{where}: path {p!r} must be relative, '/'-separated names of letters, digits and ._+- "
            "(no '..', no leading '.' or '/', no spaces or control characters)"
        )
    return p


def parse_file(raw: object, where: str, model: dict) -> LockedFile:
    if not isinstance(raw, dict):
        raise LockError(f"{where}: a file entry must be a mapping with path, size and sha256 or git_sha1")
    unknown = sorted(set(map(str, raw)) - FILE_KEYS)
    if unknown:
        raise LockError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(FILE_KEYS))})")
    path = check_path(raw.get("path"), where)
    where = f"{where} {path}"
    size = raw.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise LockError(f"{where}: size must be a non-negative integer, got {size!r}")
    sha256, git_sha1 = raw.get("sha256"), raw.get("git_sha1")
    if sha256 is None and git_sha1 is None:
        raise LockError(f"{where}: needs sha256 or git_sha1")
    if sha256 is not None and not (isinstance(sha256, str) and _HEX64.fullmatch(sha256)):
        raise LockError(f"{where}: sha256 must be 64 lowercase hex characters, got {sha256!r}")
    if git_sha1 is not None and not (isinstance(git_sha1, str) and _HEX40.fullmatch(git_sha1)):
        raise LockError(f"{where}: git_sha1 must be 40 lowercase hex characters, got {git_sha1!r}")
    refusal = format_refusal(path, model["allow_pickle"], model["allow_code"], model["allow_files"])
    if refusal:
        raise LockError(f"{where}: {refusal}")
    return LockedFile(path=path, size=size, sha256=sha256, git_sha1=git_sha1)


def _flag(raw: dict, key: str, where: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise LockError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def parse_model(raw: object, i: int, allow_pickle: bool = False) -> LockedModel:
    if not isinstance(raw, dict):
        raise LockError(f"{_where(i)}: a model entry must be a mapping with repo, revision and files")
    repo = raw.get("repo")
    where = _where(i, repo)
    unknown = sorted(set(map(str, raw)) - MODEL_KEYS)
    if unknown:
        raise LockError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(MODEL_KEYS))})")
    if not isinstance(repo, str) or not _REPO.fullmatch(repo) or ".." in repo:
        raise LockError(f"{where}: repo must be ORG/NAME, got {repo!r}")
    rev = raw.get("revision")
    if not isinstance(rev, str) or not _HEX40.fullmatch(rev):
        raise LockError(f"{where}: revision must be a full 40-character lowercase hex commit, got {rev!r}")
    model_pickle = _flag(raw, "allow_pickle", where)
    allow_code = _flag(raw, "allow_code", where)
    allow_files = raw.get("allow_files", [])
    if not isinstance(allow_files, list) or not all(isinstance(g, str) and g for g in allow_files):
        raise LockError(f"{where}: allow_files must be a list of globs, got {allow_files!r}")
    files = raw.get("files")
    if not isinstance(files, list) or not files:
        raise LockError(f"{where}: files must be a non-empty list")
    rules = {"allow_pickle": allow_pickle or model_pickle, "allow_code": allow_code, "allow_files": allow_files}
    parsed = tuple(parse_file(f, f"{where} files[{j}]", rules) for j, f in enumerate(files))
    seen: set[str] = set()
    for f in parsed:
        # A path that is also a directory of another path cannot exist in one snapshot.
        if f.path in seen or any(f.path.startswith(o + "/") or o.startswith(f.path + "/") for o in seen):
            raise LockError(f"{where}: file {f.path} is listed twice or is also a directory")
        seen.add(f.path)
    return LockedModel(
        repo=repo,
        revision=rev,
        files=parsed,
        allow_pickle=model_pickle,
        allow_code=allow_code,
        allow_files=tuple(allow_files),
    )


def parse_lock(data: object, allow_pickle: bool = False) -> Lock:
    """Validate parsed lock data completely; raise LockError with one line on the first problem."""
    if not isinstance(data, dict):
        raise LockError("the lock must be a mapping with version and models")
    unknown = sorted(set(map(str, data)) - TOP_KEYS)
    if unknown:
        raise LockError(f"unknown top-level key(s) {', '.join(unknown)} (allowed: version, models)")
    version = data.get("version")
    if version != LOCK_VERSION or isinstance(version, bool):
        raise LockError(f"version must be {LOCK_VERSION}, got {version!r}")
    models = data.get("models")
    if models is None:
        models = []
    if not isinstance(models, list):
        raise LockError("models must be a list")
    parsed = tuple(parse_model(m, i, allow_pickle) for i, m in enumerate(models))
    repos = [m.repo for m in parsed]
    dupes = sorted({r for r in repos if repos.count(r) > 1})
    if dupes:
        raise LockError(f"repo(s) listed twice: {', '.join(dupes)}")
    return Lock(version=LOCK_VERSION, models=parsed)


def lock_to_data(lock: Lock) -> dict:
    """The plain data of a lock, keys in schema order (for writing YAML or JSON)."""
    models = []
    for m in lock.models:
        entry: dict = {"repo": m.repo, "revision": m.revision}
        if m.allow_pickle:
            entry["allow_pickle"] = True
        if m.allow_code:
            entry["allow_code"] = True
        if m.allow_files:
            entry["allow_files"] = list(m.allow_files)
        entry["files"] = [
            {
                k: v
                for k, v in (("path", f.path), ("size", f.size), ("sha256", f.sha256), ("git_sha1", f.git_sha1))
                if v is not None
            }
            for f in m.files
        ]
        models.append(entry)
    return {"version": lock.version, "models": models}


def entry_digest(model: LockedModel) -> str:
    """Digest of one model's lock entry: a marker is only valid for the exact entry it was verified against."""
    data = lock_to_data(Lock(version=1, models=(model,)))["models"][0]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def marker_name(model: LockedModel) -> str:
    return f"{model.cache_dirname}@{model.revision}"
