"""Model lock parsing and offline verification of model files. Shared by the CLI and the model_verify module.

Standard library only and no imports from the toolkit package: Ansible ships this file to managed
hosts as ``ansible.module_utils.model_verify``, so the controller and every host check weights with
the same code.

The lock (``models.lock.yaml``; YAML parsing happens at the edges, this module takes the parsed data):

    version: 1
    models:
      - repo: ORG/NAME
        revision: 40-hex commit
        allow_pickle: false            # optional
        files:
          - {path: model.safetensors, size: 90868376, sha256: 64-hex}
          - {path: vocab.txt, size: 231508, git_sha1: 40-hex}

A file is verified by size, then by sha256 when the lock has it, else by its git blob id (sha1 of
``b"blob <size>\\0" + content``), which is what the hub reports for files not stored in LFS.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

LOCK_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MODEL_KEYS = {"repo", "revision", "files", "allow_pickle"}
FILE_KEYS = {"path", "size", "sha256", "git_sha1"}
TOP_KEYS = {"version", "models"}
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# Reads for hashing: large enough that syscalls cost nothing, small enough to stay in L2/L3.
CHUNK = 4 * 1024 * 1024
# A file at least this big is hashed from a read-only mmap: no copy into Python buffers.
MMAP_MIN = 1 << 20


class LockError(ValueError):
    """The lock is malformed; the message is one line naming where and what."""


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
    """One file's verdict. status: ok | mismatch | missing | unexpected | unreadable."""

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


# ---------------------------------------------------------------- lock parsing


def _where(i: int, repo: object = None) -> str:
    return f"models[{i}]" + (f" ({repo})" if isinstance(repo, str) else "")


def _check_path(p: object, where: str) -> str:
    if not isinstance(p, str) or not p:
        raise LockError(f"{where}: path must be a non-empty string")
    parts = p.split("/")
    if p.startswith("/") or "\\" in p or any(part in ("", ".", "..") for part in parts):
        raise LockError(f"{where}: path {p!r} must be relative, with no '.', '..' or empty parts")
    return p


def parse_file(raw: object, where: str, allow_pickle: bool) -> LockedFile:
    if not isinstance(raw, dict):
        raise LockError(f"{where}: a file entry must be a mapping with path, size and sha256 or git_sha1")
    unknown = sorted(set(map(str, raw)) - FILE_KEYS)
    if unknown:
        raise LockError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(FILE_KEYS))})")
    path = _check_path(raw.get("path"), where)
    where = f"{where} {path}"
    size = raw.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise LockError(f"{where}: size must be a non-negative integer, got {size!r}")
    sha256, git_sha1 = raw.get("sha256"), raw.get("git_sha1")
    if sha256 is None and git_sha1 is None:
        raise LockError(f"{where}: needs sha256 or git_sha1")
    if sha256 is not None and not (isinstance(sha256, str) and _HEX64.match(sha256)):
        raise LockError(f"{where}: sha256 must be 64 lowercase hex characters, got {sha256!r}")
    if git_sha1 is not None and not (isinstance(git_sha1, str) and _HEX40.match(git_sha1)):
        raise LockError(f"{where}: git_sha1 must be 40 lowercase hex characters, got {git_sha1!r}")
    if not allow_pickle and path.lower().endswith(PICKLE_SUFFIXES):
        raise LockError(
            f"{where}: pickle format refused (it can run code when loaded); use safetensors or set allow_pickle: true"
        )
    return LockedFile(path=path, size=size, sha256=sha256, git_sha1=git_sha1)


def parse_model(raw: object, i: int, allow_pickle: bool = False) -> LockedModel:
    if not isinstance(raw, dict):
        raise LockError(f"{_where(i)}: a model entry must be a mapping with repo, revision and files")
    repo = raw.get("repo")
    where = _where(i, repo)
    unknown = sorted(set(map(str, raw)) - MODEL_KEYS)
    if unknown:
        raise LockError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(MODEL_KEYS))})")
    if not isinstance(repo, str) or not _REPO.match(repo):
        raise LockError(f"{where}: repo must be ORG/NAME, got {repo!r}")
    rev = raw.get("revision")
    if not isinstance(rev, str) or not _HEX40.match(rev):
        raise LockError(f"{where}: revision must be a full 40-character lowercase hex commit, got {rev!r}")
    model_pickle = raw.get("allow_pickle", False)
    if not isinstance(model_pickle, bool):
        raise LockError(f"{where}: allow_pickle must be true or false, got {model_pickle!r}")
    files = raw.get("files")
    if not isinstance(files, list) or not files:
        raise LockError(f"{where}: files must be a non-empty list")
    parsed = tuple(parse_file(f, f"{where} files[{j}]", allow_pickle or model_pickle) for j, f in enumerate(files))
    seen: set[str] = set()
    for f in parsed:
        if f.path in seen:
            raise LockError(f"{where}: file {f.path} is listed twice")
        seen.add(f.path)
    return LockedModel(repo=repo, revision=rev, files=parsed, allow_pickle=model_pickle)


def parse_lock(data: object, allow_pickle: bool = False) -> Lock:
    """Validate parsed lock data; raise LockError with one line on the first problem."""
    if not isinstance(data, dict):
        raise LockError("the lock must be a mapping with version and models")
    unknown = sorted(set(map(str, data)) - TOP_KEYS)
    if unknown:
        raise LockError(f"unknown top-level key(s) {', '.join(unknown)} (allowed: version, models)")
    if data.get("version") != LOCK_VERSION:
        raise LockError(f"version must be {LOCK_VERSION}, got {data.get('version')!r}")
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


# ---------------------------------------------------------------- hashing


def hash_file(path: str, algorithm: str) -> str:
    """sha256 of the file, or its git blob id (algorithm "git_sha1"). Follows symlinks.

    hashlib releases the GIL while it hashes, so threads hash files in parallel. Big files are
    hashed straight from an mmap, which spares one copy per chunk compared with read().
    """
    if algorithm == "sha256":
        h = hashlib.sha256()
    elif algorithm == "git_sha1":
        h = hashlib.sha1()
    else:
        raise ValueError(f"unknown algorithm {algorithm}")
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if algorithm == "git_sha1":
            h.update(b"blob %d\0" % size)
        if size >= MMAP_MIN:
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                if hasattr(mm, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
                    mm.madvise(mmap.MADV_SEQUENTIAL)
                view = memoryview(mm)
                try:
                    for off in range(0, size, CHUNK):
                        h.update(view[off : off + CHUNK])
                finally:
                    view.release()
        else:
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while True:
                n = fh.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
    return h.hexdigest()


def _check_one(repo: str, root: str, lf: LockedFile) -> FileResult:
    algo = "sha256" if lf.sha256 else "git_sha1"
    expected = lf.sha256 or lf.git_sha1
    res = FileResult(
        repo=repo, path=lf.path, status="ok", expected_size=lf.size, algorithm=algo, expected_hash=expected
    )
    full = os.path.join(root, *lf.path.split("/"))
    try:
        st = os.stat(full)  # follows the snapshot's symlinks into ../../blobs
    except FileNotFoundError:
        res.status = "missing"
        return res
    except OSError as err:
        res.status, res.reason = "unreadable", err.strerror or str(err)
        return res
    if not os.path.isfile(full):
        res.status, res.reason = "unreadable", "not a regular file"
        return res
    res.found_size = st.st_size
    try:
        # Hashed even when the size is already wrong: the report names the found hash either way.
        res.found_hash = hash_file(full, algo)
    except OSError as err:
        res.status, res.reason = "unreadable", err.strerror or str(err)
        return res
    if st.st_size != lf.size:
        res.status, res.reason = "mismatch", "size"
    elif res.found_hash != expected:
        res.status, res.reason = "mismatch", "hash"
    return res


def _walk_files(root: str) -> list[str]:
    """Relative paths (with /) of every file under root, following symlinked files but not dirs."""
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
    jobs = []
    for model, root in targets:
        if not os.path.isdir(root):
            for lf in model.files:
                algo = "sha256" if lf.sha256 else "git_sha1"
                r = FileResult(
                    model.repo,
                    lf.path,
                    "missing",
                    "snapshot directory missing",
                    lf.size,
                    None,
                    algo,
                    lf.sha256 or lf.git_sha1,
                )
                report.results.append(r)
                if on_result:
                    on_result(r)
            continue
        locked = {f.path for f in model.files}
        for rel in _walk_files(root):
            if rel not in locked:
                full = os.path.join(root, rel)
                size = os.stat(full).st_size if os.path.exists(full) else None
                r = FileResult(model.repo, rel, "unexpected", found_size=size)
                report.results.append(r)
                if on_result:
                    on_result(r)
        # Biggest first: the longest job starts at once instead of trailing at the end.
        jobs += [(model.repo, root, lf) for lf in model.files]
    jobs.sort(key=lambda j: -j[2].size)
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        for r in pool.map(lambda j: _check_one(*j), jobs):
            report.results.append(r)
            if on_result:
                on_result(r)
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
