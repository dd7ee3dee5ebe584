"""A local stand-in for the Hugging Face hub HTTP API, for tests (loopback only, never the internet).

It answers exactly what huggingface-hub 2.x calls for `model_info`, `list_repo_tree` and
`snapshot_download`/`hf_hub_download` (read from its source, hf_api.py and file_download.py):

  GET  /api/models/ORG/NAME[/revision/REV]      -> {"id", "sha", "siblings"}
  GET  /api/models/ORG/NAME/tree/REV?recursive=  -> [{"type", "path", "oid", "size", "lfs"?}]
  HEAD /ORG/NAME/resolve/REV/PATH                -> X-Repo-Commit, ETag, X-Linked-Etag/-Size (LFS), Content-Length
  GET  /ORG/NAME/resolve/REV/PATH                -> the bytes (honours Range: bytes=N-)

What it does not exercise: redirects to a CDN, auth, xet storage, pagination, rate limits.
A file can be served tampered (different bytes, same metadata) to stand for a compromised mirror/CDN.
``hub.misbehave`` makes every answer hostile, as a broken proxy or a hijacked endpoint would be:
"garbage" (200 with a body that is not JSON and no hub headers), "disconnect" (the connection is
closed without an answer) or "silent" (the request is read and never answered).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".h5", ".onnx")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    repo: str
    sha: str
    files: dict[str, bytes]
    branch: str = "main"
    tampered: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def entry(self, path: str) -> dict:
        data = self.files[path]
        if self.is_lfs(path):
            sha = hashlib.sha256(data).hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()
            return {
                "type": "file",
                "path": path,
                "oid": git_blob_id(pointer),
                "size": len(data),
                "lfs": {"oid": sha, "size": len(data), "pointerSize": len(pointer)},
            }
        return {"type": "file", "path": path, "oid": git_blob_id(data), "size": len(data)}

    def tree(self) -> list[dict]:
        dirs = sorted({p.rsplit("/", 1)[0] for p in self.files if "/" in p})
        out = [{"type": "directory", "path": d, "oid": "0" * 40, "size": 0} for d in dirs]
        return out + [self.entry(p) for p in sorted(self.files)]


def load_dir(directory: Path, skip: tuple[str, ...] = (".complete",)) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name not in skip
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header(
            "Content-Length", str(len(body) if "Content-Length" not in (headers or {}) else headers["Content-Length"])
        )
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, obj: object, code: int = 200) -> None:
        self._send(code, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _error(self, code: int, error_code: str, head: bool = False) -> None:
        body = json.dumps({"error": error_code}).encode()
        self._send(
            code,
            body,
            {"Content-Type": "application/json", "X-Error-Code": error_code, "X-Error-Message": error_code},
            head=head,
        )

    def _repo(self, org: str, name: str) -> FakeRepo | None:
        return self.server.repos.get(f"{org}/{name}")

    def _rev_ok(self, repo: FakeRepo, rev: str) -> bool:
        return rev in (repo.sha, repo.branch)

    def do_HEAD(self) -> None:  # noqa: N802
        self._route(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._route(head=False)

    def _route(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        parts = path.strip("/").split("/")
        rng = f" Range={self.headers['Range']}" if self.headers.get("Range") else ""
        self.server.log.append(f"{'HEAD' if head else 'GET'} {path}{rng}")
        if self.server.misbehave == "garbage":
            return self._send(200, b"<html>\x00\xff not json", {"Content-Type": "application/json"}, head=head)
        if self.server.misbehave == "disconnect":
            self.close_connection = True
            self.connection.close()
            return None
        if self.server.misbehave == "silent":
            time.sleep(self.server.silence_s)
            self.close_connection = True
            return None
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo = self._repo(parts[2], parts[3])
            if repo is None:
                return self._error(404, "RepoNotFound")
            rest = parts[4:]
            if not rest or rest[0] == "revision":
                rev = rest[1] if len(rest) > 1 else repo.branch
                if not self._rev_ok(repo, rev):
                    return self._error(404, "RevisionNotFound")
                return self._json(
                    {
                        "id": repo.repo,
                        "sha": repo.sha,
                        "private": False,
                        "siblings": [{"rfilename": p} for p in sorted(repo.files)],
                    }
                )
            if rest[0] == "tree" and len(rest) >= 2:
                if not self._rev_ok(repo, rest[1]):
                    return self._error(404, "RevisionNotFound")
                return self._json(repo.tree())
            return self._error(404, "EntryNotFound")
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = self._repo(parts[0], parts[1])
            if repo is None:
                return self._error(404, "RepoNotFound", head)
            rev, fpath = parts[3], "/".join(parts[4:])
            if not self._rev_ok(repo, rev):
                return self._error(404, "RevisionNotFound", head)
            if fpath not in repo.files:
                return self._error(404, "EntryNotFound", head)
            entry = repo.entry(fpath)
            data = repo.tampered.get(fpath, repo.files[fpath])
            headers = {"X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
            if "lfs" in entry:
                headers["ETag"] = f'"{entry["oid"]}"'
                headers["X-Linked-Etag"] = f'"{entry["lfs"]["oid"]}"'
                headers["X-Linked-Size"] = entry["lfs"]["size"]
            else:
                headers["ETag"] = f'"{entry["oid"]}"'
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes=") and not head:
                start = int(rng[6:].split("-")[0] or 0)
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                return self._send(206, data[start:], headers)
            if head:
                headers["Content-Length"] = len(data)
            return self._send(200, data, headers, head=head)
        return self._error(404, "NotFound", head)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    repos: dict[str, FakeRepo]
    log: list[str]
    misbehave: str | None = None
    silence_s: float = 60.0


class FakeHub:
    """Start with `with FakeHub([...]) as hub:`; hub.endpoint is the HF_ENDPOINT to use."""

    def __init__(self, repos: list[FakeRepo]) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.repos = {r.repo: r for r in repos}
        self.server.log = []
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def log(self) -> list[str]:
        return self.server.log

    @property
    def misbehave(self) -> str | None:
        return self.server.misbehave

    @misbehave.setter
    def misbehave(self, mode: str | None) -> None:
        if mode not in (None, "garbage", "disconnect", "silent"):
            raise ValueError(mode)
        self.server.misbehave = mode

    def repo(self, name: str) -> FakeRepo:
        return self.server.repos[name]

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
