"""MODEL-001/002: what the vLLM units serve was verified, and the service users cannot change it.

Read from the machine's files (or a container's root seen from outside): every ``vllm-*.service``
unit's ``--model``/``--revision`` and ``HF_HOME``, the model_store role's markers in its root-only
state directory, and the owners and modes of everything in the store. Importing this module
registers both controls and their check.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

from toolkit.audit import controls
from toolkit.audit.controls import Control, Result
from toolkit.audit.static_checks import StaticInputs
from toolkit.audit.vllm_units import vllm_units
from toolkit.module_utils.model_lock import REPO_PATTERN
from toolkit.planning import load_tiers

# The roles' defaults, from their one home (tiers.yaml paths): a unit without HF_HOME gets vllm_hf_home.
_PATHS = load_tiers()["paths"]
STATE_DIR = _PATHS["model_store_state_dir"]
DEFAULT_HF_HOME = _PATHS["hf_home"]
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX40 = re.compile(r"[0-9a-f]{40}")

MODEL_CONTROLS = (
    Control(
        "MODEL-001",
        "Every served hub model is verified for the revision its unit serves",
        "high",
        "Each vLLM unit serving a hub repo names --revision, and the model_store role's marker for "
        "that repo and revision is present (a root-owned file in its root-only state directory).",
    ),
    Control(
        "MODEL-002",
        "The model store is not writable by the service users",
        "high",
        "Everything under each unit's HF_HOME and the markers' state directory is owned by root and "
        "writable by nobody else: a served process cannot replace verified weights.",
    ),
)


def _under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def served_models(inputs: StaticInputs) -> list[dict[str, Any]]:
    """One record per vLLM command that names its model: unit, model, revision (or None), HF_HOME."""
    return [
        {"unit": u.unit, "model": u.model, "revision": u.arg("--revision"),
         "hf_home": u.environment.get("HF_HOME", DEFAULT_HF_HOME)}
        for u in vllm_units(inputs.unit_directories(), inputs.root)
        if u.model is not None
    ]  # fmt: skip


def _marker_status(root: Path, repo: str, revision: str) -> str:
    marker = _under(root, f"{STATE_DIR}/verified/models--{repo.replace('/', '--')}@{revision}")
    st = os.lstat(marker)  # FileNotFoundError / PermissionError handled by the caller
    if not stat.S_ISREG(st.st_mode):
        return f"{marker} is not a regular file"
    if st.st_uid != 0:
        return f"{marker} is owned by uid {st.st_uid}, not root"
    digest = marker.read_text(encoding="ascii", errors="replace").strip()
    return "" if _HEX64.fullmatch(digest) else f"{marker} does not hold a lock-entry digest"


def check_markers(inputs: StaticInputs) -> Result:
    units = served_models(inputs)
    if not units:
        return Result("MODEL-001", "skip", "no vLLM unit on this host")
    items, bad, unknown = [], 0, 0
    for u in units:
        item = dict(u)
        if not REPO_PATTERN.fullmatch(u["model"]):
            item["status"] = "local directory (the operator's own, not a hub model)"
            items.append(item)
            continue
        revision = u["revision"]
        if revision is None or not _HEX40.fullmatch(revision):
            bad += 1
            item["status"] = "serves no pinned --revision: what it loads is whatever refs/main says"
            items.append(item)
            continue
        try:
            why = _marker_status(inputs.root, u["model"], revision)
        except FileNotFoundError:
            why = "no verification marker for this revision"
        except OSError as err:
            unknown += 1
            item["status"] = f"cannot read the marker: {err.strerror}"
            items.append(item)
            continue
        bad += bool(why)
        item["status"] = why or "verified"
        items.append(item)
    if bad:
        return Result("MODEL-001", "fail", f"{bad} served model(s) not verified for the revision served", items)
    if unknown:
        return Result("MODEL-001", "inconclusive", f"{unknown} marker(s) could not be read (run as root)", items)
    return Result("MODEL-001", "pass", f"{len(units)} vLLM unit(s): every hub model verified", items)


def _writable_by_others(top: Path) -> tuple[list[dict[str, Any]], int]:
    """Entries under top (top included, never following links) not owned by root or writable by group/other."""
    items, unreadable = [], 0
    stack = [top]
    while stack:
        p = stack.pop()
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        except OSError:
            unreadable += 1
            continue
        if not stat.S_ISLNK(st.st_mode) and (st.st_uid != 0 or st.st_mode & 0o022):
            items.append({"path": str(p), "uid": st.st_uid, "mode": f"{stat.S_IMODE(st.st_mode):o}"})
        if stat.S_ISDIR(st.st_mode):
            try:
                stack += [p / n for n in sorted(os.listdir(p))]
            except OSError:
                unreadable += 1
    return items, unreadable


def check_store(inputs: StaticInputs) -> Result:
    # A unit serving a local directory reads the operator's own files, not the model store.
    units = [u for u in served_models(inputs) if REPO_PATTERN.fullmatch(u["model"])]
    if not units:
        return Result("MODEL-002", "skip", "no vLLM unit on this host serves a hub model from the store")
    items, unreadable = [], 0
    tops = sorted({u["hf_home"] for u in units} | {STATE_DIR})
    for top in tops:
        found, n = _writable_by_others(_under(inputs.root, top))
        items += found
        unreadable += n
    state = _under(inputs.root, STATE_DIR)
    try:
        mode = stat.S_IMODE(os.lstat(state).st_mode)
        if mode & 0o077:
            items.append({"path": str(state), "uid": 0, "mode": f"{mode:o}", "why": "markers readable by others"})
    except FileNotFoundError:
        pass
    except OSError:
        unreadable += 1
    if items:
        return Result("MODEL-002", "fail", f"{len(items)} path(s) in the model store are not root-only", items)
    if unreadable:
        return Result("MODEL-002", "inconclusive", f"{unreadable} path(s) could not be read (run as root)")
    return Result("MODEL-002", "pass", f"{', '.join(tops)}: owned by root, writable only by root")


def check(context: dict[str, Any]) -> list[Result]:
    opts = context.get("options")
    if opts is not None and not getattr(opts, "static", True):
        return []  # like the other file checks: judged only when static checks are asked for
    inputs = getattr(opts, "static_inputs", None) or StaticInputs()
    return [check_markers(inputs), check_store(inputs)]


for _c in MODEL_CONTROLS:
    controls.register(_c)
controls.register_check("models", check)
