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


def test_container_mode_unit_is_read_after_the_image_with_its_host_paths(tmp_path: Path) -> None:
    """The vllm role's container unit (`podman run ... IMAGE ARGS`, rendered by the role itself):
    MODEL-001 reads the model and --revision after the image, MODEL-002 the host's HF_HOME."""
    from test_roles_render import render_vllm_units

    root = host(tmp_path)
    (root / "etc/systemd/system/vllm-embed.service").unlink()
    plan = {
        "runtime": "cpu",
        "services": {
            "chat": {
                "server": "vllm",
                "port": 8000,
                "served_model_name": "chat",
                "model": MINILM_REPO,
                "args": [MINILM_REPO, "--host", "127.0.0.1", "--port", "8000"],
            }
        },
    }
    (tmp_path / "r").mkdir()
    units = render_vllm_units(
        tmp_path / "r", plan, vllm_install_method="container", vllm_model_revisions={MINILM_REPO: MINILM_REV}
    )
    exec_start = next(w for w in units["vllm-chat"].splitlines() if w.startswith("ExecStart="))
    assert exec_start.startswith("ExecStart=/usr/bin/podman run ") and f"'--revision' '{MINILM_REV}'" in exec_start
    (root / "etc/systemd/system/vllm-chat.service").write_text(units["vllm-chat"])
    assert judge(root) == {
        "MODEL-001": ("pass", "1 vLLM unit(s): every hub model verified"),
        "MODEL-002": (
            "pass",
            "/var/lib/toolkit/hf, /var/lib/toolkit/model-store: owned by root, writable only by root",
        ),
    }
    (root / "var/lib/toolkit/model-store/verified" / f"{MODEL_DIR}@{MINILM_REV}").unlink()
    assert judge(root)["MODEL-001"] == ("fail", "1 served model(s) not verified for the revision served")


@pytest.mark.parametrize(
    ("argv", "server", "env"),
    [
        (
            ["/usr/bin/podman", "run", "--rm", "--name", "vllm-chat", "--network", "host", "-e", "VLLM_API_KEY",
             "-e", "HF_HOME=/hf", "-v", "/var/lib/toolkit/hf:/hf:ro", "img:1", "org/m", "--port", "8000"],
            ["vllm", "serve", "org/m", "--port", "8000"],
            {"HF_HOME": "/var/lib/toolkit/hf"},
        ),
        (
            ["podman", "run", "--env=HF_HOME=/x/cache", "--volume=/srv/hf:/x", "-d", "--", "img",
             "python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "/x/m"],
            ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "/x/m"],
            {"HF_HOME": "/srv/hf/cache"},
        ),
    ],
    ids=["role-unit", "explicit-command"],
)  # fmt: skip
def test_container_server_argv_is_what_follows_the_image(argv: list[str], server: list[str], env: dict) -> None:
    from toolkit.audit.vllm_units import container_server

    assert container_server(argv) == (server, env)


def test_container_server_is_none_for_other_commands() -> None:
    from toolkit.audit.vllm_units import container_server

    assert container_server(["/opt/vllm/venv/bin/vllm", "serve", "m"]) is None
    assert container_server(["/usr/bin/podman", "stop", "vllm-chat"]) is None
    assert container_server(["/usr/bin/podman", "run", "--rm", "--name", "x"]) is None  # no image
