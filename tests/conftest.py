"""Shared test helpers.

Markers (see pyproject.toml) say what a test needs. Locally, a test whose need is missing is
skipped; under CI (CI=true) it fails instead, because CI installs everything and must run it all.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("TOOLKIT_CACHE", "/var/cache/toolkit"))
# The checkout is the collection pca.toolkit (collections/ansible_collections/pca/toolkit links to
# it): every Ansible run a test starts, with or without the project's ansible.cfg, resolves the
# roles' FQCN modules, filters and lookups from here unless the test names another path
# (tests/test_collection.py runs an installed copy instead).
os.environ.setdefault(
    "ANSIBLE_COLLECTIONS_PATH", os.pathsep.join([str(REPO / "collections"), "~/.ansible/collections"])
)


def require(condition: bool, reason: str) -> None:
    """Skip locally, fail in CI: a CI run must never pass by skipping what it was meant to test."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI requirement missing: {reason}")
    pytest.skip(reason)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"needs {name} on PATH")
    return path  # type: ignore[return-value]


@pytest.fixture
def repo() -> Path:
    return REPO


# Session-wide real vLLM servers (tests/vllm_servers.py); imported here so that every test module
# shares one pair instead of starting its own.
from vllm_servers import vllm_servers  # noqa: E402, F401
