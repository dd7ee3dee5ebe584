"""Codebase search as Continue does it: code chunks embedded by the deployed model, kept in LanceDB.

``collect`` and ``chunk`` are pure over file contents; ``build`` and ``Index.query`` do the I/O
(the embedding endpoint, the LanceDB directory).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    return Index(table, tree, len(files), len(chunks), dims, time.perf_counter() - start)


async def query(api: Api, embed: Resolved, index: Index, text: str, k: int) -> tuple[list[Hit], float]:
    """Top-k hits for a question and the seconds it took: embedding the question plus the vector search."""
    start = time.perf_counter()
    vectors, _ = await api.embed(embed, [text])
    hits = await asyncio.to_thread(index.search, vectors[0], k)
    return hits, time.perf_counter() - start
