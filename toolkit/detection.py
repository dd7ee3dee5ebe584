"""GPU detection for the CLI (the logic is shared with the gpu_facts module in module_utils)."""

from __future__ import annotations

from toolkit.module_utils.gpu_detect import detect

__all__ = ["detect", "gib"]


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024**3:.1f} GiB"
