"""Codebase search as Continue does it: code chunks embedded by the deployed model, kept in LanceDB.

``collect`` and ``chunk`` are pure over file contents; ``build`` and ``Index.query`` do the I/O
(the embedding endpoint, the LanceDB directory).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Lance logs from Rust straight to stderr (dataset created, projection deprecations): keep the
# bench's stderr for its progress bars and errors.
os.environ.setdefault("LANCEDB_LOG", "error")

from toolkit.bench.client import Api, Resolved
from toolkit.errors import UsageError

CODE_SUFFIXES = frozenset(
    [
        ".py",
        ".pyi",
        ".sh",
        ".bash",
        ".js",
        ".jsx",
        ".ts",
        ".tsx",
        ".go",
        ".rs",
        ".c",
        ".h",
        ".cc",
        ".cpp",
        ".hpp",
        ".java",
        ".kt",
        ".rb",
        ".php",
        ".cs",
        ".swift",
        ".scala",
        ".sql",
        ".md",
        ".rst",
        ".txt",
        ".toml",
        ".yaml",
        ".yml",
        ".json",
        ".j2",
        ".cfg",
        ".ini",
        ".html",
        ".css",
    ]
)
# Directories that hold no code of the project (environments, caches, VCS data, build output).
SKIP_DIRS = frozenset(
    [
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        "env",
        "node_modules",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        "build",
        "dist",
        ".eggs",
        "site-packages",
    ]
)
MAX_FILE_BYTES = 256 * 1024
CHUNK_LINES = 30
CHUNK_CHARS = 1500
BATCH = 32
TABLE = "chunks"


@dataclass(frozen=True)
class Chunk:
    path: str  # relative to the tree, with forward slashes
    start_line: int  # 1-based, inclusive
    end_line: int
    text: str


@dataclass(frozen=True)
class Hit:
    path: str
    start_line: int
    end_line: int
    distance: float


def default_tree() -> Path:
    """The toolkit's own repository when run from a checkout, else the installed package."""
    pkg = Path(__file__).resolve().parent.parent
    repo = pkg.parent
    return repo if (repo / "pyproject.toml").is_file() else pkg


def collect(tree: Path) -> list[Path]:
    """Code and text files under ``tree``, sorted, skipping hidden and environment directories."""
    if not tree.is_dir():
        raise UsageError(f"code tree {tree} is not a directory")
    files = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = sorted(
            d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".") and not d.endswith(".egg-info")
        )
        for name in sorted(filenames):
            p = Path(dirpath, name)
            if p.suffix.lower() in CODE_SUFFIXES and not p.is_symlink():
                try:
                    if 0 < p.stat().st_size <= MAX_FILE_BYTES:
                        files.append(p)
                except OSError:
                    continue
    return files


def chunk(rel_path: str, text: str, lines: int = CHUNK_LINES, chars: int = CHUNK_CHARS) -> list[Chunk]:
    """Split a file into chunks of at most ``lines`` lines and about ``chars`` characters.

    Small chunks keep every one inside a small embedding model's context (MiniLM: 256 tokens);
    a single over-long line is cut so that no chunk runs far past ``chars``.
    """
    out: list[Chunk] = []
    buf: list[str] = []
    size = 0
    start = 1
    for no, line in enumerate(text.splitlines(), 1):
        line = line[:chars]
        if buf and (len(buf) >= lines or size + len(line) > chars):
            out.append(Chunk(rel_path, start, no - 1, "\n".join(buf)))
            buf, size, start = [], 0, no
        buf.append(line)
        size += len(line) + 1
    if buf and any(s.strip() for s in buf):
        out.append(Chunk(rel_path, start, start + len(buf) - 1, "\n".join(buf)))
    return [c for c in out if c.text.strip()]


def chunks_of(tree: Path, files: list[Path]) -> Iterator[Chunk]:
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary or unreadable: Continue skips those too
        yield from chunk(p.relative_to(tree).as_posix(), text)


@dataclass
class Index:
    table: Any  # lancedb.table.Table: lancedb is imported only when an index is built (2 s of imports)
    tree: Path
    files: int
    chunks: int
    dimensions: int
    index_s: float
    paths: list[Path] = field(default_factory=list)  # the files indexed, so the workloads read the same ones

    def search(self, vector: list[float], k: int) -> list[Hit]:
        rows = self.table.search(vector).limit(k).select(["path", "start_line", "end_line", "_distance"]).to_list()
        return [Hit(r["path"], int(r["start_line"]), int(r["end_line"]), float(r["_distance"])) for r in rows]


async def build(
    api: Api,
    embed: Resolved,
    tree: Path,
    db_dir: Path,
    on_batch: Callable[[int, int], None] | None = None,
) -> Index:
    """Embed every chunk of ``tree`` with the deployed model and store it in LanceDB at ``db_dir``."""
    start = time.perf_counter()
    files = collect(tree)
    chunks = list(chunks_of(tree, files))
    if not chunks:
        raise UsageError(f"code tree {tree} holds no code files to index")
    rows = []
    for i in range(0, len(chunks), BATCH):
        batch = chunks[i : i + BATCH]
        vectors, _ = await api.embed(embed, [c.text for c in batch])
        rows.extend(
            {"vector": v, "path": c.path, "start_line": c.start_line, "end_line": c.end_line, "text": c.text}
            for c, v in zip(batch, vectors, strict=True)
        )
        if on_batch:
            on_batch(min(i + BATCH, len(chunks)), len(chunks))

    def store() -> Any:
        import lancedb

        db = lancedb.connect(str(db_dir))
        return db.create_table(TABLE, data=rows, mode="overwrite")

    table = await asyncio.to_thread(store)
    dims = len(rows[0]["vector"])
    return Index(table, tree, len(files), len(chunks), dims, time.perf_counter() - start, files)


async def query(api: Api, embed: Resolved, index: Index, text: str, k: int) -> tuple[list[Hit], float]:
    """Top-k hits for a question and the seconds it took: embedding the question plus the vector search."""
    start = time.perf_counter()
    vectors, _ = await api.embed(embed, [text])
    hits = await asyncio.to_thread(index.search, vectors[0], k)
    return hits, time.perf_counter() - start


# --- search latency against index size (synthetic vectors) ---------------------------------------
#
# Continue's codebase index keeps its chunks in LanceDB and searches without a vector index
# (core/indexing/LanceDbIndex.ts: table.search(vector).limit(n)), i.e. a flat scan whose cost grows
# with the index. ``scale_point`` measures that scan and an IVF-PQ index (with exact re-ranking of
# its candidates) on one table of synthetic vectors, and the ANN's recall@k against the flat scan.


@dataclass(frozen=True)
class ScalePoint:
    rows: int
    dims: int
    queries: int
    k: int
    load_s: float  # writing the table
    index_s: float  # training and writing the ANN index
    flat_ms: dict[str, float]  # p50 / p95 / mean of one top-k query, flat scan
    ann_ms: dict[str, float]  # the same through the ANN index
    recall_at_k: float  # mean share of the flat scan's top k that the ANN also returned
    ann: dict[str, Any]  # the index's parameters


def synthetic_vectors(n: int, dims: int, seed: int, batch: int = 50_000) -> Iterator[Any]:
    """Unit vectors in batches (numpy float32), clustered like embeddings of code are.

    Uniform random vectors in hundreds of dimensions have no neighbourhoods, which would make any
    ANN index look worse than it is on real embeddings; 256 Gaussian clusters give them some.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, dims), dtype=np.float32)
    for start in range(0, n, batch):
        m = min(batch, n - start)
        v = centres[rng.integers(0, len(centres), m)] + 0.6 * rng.standard_normal((m, dims), dtype=np.float32)
        yield v / np.linalg.norm(v, axis=1, keepdims=True)


def _summary_ms(seconds: list[float]) -> dict[str, float]:
    from toolkit.bench.stats import percentile

    ms = [s * 1000.0 for s in seconds]
    return {"p50": percentile(ms, 50), "p95": percentile(ms, 95), "mean": sum(ms) / len(ms)}


def ann_params(rows: int, dims: int) -> dict[str, Any]:
    """IVF-PQ settings that LanceDB's guidance gives for the size: ~sqrt(rows) partitions, 16-dim sub-vectors."""
    partitions = max(1, min(4096, int(rows**0.5)))
    return {
        "index_type": "IVF_PQ",
        "num_partitions": partitions,
        "num_sub_vectors": max(1, dims // 16),
        "nprobes": max(1, min(partitions, 20)),
        "refine_factor": 10,
    }


def scale_point(rows: int, dims: int, db_dir: Path, queries: int = 50, k: int = 10, seed: int = 0) -> ScalePoint:
    """One point of the curve: ``rows`` synthetic chunks of ``dims`` dimensions in a fresh LanceDB table."""
    import lancedb
    import numpy as np
    import pyarrow as pa

    if rows < k or queries < 1:
        raise UsageError(f"a scaling point needs at least k={k} rows and one query")
    db = lancedb.connect(str(db_dir))
    name = f"scale_{rows}_{dims}"
    start = time.perf_counter()
    table = None
    sample = []
    row_id = 0
    for vecs in synthetic_vectors(rows, dims, seed):
        flat = pa.array(vecs.reshape(-1), type=pa.float32())
        batch = pa.table(
            {
                "id": pa.array(np.arange(row_id, row_id + len(vecs)), type=pa.int64()),
                "vector": pa.FixedSizeListArray.from_arrays(flat, dims),
            }
        )
        if len(sample) < queries:
            sample.extend(vecs[: queries - len(sample)])
        row_id += len(vecs)
        if table is None:
            table = db.create_table(name, data=batch, mode="overwrite")
        else:
            table.add(batch)
    load_s = time.perf_counter() - start
    # Queries near stored chunks (a question lands near its answer), but not copies of them.
    rng = np.random.default_rng(seed + 1)
    # Noise of norm ~0.3 against unit vectors, whatever the dimension (per-dimension 0.3 / sqrt(dims)).
    noise = rng.standard_normal((len(sample), dims), dtype=np.float32) * (0.3 / dims**0.5)
    qs = np.asarray(sample, dtype=np.float32) + noise
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)

    def timed(run: Callable[[Any], list[int]]) -> tuple[list[list[int]], list[float]]:
        for q in qs[:3]:
            run(q)  # the first queries open files and fill caches
        ids, secs = [], []
        for q in qs:
            t0 = time.perf_counter()
            ids.append(run(q))
            secs.append(time.perf_counter() - t0)
        return ids, secs

    def flat_q(q: Any) -> list[int]:
        return [r["id"] for r in table.search(q).bypass_vector_index().limit(k).select(["id"]).to_list()]

    flat_ids, flat_s = timed(flat_q)
    params = ann_params(rows, dims)
    t0 = time.perf_counter()
    from lancedb.index import IvfPq  # the unified config API (metric/num_partitions keywords are deprecated)

    table.create_index(
        "vector", config=IvfPq(num_partitions=params["num_partitions"], num_sub_vectors=params["num_sub_vectors"])
    )
    index_s = time.perf_counter() - t0

    def ann_q(q: Any) -> list[int]:
        query = table.search(q).nprobes(params["nprobes"]).refine_factor(params["refine_factor"])
        return [r["id"] for r in query.limit(k).select(["id"]).to_list()]

    ann_ids, ann_s = timed(ann_q)
    recall = sum(len(set(a) & set(f)) / k for a, f in zip(ann_ids, flat_ids, strict=True)) / len(qs)
    db.drop_table(name)
    return ScalePoint(rows, dims, len(qs), k, load_s, index_s, _summary_ms(flat_s), _summary_ms(ann_s), recall, params)
