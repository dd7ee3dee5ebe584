#!/usr/bin/python
"""Ansible module model_verify: verify model files on the host against the lock, with the CLI's own code."""

from __future__ import annotations

DOCUMENTATION = r"""
module: model_verify
short_description: Verify Hugging Face model snapshots on this host against a model lock
description:
  - Re-hashes every locked file of the selected models in C(cache_dir) (Hugging Face cache layout,
    C(models--ORG--NAME/snapshots/REV/)), in parallel, with the same code as C(toolkit models verify).
  - A model whose files all match gets a marker C(<marker_dir>/<models--ORG--NAME>@<REV>) holding the digest
    of its lock entry; only models with a current marker are listed in the fact C(model_store_verified).
  - A model with a mismatched, missing or unexpected file loses its marker, its snapshot is moved to
    C(<quarantine_dir>) (when C(quarantine) is true) and the module fails naming the file, expected and found hash.
options:
  lock:
    description: The parsed model lock (C(version), C(models)).
    type: dict
    required: true
  cache_dir:
    description: The Hugging Face hub cache (C(HF_HOME)/hub).
    type: path
    required: true
  repos:
    description: Repos to verify; default every repo in the lock.
    type: list
    elements: str
    default: []
  marker_dir:
    description: Where the verified markers live (outside the cache, so no server reads them as model files).
    type: path
    required: true
  quarantine_dir:
    description: Where a failed snapshot is moved.
    type: path
    required: true
  quarantine:
    description: Move a failed model's snapshot out of the cache so nothing can load it.
    type: bool
    default: true
  workers:
    description: Hashing threads; 0 means one per core.
    type: int
    default: 0
author: toolkit maintainers
"""

EXAMPLES = r"""
- name: Verify the models on this host before any server starts
  model_verify:
    lock: "{{ lookup('file', 'models.lock.yaml') | from_yaml }}"
    cache_dir: /var/lib/toolkit/hf/hub
    marker_dir: /var/lib/toolkit/hf/verified
    quarantine_dir: /var/lib/toolkit/hf/quarantine
"""

RETURN = r"""
verified:
  description: Repos whose every file matched the lock.
  returned: always
  type: list
problems:
  description: One line per mismatched, missing or unexpected file (expected against found).
  returned: always
  type: list
ansible_facts:
  description: model_store_verified (the verified repos).
  returned: always
  type: dict
"""

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.model_verify import (  # noqa: E402
    Lock,
    LockError,
    lock_to_data,
    parse_lock,
    snapshot_path,
    verify_models,
)


def entry_digest(model) -> str:
    """Digest of one model's lock entry: a marker is only valid for the exact entry it was verified against."""
    data = lock_to_data(Lock(version=1, models=(model,)))["models"][0]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "lock": {"type": "dict", "required": True},
            "cache_dir": {"type": "path", "required": True},
            "repos": {"type": "list", "elements": "str", "default": []},
            "marker_dir": {"type": "path", "required": True},
            "quarantine_dir": {"type": "path", "required": True},
            "quarantine": {"type": "bool", "default": True},
            "workers": {"type": "int", "default": 0},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        lock = parse_lock(p["lock"])
        models = [lock.model(r) for r in p["repos"]] if p["repos"] else list(lock.models)
    except LockError as err:
        module.fail_json(msg=f"bad model lock: {err}")

    report = verify_models([(m, snapshot_path(p["cache_dir"], m)) for m in models], workers=p["workers"] or None)
    bad = set(report.bad_repos())
    changed = False
    quarantined = []
    if not module.check_mode:
        os.makedirs(p["marker_dir"], mode=0o755, exist_ok=True)
    for m in models:
        marker = os.path.join(p["marker_dir"], f"{m.cache_dirname}@{m.revision}")
        digest = entry_digest(m)
        current = None
        if os.path.exists(marker):
            with open(marker, encoding="utf-8") as fh:
                current = fh.read().strip()
        if m.repo in bad:
            if current is not None:
                changed = True
                if not module.check_mode:
                    os.unlink(marker)
            snap = snapshot_path(p["cache_dir"], m)
            if p["quarantine"] and os.path.isdir(snap):
                dest = os.path.join(
                    p["quarantine_dir"], m.cache_dirname, f"{m.revision}.{time.strftime('%Y%m%dT%H%M%S')}"
                )
                changed = True
                if not module.check_mode:
                    os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
                    shutil.move(snap, dest)
                quarantined.append(dest)
        elif current != digest:
            changed = True
            if not module.check_mode:
                tmp = f"{marker}.tmp"
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(digest + "\n")
                os.replace(tmp, marker)

    verified = sorted(m.repo for m in models if m.repo not in bad)
    problems = [r.line() for r in report.problems]
    result = {
        "changed": changed,
        "verified": verified,
        "problems": problems,
        "quarantined": quarantined,
        "ansible_facts": {"model_store_verified": verified},
    }
    if bad:
        module.fail_json(
            msg=f"model verification failed on this host ({len(problems)} problem(s)), nothing of "
            f"{', '.join(sorted(bad))} is servable: " + " | ".join(problems),
            **result,
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
