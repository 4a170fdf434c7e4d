"""Downloading a quant (every shard) into Kvant's models folder: resumable, verified, atomic.

Each file is streamed to ``NAME.gguf.partial`` beside a sidecar ``NAME.gguf.partial.json``
(repo, revision, path, expected size, sha256 and ETag). A cancel (or Ctrl-C, or a crash)
keeps both; the next call resumes with an HTTP Range request after hashing what is already
there, so the sha256 checked at the end always covers the whole file. Only a complete, verified
file is renamed to its real name; a checksum mismatch deletes the partial. Connection drops,
stalls and 408/429/5xx answers are retried with exponential backoff (``Retry-After`` honoured).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from engine.errors import DiskSpaceError
from engine.hub._http import (
    TRANSIENT_ERRORS,
    ChecksumError,
    HubError,
    Retryable,
    RetryPolicy,
    check_status,
    file_url,
    hub_errors,
    hub_headers,
    open_range,
    require_online,
    sleep_cancellable,
)
from engine.hub.quants import Quant, RemoteFile
from engine.hub.remote import find_quant
from engine.library import Library, LibraryEntry, atomic_write_text, register_file
from engine.paths import KvantPaths
from engine.progress import CancelToken, Progress

PARTIAL_SUFFIX = ".partial"
SIDECAR_SUFFIX = ".partial.json"
DISK_MARGIN = 64 << 20  # keep this much free beyond the download
HASH_CHUNK = 8 << 20
SPEED_WINDOW = 5.0  # seconds the speed is averaged over


@dataclass(frozen=True, slots=True)
class DownloadProgress(Progress):
    """Bytes ``done`` of ``total`` over the whole quant; ``file_*`` for the current file.

    ``stage`` is ``"hashing"`` (checking an existing partial before resuming), ``"download"``,
    ``"retry"`` (waiting before attempt ``attempt``), ``"register"`` or ``"done"``.
    """

    file: str = ""
    file_index: int = 0  # 1-based
    file_count: int = 0
    file_done: int = 0
    file_total: int = 0
    speed: float = 0.0  # bytes/s over the last few seconds
    eta: float | None = None  # seconds left at that speed
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class PendingDownload:
    """An unfinished file download found on disk (resume it with :func:`download_quant`)."""

    repo: str
    revision: str
    path: str
    size: int
    have: int
    partial: str
    sha256: str | None = None
    blob_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Meter:
    """Transfer speed averaged over a sliding window."""

    def __init__(self, window: float = SPEED_WINDOW) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, moved: int) -> None:
        now = time.monotonic()
        self.samples.append((now, moved))
        while len(self.samples) > 2 and now - self.samples[1][0] > self.window:
            self.samples.popleft()

    def rate(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


@dataclass(slots=True)
class _Run:
    """What one download_quant call tracks (no module-level state)."""

    repo: str
    quant: Quant
    total: int
    done_before: int = 0  # bytes of files finished (or skipped) so far
    moved: int = 0  # bytes transferred over the network in this call
    meter: _Meter = dataclasses.field(default_factory=_Meter)
    last_event: float = 0.0

    def event(
        self, stage: str, rf: RemoteFile, index: int, have: int, attempt: int = 0, note: str = ""
    ) -> DownloadProgress:
        speed = self.meter.rate()
        done = self.done_before + have
        eta = (self.total - done) / speed if speed > 0 else None
        label = f"{self.quant.name} {rf.name}" + (
            f" ({index}/{len(self.quant.files)})" if len(self.quant.files) > 1 else ""
        )
        message = note or (
            f"{label}: {_mib(done)}/{_mib(self.total)} MiB"
            + (f", {speed / 2**20:.1f} MiB/s" if speed else "")
        )
        self.last_event = time.monotonic()
        return DownloadProgress(
            stage=stage,
            done=done,
            total=self.total,
            message=message,
            file=rf.path,
            file_index=index,
            file_count=len(self.quant.files),
            file_done=have,
            file_total=rf.size,
            speed=speed,
            eta=eta,
            attempt=attempt,
        )


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def model_dir(paths: KvantPaths, repo: str) -> Path:
    """Where a repository's files go: ``models/OWNER--NAME``."""
    return paths.models / repo.strip("/").replace("/", "--")


def _local_path(base: Path, repo_path: str) -> Path:
    parts = PurePosixPath(repo_path).parts
    if (
        not parts
        or any(p in ("", ".", "..") for p in parts)
        or repo_path.startswith("/")
        or "\\" in repo_path
    ):
        raise HubError(f"refusing the unsafe file name {repo_path!r} from the Hub")
    return base.joinpath(*parts)


def partial_paths(final: Path) -> tuple[Path, Path]:
    return final.with_name(final.name + PARTIAL_SUFFIX), final.with_name(final.name + SIDECAR_SUFFIX)


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds ``path`` (or its nearest existing parent)."""
    p = path
    while not p.exists() and p.parent != p:
        p = p.parent
    return shutil.disk_usage(p).free


def _hasher(rf: RemoteFile) -> tuple[Any, str | None, str]:
    """A hash object, the expected hex digest and its name: LFS sha256, else git's blob sha1."""
    if rf.sha256:
        return hashlib.sha256(), rf.sha256.lower(), "sha256"
    h = hashlib.sha1(f"blob {rf.size}\0".encode(), usedforsecurity=False)
    return h, (rf.blob_id.lower() if rf.blob_id else None), "git sha1"


def _read_sidecar(sidecar: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _discard(*files: Path) -> None:
    for f in files:
        with contextlib.suppress(OSError):
            f.unlink(missing_ok=True)


def _prepare_partial(repo: str, revision: str, rf: RemoteFile, final: Path) -> int:
    """Keep a matching partial (returns its size) or start a new one (0); writes the sidecar."""
    partial, sidecar = partial_paths(final)
    meta = _read_sidecar(sidecar) if partial.exists() else None
    have = partial.stat().st_size if partial.exists() else 0
    same = (
        meta is not None
        and meta.get("repo") == repo
        and meta.get("path") == rf.path
        and meta.get("size") == rf.size
        and meta.get("sha256") == rf.sha256
        and (rf.sha256 is not None or meta.get("blob_id") == rf.blob_id)
        and have <= rf.size
    )
    if not same:
        _discard(partial)
        have = 0
        meta = None
    record = {
        "repo": repo,
        "revision": revision,
        "path": rf.path,
        "size": rf.size,
        "sha256": rf.sha256,
        "blob_id": rf.blob_id,
        "etag": (meta or {}).get("etag"),
        "started": (meta or {}).get("started", time.time()),
    }
    final.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sidecar, json.dumps(record, indent=2))
    if not partial.exists():
        partial.touch()
    return have


def _needed_bytes(plan: list[tuple[RemoteFile, Path]]) -> int:
    need = 0
    for rf, final in plan:
        if final.exists() and final.stat().st_size == rf.size:
            continue
        partial, _ = partial_paths(final)
        have = partial.stat().st_size if partial.exists() else 0
        need += rf.size - min(have, rf.size)
    return need


def download_quant(
    repo: str,
    quant: Quant | str,
    *,
    paths: KvantPaths | None = None,
    library: Library | None = None,
    revision: str = "main",
    token: str | bool | None = None,
    cancel: CancelToken | None = None,
    policy: RetryPolicy | None = None,
    progress_interval: float = 0.1,
) -> Generator[DownloadProgress, None, LibraryEntry]:
    """Download every file of ``quant`` from ``repo``, yielding progress; returns the library entry.

    ``quant`` is a :class:`Quant` from :func:`list_quants` or a name (``"Q4_K_M"``). A cancel
    raises :class:`~engine.errors.Cancelled` and keeps the partial files: calling again resumes
    (that is how to pause). Raises :class:`DiskSpaceError` before writing anything when the disk
    is too small, :class:`GatedModelError` for gated repos, :class:`ChecksumError` for corrupt data.
    """
    require_online(f"download from {repo}")
    paths = (paths or KvantPaths.default()).ensure()
    policy = policy or RetryPolicy()
    q = quant if isinstance(quant, Quant) else find_quant(repo, quant, revision=revision, token=token)
    if not q.complete:
        raise HubError(
            f"{repo}: {q.name} is split into {q.shard_count} files but the repository has only "
            f"{len(q.files)} of them; it cannot be downloaded"
        )
    base = model_dir(paths, repo)
    plan = [(rf, _local_path(base, rf.path)) for rf in q.files]

    need = _needed_bytes(plan)
    free = free_bytes(base)
    if need + DISK_MARGIN > free:
        raise DiskSpaceError(
            f"downloading {q.name} of {repo} needs {need / 2**30:.2f} GiB more in {base} "
            f"(plus {DISK_MARGIN >> 20} MiB to spare), but only {free / 2**30:.2f} GiB are free; "
            "nothing was downloaded"
        )

    run = _Run(repo, q, q.size)
    headers = hub_headers(token)
    for index, (rf, final) in enumerate(plan, start=1):
        if cancel is not None:
            cancel.raise_if_cancelled()
        if final.exists() and final.stat().st_size == rf.size:
            partial, sidecar = partial_paths(final)
            if not partial.exists():
                _discard(sidecar)
            run.done_before += rf.size
            yield run.event("download", rf, index, 0)
            continue
        with hub_errors(f"download {rf.path} from {repo}", repo), _no_empty_partial(final):
            yield from _download_file(
                run, rf, index, final, revision, headers, cancel, policy, progress_interval
            )
        run.done_before += rf.size

    first = plan[0][1]
    yield run.event("register", q.first, 1, 0, note=f"adding {first.name} to the library")
    library = library if library is not None else Library(paths.library_file)
    known = {e.id for e in library.entries()}
    entry = register_file(library, first, source="download")
    if entry.id not in known and entry.sha256 is None and q.first.sha256:
        entry = library.add(dataclasses.replace(entry, sha256=q.first.sha256))
    yield DownloadProgress(
        stage="done",
        done=q.size,
        total=q.size,
        message=f"{q.name} of {repo} is ready: {entry.id}",
        file=q.first.path,
        file_count=len(plan),
    )
    return entry


@contextlib.contextmanager
def _no_empty_partial(final: Path) -> Iterator[None]:
    """On failure, remove a partial that got no byte (a refused request leaves nothing behind)."""
    try:
        yield
    except BaseException:
        partial, sidecar = partial_paths(final)
        with contextlib.suppress(OSError):
            if partial.exists() and partial.stat().st_size == 0:
                _discard(partial, sidecar)
        raise


def _download_file(
    run: _Run,
    rf: RemoteFile,
    index: int,
    final: Path,
    revision: str,
    headers: dict[str, str],
    cancel: CancelToken | None,
    policy: RetryPolicy,
    interval: float,
) -> Generator[DownloadProgress, None, None]:
    partial, sidecar = partial_paths(final)
    have = _prepare_partial(run.repo, revision, rf, final)
    hasher, expected, hash_name = _hasher(rf)

    if have:  # hash what is there first, so the final check covers the whole file
        hashed = 0
        with open(partial, "rb") as fh:
            while hashed < have:
                if cancel is not None:
                    cancel.raise_if_cancelled()
                block = fh.read(min(HASH_CHUNK, have - hashed))
                if not block:
                    break
                hasher.update(block)
                hashed += len(block)
                if time.monotonic() - run.last_event >= interval:
                    yield run.event("hashing", rf, index, hashed, note=f"checking the partial {rf.name}")
        have = hashed

    url = file_url(run.repo, rf.path, revision)
    failures = 0
    overflow = False
    with open(partial, "r+b") as fh:
        fh.truncate(have)
        fh.seek(have)
        while have < rf.size and not overflow:
            if cancel is not None:
                cancel.raise_if_cancelled()
            start = have
            try:
                with open_range(url, have, None, headers, policy) as response:
                    check_status(response, run.repo, rf.path)
                    _remember_etag(sidecar, response)
                    if response.status_code == 200 and have > 0:  # the server ignored the range
                        fh.seek(0)
                        fh.truncate(0)
                        hasher, expected, hash_name = _hasher(rf)
                        have = start = 0
                    elif response.status_code == 206 and _range_start(response) not in (None, have):
                        raise HubError(
                            f"{rf.path}: the server answered a request for bytes {have}- with "
                            f"{response.headers.get('Content-Range')}"
                        )
                    for chunk in response.iter_raw():
                        if cancel is not None:
                            cancel.raise_if_cancelled()
                        if not chunk:
                            continue
                        room = rf.size - have
                        if len(chunk) > room:
                            chunk = chunk[:room]
                            overflow = True
                        fh.write(chunk)
                        hasher.update(chunk)
                        have += len(chunk)
                        run.moved += len(chunk)
                        run.meter.add(run.moved)
                        if overflow:
                            break
                        if time.monotonic() - run.last_event >= interval:
                            yield run.event("download", rf, index, have)
                if have < rf.size and not overflow:
                    raise Retryable(f"the connection closed after {have} of {rf.size} bytes")
            except TRANSIENT_ERRORS as err:
                failures = 1 if have > start else failures + 1
                reason = err.reason if isinstance(err, Retryable) else f"{type(err).__name__}: {err}"
                if failures >= policy.max_attempts:
                    raise HubError(
                        f"downloading {rf.path} from {run.repo} failed after {failures} attempts "
                        f"(last: {reason}); the partial file is kept, so trying again resumes"
                    ) from None
                delay = policy.delay(failures, err.retry_after if isinstance(err, Retryable) else None)
                yield run.event(
                    "retry",
                    rf,
                    index,
                    have,
                    failures,
                    note=f"{rf.name}: {reason}; retrying in {delay:.1f} s (attempt {failures + 1} of "
                    f"{policy.max_attempts})",
                )
                fh.flush()
                sleep_cancellable(delay, cancel)
        fh.flush()
        os.fsync(fh.fileno())

    digest = hasher.hexdigest()
    if overflow or (expected is not None and digest != expected):
        _discard(partial, sidecar)
        what = (
            "is longer than the Hub says"
            if overflow
            else f"has {hash_name} {digest}, the Hub says {expected}"
        )
        raise ChecksumError(
            f"{rf.path} from {run.repo} is corrupt: it {what}; the partial download was deleted and "
            "nothing was added to the library — try again"
        )
    os.replace(partial, final)
    _discard(sidecar)
    yield run.event("download", rf, index, rf.size)


def _range_start(response: Any) -> int | None:
    value = response.headers.get("Content-Range", "")
    if not value.startswith("bytes ") or "-" not in value:
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def _remember_etag(sidecar: Path, response: Any) -> None:
    etag = response.headers.get("X-Linked-Etag") or response.headers.get("ETag")
    if not etag:
        return
    meta = _read_sidecar(sidecar)
    if meta is not None and meta.get("etag") != etag:
        meta["etag"] = etag
        atomic_write_text(sidecar, json.dumps(meta, indent=2))


def pending_downloads(paths: KvantPaths | None = None) -> list[PendingDownload]:
    """Unfinished downloads in the models folder (their sidecars), to offer resuming them."""
    paths = paths or KvantPaths.default()
    found = []
    if not paths.models.exists():
        return found
    for sidecar in sorted(paths.models.rglob("*" + SIDECAR_SUFFIX)):
        meta = _read_sidecar(sidecar)
        if not meta or not isinstance(meta.get("repo"), str) or not isinstance(meta.get("path"), str):
            continue
        partial = sidecar.with_name(sidecar.name.removesuffix(".json"))
        have = partial.stat().st_size if partial.exists() else 0
        found.append(
            PendingDownload(
                repo=meta["repo"],
                revision=str(meta.get("revision", "main")),
                path=meta["path"],
                size=int(meta.get("size") or 0),
                have=have,
                partial=str(partial),
                sha256=meta.get("sha256") if isinstance(meta.get("sha256"), str) else None,
                blob_id=meta.get("blob_id") if isinstance(meta.get("blob_id"), str) else None,
            )
        )
    return found


def discard_download(repo: str, quant: Quant, paths: KvantPaths | None = None) -> int:
    """Delete the partial files (and sidecars) of an unfinished download; returns bytes freed."""
    base = model_dir(paths or KvantPaths.default(), repo)
    freed = 0
    for rf in quant.files:
        partial, sidecar = partial_paths(_local_path(base, rf.path))
        if partial.exists():
            freed += partial.stat().st_size
        _discard(partial, sidecar)
    return freed
