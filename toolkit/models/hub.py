"""Ask the Hugging Face hub (or HF_ENDPOINT) what a revision holds, and turn it into a lock entry."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass

from toolkit.errors import EnvironmentProblem, ToolkitError, UsageError
from toolkit.module_utils.model_lock import LockedFile, LockedModel, LockError, format_refusal, parse_model

# Seconds a hub request may stall (connect, or between bytes) before the command gives up with exit 3.
DEFAULT_TIMEOUT = 30.0

# Only what a server needs: safetensors weights, tokenizer and config files (matched on the file name).
WANTED = (
    "*.safetensors",
    "*.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "*.tiktoken",
    "spiece.model",
    "sentencepiece.bpe.model",
)
# Exports for other runtimes carry their own configs; a server loading safetensors never reads them.
SKIPPED_DIRS = ("onnx", "openvino", "coreml", "tf", "flax", "jax", "tflite")


@dataclass(frozen=True)
class HubFile:
    """One file of a revision as the hub lists it."""

    path: str
    size: int
    blob_id: str  # git blob id of what git stores (the LFS pointer for LFS files)
    lfs_sha256: str | None


def is_wanted(path: str, include: list[str], exclude: list[str], allow_pickle: bool, allow_code: bool = False) -> bool:
    """Locked by default: what a server needs. --include adds files, but never past the format rules
    (a pickle needs allow_pickle, *.py needs allow_code; other formats are accepted because --include named them)."""
    name = path.rsplit("/", 1)[-1]
    if any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(name, p) for p in exclude):
        return False
    if any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(name, p) for p in include):
        return not format_refusal(path, allow_pickle, allow_code, [path])
    if "/" in path and path.split("/", 1)[0] in SKIPPED_DIRS:
        return False
    return any(fnmatch.fnmatchcase(name, p) for p in WANTED) and not format_refusal(path, False, False, [])


def hub_timeout() -> float:
    try:
        return float(os.environ.get("TOOLKIT_HUB_TIMEOUT", DEFAULT_TIMEOUT))
    except ValueError:
        value = os.environ["TOOLKIT_HUB_TIMEOUT"]
        raise UsageError(f"TOOLKIT_HUB_TIMEOUT must be a number of seconds, got {value!r}") from None


def use_timeouts() -> None:
    """Give every hub request a timeout: huggingface-hub's client has none and its API calls pass
    ``timeout=None`` per request, so a silent hub would hang a lock or pull forever. A request hook
    overrides the per-request value (proxies and the library's own hooks are kept)."""
    from huggingface_hub.utils import _http, logging

    # The library logs every retry as a warning; the command says what failed in one line of its own.
    logging.set_verbosity_error()
    timeout = _http.httpx2.Timeout(hub_timeout()).as_dict()

    def enforce(request) -> None:
        request.extensions["timeout"] = timeout

    def factory():
        client = _http.default_client_factory()
        client.event_hooks["request"].append(enforce)
        return client

    _http.set_client_factory(factory)


def hub_failure(repo: str, err: Exception) -> ToolkitError:
    """One line for anything the hub (or the way to it) did wrong: exit 3."""
    first = (str(err).splitlines() or [""])[0] or type(err).__name__
    if type(err).__module__.startswith(("httpx", "httpcore")) or isinstance(err, OSError):
        return EnvironmentProblem(f"{repo}: cannot reach the hub: {type(err).__name__}: {first}")
    return EnvironmentProblem(f"{repo}: the hub answered something unusable ({type(err).__name__}: {first})")


def list_revision(repo: str, revision: str | None) -> tuple[str, list[HubFile]]:
    """The full commit of revision (default: main) and every file in it, with LFS metadata."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.hf_api import RepoFile

    use_timeouts()
    api = HfApi()
    try:
        info = api.model_info(repo, revision=revision)
        if not info.sha:
            raise EnvironmentProblem(f"{repo}: the hub did not report a commit for revision {revision or 'main'}")
        files = [
            HubFile(f.path, f.lfs.size if f.lfs else f.size, f.blob_id, f.lfs.sha256 if f.lfs else None)
            for f in api.list_repo_tree(repo, recursive=True, revision=info.sha)
            if isinstance(f, RepoFile)
        ]
    except RevisionNotFoundError:
        raise UsageError(f"{repo}: revision {revision} not found on the hub") from None
    except RepositoryNotFoundError:
        raise UsageError(f"{repo}: repository not found on the hub (or gated/private without a token)") from None
    except HfHubHTTPError as err:
        raise EnvironmentProblem(f"{repo}: the hub answered an error: {str(err).splitlines()[0]}") from None
    except ToolkitError:
        raise
    except Exception as err:  # disconnects, timeouts, garbage JSON: one line, exit 3, never a traceback
        raise hub_failure(repo, err) from None
    if not isinstance(info.sha, str):
        raise EnvironmentProblem(f"{repo}: the hub reported a commit that is not a string: {info.sha!r}")
    return info.sha, files


def lock_entry(
    repo: str,
    commit: str,
    files: list[HubFile],
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    allow_pickle: bool = False,
    allow_code: bool = False,
) -> LockedModel:
    """Lock the wanted files: sha256 for LFS files (what the hub reports), the git blob id for the rest.

    The entry is validated with the lock's own parser before anything is written: a hub listing
    a path such as ``../../etc/x`` or a short commit is refused here (exit 3), not written.
    """
    locked = []
    for f in sorted(files, key=lambda f: str(f.path)):
        if not isinstance(f.path, str) or not is_wanted(f.path, include or [], exclude or [], allow_pickle, allow_code):
            continue
        if f.lfs_sha256:
            locked.append(LockedFile(path=f.path, size=f.size, sha256=f.lfs_sha256))
        else:
            locked.append(LockedFile(path=f.path, size=f.size, git_sha1=f.blob_id))
    if not locked:
        raise UsageError(f"{repo}@{commit}: no wanted files (safetensors, tokenizer, config); see --include")
    extra = sorted({f.path for f in locked if format_refusal(f.path, True, True, [])})
    data = {
        "repo": repo,
        "revision": commit,
        "allow_pickle": allow_pickle,
        "allow_code": allow_code,
        "allow_files": extra,
        "files": [{k: v for k, v in vars(f).items() if v is not None} for f in locked],
    }
    try:
        return parse_model(data, 0)
    except LockError as err:
        raise EnvironmentProblem(f"the hub's answer for {repo} does not make a valid lock entry: {err}") from None
