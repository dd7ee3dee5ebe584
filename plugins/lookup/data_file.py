"""Lookup plugin data_file: the path of one of the toolkit's data files, found beside this plugin.

The data files (tier table, phone-home list) have one home, toolkit/data/ at the collection root,
which the Python CLI reads as its package data. Roles ask this lookup instead of climbing out of
their own directory (``role_path/../../``), so the same role works from a checkout, from an
installed collection and inside an execution environment.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: data_file
short_description: Path of a data file shipped in the pca.toolkit collection
description:
  - Returns the absolute path of C(toolkit/data/<name>) inside this collection (the same file the
    C(toolkit) CLI reads), for C(ansible.builtin.file) lookups or role defaults that take a path.
options:
  _terms:
    description: File names inside toolkit/data (a bare name, no directories).
    required: true
author: toolkit maintainers
"""

EXAMPLES = r"""
- name: Read the tier table
  ansible.builtin.set_fact:
    tiers: "{{ lookup('ansible.builtin.file', lookup('pca.toolkit.data_file', 'tiers.yaml')) | from_yaml }}"
"""

RETURN = r"""
_raw:
  description: One absolute path per term.
  type: list
  elements: path
"""

import os
import re

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

# plugins/lookup/data_file.py -> the collection root, then its one data directory.
DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "toolkit", "data")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        paths = []
        for term in terms:
            if not isinstance(term, str) or not _NAME.fullmatch(term) or ".." in term:
                raise AnsibleLookupError(f"pca.toolkit.data_file: a bare file name is expected, got {term!r}")
            path = os.path.join(DATA_DIR, term)
            if not os.path.isfile(path):
                raise AnsibleLookupError(f"pca.toolkit.data_file: no {term} in {DATA_DIR}")
            paths.append(path)
        return paths
