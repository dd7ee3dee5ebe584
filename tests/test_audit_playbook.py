"""playbooks/audit.yml run by ansible-playbook on a two-host inventory (local connections), each
host auditing a capture file offline so the run is quick; the fleet summary must name both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from scapy.all import IP, TCP, UDP, Ether, wrpcap

pytestmark = [pytest.mark.slow]


def test_audit_playbook_brings_every_hosts_reports_back_and_fails_when_one_did_not_pass(tmp_path):
    bad, good = tmp_path / "bad.pcap", tmp_path / "good.pcap"
    wrpcap(str(bad), [Ether() / IP(src="192.0.2.5", dst="203.0.113.1") / TCP(sport=5001, dport=443, flags="S")])
    wrpcap(str(good), [Ether() / IP(src="127.0.0.1", dst="127.0.0.1") / UDP(sport=1, dport=2)])
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  hosts:\n"
        f"    ws-a: {{ansible_connection: local, audit_pcap: '{bad}'}}\n"
        f"    ws-b: {{ansible_connection: local, audit_pcap: '{good}'}}\n"
        f"  vars: {{ansible_python_interpreter: '{sys.executable}', ansible_become: false}}\n"
    )
    fetch = tmp_path / "fetched"
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(inventory),
            "playbooks/audit.yml",
            "-e",
            f"audit_toolkit={Path(sys.executable).parent / 'toolkit'}",
            "-e",
            f"audit_remote_dir={tmp_path}/remote-{{{{ inventory_hostname }}}}",
            "-e",
            f"audit_fetch_dir={fetch}",
            "-e",
            f"audit_local_toolkit={Path(sys.executable).parent / 'toolkit'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    # ws-a found egress: the hosts' plays succeed, the summary play fails on purpose.
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "not every host passed the audit" in proc.stdout
    for host, verdict in (("ws-a", "FAIL"), ("ws-b", "PASS")):
        for name in ("audit.json", "audit.junit.xml", "audit.html", "audit.prom"):
            assert (fetch / host / name).is_file(), (host, name)
        assert json.loads((fetch / host / "audit.json").read_text())["verdict"] == verdict
        modes = {n: oct((fetch / host / n).stat().st_mode & 0o777) for n in ("audit.json", "audit.html")}
        assert modes == {"audit.json": "0o640", "audit.html": "0o640"}, modes
        assert oct((fetch / host).stat().st_mode & 0o777) == "0o750"
