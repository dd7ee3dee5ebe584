"""Reach a podman host over SSH, the transport real fleets use (pipelining, one ControlPersist
master), instead of the podman connection's five `podman exec` per task.

sshd listens on the container's own 127.0.0.1 only (the audit's LISTEN-001 still passes there);
the controller reaches it through nsbridge.py as ssh's ProxyCommand, which enters the container's
network namespace, so nothing is sent to the container's bridge address. The host key is made in
the container and pinned in a known_hosts file; the client key is the caller's (0600).
The molecule scenarios do the same in Ansible (molecule/ssh_prepare.yml, .config/molecule/config.yml).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from toolkit.errors import EnvironmentProblem

SSHD_CONF = Path(__file__).resolve().parents[1] / "data" / "podman-host-sshd.conf"
NSBRIDGE = Path(__file__).resolve().parent / "nsbridge.py"


def client_key(path: Path) -> str:
    """Make an ed25519 key at path once (0600); return its public half."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "toolkit-podman-host", "-f", str(path)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise EnvironmentProblem(f"ssh-keygen failed: {(r.stderr or r.stdout).strip()}")
    path.chmod(0o600)
    return path.with_suffix(".pub").read_text().strip()


def start_sshd(name: str, public_key: str) -> str:
    """Give container `name` its own host key, authorize public_key for root and start sshd on its
    127.0.0.1:22; return the host's public key (for known_hosts)."""
    script = f"""set -e
mkdir -p /etc/ssh/sshd_config.d
printf %s {shlex.quote(SSHD_CONF.read_text())} > /etc/ssh/sshd_config.d/toolkit-podman-host.conf
test -f /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
install -d -m 0700 /root/.ssh
printf '%s\\n' {shlex.quote(public_key)} > /root/.ssh/authorized_keys
chmod 0600 /root/.ssh/authorized_keys
systemctl enable --now ssh.service >/dev/null 2>&1
cat /etc/ssh/ssh_host_ed25519_key.pub
"""
    r = subprocess.run(["podman", "exec", name, "sh", "-c", script], capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or not r.stdout.strip():
        raise EnvironmentProblem(f"sshd did not start in {name}: {(r.stderr or r.stdout).strip()[-300:]}")
    return r.stdout.strip().splitlines()[-1]


def host_vars(name: str, key: Path, known_hosts: Path, control_dir: Path | None = None) -> dict:
    """Inventory variables that reach container `name` over SSH through its network namespace."""
    proxy = f"{shlex.quote(sys.executable)} {shlex.quote(str(NSBRIDGE))} --container {shlex.quote(name)} 127.0.0.1 22"
    common = [
        f"-o ProxyCommand={shlex.quote(proxy)}",
        f"-o UserKnownHostsFile={shlex.quote(str(known_hosts))}",
        "-o StrictHostKeyChecking=yes",
        "-o IdentitiesOnly=yes",
    ]
    if control_dir is not None:  # else Ansible's own ~/.ansible/cp/%C
        common.append(f"-o ControlPath={shlex.quote(str(control_dir / '%h'))}")
    return {
        "ansible_connection": "ansible.builtin.ssh",
        "ansible_host": name,
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(key),
        "ansible_ssh_common_args": " ".join(common),
        # ansible.cfg's host_key_checking = False would add StrictHostKeyChecking=no first (first wins).
        "ansible_ssh_host_key_checking": True,
        "ansible_ssh_pipelining": True,
        "ansible_ssh_args": "-C -o ControlMaster=auto -o ControlPersist=60s",
    }


def close_masters(control_dir: Path) -> None:
    """Close the ControlPersist masters under control_dir (before their hosts go)."""
    if not control_dir.is_dir():
        return
    for sock in control_dir.iterdir():
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", sock.name], capture_output=True, timeout=10)
