"""`toolkit models lock|pull|verify`: pin model weights to hashes, fetch them, check them offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from toolkit.errors import CheckFailed, UsageError
from toolkit.models import lockfile
from toolkit.module_utils.model_verify import LockError, VerifyReport, default_workers, resolve_targets, verify_models

models_app = typer.Typer(
    help="Verified model weights: lock a hub revision to file hashes, pull it into a mirror, verify offline.\n\n"
    "Exit codes: 0 all files match, 1 a file is mismatched, missing or unexpected, "
    "2 usage error or bad lock, 3 hub unreachable.",
    no_args_is_help=True,
)

LOCK_OPT = typer.Option(Path("models.lock.yaml"), "--lock", "-l", help="The lock file (keep it next to the inventory).")
ORG_OPT = typer.Option(
    [], "--allow-org", help=f"Also allow this publishing organisation (allowed: {', '.join(lockfile.DEFAULT_ORGS)})."
)
ANY_ORG_OPT = typer.Option(False, "--allow-any-org", help="Allow a repo from any organisation.")
JSON_OPT = typer.Option(False, "--json", help="Print the result as JSON (for machines).")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _render(report: VerifyReport, as_json: bool, verbose: bool) -> None:
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    for r in report.results:
        if r.status != "ok" or verbose:
            print(r.line())
    checked = sum(1 for r in report.results if r.status != "unexpected")
    print(f"{checked} locked files checked, {len(report.problems)} problem(s)")


def _verify_with_progress(targets: list, workers: int, show: bool) -> VerifyReport:
    """verify_models with a bytes progress bar on stderr when it is a terminal (hashing 20 GB takes a while)."""
    if not (show and sys.stderr.isatty()):
        return verify_models(targets, workers=workers)
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    sizes = {(m.repo, f.path): f.size for m, _ in targets for f in m.files}
    with Progress(
        TextColumn("verifying"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        transient=True,
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task("verify", total=sum(sizes.values()))
        return verify_models(
            targets, workers=workers, on_result=lambda r: bar.advance(task, sizes.get((r.repo, r.path), 0))
        )


def _fail_if_bad(report: VerifyReport, what: str) -> None:
    if report.ok:
        return
    worst = report.problems[0]
    raise CheckFailed(
        f"{what}: {len(report.problems)} problem(s) in {', '.join(report.bad_repos())}; first: {worst.line().strip()}"
    )


@models_app.command("lock")
def lock_cmd(
    repo: str = typer.Argument(..., help="Hub repository ORG/NAME."),
    revision: str = typer.Option(
        None, "--revision", "-r", help="Branch, tag or commit (default main); locked as the full commit."
    ),
    lock: Path = LOCK_OPT,
    include: list[str] = typer.Option([], "--include", help="Also lock files matching this glob (path or name)."),
    exclude: list[str] = typer.Option([], "--exclude", help="Do not lock files matching this glob."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Allow pickle formats (.bin .pt .pth .pkl .npy .joblib): they can run code."
    ),
    allow_code: bool = typer.Option(False, "--allow-code", help="Allow the repo's *.py remote code (it runs on load)."),
    allow_org: list[str] = ORG_OPT,
    allow_any_org: bool = ANY_ORG_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Ask the hub (HF_ENDPOINT if set) for REPO's files at REVISION and write their sizes and hashes to the lock.

    Locks only what a server needs: *.safetensors, *.json, tokenizer and vocabulary files.
    LFS files are locked by the sha256 the hub reports, small files by their git blob id.
    Other repos already in the lock are kept; the file is replaced atomically.
    """
    from toolkit.models import hub

    lockfile.check_org(repo, (*lockfile.DEFAULT_ORGS, *allow_org), allow_any_org)
    current = lockfile.load_lock(lock, allow_pickle=True, missing_ok=True)
    commit, files = hub.list_revision(repo, revision)
    entry = hub.lock_entry(repo, commit, files, include, exclude, allow_pickle, allow_code)
    lockfile.write_lock(lock, lockfile.upsert_model(current, entry))
    if as_json:
        print(json.dumps({"repo": repo, "revision": commit, "lock": str(lock), "files": len(entry.files)}))
    else:
        total = sum(f.size for f in entry.files)
        print(f"locked {repo}@{commit}: {len(entry.files)} files, {total} bytes -> {lock}")


@models_app.command("pull")
def pull_cmd(
    lock: Path = LOCK_OPT,
    repo: list[str] = typer.Option([], "--repo", help="Pull only this repo (repeatable; default: every locked repo)."),
    mirror: Path = typer.Option(
        None,
        "--mirror",
        "-m",
        help="Mirror directory, Hugging Face cache layout (default $TOOLKIT_MODEL_MIRROR or ~/.cache/toolkit/models).",
    ),
    allow_org: list[str] = ORG_OPT,
    allow_any_org: bool = ANY_ORG_OPT,
    workers: int = typer.Option(0, "--workers", help="Hashing threads (default: one per core)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Download the locked files at the locked revision into the mirror, then verify every file.

    Downloads resume where they stopped. A file that does not match the lock is moved to
    MIRROR/quarantine/ and the command fails (exit 1) naming the file, the expected and the found hash.
    """
    from toolkit.models import pull

    parsed = lockfile.load_lock(lock)
    try:
        models = [parsed.model(r) for r in repo] if repo else list(parsed.models)
    except LockError as err:
        raise UsageError(str(err)) from None
    if not models:
        raise UsageError(f"{lock}: no models to pull")
    for m in models:
        lockfile.check_org(m.repo, (*lockfile.DEFAULT_ORGS, *allow_org), allow_any_org)
    mirror = mirror or pull.default_mirror()
    for m in models:
        if not as_json:
            _stderr(f"pulling {m.repo}@{m.revision} ({len(m.files)} files) into {mirror}")
        pull.download(m, mirror)
    report = pull.verify_and_quarantine(mirror, models, workers or None)
    _render(report, as_json, verbose=False)
    _fail_if_bad(report, "pull")


@models_app.command("verify")
def verify_cmd(
    directory: Path = typer.Argument(
        ..., help="A Hugging Face cache (holding models--ORG--NAME/) or one model's snapshot directory."
    ),
    lock: Path = LOCK_OPT,
    repo: str = typer.Option(
        None, "--repo", help="The model DIR holds (when the lock has several), or the only repo to check in a cache."
    ),
    workers: int = typer.Option(0, "--workers", help="Hashing threads (default: one per core)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="List every file, matching ones too."),
    as_json: bool = JSON_OPT,
) -> None:
    """Offline: re-hash every locked file in DIR against the lock, files in parallel.

    Exit 0 when every file matches; 1 when a file is mismatched (size or hash), missing, or present
    but not in the lock, each named with expected and found size and hash; 2 on a usage error or a bad lock.
    """
    parsed = lockfile.load_lock(lock)
    try:
        targets = resolve_targets(parsed, str(directory), repo)
    except LockError as err:
        raise UsageError(str(err)) from None
    report = _verify_with_progress(targets, workers or default_workers(), show=not as_json)
    _render(report, as_json, verbose)
    _fail_if_bad(report, "verify")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
