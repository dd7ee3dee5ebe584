#!/usr/bin/python
"""Ansible module: do the AI service units carry IPAddressDeny/IPAddressAllow, and can systemd
enforce them here? Read-only; returns facts and warnings (never changes anything)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: egress_guard_units
short_description: Check systemd IP address filtering of the AI service units
description:
  - Reads C(systemctl show -p LoadState,IPAddressDeny,IPAddressAllow) for each unit.
  - Tells whether systemd can enforce them (cgroup v2 unified hierarchy, which its BPF filters need).
    On cgroup v1 or hybrid hosts systemd accepts and shows the settings but silently ignores them.
options:
  units:
    description: Unit names.
    type: list
    elements: str
    required: true
  strict:
    description: Fail when an installed unit lacks the settings.
    type: bool
    default: false
author: private-coding-assistant-toolkit
"""

RETURN = r"""
units:
  description: Per unit, whether it is installed, its IPAddressDeny/IPAddressAllow and whether they are right.
  type: dict
  returned: always
ip_filter_enforceable:
  description: Whether systemd on this host can enforce IPAddressDeny (cgroup v2 unified).
  type: bool
  returned: always
cgroup_mode:
  description: unified, hybrid, legacy or unknown.
  type: str
  returned: always
"""

import os
import shutil

from ansible.module_utils.basic import AnsibleModule


def cgroup_mode(mounts: str) -> str:
    """unified when /sys/fs/cgroup itself is cgroup2; hybrid when v1 with a cgroup2 mount beside it."""
    types = {}
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            types[parts[1]] = parts[2]
    root = types.get("/sys/fs/cgroup")
    if root == "cgroup2":
        return "unified"
    if root is None:
        return "unknown"
    return "hybrid" if "cgroup2" in types.values() else "legacy"


def denies_all(deny: str) -> bool:
    # systemd prints "any" as the two all-covering networks.
    words = set(deny.split())
    return "any" in words or {"0.0.0.0/0", "::/0"} <= words


def allows_only_localhost(allow: str) -> bool:
    words = set(allow.split())
    return bool(words) and words <= {"localhost", "127.0.0.0/8", "::1/128", "::1", "127.0.0.1", "127.0.0.1/32"}


def main() -> None:
    module = AnsibleModule(
        argument_spec={"units": {"type": "list", "elements": "str", "required": True},
                       "strict": {"type": "bool", "default": False}},
        supports_check_mode=True,
    )
    try:
        with open("/proc/mounts") as f:
            mode = cgroup_mode(f.read())
    except OSError:
        mode = "unknown"
    enforceable = mode == "unified" and os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    result = {"changed": False, "units": {}, "ip_filter_enforceable": enforceable, "cgroup_mode": mode}
    systemctl = shutil.which("systemctl")
    running = os.path.isdir("/run/systemd/system")
    if not systemctl or not running:
        module.warn("systemd is not running here: the units' IPAddressDeny/IPAddressAllow were not checked")
        module.exit_json(**result)
    bad = []
    for unit in module.params["units"]:
        rc, out, err = module.run_command(
            [systemctl, "show", "-p", "LoadState,IPAddressDeny,IPAddressAllow", "--", unit])
        if rc != 0:
            module.fail_json(msg=f"systemctl show {unit} failed: {err.strip()}", **result)
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        installed = props.get("LoadState") == "loaded"
        deny, allow = props.get("IPAddressDeny", ""), props.get("IPAddressAllow", "")
        ok = denies_all(deny) and allows_only_localhost(allow)
        result["units"][unit] = {"installed": installed, "ip_address_deny": deny,
                                 "ip_address_allow": allow, "ok": ok}
        if installed and not ok:
            bad.append(unit)
    if bad:
        msg = ("units without IPAddressDeny=any / IPAddressAllow=localhost: " + ", ".join(bad))
        if module.params["strict"]:
            module.fail_json(msg=msg, **result)
        module.warn(msg)
    if not enforceable:
        module.warn(
            f"cgroup mode is {mode}: systemd shows IPAddressDeny/IPAddressAllow but cannot enforce them "
            "(needs cgroup v2 with BPF); the nftables guard still holds")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
