"""The sandbox's generated inventory (toolkit/sandbox/workstation.py reach_over_ssh): the shipped
inventories/sandbox with the podman connection swapped for toolkit/sandbox/ssh.py's SSH variables,
and nothing else changed. sshd itself is stubbed here; tests/test_sandbox.py converges through the
real one."""

from __future__ import annotations

import shlex
import stat

import pytest
import yaml
from conftest import REPO

from toolkit.errors import EnvironmentProblem
from toolkit.sandbox import ssh, workstation

SOURCE = REPO / "inventories" / "sandbox" / "hosts.yml"


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setattr(workstation, "STATE", tmp_path / "state")
    monkeypatch.setattr(ssh, "start_sshd", lambda name, public: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey")
    return tmp_path / "state"


def test_generated_inventory_reaches_the_sandbox_over_ssh_and_keeps_every_other_variable(state):
    out = workstation.reach_over_ssh(SOURCE)
    source = yaml.safe_load(SOURCE.read_text())
    got = yaml.safe_load(out.read_text())
    assert got["all"]["vars"] == source["all"]["vars"]
    host = got["all"]["hosts"][workstation.NAME]
    before = source["all"]["hosts"][workstation.NAME]
    assert before["ansible_connection"] == "containers.podman.podman"
    assert host["ansible_connection"] == "ansible.builtin.ssh"
    assert host["ansible_python_interpreter"] == before["ansible_python_interpreter"]
    assert host["ansible_ssh_pipelining"] is True and host["ansible_ssh_host_key_checking"] is True
    args = shlex.split(host["ansible_ssh_common_args"])
    proxy = args[args.index("-o") + 1]
    assert proxy.startswith("ProxyCommand=") and f"--container {workstation.NAME} 127.0.0.1 22" in proxy
    assert f"UserKnownHostsFile={state / 'known_hosts'}" in args and "StrictHostKeyChecking=yes" in args
    assert (state / "known_hosts").read_text() == f"{workstation.NAME} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey\n"
    key = state / "ssh_ed25519"
    assert host["ansible_ssh_private_key_file"] == str(key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    # A second `sandbox up` keeps the client key and rewrites the rest.
    first = key.read_bytes()
    workstation.reach_over_ssh(SOURCE)
    assert key.read_bytes() == first


def test_an_inventory_without_the_sandbox_host_is_one_clear_error(state, tmp_path):
    bad = tmp_path / "hosts.yml"
    bad.write_text("all:\n  hosts:\n    elsewhere: {}\n")
    with pytest.raises(EnvironmentProblem, match=f"no host {workstation.NAME} under all.hosts"):
        workstation.reach_over_ssh(bad)
    assert not state.exists()  # refused before sshd or any key
