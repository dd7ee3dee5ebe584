"""JSON report (the evidence file, and what ``toolkit report`` sums up), and atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str, mode: int = 0o640) -> None:
    """Write via a temp file in the same directory and rename: readers (node_exporter, CI) never
    see half a file, and a failed run leaves the previous report intact.

    Reports name hosts, flows and processes: 0640, never world-readable. The file takes its
    directory's group, so a reader that owns the directory (node_exporter's textfile collector
    directory belongs to its group) still reads it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(text)
        with contextlib.suppress(OSError):  # not ours to give away (not root, not in that group)
            os.chown(tmp, -1, path.parent.stat().st_gid)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False, default=str) + "\n"
