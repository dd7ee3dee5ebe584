"""`toolkit models lock|pull|verify`: pin model weights to hashes, fetch them, check them offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from toolkit.errors import CheckFailed, UsageError
from toolkit.models import lockfile
from toolkit.module_utils.model_lock import LockError
from toolkit.module_utils.model_verify import VerifyReport, default_workers, resolve_targets, verify_models

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
    repo: str = typer.Argument(None, help="Hub repository ORG/NAME (or use --plan / --inventory)."),
    revision: str = typer.Option(
        None, "--revision", "-r", help="Branch, tag or commit (default main); locked as the full commit."
    ),
    plan: list[Path] = typer.Option(
        [], "--plan", help="Lock exactly the hub models this plan (`toolkit plan --json`) serves; repeatable."
    ),
    inventory: Path = typer.Option(
        None, "--inventory", "-i", help="Plan every host of this inventory (no changes) and lock exactly their models."
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
    With REPO, other repos already in the lock are kept; with --plan or --inventory the lock holds
    exactly the hub models the plans serve. The file is replaced atomically.
    """
    from toolkit.models import hub

    if bool(repo) + bool(plan) + bool(inventory) != 1:
        raise UsageError("give exactly one of REPO, --plan PLAN or --inventory INV")
    if repo:
        wanted = {repo: revision}
    else:
        if revision:
            raise UsageError("--revision applies to REPO; a plan names its own revisions")
        wanted = _planned(plan, inventory)
        if not wanted:
            raise UsageError("the plans serve no hub model (local directories and Ollama models are not locked)")
    for r in wanted:
        lockfile.check_org(r, (*lockfile.DEFAULT_ORGS, *allow_org), allow_any_org)
    current = lockfile.load_lock(lock, allow_pickle=True, missing_ok=True)
    if not repo:
        current = lockfile.Lock(version=current.version, models=())
    entries = []
    for r, rev in sorted(wanted.items()):
        commit, files = hub.list_revision(r, rev)
        entries.append(hub.lock_entry(r, commit, files, include, exclude, allow_pickle, allow_code))
    for entry in entries:
        current = lockfile.upsert_model(current, entry)
    lockfile.write_lock(lock, current)
    if as_json:
        print(
            json.dumps(
                [{"repo": e.repo, "revision": e.revision, "lock": str(lock), "files": len(e.files)} for e in entries]
                if not repo
                else {"repo": repo, "revision": entries[0].revision, "lock": str(lock), "files": len(entries[0].files)}
            )
        )
    else:
        for e in entries:
            total = sum(f.size for f in e.files)
            print(f"locked {e.repo}@{e.revision}: {len(e.files)} files, {total} bytes -> {lock}")


def _planned(plans: list[Path], inventory: Path | None) -> dict[str, str | None]:
    """Hub repos (with the plan's revision, if any) that the given plans, or every host's plan, serve."""
    from toolkit.models.plan_lock import served_repos

    loaded: list[dict] = []
    for p in plans:
        try:
            loaded.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            raise UsageError(f"{p}: not a readable plan (`toolkit plan --json`): {err}") from None
        try:
            served_repos(loaded[-1])
        except UsageError as err:
            raise UsageError(f"{p}: {err}") from None
    if inventory is not None:
        from toolkit import provision

        hosts = provision.check_inventory(inventory, None)
        loaded += list(provision.plan_hosts(inventory, provision.new_run_dir()).values())
        if not hosts:
            raise UsageError(f"inventory {inventory} has no hosts")
    wanted: dict[str, str | None] = {}
    for pl in loaded:
        for r, rev in served_repos(pl).items():
            if r in wanted and wanted[r] and rev and wanted[r] != rev:
                raise UsageError(f"{r}: the plans ask for two revisions ({wanted[r]}, {rev})")
            wanted[r] = wanted.get(r) or rev
    return wanted


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
