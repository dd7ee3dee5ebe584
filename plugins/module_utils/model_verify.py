"""Offline verification of model files against the lock (model_lock.py). Shared by the CLI and the
model_verify module.

Standard library only and no imports from the toolkit package: Ansible ships this file to managed hosts
as ``ansible_collections.pca.toolkit.plugins.module_utils.model_verify``, so the controller and every
host check weights with the same code.

A file is verified by size, then by sha256 when the lock has it, else by its git blob id (sha1 of
``b"blob <size>\\0" + content``), which is what the hub reports for files not stored in LFS. Its
format is judged by name and by content: safetensors with a valid header, JSON that parses,
UTF-8 tokenizer/vocabulary text, sentencepiece protobufs. Anything else needs the lock to allow it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from .model_lock import Lock, LockedFile, LockedModel, LockError, file_kind

# Reads for hashing: large enough that syscalls cost nothing, small enough to stay in L2/L3.
CHUNK = 4 * 1024 * 1024
# Content checks read whole JSON/text files; a tokenizer.json is tens of MB at most.
MAX_TEXT_BYTES = 256 * 1024 * 1024
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class FileChanged(OSError):
    """The file changed size or content while it was being hashed."""


class Refused(Exception):
    """A file is where it must not be (symlink out of the cache) or not the format its name says."""


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
