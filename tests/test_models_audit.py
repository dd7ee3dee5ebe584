"""MODEL-001/002 on a real file tree laid out like a host (units, markers, store), judged as a root.

Real files, owners and modes (the test runs as root to chown); the MiniLM config stands for a weight.
The check is reached through the audit's registry, as `toolkit audit` reaches it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import require
from test_models_verify import MINILM, MINILM_REPO, MINILM_REV

from toolkit.audit.static_checks import StaticInputs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owners are part of what is judged: needs root")
MODEL_DIR = "models--sentence-transformers--all-MiniLM-L6-v2"


def host(tmp_path: Path, model: str = MINILM_REPO, revision: str | None = MINILM_REV) -> Path:
    require((MINILM / "config.json").is_file(), f"needs MiniLM files in {MINILM}")
    root = tmp_path / "host"
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    rev = f" --revision {revision}" if revision else ""
    (units / "vllm-embed.service").write_text(
        "[Service]\nUser=vllm\nEnvironment=HF_HOME=/var/lib/toolkit/hf HF_HUB_OFFLINE=1\n"
        f"ExecStart=/opt/vllm/venv/bin/python -m vllm.entrypoints.openai.api_server --model {model}{rev} --port 8000\n"
    )
    snap = root / "var/lib/toolkit/hf/hub" / MODEL_DIR / "snapshots" / MINILM_REV
    snap.mkdir(parents=True)
    shutil.copyfile(MINILM / "config.json", snap / "config.json")
    verified = root / "var/lib/toolkit/model-store/verified"
    verified.mkdir(parents=True)
    for d in (verified.parent, verified):
        d.chmod(0o700)
    (verified / f"{MODEL_DIR}@{MINILM_REV}").write_text("ab" * 32 + "\n")
    return root


def judge(root: Path) -> dict[str, tuple[str, str]]:
    import toolkit.audit.run  # noqa: F401 - what `toolkit audit` imports; it registers the models check
    from toolkit.audit import controls

    check = dict(controls.extra_checks())["models"]
    opts = type("Opts", (), {"static": True, "static_inputs": StaticInputs(root=root)})()
    return {r.control: (r.status, r.detail) for r in check({"host": "h", "mode": "live", "options": opts})}


def test_verified_root_only_store_passes(tmp_path: Path) -> None:
    root = host(tmp_path)
    assert judge(root) == {
        "MODEL-001": ("pass", "1 vLLM unit(s): every hub model verified"),
        "MODEL-002": (
            "pass",
            "/var/lib/toolkit/hf, /var/lib/toolkit/model-store: owned by root, writable only by root",
        ),
    }


def test_missing_marker_or_unpinned_revision_fails(tmp_path: Path) -> None:
    root = host(tmp_path)
    (root / "var/lib/toolkit/model-store/verified" / f"{MODEL_DIR}@{MINILM_REV}").unlink()
    assert judge(root)["MODEL-001"] == ("fail", "1 served model(s) not verified for the revision served")
    shutil.rmtree(root)
    root = host(tmp_path, revision=None)
    assert judge(root)["MODEL-001"][0] == "fail"


def test_store_writable_by_a_service_user_fails(tmp_path: Path) -> None:
    root = host(tmp_path)
    snap = root / "var/lib/toolkit/hf/hub" / MODEL_DIR / "snapshots" / MINILM_REV
    os.chown(snap / "config.json", 65534, 65534)
    (root / "var/lib/toolkit/hf").chmod(0o775)
    status, detail = judge(root)["MODEL-002"]
    assert (status, detail) == ("fail", "2 path(s) in the model store are not root-only")


def test_local_directory_models_are_not_judged_as_the_store(tmp_path: Path) -> None:
    root = host(tmp_path, model="/srv/models/embed", revision=None)
    (root / "var/lib/toolkit/hf").chmod(0o777)
    assert judge(root) == {
        "MODEL-001": ("pass", "1 vLLM unit(s): every hub model verified"),
        "MODEL-002": ("skip", "no vLLM unit on this host serves a hub model from the store"),
    }
