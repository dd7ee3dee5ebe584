"""`toolkit plan`: which models and vLLM settings this machine (or a recorded one) can carry."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from toolkit import detection, planning


def plan_cmd(
    gpus: Path = typer.Option(
        None,
        "--gpus",
        help="Plan for a recorded GPU inventory (`toolkit detect --json` output) instead of this machine.",
    ),
    inventory: Path = typer.Option(
        None,
        "--inventory",
        "-i",
        help="Ansible inventory whose toolkit_plan_overrides (per host or group) apply; needs --host.",
    ),
    host: str = typer.Option(None, "--host", help="Inventory host whose overrides apply."),
    overrides: Path = typer.Option(
        None,
        "--overrides",
        help="A YAML/JSON file of overrides (same keys as the inventory variable toolkit_plan_overrides).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON (the same dict the roles consume)."),
) -> None:
    """Choose the chat, autocomplete and embedding models, quantization, vLLM serve arguments and ports.

    Every choice is checked against vLLM's own start-up accounting: weights, the profile run's
    activation or sampler peak, non-torch memory and CUDA graphs inside gpu_memory_utilization, a
    CUDA context per process outside it, and KV room for two full-length sequences; all servers
    of a GPU within its free memory. Otherwise the planner steps down (smaller model, shorter
    context, stronger quantization) and says why. A CPU-only machine gets the CPU tier. The
    command lines printed are exactly the units' ExecStart (after the venv's bin/).
    Exit 2 when the overrides or the GPU inventory are malformed or ask for something that cannot
    fit, 3 when the GPU is not an NVIDIA CUDA one (AMD, Intel).
    """
    if (inventory is None) != (host is None):
        raise typer.BadParameter("--inventory and --host go together")
    facts = planning.load_gpu_inventory(gpus) if gpus else detection.detect()
    ov: dict = {}
    users: dict = {}
    if inventory:
        ov, users = planning.inventory_inputs(inventory, host)
    if overrides:
        ov = planning._load_mapping(overrides, "overrides file")
    result = planning.plan(facts, ov, users)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console = Console()
    gpu_line = ", ".join(result["gpu_names"]) or "no GPU"
    console.print(f"[bold]tier {result['tier']}[/bold] ({result['runtime']}, {result['gpu_count']} GPU: {gpu_line})")
    t = Table("service", "model", "quant.", "context", "port", "GPU", "GPU mem.", "KV room", "start margin")
    t.columns[1].overflow = "fold"
    for name, s in result["services"].items():
        if s.get("shared_with"):
            t.add_row(
                name,
                f"(served by the {s['shared_with']} server)",
                "",
                str(s["max_model_len"]),
                str(s["port"]),
                "",
                "",
                "",
                "",
            )
            continue
        est = s.get("estimate") or {}
        t.add_row(
            name,
            s["model"],
            str(s.get("quantization_label") or s.get("quantization") or "-"),
            str(s.get("max_model_len", "")) if name != "embed" else f"{s['dimensions']} dims",
            str(s["port"]),
            ",".join(str(i) for i in s.get("gpus", [])) or "-",
            f"{s['gpu_memory_utilization']:.2f}" if s.get("gpu_memory_utilization") else "-",
            f"{est['full_sequences']:.1f} seq." if "full_sequences" in est else "-",
            f"{est['start_margin_gib']:.2f} GiB" if "start_margin_gib" in est else "-",
        )
    console.print(t)
    console.print("[bold]Why[/bold]")
    for r in result["reasons"]:
        console.print(f"  - {r}", highlight=False)
    console.print(
        "[bold]Command lines[/bold] (each unit's ExecStart, from the vLLM venv's bin/; the unit adds "
        "HF_HOME, HOME and VLLM_API_KEY from its key file to this env)"
    )
    for name in result.get("start_order", []):
        s = result["services"][name]
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(s.get("env", {}).items()))
        after = f"  (starts after {s['start_after']} answers /health)" if s.get("start_after") else ""
        console.print(
            f"  {name}: {s['unit']} as {s['user']} on {s['host']}:{s['port']}, ready at {s['health_path']}{after}",
            highlight=False,
        )
        console.print(f"    env: {env}", soft_wrap=True, highlight=False)
        console.print(f"    {shlex.join(s['argv'])}", soft_wrap=True, highlight=False)
    for name, s in result["services"].items():
        if s.get("server") and name not in result.get("start_order", []):
            console.print(
                f"  {name}: {s['unit']} as {s['user']} on {s['host']}:{s['port']} ({s['server']} role), "
                f"ready at {s['health_path']}",
                highlight=False,
            )
    console.print("[bold]Continue[/bold] (config.yaml models, written by the continue role from these fields)")
    for name, s in result["services"].items():
        c = s["client"]
        extra = f", FIM template of {c['family']}" if c.get("fim") else ""
        extra += ", tool use" if c.get("tools") else ""
        console.print(
            f"  {name}: {c['provider']} {c['model']} at {c['api_base']}, roles {', '.join(c['roles'])}, "
            f"context {c['context_length']}{extra}",
            highlight=False,
        )
    g = result["guard"]
    console.print(
        f"[bold]Egress guard[/bold]: users {', '.join(g['users'])}; units {', '.join(g['units'])}", highlight=False
    )


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)
