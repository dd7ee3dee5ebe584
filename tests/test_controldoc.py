"""docs/audit.md's controls table is the control registry (python -m toolkit.audit.controldoc)."""

from __future__ import annotations

import re

from toolkit.audit import controldoc, controls, model_checks, policy  # noqa: F401 (importing registers MODEL-00x, POLICY-001)
from toolkit.audit.continue_checks import CONTROLS as CONTINUE_CONTROLS
from toolkit.audit.extensions import GUARD_CONTROLS


def test_controls_table_is_current():
    text = controldoc.DOC.read_text()
    assert text == controldoc.rewrite(text), "docs/audit.md is stale: run `python -m toolkit.audit.controldoc`"


def test_controls_table_lists_every_control_once_with_its_registered_severity():
    text = controldoc.DOC.read_text()
    block = text.split(controldoc.BEGIN, 1)[1].split(controldoc.END, 1)[0]
    rows = re.findall(r"(?m)^\| ([A-Z]+-\d{3}) \| (\w+) \| ([^|]+) \|", block)
    expected = {**controls.known(), **{c.id: c for c in (*CONTINUE_CONTROLS, *GUARD_CONTROLS)}}
    assert len(rows) == len({r[0] for r in rows})
    assert {r[0]: (r[1], r[2].strip()) for r in rows} == {i: (c.severity, c.title) for i, c in expected.items()}
    # the ones a hand-written table had dropped
    assert {"CONTINUE-007", "MODEL-002", "GUARD-003"} <= {r[0] for r in rows}
