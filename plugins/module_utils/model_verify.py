"""Model lock parsing and offline verification of model files. Shared by the CLI and the model_verify module.

Standard library only at import time and no imports from the toolkit package: Ansible ships this file
to managed hosts as ``ansible_collections.pca.toolkit.plugins.module_utils.model_verify``, so the
controller and every host check weights with the same code. Only ``read_lock`` needs PyYAML,
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

A file is verified by size, then by sha256 when the lock has it, else by its git blob id (sha1 of
``b"blob <size>\\0" + content``), which is what the hub reports for files not stored in LFS. Its
format is judged by name and by content: safetensors with a valid header, JSON that parses,
UTF-8 tokenizer/vocabulary text, sentencepiece protobufs. Anything else needs the lock to allow it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

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
# Reads for hashing: large enough that syscalls cost nothing, small enough to stay in L2/L3.
CHUNK = 4 * 1024 * 1024
# Content checks read whole JSON/text files; a tokenizer.json is tens of MB at most.
MAX_TEXT_BYTES = 256 * 1024 * 1024
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class LockError(ValueError):
    """The lock is malformed or unreadable; the message is one line naming where and what."""


class FileChanged(OSError):
    """The file changed size or content while it was being hashed."""


class Refused(Exception):
    """A file is where it must not be (symlink out of the cache) or not the format its name says."""


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


@dataclass
class FileResult:
    """One file's verdict. status: ok | mismatch | missing | unexpected | unreadable | refused."""

    repo: str
    path: str
    status: str
    reason: str = ""
    expected_size: int | None = None
    found_size: int | None = None
    algorithm: str | None = None
    expected_hash: str | None = None
    found_hash: str | None = None
    quarantined: str | None = None

    def line(self) -> str:
        """One human line: what is wrong, expected against found."""
        text = self._line()
        return f"{text}; moved to {self.quarantined}" if self.quarantined else text

    def _line(self) -> str:
        where = f"{self.repo}: {self.path}"
        if self.status == "ok":
            return f"ok         {where}"
        if self.status == "missing":
            return f"missing    {where} (expected size {self.expected_size}, {self.algorithm} {self.expected_hash})"
        if self.status == "unexpected":
            return f"unexpected {where} (not in the lock, size {self.found_size})"
        if self.status == "unreadable":
            return f"unreadable {where}: {self.reason}"
        if self.status == "refused":
            return f"refused    {where}: {self.reason}"
        if self.reason == "size":
            return (
                f"mismatch   {where}: size expected {self.expected_size}, found {self.found_size}; "
                f"{self.algorithm} expected {self.expected_hash}, found {self.found_hash}"
            )
        return (
            f"mismatch   {where}: {self.algorithm} expected {self.expected_hash}, found {self.found_hash} "
            f"(size {self.found_size})"
        )


@dataclass
class VerifyReport:
    results: list[FileResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.results)

    @property
    def problems(self) -> list[FileResult]:
        return [r for r in self.results if r.status != "ok"]

    def bad_repos(self) -> list[str]:
        return sorted({r.repo for r in self.problems})

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "checked": sum(1 for r in self.results if r.status != "unexpected"),
            "problems": len(self.problems),
            "results": [asdict(r) for r in self.results],
        }


# ---------------------------------------------------------------- reading the lock file


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


# ---------------------------------------------------------------- formats


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


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) != n:
        raise FileChanged("the file shrank while it was being checked")
    return data


def check_content(fd: int, size: int, kind: str) -> str:
    """Why the content is not the format its name says (empty when it is)."""
    if kind == "safetensors":
        if size < 10:
            return "not safetensors: shorter than a header"
        n = int.from_bytes(_pread_exact(fd, 8, 0), "little")
        if n < 2 or n > MAX_SAFETENSORS_HEADER or n > size - 8:
            return f"not safetensors: header length {n} does not fit a file of {size} bytes"
        try:
            header = json.loads(_pread_exact(fd, n, 8).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return "not safetensors: the header is not UTF-8 JSON"
        if not isinstance(header, dict):
            return "not safetensors: the header is not a JSON object"
        data_len, end = size - 8 - n, 0
        for name, t in header.items():
            if name == "__metadata__":
                continue
            offsets = t.get("data_offsets") if isinstance(t, dict) else None
            if not (
                isinstance(t, dict)
                and isinstance(t.get("dtype"), str)
                and isinstance(t.get("shape"), list)
                and all(isinstance(d, int) and d >= 0 for d in t["shape"])
                and isinstance(offsets, list)
                and len(offsets) == 2
                and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_len
            ):
                return f"not safetensors: tensor {name!r} has a malformed entry"
            end = max(end, offsets[1])
        if end != data_len:
            return f"not safetensors: tensors cover {end} of {data_len} data bytes"
        return ""
    if kind in ("json", "text", "code"):
        if size > MAX_TEXT_BYTES:
            return f"larger than {MAX_TEXT_BYTES} bytes for a {kind} file"
        try:
            text = _pread_exact(fd, size, 0).decode("utf-8")
        except UnicodeDecodeError as err:
            return f"not UTF-8 text (byte {err.start})"
        if "\0" in text:
            return "NUL byte in a text file"
        if kind == "json":
            try:
                json.loads(text)
            except ValueError as err:
                return f"not valid JSON: {str(err).splitlines()[0]}"
        return ""
    if kind == "sentencepiece":
        # A ModelProto starts with field 1 (pieces), wire type 2: tag byte 0x0a.
        head = _pread_exact(fd, min(size, 2), 0)
        if head[:1] != b"\x0a":
            return "not a sentencepiece model (no protobuf ModelProto header)"
        return ""
    return ""


# ---------------------------------------------------------------- lock parsing


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


# ---------------------------------------------------------------- hashing


def hash_fd(fd: int, algorithm: str, on_chunk=None) -> str:
    """sha256 (or git blob id, algorithm "git_sha1") of an open file, read with read(), not mmap.

    A file that shrinks under an mmap kills the process with SIGBUS; with read() a file that
    changes size or modification time while it is hashed raises FileChanged instead. hashlib
    releases the GIL while it hashes, so threads hash files in parallel.
    """
    if algorithm == "sha256":
        h = hashlib.sha256()
    elif algorithm == "git_sha1":
        h = hashlib.sha1()
    else:
        raise ValueError(f"unknown algorithm {algorithm}")
    before = os.fstat(fd)
    if algorithm == "git_sha1":
        h.update(b"blob %d\0" % before.st_size)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    with open(fd, "rb", buffering=0, closefd=False) as fh:
        fh.seek(0)
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            total += n
            if on_chunk:
                on_chunk(total)
    after = os.fstat(fd)
    if total != before.st_size or after.st_size != before.st_size or after.st_mtime_ns != before.st_mtime_ns:
        raise FileChanged(
            f"changed while being hashed (size {before.st_size} before, {total} read, {after.st_size} after)"
        )
    return h.hexdigest()


def hash_file(path: str, algorithm: str, on_chunk=None) -> str:
    """hash_fd of a path (follows symlinks: for tools and tests, not for verifying a snapshot)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return hash_fd(fd, algorithm, on_chunk)
    finally:
        os.close(fd)


def blobs_dir(snapshot_root: str) -> str | None:
    """The cache's own blobs/ for ``.../models--ORG--NAME/snapshots/REV``; None for any other directory."""
    real = os.path.realpath(snapshot_root)
    snapshots = os.path.dirname(real)
    model_dir = os.path.dirname(snapshots)
    if os.path.basename(snapshots) == "snapshots" and os.path.basename(model_dir).startswith("models--"):
        return os.path.join(model_dir, "blobs")
    return None


def open_locked(root: str, rel: str, blobs: str | None) -> int:
    """Open root/rel for reading without following anything that leads out of the snapshot.

    The directories on the way must be real directories; the entry may be a regular file or, in a
    Hugging Face cache, a symlink whose target lies directly in that model's own blobs/ (where
    ``snapshot_download`` puts it). FileNotFoundError means missing; Refused names what is wrong.
    """
    real_root = os.path.realpath(root)
    full = os.path.join(real_root, *rel.split("/"))
    parent = os.path.dirname(full)
    if os.path.realpath(parent) != parent:
        raise Refused("a directory on its path is a symlink")
    st = os.lstat(full)
    if stat.S_ISLNK(st.st_mode):
        target = os.path.realpath(full)
        if blobs is None:
            raise Refused(f"is a symlink (to {os.readlink(full)}) outside a Hugging Face cache")
        if os.path.dirname(target) != os.path.realpath(blobs):
            raise Refused(f"symlink points outside the cache's blobs/: {os.readlink(full)}")
        full = target
    elif not stat.S_ISREG(st.st_mode):
        raise Refused("not a regular file")
    try:
        fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        if err.errno == getattr(__import__("errno"), "ELOOP", -1):
            raise Refused("the blob is itself a symlink") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Refused("not a regular file")
    return fd


def _check_one(repo: str, root: str, lf: LockedFile, blobs: str | None) -> FileResult:
    algo = "sha256" if lf.sha256 else "git_sha1"
    expected = lf.sha256 or lf.git_sha1
    res = FileResult(
        repo=repo, path=lf.path, status="ok", expected_size=lf.size, algorithm=algo, expected_hash=expected
    )
    try:
        fd = open_locked(root, lf.path, blobs)
    except FileNotFoundError:
        res.status = "missing"
        return res
    except Refused as err:
        res.status, res.reason = "refused", str(err)
        return res
    except OSError as err:
        res.status, res.reason = "unreadable", err.strerror or str(err)
        return res
    try:
        res.found_size = os.fstat(fd).st_size
        # Hashed even when the size is already wrong: the report names the found hash either way.
        res.found_hash = hash_fd(fd, algo)
        if res.found_size != lf.size:
            res.status, res.reason = "mismatch", "size"
        elif res.found_hash != expected:
            res.status, res.reason = "mismatch", "hash"
        else:
            why = check_content(fd, res.found_size, file_kind(lf.path))
            if why:
                res.status, res.reason = "refused", why
    except FileChanged as err:
        res.status, res.reason = "unreadable", str(err)
    except OSError as err:
        res.status, res.reason = "unreadable", err.strerror or str(err)
    finally:
        os.close(fd)
    return res


def _walk_files(root: str) -> list[str]:
    """Relative paths (with /) of every entry under root that is not a real directory (symlinks included)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            out.append(name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}")
    return out


def default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(32, n))


def snapshot_path(cache_dir: str, model: LockedModel) -> str:
    return os.path.join(cache_dir, model.cache_dirname, "snapshots", model.revision)


def is_hf_cache(directory: str) -> bool:
    """True when directory holds ``models--ORG--NAME`` entries (a Hugging Face hub cache)."""
    try:
        return any(e.startswith("models--") for e in os.listdir(directory))
    except OSError:
        return False


def verify_models(targets: list[tuple[LockedModel, str]], workers: int | None = None, on_result=None) -> VerifyReport:
    """Verify each (model, snapshot directory) pair: every locked file, and no file beyond the lock.

    Files of all models are hashed together in one thread pool, so many small files and a few big
    ones keep every core busy. ``on_result(FileResult)`` is called as each file finishes (progress).
    """
    report = VerifyReport()

    def add(r: FileResult) -> None:
        report.results.append(r)
        if on_result:
            on_result(r)

    jobs = []
    for model, root in targets:
        if not os.path.isdir(root):
            for lf in model.files:
                add(
                    FileResult(
                        model.repo,
                        lf.path,
                        "missing",
                        "snapshot directory missing",
                        lf.size,
                        None,
                        "sha256" if lf.sha256 else "git_sha1",
                        lf.sha256 or lf.git_sha1,
                    )
                )
            continue
        locked = {f.path for f in model.files}
        for rel in _walk_files(root):
            if rel not in locked:
                try:
                    size = os.lstat(os.path.join(root, rel)).st_size
                except OSError:
                    size = None
                add(FileResult(model.repo, rel, "unexpected", found_size=size))
        blobs = blobs_dir(root)
        # Biggest first: the longest job starts at once instead of trailing at the end.
        jobs += [(model.repo, root, lf, blobs) for lf in model.files]
    jobs.sort(key=lambda j: -j[2].size)
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        for r in pool.map(lambda j: _check_one(*j), jobs):
            add(r)
    report.results.sort(key=lambda r: (r.repo, r.path))
    return report


def resolve_targets(lock: Lock, directory: str, repo: str | None = None) -> list[tuple[LockedModel, str]]:
    """Map a directory to (model, snapshot dir) pairs.

    A Hugging Face cache (holding ``models--*``) maps every locked model (or only ``repo``) to its
    locked snapshot. Any other directory is the snapshot of one model: the lock's only model, or repo.
    """
    if not os.path.isdir(directory):
        raise LockError(f"{directory} is not a directory")
    # An HF_HOME holds the cache in hub/; accept either.
    cache = next((d for d in (directory, os.path.join(directory, "hub")) if is_hf_cache(d)), None)
    if cache is not None:
        models = [lock.model(repo)] if repo else list(lock.models)
        return [(m, snapshot_path(cache, m)) for m in models]
    if repo:
        return [(lock.model(repo), directory)]
    if len(lock.models) != 1:
        raise LockError(
            f"{directory} is one model's directory but the lock holds {len(lock.models)} models: name one with --repo"
        )
    return [(lock.models[0], directory)]


def within(root: str, path: str) -> bool:
    """True when path, every symlink resolved, lies inside root (also resolved)."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)
