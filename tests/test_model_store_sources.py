"""model_store's controller-side precondition: with model_store_source controller, a mirror that is
not on the controller (an AWX execution environment has no ~/.cache/toolkit/models) fails at once with
one line naming the mirror and the http alternative; with model_store_source http the mirror is not
asked for. Real ansible-playbook on localhost (local connection), the role by FQCN from the checkout;
both runs stop before anything is written (the http run at the lock's validation, no lock given)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO


def run_role(tmp_path: Path, **variables: object) -> dict:
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "tasks": [{"name": "Put the models on the host",
                        "ansible.builtin.include_role": {"name": "pca.toolkit.model_store"}}]}]  # fmt: skip
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    (tmp_path / "vars.json").write_text(
        json.dumps({"ansible_python_interpreter": sys.executable, "model_store_lock_file": str(tmp_path / "none.yaml"),
                    **variables})
    )  # fmt: skip
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_NOCOLOR="1")  # fmt: skip
    r = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(tmp_path / "play.yml"),
         "-e", f"@{tmp_path / 'vars.json'}"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-2000:]
    tasks = json.loads(r.stdout)["plays"][0]["tasks"]
    failed = [t for t in tasks if t["hosts"]["localhost"].get("failed")]
    assert len(failed) == 1, [t["task"]["name"] for t in tasks]
    return {"task": failed[0]["task"]["name"], "msg": failed[0]["hosts"]["localhost"]["msg"]}


def test_controller_source_without_a_mirror_on_the_controller_fails_naming_it_and_the_http_source(tmp_path):
    missing = tmp_path / "no-mirror"
    got = run_role(tmp_path, model_store_source="controller", model_store_mirror_dir=str(missing))
    assert got == {
        "task": "pca.toolkit.model_store : Check that the controller's mirror exists when the files come from it",
        "msg": f"model_store_source is controller but the mirror {missing} is not a directory on the controller:"
        " fill it with `toolkit models pull`, or, where the controller is an execution environment (AWX),"
        " use model_store_source: http with model_store_http_url",
    }


def test_http_source_does_not_ask_for_a_controller_mirror(tmp_path):
    got = run_role(tmp_path, model_store_source="http", model_store_http_url="http://127.0.0.1:9/hf",
                   model_store_mirror_dir=str(tmp_path / "no-mirror"))  # fmt: skip
    validate = "Validate the model lock on the controller and resolve every file under the mirror"
    assert got["task"] == f"pca.toolkit.model_store : {validate}"
    assert str(tmp_path / "none.yaml") in got["msg"], got["msg"]
