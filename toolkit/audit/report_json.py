"""JSON report (the evidence file, and what ``toolkit report`` sums up), and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit import files


def write_atomic(path: Path, text: str, mode: int = 0o640) -> None:
    """Write via a temp file in the same directory and rename: readers (node_exporter, CI) never
    see half a file, and a failed run leaves the previous report intact.

    Reports name hosts, flows and processes: 0640, never world-readable. The file takes its
    directory's group, so a reader that owns the directory (node_exporter's textfile collector
    directory belongs to its group) still reads it."""
    files.write_atomic(path, text, mode, dir_group=True, errors="backslashreplace")


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False, default=str) + "\n"
