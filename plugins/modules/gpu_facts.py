#!/usr/bin/python
"""Ansible module gpu_facts: detect this host's GPUs and plan its services, with the CLI's own code."""

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_facts
short_description: Detect NVIDIA GPUs and plan the local AI stack for this host
description:
  - Reads the GPUs through NVML, falling back to C(nvidia-smi) and then sysfs, and plans the chat,
    autocomplete and embedding services with the same code as C(toolkit plan).
  - Sets the facts C(toolkit_gpu) (detection) and C(toolkit_plan) (the plan).
options:
  tiers:
    description: The parsed tier table (toolkit/data/tiers.yaml).
    type: dict
    required: true
  overrides:
    description: Per-host or per-group plan overrides (inventory variable C(toolkit_plan_overrides)).
    type: dict
    default: {}
  gpus:
    description: A recorded detection result to plan from instead of detecting (tests, what-if planning).
    type: dict
  users:
    description:
      - The service accounts, C({vllm: NAME, ollama: NAME}), each optional (default tiers.yaml
        C(service_users)). playbooks/plan.yml passes the inventory's C(vllm_user) / C(ollama_user):
        the one place a renamed user enters the plan, which the roles and the guard then read.
    type: dict
    default: {}
author: toolkit maintainers
"""

EXAMPLES = r"""
- name: Detect GPUs and plan this host's services
  pca.toolkit.gpu_facts:
    tiers: "{{ lookup('ansible.builtin.file', lookup('pca.toolkit.data_file', 'tiers.yaml')) | from_yaml }}"
    overrides: "{{ toolkit_plan_overrides | default({}) }}"
"""

RETURN = r"""
ansible_facts:
  description: toolkit_gpu and toolkit_plan.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.pca.toolkit.plugins.module_utils.gpu_detect import detect  # noqa: E402
from ansible_collections.pca.toolkit.plugins.module_utils.gpu_plan import PlanError, UnsupportedGPU, make_plan  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "tiers": {"type": "dict", "required": True},
            "overrides": {"type": "dict", "default": {}},
            "gpus": {"type": "dict"},
            "users": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    facts = module.params["gpus"] or detect()
    try:
        plan = make_plan(facts, module.params["tiers"], module.params["overrides"], module.params["users"] or None)
    except UnsupportedGPU as err:
        module.fail_json(msg=f"not supported: {err}", toolkit_gpu=facts)
    except PlanError as err:
        module.fail_json(msg=f"cannot plan this host: {err}", toolkit_gpu=facts)
    if facts.get("status") == "driver-needed":
        module.warn(facts["message"])
    module.exit_json(changed=False, ansible_facts={"toolkit_gpu": facts, "toolkit_plan": plan})


if __name__ == "__main__":
    main()
