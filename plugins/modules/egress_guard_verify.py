#!/usr/bin/python
"""Ansible module: does the loaded guard table do what was intended? On any difference the
previous ruleset is loaded back at once and the task fails naming the difference."""

from __future__ import annotations

DOCUMENTATION = r"""
module: egress_guard_verify
short_description: Compare the loaded egress guard table with its intent
description:
  - Reads C(nft -j list table inet TABLE) and compares it, rule by rule, with the intent the
    ruleset was rendered from (every allowlist rule with its address match, nothing else accepting).
  - On a difference it loads O(restore) (the previous state) and fails.
options:
  table:
    description: The guard's table (family inet).
    type: str
    required: true
  intent:
    description: uids, host_wide, allowlist, controller, sinkhole_addresses.
    type: dict
    required: true
  restore:
    description: nft file loaded back when the table differs from the intent.
    type: path
    required: true
author: private-coding-assistant-toolkit
"""

import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pca.toolkit.plugins.module_utils.egress_intent import intent_problems


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "table": {"type": "str", "required": True},
            "intent": {"type": "dict", "required": True},
            "restore": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )
    nft = module.get_bin_path("nft", required=True)
    rc, out, err = module.run_command([nft, "-j", "list", "table", "inet", module.params["table"]])
    doc = json.loads(out) if rc == 0 and out.strip() else None
    problems = ["the table is not loaded"] if doc is None else intent_problems(doc, module.params["intent"])
    if problems:
        rrc, _, rerr = module.run_command([nft, "-f", module.params["restore"]])
        restored = "the previous ruleset was loaded back" if rrc == 0 else f"restoring failed: {rerr.strip()}"
        module.fail_json(
            msg=f"the loaded guard differs from its intent ({restored}): " + "; ".join(problems), problems=problems
        )
    module.exit_json(changed=False, problems=[])


if __name__ == "__main__":
    main()
