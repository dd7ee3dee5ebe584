"""Download locked files into a mirror (Hugging Face cache layout), verify, quarantine what fails."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from toolkit.errors import EnvironmentProblem, UsageError
from toolkit.module_utils.model_verify import (
    FileResult,
    LockedModel,
    VerifyReport,
    snapshot_path,
    verify_models,
)


def download(model: LockedModel, mirror: Path, max_workers: int = 4) -> Path:
    """snapshot_download at the locked commit, only the locked paths. Resumes partial downloads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        path = snapshot_download(
            model.repo,
            revision=model.revision,
            allow_patterns=[f.path for f in model.files],
            cache_dir=str(mirror),
            max_workers=max_workers,
        )
    except RepositoryNotFoundError:
        raise UsageError(f"{model.repo}: repository or revision {model.revision} not found on the hub") from None
    except LocalEntryNotFoundError as err:
        raise EnvironmentProblem(f"{model.repo}: cannot reach the hub: {str(err).splitlines()[0]}") from None
    except HfHubHTTPError as err:
        raise EnvironmentProblem(f"{model.repo}: the hub answered an error: {str(err).splitlines()[0]}") from None
    return Path(path)


def quarantine(mirror: Path, model: LockedModel, result: FileResult) -> Path | None:
    """Move a failed file out of the snapshot (the blob it links to too) into mirror/quarantine/.

    Nothing that failed stays where a server or a later copy could pick it up, and the next pull
    downloads it afresh instead of trusting the cached blob.
    """
    snap = Path(snapshot_path(str(mirror), model))
    entry = snap / result.path
    if not entry.exists() and not entry.is_symlink():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    dest = mirror / "quarantine" / model.cache_dirname / model.revision / f"{result.path}.{stamp}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    real = entry.resolve()
    shutil.move(str(real), dest)
    if entry.is_symlink():
        entry.unlink()
    return dest


def verify_and_quarantine(mirror: Path, models: list[LockedModel], workers: int | None = None) -> VerifyReport:
    """Verify the mirror's snapshots of these models; move every mismatched or unexpected file aside."""
    report = verify_models([(m, snapshot_path(str(mirror), m)) for m in models], workers=workers)
    by_repo = {m.repo: m for m in models}
    for r in report.problems:
        if r.status in ("mismatch", "unexpected"):
            moved = quarantine(mirror, by_repo[r.repo], r)
            if moved is not None:
                r.quarantined = str(moved)
    return report


def default_mirror() -> Path:
    return Path(os.environ.get("TOOLKIT_MODEL_MIRROR", "~/.cache/toolkit/models")).expanduser()
