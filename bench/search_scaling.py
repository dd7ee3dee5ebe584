#!/usr/bin/env python3
"""Codebase search latency against index size (not a test:
``.venv/bin/python bench/search_scaling.py [--rows 10000,100000,1000000] [--dims 384,768]``).

For each size and dimension it writes a fresh LanceDB table of synthetic unit vectors
(``toolkit.bench.search.scale_point``), times top-10 queries as a flat scan (what Continue does)
and through an IVF-PQ index with exact re-ranking, and the ANN's recall@10 against the flat scan.
The vector search alone: embedding the question is measured by ``toolkit bench`` (search SLO).

Writes ``--out`` (JSON, one object per point) and ``--svg`` (latency vs rows, log-log, with the
seed's "~10k files / ~2.5 GB" workstation marked), and prints a Markdown table for docs/bench.md.
Each point is appended to the JSON as soon as it is measured, so a run stopped for time keeps
what it measured.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from toolkit.bench import search  # noqa: E402

# The seed's workstation: ~10k files, ~2.5 GB of index. At the bench's chunking (<= 30 lines) a
# typical 200-300-line file gives ~10 chunks: ~100k chunks. 2.5 GB at 768 float32 dims (3 KiB) plus
# the chunk's text (~1.5 KiB) per row is ~550k chunks. The seed's point lies between the two.
SEED_CHUNKS = (100_000, 550_000)


def svg(points: list[dict]) -> str:
    w, h, left, right, top, bottom = 680, 360, 70, 170, 20, 50
    pw, ph = w - left - right, h - top - bottom
    xs = [p["rows"] for p in points] + list(SEED_CHUNKS)
    ys = [v for p in points for v in (p["flat_ms"]["p95"], p["ann_ms"]["p95"])]
    x0, x1 = math.log10(min(xs)) - 0.1, math.log10(max(xs)) + 0.1
    y0, y1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys + [200.0])))

    def x(v: float) -> float:
        return left + pw * (math.log10(v) - x0) / (x1 - x0)

    def y(v: float) -> float:
        return top + ph * (1 - (math.log10(v) - y0) / (y1 - y0))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>',
        f'<rect x="{x(SEED_CHUNKS[0]):.1f}" y="{top}" width="{x(SEED_CHUNKS[1]) - x(SEED_CHUNKS[0]):.1f}" '
        f'height="{ph}" fill="#fde9c8"/>',
        f'<text x="{(x(SEED_CHUNKS[0]) + x(SEED_CHUNKS[1])) / 2:.1f}" y="{top + 14}" text-anchor="middle">'
        "seed: ~10k files / 2.5 GB</text>",
        f'<line x1="{left}" y1="{y(200):.1f}" x2="{left + pw}" y2="{y(200):.1f}" stroke="#000" '
        'stroke-dasharray="6 4"/>',
        f'<text x="{left + 4}" y="{y(200) - 4:.1f}">SLO 200 ms (embedding included)</text>',
    ]
    for e in range(y0, y1 + 1):
        out.append(f'<text x="{left - 6}" y="{y(10**e) + 4:.1f}" text-anchor="end">{10**e:g}</text>')
    for e in range(math.ceil(x0), math.floor(x1) + 1):
        out.append(f'<text x="{x(10**e):.1f}" y="{top + ph + 16}" text-anchor="middle">{10**e:,}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 8}" text-anchor="middle">chunks in the index (log)</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" transform="rotate(-90 14 {top + ph / 2})" '
               'text-anchor="middle">p95 ms per top-10 query (log)</text>')  # fmt: skip
    colours = {("flat", 384): "#1f77b4", ("flat", 768): "#0b3d91", ("ann", 384): "#ff7f0e", ("ann", 768): "#d62728"}
    legend = 0
    for (kind, dims), colour in colours.items():
        series = sorted((p for p in points if p["dims"] == dims), key=lambda p: p["rows"])
        if not series:
            continue
        key = "flat_ms" if kind == "flat" else "ann_ms"
        pts = " ".join(f"{x(p['rows']):.1f},{y(p[key]['p95']):.1f}" for p in series)
        dash = "" if kind == "flat" else ' stroke-dasharray="4 2"'
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{pts}"/>')
        out += [f'<circle cx="{x(p["rows"]):.1f}" cy="{y(p[key]["p95"]):.1f}" r="3" fill="{colour}"/>' for p in series]
        label = f"{'flat scan' if kind == 'flat' else 'IVF-PQ'} {dims}d"
        out.append(f'<rect x="{left + pw + 10}" y="{top + 16 * legend}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{left + pw + 24}" y="{top + 9 + 16 * legend}">{html.escape(label)}</text>')  # fmt: skip
        legend += 1
    out.append("</svg>")
    return "".join(out) + "\n"


def table(points: list[dict]) -> str:
    rows = ["| chunks | dims | load s | flat p50 / p95 ms | IVF-PQ build s | IVF-PQ p50 / p95 ms | recall@10 |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in points:
        rows.append(
            f"| {p['rows']:,} | {p['dims']} | {p['load_s']:.1f} "
            f"| {p['flat_ms']['p50']:.1f} / {p['flat_ms']['p95']:.1f} "
            f"| {p['index_s']:.1f} | {p['ann_ms']['p50']:.1f} / {p['ann_ms']['p95']:.1f} | {p['recall_at_k']:.3f} |"
        )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="10000,100000,1000000")
    ap.add_argument("--dims", default="384,768")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--out", type=Path, default=Path("search-scaling.json"))
    ap.add_argument("--svg", type=Path, default=Path("search-scaling.svg"))
    ap.add_argument("--replot", action="store_true", help="only redraw the SVG and table from --out")
    args = ap.parse_args()
    points = json.loads(args.out.read_text()) if args.out.exists() else []
    if not args.replot:
        points = []
        for rows in (int(r) for r in args.rows.split(",")):
            for dims in (int(d) for d in args.dims.split(",")):
                t0 = time.monotonic()
                with tempfile.TemporaryDirectory(prefix="search-scaling-") as d:
                    p = asdict(search.scale_point(rows, dims, Path(d), queries=args.queries))
                p["wall_s"] = time.monotonic() - t0
                p["load_average_1m"] = os.getloadavg()[0]  # the machine is shared: say how busy it was
                points.append(p)
                args.out.write_text(json.dumps(points, indent=2) + "\n")
                print(f"{rows} x {dims}: flat p95 {p['flat_ms']['p95']:.1f} ms, ann p95 {p['ann_ms']['p95']:.1f} ms, "
                      f"recall {p['recall_at_k']:.3f} ({p['wall_s']:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    args.svg.write_text(svg(points))
    print(table(points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
