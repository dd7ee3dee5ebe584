"""`toolkit detect`: show this machine's NVIDIA GPUs."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from toolkit import detection


def detect_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print the detection result as JSON (for machines)."),
) -> None:
    """Read the GPUs through NVML (then nvidia-smi, then sysfs): name, UUID, memory, driver, compute capability.

    With no GPU or no working driver it says so in one line and reports the CPU-only case
    (exit 0: a CPU-only machine is a valid workstation). Save the JSON to plan for this
    machine elsewhere: `toolkit detect --json > gpus.json; toolkit plan --gpus gpus.json`.
    """
    facts = detection.detect()
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    console = Console()
    console.print(facts["message"])
    if facts["gpus"]:
        t = Table("index", "name", "uuid", "memory total", "memory free", "compute cap.", "PCI bus")
        for g in facts["gpus"]:
            t.add_row(
                str(g["index"]),
                g["name"],
                g["uuid"],
                detection.gib(g["memory_total_bytes"]),
                detection.gib(g["memory_free_bytes"]),
                g["compute_capability"],
                g["pci_bus_id"],
            )
        console.print(t)
    cpu = facts["cpu"]
    console.print(
        f"CPU: {cpu['count']} x {cpu['model'] or 'unknown'}, memory {detection.gib(cpu['memory_total_bytes'])}"
    )


def register(app: typer.Typer) -> None:
    app.command("detect")(detect_cmd)
