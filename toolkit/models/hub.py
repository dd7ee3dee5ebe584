"""Ask the Hugging Face hub (or HF_ENDPOINT) what a revision holds, and turn it into a lock entry."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from toolkit.errors import EnvironmentProblem, UsageError
from toolkit.module_utils.model_verify import PICKLE_SUFFIXES, LockedFile, LockedModel

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


def is_wanted(path: str, include: list[str], exclude: list[str], allow_pickle: bool) -> bool:
    name = path.rsplit("/", 1)[-1]
    if any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(name, p) for p in exclude):
        return False
    if any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(name, p) for p in include):
        return allow_pickle or not path.lower().endswith(PICKLE_SUFFIXES)
    if "/" in path and path.split("/", 1)[0] in SKIPPED_DIRS:
        return False
    return any(fnmatch.fnmatchcase(name, p) for p in WANTED)


def list_revision(repo: str, revision: str | None) -> tuple[str, list[HubFile]]:
    """The full commit of revision (default: main) and every file in it, with LFS metadata."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.hf_api import RepoFile

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
    except OSError as err:
        raise EnvironmentProblem(f"{repo}: cannot reach the hub: {err}") from None
    except Exception as err:  # connection errors of the HTTP client; keep the CLI at one line
        if type(err).__module__.startswith(("httpx", "httpcore")):
            raise EnvironmentProblem(f"{repo}: cannot reach the hub: {err}") from None
        raise
    return info.sha, files


def lock_entry(
    repo: str,
    commit: str,
    files: list[HubFile],
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    allow_pickle: bool = False,
) -> LockedModel:
    """Lock the wanted files: sha256 for LFS files (what the hub reports), the git blob id for the rest."""
    locked = []
    for f in sorted(files, key=lambda f: f.path):
        if not is_wanted(f.path, include or [], exclude or [], allow_pickle):
            continue
        if f.lfs_sha256:
            locked.append(LockedFile(path=f.path, size=f.size, sha256=f.lfs_sha256))
        else:
            locked.append(LockedFile(path=f.path, size=f.size, git_sha1=f.blob_id))
    if not locked:
        raise UsageError(f"{repo}@{commit}: no wanted files (safetensors, tokenizer, config); see --include")
    return LockedModel(repo=repo, revision=commit, files=tuple(locked), allow_pickle=allow_pickle)
