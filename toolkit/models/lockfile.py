"""Reading and writing the model lock (``models.lock.yaml``); the schema lives in module_utils/model_verify."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from toolkit import files
from toolkit.errors import UsageError
from toolkit.module_utils.model_lock import (
    Lock,
    LockedModel,
    LockError,
    lock_data_from_bytes,
    lock_to_data,
    parse_lock,
    read_lock,
)

DEFAULT_ORGS = ("Qwen", "meta-llama", "codellama", "nomic-ai", "sentence-transformers", "TheBloke")


def load_lock(path: Path, allow_pickle: bool = False, missing_ok: bool = False) -> Lock:
    """Read and validate a lock file completely; any problem is one UsageError line naming the file (exit 2)."""
    if missing_ok and not os.path.lexists(path):
        return Lock(version=1, models=())
    if not os.path.lexists(path):
        raise UsageError(f"{path}: no such lock file")
    try:
        return read_lock(str(path), allow_pickle=allow_pickle)
    except LockError as err:
        raise UsageError(f"{path}: {err}") from None


def _scalar(value: str) -> str:
    # Quoted only where YAML would read it as something else (a digits-only commit is an int).
    return yaml.safe_dump(value, width=10_000).removesuffix("\n...\n").strip()


def dump_lock(lock: Lock) -> str:
    """YAML text of a lock: one flow mapping per file, the way people read and diff it."""
    data = lock_to_data(lock)
    lines = [
        "# Model lock: verified by `toolkit models verify`; written by `toolkit models lock`.",
        f"version: {data['version']}",
        "models:" if data["models"] else "models: []",
    ]
    for m in data["models"]:
        lines.append(f"  - repo: {_scalar(m['repo'])}")
        lines.append(f"    revision: {_scalar(m['revision'])}")
        if m.get("allow_pickle"):
            lines.append("    allow_pickle: true")
        if m.get("allow_code"):
            lines.append("    allow_code: true")
        if m.get("allow_files"):
            globs = yaml.safe_dump(m["allow_files"], default_flow_style=True, width=10_000).strip()
            lines.append(f"    allow_files: {globs}")
        lines.append("    files:")
        for f in m["files"]:
            body = yaml.safe_dump(f, default_flow_style=True, sort_keys=False, width=10_000).strip()
            lines.append(f"      - {body}")
    text = "\n".join(lines) + "\n"
    # The text we write must read back to the same lock (validated by code: `assert` vanishes under -O).
    try:
        again = parse_lock(lock_data_from_bytes(text.encode("utf-8")), allow_pickle=True)
    except LockError as err:
        raise UsageError(f"refusing to write a lock that does not validate: {err}") from None
    if again != lock:
        raise UsageError("refusing to write a lock that does not read back to itself")
    return text


def write_lock(path: Path, lock: Lock) -> None:
    """Write atomically and to disk before the rename, so a crash leaves the old lock or the new one."""
    files.write_atomic(path, dump_lock(lock), fsync=True)


def upsert_model(lock: Lock, model: LockedModel) -> Lock:
    """The lock with this repo's entry replaced (or added, keeping repos sorted)."""
    others = [m for m in lock.models if m.repo != model.repo]
    return Lock(version=lock.version, models=tuple(sorted([*others, model], key=lambda m: m.repo.lower())))


def check_org(repo: str, allowed: list[str] | tuple[str, ...], allow_any: bool) -> None:
    """Refuse a repo whose publishing organisation is not on the allowlist (unless allow_any)."""
    org = repo.split("/", 1)[0]
    if allow_any or org in allowed:
        return
    raise UsageError(
        f"{repo}: organisation {org!r} is not on the allowlist ({', '.join(allowed)}); "
        "add it with --allow-org or pass --allow-any-org"
    )
