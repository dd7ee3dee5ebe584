#!/usr/bin/python
"""Ansible module: read, in one round trip, what a role's idempotent run would otherwise ask the
host task by task (stat of each path, the sha1 of each file, passwd and group entries, systemd
unit states). Read-only. The pca.toolkit.state_has_* filters compare it with what the tasks would
write; a task whose target already matches is skipped instead of run, and every other task runs as
before, so a host that drifted, or that this module cannot read, is converged by the real tasks."""

from __future__ import annotations

DOCUMENTATION = r"""
module: host_state
short_description: Read paths, accounts and systemd units in one round trip
description:
  - Read-only; never changes anything, and runs the same in check mode.
  - Paths are read with lstat, so a symbolic link is reported as a link (the filters never take a
    link for the file or directory a task would write; the task itself decides).
  - The checksum is the sha1 of a regular file, the digest ansible.builtin.copy compares.
options:
  paths:
    description: Paths to stat (type, owner, group, mode, and the sha1 of regular files).
    type: list
    elements: path
    default: []
  read:
    description:
      - Files whose content to return, base64, as ansible.builtin.slurp does (links followed, no size
        limit); a path that is missing or cannot be read is left out, as slurp with failed_when false.
      - The content may be a secret; a task that reads one is C(no_log).
    type: list
    elements: path
    default: []
  globs:
    description: Shell patterns (fnmatch, no recursion) whose matching paths to list.
    type: list
    elements: str
    default: []
  users:
    description: Account names to look up in passwd (uid, gid, primary group name, home, shell).
    type: list
    elements: str
    default: []
  groups:
    description: Group names to look up.
    type: list
    elements: str
    default: []
  units:
    description:
      - systemd units to show (LoadState, ActiveState, SubState, UnitFileState, NeedDaemonReload).
      - Left out of the result when systemd is not running here.
    type: list
    elements: str
    default: []
author: private-coding-assistant-toolkit
"""

EXAMPLES = r"""
- name: Read the service's directories, unit and user in one round trip
  pca.toolkit.host_state:
    paths: [/var/lib/vllm, /etc/systemd/system/vllm-chat.service]
    users: [vllm]
    units: [vllm-chat.service]
  register: state
  check_mode: false

- name: Write the unit only where it differs
  ansible.builtin.copy:
    content: "{{ unit_text }}"
    dest: /etc/systemd/system/vllm-chat.service
    owner: root
    group: root
    mode: "0644"
  when: >-
    not (state | pca.toolkit.state_has_file('/etc/systemd/system/vllm-chat.service', 'root', 'root', '0644',
    unit_text))
"""

RETURN = r"""
paths:
  description: >-
    Per path: exists, and when it exists type (file, directory, link, other), uid, gid, owner,
    group (names, or the number as a string when no name is known), mode ("0644"), and checksum
    (sha1, regular files only; null when the file could not be read).
  type: dict
  returned: always
contents:
  description: Per path in read that is a readable regular file, its base64 content.
  type: dict
  returned: always
globs:
  description: Per pattern, the sorted matching paths.
  type: dict
  returned: always
users:
  description: Per account found, uid, gid, group, home and shell; accounts not found are left out.
  type: dict
  returned: always
groups:
  description: Per group found, its gid; groups not found are left out.
  type: dict
  returned: always
units:
  description: Per unit, the properties named above, as systemctl show prints them.
  type: dict
  returned: always
"""

import base64
import contextlib
import glob
import grp
import hashlib
import os
import pwd
import shutil
import stat

from ansible.module_utils.basic import AnsibleModule

UNIT_PROPERTIES = ("LoadState", "ActiveState", "SubState", "UnitFileState", "NeedDaemonReload")


def _name(lookup, number: int) -> str:
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def _sha1(path: str) -> str | None:
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 16), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def path_state(path: str) -> dict:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {"exists": False}
    except OSError as e:
        # Unreadable is not "absent": the filters see no match and the task itself decides.
        return {"exists": None, "error": e.strerror}
    kind = ("link" if stat.S_ISLNK(st.st_mode) else "directory" if stat.S_ISDIR(st.st_mode)
            else "file" if stat.S_ISREG(st.st_mode) else "other")
    out = {"exists": True, "type": kind, "uid": st.st_uid, "gid": st.st_gid,
           "owner": _name(pwd.getpwuid, st.st_uid), "group": _name(grp.getgrgid, st.st_gid),
           "mode": f"{stat.S_IMODE(st.st_mode):04o}"}
    if kind == "file":
        out["checksum"] = _sha1(path)
    return out


def read(path: str) -> str | None:
    try:
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            return base64.b64encode(f.read()).decode("ascii")
    except OSError:
        return None


def user_state(name: str) -> dict | None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return {"uid": pw.pw_uid, "gid": pw.pw_gid, "group": _name(grp.getgrgid, pw.pw_gid),
            "home": pw.pw_dir, "shell": pw.pw_shell}


def parse_show(out: str, units: list[str]) -> dict:
    """systemctl show prints one block of KEY=value lines per unit, in the order asked, blank-line apart."""
    blocks = out.strip("\n").split("\n\n") if out.strip() else []
    if len(blocks) != len(units):
        # Not the shape asked for: nothing is reported, so no task is skipped on a guess.
        return {}
    return {unit: dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            for unit, block in zip(units, blocks)}  # noqa: B905 (the module runs on Python 3.9 hosts too)


def main() -> None:
    spec = {key: {"type": "list", "elements": kind, "default": []}
            for key, kind in (("paths", "path"), ("read", "path"), ("globs", "str"), ("users", "str"),
                              ("groups", "str"), ("units", "str"))}
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    result = {
        "changed": False,
        "paths": {path: path_state(path) for path in p["paths"]},
        "contents": {path: c for path in p["read"] if (c := read(path)) is not None},
        "globs": {pattern: sorted(glob.glob(pattern)) for pattern in p["globs"]},
        "users": {name: u for name in p["users"] if (u := user_state(name)) is not None},
        "groups": {},
        "units": {},
    }
    for name in p["groups"]:
        with contextlib.suppress(KeyError):
            result["groups"][name] = {"gid": grp.getgrnam(name).gr_gid}
    systemctl = shutil.which("systemctl")
    if p["units"] and systemctl and os.path.isdir("/run/systemd/system"):
        rc, out, err = module.run_command(
            [systemctl, "show", "-p", ",".join(UNIT_PROPERTIES), "--", *p["units"]])
        if rc != 0:
            module.fail_json(msg=f"systemctl show failed: {err.strip()}", **result)
        result["units"] = parse_show(out, p["units"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
