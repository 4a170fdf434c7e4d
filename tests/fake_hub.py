"""A fake Hugging Face Hub on 127.0.0.1 for the hub tests: the endpoints huggingface_hub calls.

- ``GET /api/models?search=&filter=&sort=&limit=``: model search
- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: model info (siblings,
  with LFS info when ``blobs=true``)
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=``: tree listing with LFS sha256/size
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: files, with ``ETag``, ``X-Repo-Commit``,
  ``X-Linked-Size``/``X-Linked-Etag``, ``Accept-Ranges`` and ``Range`` (206/416)

Faults are queued per file (:meth:`FakeHub.fail`) and consumed one per GET: ``("drop", n)``
sends ``n`` bytes and closes the connection, ``("status", code, retry_after)`` answers with an
error. ``slow`` paces a file's bytes; ``bad_sha`` advertises a wrong sha256; ``ignore_range``
answers ranged requests with the whole file. Gated repos answer
401/403 with ``X-Error-Code: GatedRepo`` unless ``Authorization: Bearer hf_good`` is sent.
The server stops on :meth:`close` or by itself after ``lifetime`` seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

GOOD_TOKEN = "hf_good"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SEND_CHUNK = 16 << 10


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    gated: bool = False
    downloads: int = 0
    likes: int = 0
    tags: list[str] = field(default_factory=lambda: ["gguf"])
    gguf: dict[str, Any] | None = None

    def sha256(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest()


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    auth: str | None


class FakeHub:
    def __init__(self, lifetime: float = 120.0) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.faults: dict[str, list[tuple]] = {}
        self.slow: dict[str, float] = {}  # path -> seconds between 16 KiB chunks
        self.bad_sha: set[str] = set()
        self.ignore_range: set[str] = set()  # paths served whole (200) even when a Range is asked
        self.requests: list[Request] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True
        self.thread.start()
        self.timer = threading.Timer(lifetime, self.close)
        self.timer.daemon = True
        self.timer.start()

    def add_repo(self, repo_id: str, repo: FakeRepo) -> FakeRepo:
        self.repos[repo_id] = repo
        return repo

    def fail(self, path: str, *faults: tuple) -> None:
        with self.lock:
            self.faults.setdefault(path, []).extend(faults)

    def next_fault(self, path: str) -> tuple | None:
        with self.lock:
            queue = self.faults.get(path)
            return queue.pop(0) if queue else None

    def gets(self, path_suffix: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(path_suffix)]

    def close(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_MODEL_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    # ---- plumbing
    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(
        self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None
    ) -> None:
        extra = dict(headers or {})
        if code:
            extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message
        self._send_json(status, {"error": message}, extra)

    def _record(self) -> tuple[str, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        self.hub.requests.append(
            Request(self.command, path, self.headers.get("Range"), self.headers.get("Authorization"))
        )
        return path, parse_qs(parts.query)

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            path, query = self._record()
            if path == "/api/models":
                return self._search(query)
            if m := _TREE.match(path):
                return self._tree(m["repo"], m["path"] or "", query)
            if m := _MODEL_INFO.match(path):
                return self._info(m["repo"], query)
            if m := _RESOLVE.match(path):
                return self._resolve(m["repo"], m["path"])
            self._error(404, None, "not found")
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True

    # ---- API
    def _repo(self, repo_id: str) -> FakeRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(401, "RepoNotFound", "Repository not found")
        return repo

    def _model_json(self, repo_id: str, repo: FakeRepo) -> dict[str, Any]:
        return {
            "_id": repo_id,
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": COMMIT,
            "downloads": repo.downloads,
            "likes": repo.likes,
            "gated": "manual" if repo.gated else False,
            "private": False,
            "tags": repo.tags,
            "library_name": "gguf" if "gguf" in repo.tags else None,
            "lastModified": "2025-01-02T03:04:05.000Z",
            "createdAt": "2025-01-01T00:00:00.000Z",
            **({"gguf": repo.gguf} if repo.gguf else {}),
        }

    def _search(self, query: dict[str, list[str]]) -> None:
        search = (query.get("search") or [""])[0].lower()
        filters = query.get("filter") or []
        limit = int((query.get("limit") or ["1000"])[0])
        sort = (query.get("sort") or [""])[0]
        hits = [
            (rid, r)
            for rid, r in self.hub.repos.items()
            if search in rid.lower() and all(f in r.tags for f in filters)
        ]
        if sort in ("downloads", "likes"):
            hits.sort(key=lambda h: -getattr(h[1], sort))
        self._send_json(200, [self._model_json(rid, r) for rid, r in hits[:limit]])

    def _info(self, repo_id: str, query: dict[str, list[str]]) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        blobs = (query.get("blobs") or ["false"])[0].lower() == "true"
        siblings = []
        for path, data in sorted(repo.files.items()):
            s: dict[str, Any] = {"rfilename": path}
            if blobs:
                s.update(size=len(data), blobId=_git_sha1(data))
                if path.endswith(".gguf"):
                    s["lfs"] = {"sha256": self._sha(repo, path), "size": len(data), "pointerSize": 134}
            siblings.append(s)
        self._send_json(200, {**self._model_json(repo_id, repo), "siblings": siblings})

    def _sha(self, repo: FakeRepo, path: str) -> str:
        return "0" * 64 if path in self.hub.bad_sha else repo.sha256(path)

    def _tree(self, repo_id: str, under: str, query: dict[str, list[str]]) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        recursive = (query.get("recursive") or ["false"])[0].lower() == "true"
        prefix = under.strip("/") + "/" if under.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for path, data in sorted(repo.files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :].split("/")
            for depth in range(1, len(rest)):
                folder = prefix + "/".join(rest[:depth])
                if recursive or depth == 1:
                    entries.setdefault(
                        folder, {"type": "directory", "oid": "d" * 40, "size": 0, "path": folder}
                    )
                if not recursive:
                    break
            if len(rest) > 1 and not recursive:
                continue
            entry: dict[str, Any] = {"type": "file", "oid": _git_sha1(data), "size": len(data), "path": path}
            if path.endswith(".gguf"):
                entry["lfs"] = {"oid": self._sha(repo, path), "size": len(data), "pointerSize": 134}
            entries[path] = entry
        self._send_json(200, list(entries.values()))

    # ---- files
    def _resolve(self, repo_id: str, path: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if repo.gated and self.headers.get("Authorization") != f"Bearer {GOOD_TOKEN}":
            status = 403 if self.headers.get("Authorization") else 401
            self._error(status, "GatedRepo", "Access to model is restricted. You must have access to it.")
            return
        data = repo.files.get(path)
        if data is None:
            self._error(404, "EntryNotFound", f"{path} does not exist on main")
            return
        fault = self.hub.next_fault(path) if self.command == "GET" else None
        if fault is not None and fault[0] == "status":
            retry = {"Retry-After": str(fault[2])} if len(fault) > 2 and fault[2] is not None else {}
            self._error(fault[1], None, "fault injected", retry)
            return
        sha = self._sha(repo, path)
        headers = {
            "ETag": f'"{sha}"',
            "X-Repo-Commit": COMMIT,
            "X-Linked-Size": str(len(data)),
            "X-Linked-Etag": f'"{sha}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        start, end, status = 0, len(data) - 1, 200
        rng = self.headers.get("Range") if path not in self.hub.ignore_range else None
        if rng:
            m = _RANGE.match(rng.strip())
            if m is None or int(m[1]) >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(m[1])
            end = min(int(m[2]), len(data) - 1) if m[2] else len(data) - 1
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = data[start : end + 1]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault is not None and fault[0] == "drop":
            self.wfile.write(body[: fault[1]])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)
            return
        delay = self.hub.slow.get(path, 0.0)
        for i in range(0, len(body), SEND_CHUNK):
            if self.hub.stopping.is_set():
                self.close_connection = True
                return
            self.wfile.write(body[i : i + SEND_CHUNK])
            if delay:
                self.wfile.flush()
                time.sleep(delay)


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@contextlib.contextmanager
def serve() -> Iterator[FakeHub]:
    hub = FakeHub()
    try:
        yield hub
    finally:
        hub.close()


# ---- test set-up shared by the tests/test_hub_*.py modules

REPO = "kvant-test/Tiny-GGUF"
GATED = "kvant-test/Gated-GGUF"
SPLIT_FOLDER = "UD-IQ1_S"


def build_gguf(path, seed: int = 0, rows: int = 128, split=None) -> list:
    """A small valid GGUF (3 F32 tensors of ``rows`` × 256) or its shards; returns the paths."""
    import numpy as np
    from gguf import GGMLQuantizationType as T

    from engine.gguf import SplitPolicy, TensorSpec, write_gguf_sync

    rng = np.random.default_rng(seed)
    specs = [TensorSpec.from_shape(f"blk.{i}.ffn_up.weight", (rows, 256), T.F32) for i in range(3)]
    data = {s.name: rng.standard_normal((rows, 256)).astype(np.float32) for s in specs}
    meta = {
        "general.architecture": "llama",
        "general.name": f"Tiny {seed}",
        "llama.block_count": 3,
        "llama.context_length": 256,
        "tokenizer.ggml.tokens": [f"tok{i}" for i in range(2000)],
    }
    split_policy = SplitPolicy(max_tensors=1) if split else None
    return write_gguf_sync(path, meta, specs, lambda s: data[s.name], split=split_policy)


def standard_repo_files(folder) -> dict[str, bytes]:
    """A repo like bartowski's + unsloth's: two single-file quants and a 3-shard quant in a folder."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    for seed, name in ((1, "Tiny-Q4_K_M.gguf"), (2, "tiny.q8_0.gguf")):
        (p,) = build_gguf(folder / name, seed=seed)
        files[name] = p.read_bytes()
    for p in build_gguf(folder / "Tiny-UD-IQ1_S.gguf", seed=3, rows=64, split=True):
        files[f"{SPLIT_FOLDER}/{p.name}"] = p.read_bytes()
    files["README.md"] = b"# Tiny\n"
    return files


def use_hub(monkeypatch, hub: FakeHub, tmp_path) -> None:
    """Point huggingface_hub and Kvant at ``hub`` for one test (no token, online, no proxy)."""
    from huggingface_hub import close_session, constants

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-hf-token"))
    close_session()  # the shared client reads proxy variables when it is created
