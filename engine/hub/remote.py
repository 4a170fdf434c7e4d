"""Searching the Hub, listing a repository's quants, and reading a remote GGUF header."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from huggingface_hub.hf_api import RepoFile

from engine.errors import GGUFError
from engine.gguf import GGUFHeader, GGUFIncomplete, parse_header
from engine.hub._http import (
    HubError,
    RetryPolicy,
    check_status,
    file_url,
    hub_api,
    hub_errors,
    hub_headers,
    open_range,
    require_online,
    with_retries,
)
from engine.hub.quants import Quant, RemoteFile, group_quants, select_quant

SEARCH_EXPAND = ["author", "downloads", "likes", "lastModified", "gated", "gguf", "tags", "pipeline_tag"]
HEADER_FIRST_BYTES = 1 << 20
HEADER_MAX_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class HubModel:
    """One search result: a model repository with GGUF files."""

    id: str
    author: str | None = None
    downloads: int | None = None
    likes: int | None = None
    last_modified: str | None = None
    gated: bool | str | None = None
    pipeline_tag: str | None = None
    parameters: int | None = None  # from the Hub's GGUF summary, when it has one
    architecture: str | None = None
    context_length: int | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "author": self.author,
            "downloads": self.downloads,
            "likes": self.likes,
            "last_modified": self.last_modified,
            "gated": self.gated,
            "pipeline_tag": self.pipeline_tag,
            "parameters": self.parameters,
            "architecture": self.architecture,
            "context_length": self.context_length,
            "tags": list(self.tags),
        }


def search_models(
    query: str, *, limit: int = 20, sort: str = "downloads", token: str | bool | None = None
) -> list[HubModel]:
    """Model repositories with GGUF files matching ``query``, most downloaded first."""
    require_online("search the Hugging Face Hub")
    with hub_errors(f"search the Hub for {query!r}", query):
        found = hub_api(token).list_models(
            search=query or None, filter="gguf", sort=sort, limit=max(1, limit), expand=SEARCH_EXPAND
        )
        results = []
        for m in found:
            gguf = m.gguf if isinstance(m.gguf, dict) else {}
            results.append(
                HubModel(
                    id=m.id,
                    author=m.author,
                    downloads=m.downloads,
                    likes=m.likes,
                    last_modified=m.last_modified.isoformat() if m.last_modified else None,
                    gated=m.gated,
                    pipeline_tag=m.pipeline_tag,
                    parameters=_int_or_none(gguf.get("total")),
                    architecture=gguf.get("architecture"),
                    context_length=_int_or_none(gguf.get("context_length")),
                    tags=tuple(m.tags or ()),
                )
            )
    return results


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def list_repo_files(
    repo: str, *, revision: str = "main", token: str | bool | None = None
) -> list[RemoteFile]:
    """Every file of ``repo`` (recursively) with its size and LFS sha256."""
    require_online(f"list the files of {repo}")
    with hub_errors(f"list the files of {repo}", repo):
        tree = hub_api(token).list_repo_tree(repo, recursive=True, revision=revision)
        return [
            RemoteFile(
                path=e.path,
                size=int(e.lfs.size if e.lfs is not None else e.size),
                sha256=e.lfs.sha256 if e.lfs is not None else None,
                blob_id=e.blob_id,
            )
            for e in tree
            if isinstance(e, RepoFile)
        ]


def list_quants(repo: str, *, revision: str = "main", token: str | bool | None = None) -> list[Quant]:
    """The GGUF quants of ``repo``, smallest first."""
    return group_quants(list_repo_files(repo, revision=revision, token=token))


def find_quant(repo: str, quant: str, *, revision: str = "main", token: str | bool | None = None) -> Quant:
    """The quant of ``repo`` named ``quant`` (``Q4_K_M``) or keyed so (``UD-IQ1_S/Model-UD-IQ1_S``)."""
    return select_quant(list_quants(repo, revision=revision, token=token), quant, repo)


def fetch_range(
    repo: str,
    filename: str,
    start: int,
    end: int,
    *,
    revision: str = "main",
    token: str | bool | None = None,
    policy: RetryPolicy | None = None,
) -> tuple[bytes, int | None]:
    """Bytes ``start..end`` (inclusive) of a remote file and the file's total size if told."""
    require_online(f"read {filename} from {repo}")
    policy = policy or RetryPolicy(max_attempts=4)
    url = file_url(repo, filename, revision)
    headers = hub_headers(token)

    def attempt() -> tuple[bytes, int | None]:
        with open_range(url, start, end, headers, policy) as response:
            check_status(response, repo, filename)
            data = response.read()
            total = _total_size(response)
            if response.status_code == 200:  # range ignored: the whole file came
                total = len(data)
                data = data[start : end + 1]
            return data, total

    with hub_errors(f"read {filename} from {repo}", repo):
        gen = with_retries(attempt, policy, None, f"reading {filename} from {repo}")
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value


def _total_size(response: Any) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range:
        tail = content_range.rsplit("/", 1)[1].strip()
        if tail.isdigit():
            return int(tail)
    if response.status_code == 200 and response.headers.get("Content-Length", "").isdigit():
        return int(response.headers["Content-Length"])
    return None


def header_from_prefix(prefix: bytes, file_size: int, source: str) -> GGUFHeader | None:
    """Parse a GGUF header from the first bytes of a ``file_size``-byte file; None: need more bytes."""
    try:
        return parse_header(prefix, source, file_size=file_size)
    except GGUFIncomplete:
        return None


def fetch_remote_header(
    repo: str,
    filename: str,
    *,
    revision: str = "main",
    token: str | bool | None = None,
    first_bytes: int = HEADER_FIRST_BYTES,
    max_bytes: int = HEADER_MAX_BYTES,
) -> GGUFHeader:
    """The GGUF header of a remote file, read with HTTP Range requests that grow until it parses.

    Costs one to a few requests (1 MiB, then doubling up to ``max_bytes``); the result's
    ``file_size`` is the remote file's size, so tensor offsets and sizes are exact.
    """
    source = f"{repo}/{filename}"
    size = max(first_bytes, 64)
    data, total = fetch_range(repo, filename, 0, size - 1, revision=revision, token=token)
    if total is None:
        if len(data) >= size:
            raise HubError(f"{source}: the server did not tell the file's size (no Content-Range)")
        total = len(data)
    while True:
        header = header_from_prefix(data, total, source)
        if header is not None:
            return header
        if len(data) >= total:
            raise GGUFError(f"{source}: the GGUF header is truncated (the file has only {total} bytes)")
        if size >= max_bytes:
            raise GGUFError(f"{source}: the GGUF header is larger than {max_bytes >> 20} MiB; not reading it")
        size = min(size * 2, max_bytes)
        more, _ = fetch_range(repo, filename, len(data), min(size, total) - 1, revision=revision, token=token)
        if not more:
            raise HubError(f"{source}: the server sent no bytes past offset {len(data)}")
        data += more


def fetch_quant_headers(
    repo: str, quant: Quant | str, *, revision: str = "main", token: str | bool | None = None
) -> list[GGUFHeader]:
    """The headers of every shard of a quant (tensor tables of split models span all shards)."""
    q = quant if isinstance(quant, Quant) else find_quant(repo, quant, revision=revision, token=token)
    return [fetch_remote_header(repo, f.path, revision=revision, token=token) for f in q.files]
