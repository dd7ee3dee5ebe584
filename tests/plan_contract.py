"""The plan contract for tests: every plan a planning test makes is checked against
toolkit/data/plan.schema.json (plan v2), so no test passes on a plan no consumer may read."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "toolkit" / "data" / "plan.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def plan_errors(plan: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(plan)]


def assert_valid_plan(plan: dict) -> None:
    errors = plan_errors(plan)
    assert errors == [], errors


def plan_lookup(tmp_path: Path, plan: dict, name: str = "plan.json") -> str:
    """A plan handed to a play as playbooks/plan.yml hands one in: a file read by a lookup, whose
    text Ansible never templates. As an extra var, the client view's FIM template ({{{prefix}}},
    Continue's Handlebars) would be parsed as Jinja and fail."""
    path = tmp_path / name
    path.write_text(json.dumps(plan))
    return f"{{{{ lookup('ansible.builtin.file', '{path}') | from_json }}}}"
