#!/usr/bin/env python3
"""The planner's memory model against real vLLM start-up logs, and every recorded inventory's predicted
memory (not a test: ``.venv/bin/python bench/plan_memory.py``).

Rewrites the generated tables of docs/planning.md from tests/data/vllm_startup_logs.yaml,
tests/data/gpus/*.json and toolkit/data/tiers.yaml (``toolkit.plan_bench``); tests/test_planning.py
fails when the doc is not what this prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from toolkit.plan_bench import generated_section, render

ROOT = Path(__file__).resolve().parent.parent


def load() -> tuple[list[dict], dict, dict[str, dict]]:
    logs = yaml.safe_load((ROOT / "tests" / "data" / "vllm_startup_logs.yaml").read_text())["logs"]
    tiers = yaml.safe_load((ROOT / "toolkit" / "data" / "tiers.yaml").read_text())
    inventories = {p.stem: json.loads(p.read_text()) for p in (ROOT / "tests" / "data" / "gpus").glob("*.json")}
    return logs, tiers, inventories


def main() -> int:
    doc = ROOT / "docs" / "planning.md"
    text = doc.read_text()
    new = text.replace(generated_section(text), render(*load()))
    doc.write_text(new)
    print(f"docs/planning.md: generated tables {'rewritten' if new != text else 'already current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
