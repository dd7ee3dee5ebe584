"""Secrets stay out of a provision run's artifacts (events, stdout, status, `command`).

`assert_secret_absent` is the grep every provisioning test can run over its run directory; the
whole-stack fleet test (tests/test_provision.py) runs it with each host's real vLLM API key after a
real converge and a second run. Here: a cheap real run on this machine (`toolkit provision --tags
facts`) with secrets in the controller's environment, which ansible-runner copies into
artifacts/<phase>/command.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def assert_secret_absent(run_dir: Path, secret: str) -> int:
    """Fail naming every file under run_dir that holds the secret (raw, JSON-escaped or base64); return files read."""
    needles = {secret.encode(), json.dumps(secret)[1:-1].encode(), base64.b64encode(secret.encode())}
    hits, read = [], 0
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file() and not p.is_symlink()):
        data = path.read_bytes()
        read += 1
        if any(n in data for n in needles):
            hits.append(str(path.relative_to(run_dir)))
    assert not hits, f"the secret is in {len(hits)} artifact file(s): {hits[:10]}"
    return read


def test_grep_finds_a_planted_secret(tmp_path: Path) -> None:
    (tmp_path / "a" / "job_events").mkdir(parents=True)
    (tmp_path / "a" / "job_events" / "1.json").write_text(
        json.dumps({"res": {"content": base64.b64encode(b"sk-x1").decode()}})
    )
    try:
        assert_secret_absent(tmp_path, "sk-x1")
    except AssertionError as err:
        assert "a/job_events/1.json" in str(err)
    else:
        raise AssertionError("the grep missed a base64-encoded secret")


def test_provision_artifacts_hold_no_secret_from_the_environment() -> None:
    secrets = {"VLLM_API_KEY": "vk-7f3a9c1e5b2d4f6a8c0e", "HF_TOKEN": "hf_SeCrEt0123456789abcdef"}
    env = dict(os.environ, **secrets)
    r = subprocess.run(
        [sys.executable, "-m", "toolkit", "provision", "--json", "--tags", "facts"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    run_dir = Path(json.loads(r.stdout)["run_dir"])
    for phase in ("plan", "converge"):
        command = json.loads((run_dir / "artifacts" / phase / "command").read_text())
        assert {k: command["env"][k] for k in secrets} == dict.fromkeys(secrets, "<redacted>")
        assert command["env"]["ANSIBLE_CONFIG"] == str(REPO / "ansible.cfg")  # the rest is kept
    for value in secrets.values():
        assert assert_secret_absent(run_dir, value) > 10
