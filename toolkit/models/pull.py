"""Download locked files into a mirror (Hugging Face cache layout), verify, quarantine what fails."""

from __future__ import annotations

import contextlib
import os
import stat
import time
from pathlib import Path

from toolkit.errors import EnvironmentProblem, ToolkitError, UsageError
from toolkit.module_utils.model_lock import LockedModel
from toolkit.module_utils.model_verify import FileResult, VerifyReport, snapshot_path, verify_models


def download(model: LockedModel, mirror: Path, max_workers: int = 4) -> Path:
    """snapshot_download at the locked commit, only the locked paths. Resumes partial downloads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    from toolkit.models.hub import hub_failure, hub_timeout, use_timeouts

    use_timeouts()
    try:
        path = snapshot_download(
            model.repo,
            revision=model.revision,
            allow_patterns=[f.path for f in model.files],
            cache_dir=str(mirror),
            max_workers=max_workers,
            etag_timeout=hub_timeout(),
        )
    except RepositoryNotFoundError:
        raise UsageError(f"{model.repo}: repository or revision {model.revision} not found on the hub") from None
    except LocalEntryNotFoundError as err:
        raise EnvironmentProblem(f"{model.repo}: cannot reach the hub: {str(err).splitlines()[0]}") from None
    except HfHubHTTPError as err:
        raise EnvironmentProblem(f"{model.repo}: the hub answered an error: {str(err).splitlines()[0]}") from None
    except ToolkitError:
        raise
    except Exception as err:  # disconnects, timeouts, garbage answers: one line, exit 3
        raise hub_failure(model.repo, err) from None
    return Path(path)


def _real_dir_under(root: Path, rel: Path) -> Path:
    """mkdir -p root/rel where no part may be a symlink (a planted link cannot redirect the move)."""
    current = root
    for part in rel.parts:
        current = current / part
        with contextlib.suppress(FileExistsError):
            os.mkdir(current, 0o700)
        if not stat.S_ISDIR(os.lstat(current).st_mode):
            raise EnvironmentProblem(f"{current}: not a real directory (a symlink?); refusing to quarantine into it")
    return current


def quarantine(mirror: Path, model: LockedModel, result: FileResult) -> Path | None:
    """Move a failed file out of the snapshot (the blob it links to too) into mirror/quarantine/.

    Nothing that failed stays where a server or a later copy could pick it up, and the next pull
    downloads it afresh instead of trusting the cached blob. Nothing is followed: a snapshot entry
    that is a symlink is removed, and its target is moved only when it is a regular file directly in
    this model's own blobs/ (a link to /etc/shadow in a shared mirror moves nothing but itself).
    """
    real_mirror = os.path.realpath(mirror)
    model_dir = os.path.join(real_mirror, model.cache_dirname)
    snap = os.path.join(model_dir, "snapshots", model.revision)
    blobs = os.path.join(model_dir, "blobs")
    parts = result.path.split("/")
    entry = os.path.join(snap, *parts)
    # Every directory on the way must be itself: a symlinked one would point the move elsewhere.
    if os.path.realpath(os.path.dirname(entry)) != os.path.dirname(entry):
        return None
    try:
        st = os.lstat(entry)
    except FileNotFoundError:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    rel = Path("quarantine", model.cache_dirname, model.revision, *parts[:-1])
    dest = _real_dir_under(Path(real_mirror), rel) / f"{parts[-1]}.{stamp}"
    if stat.S_ISLNK(st.st_mode):
        target = os.path.normpath(os.path.join(os.path.dirname(entry), os.readlink(entry)))
        moved = None
        if (
            os.path.dirname(target) == blobs
            and os.path.realpath(blobs) == blobs
            and os.path.lexists(target)
            and stat.S_ISREG(os.lstat(target).st_mode)
        ):
            os.rename(target, dest)
            moved = dest
        os.unlink(entry)
        return moved
    if stat.S_ISREG(st.st_mode):
        os.rename(entry, dest)
        return dest
    return None


def verify_and_quarantine(mirror: Path, models: list[LockedModel], workers: int | None = None) -> VerifyReport:
    """Verify the mirror's snapshots of these models; move every mismatched or unexpected file aside."""
    report = verify_models([(m, snapshot_path(str(mirror), m)) for m in models], workers=workers)
    by_repo = {m.repo: m for m in models}
    for r in report.problems:
        if r.status in ("mismatch", "unexpected", "refused"):
            moved = quarantine(mirror, by_repo[r.repo], r)
            if moved is not None:
                r.quarantined = str(moved)
    return report


def default_mirror() -> Path:
    return Path(os.environ.get("TOOLKIT_MODEL_MIRROR", "~/.cache/toolkit/models")).expanduser()
