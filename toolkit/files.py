"""Writing the toolkit's output files: one atomic writer for reports, locks, plans and artifacts."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(
    path: Path,
    text: str,
    mode: int = 0o644,
    *,
    dir_group: bool = False,
    fsync: bool = False,
    errors: str = "strict",
) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it (created with O_EXCL, so no
    symlink planted there is followed) and ``os.replace``: a reader never sees half a file and a
    failure leaves the previous one intact. ``dir_group``: the file takes its directory's group (a
    collector that owns the directory still reads a 0640 report). ``fsync``: the bytes reach the
    disk before the rename (a lock file that must survive a crash)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750 if mode & 0o007 == 0 else 0o755)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors=errors) as fh:
            fh.write(text)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        if dir_group:
            with contextlib.suppress(OSError):  # not ours to give away (not root, not in that group)
                os.chown(tmp, -1, path.parent.stat().st_gid)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
