"""The Hub connection: endpoint, offline mode, headers, errors, ranged GETs with retries.

Everything goes through huggingface_hub's own HTTP client (``get_session()``, an
``httpx2.Client`` in huggingface_hub 2.x) with its headers (``build_hf_headers``: user agent
and ``HF_TOKEN``), so ``HF_ENDPOINT``, tokens, proxies (the standard ``*_PROXY`` variables,
read by the client) and a custom client factory apply to Kvant's ranged downloads exactly as
they apply to huggingface_hub's API calls.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import random
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx2
from huggingface_hub import HfApi, constants, get_session
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import build_hf_headers

from engine import __version__
from engine.errors import KvantError
from engine.progress import CancelToken

_TRUE = {"1", "ON", "YES", "TRUE"}
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class HubError(KvantError):
    """Talking to the Hugging Face Hub failed (network, missing repo or file, server error)."""


class HubOfflineError(HubError):
    """Offline mode is on (``HF_HUB_OFFLINE=1``), so the Hub is not contacted."""


class GatedModelError(HubError):
    """The repository is gated or private and the request was not authorized."""


class HubNotFoundError(HubError):
    """The repository, revision or file does not exist on the Hub."""


class ChecksumError(HubError):
    """A downloaded file does not match the Hub's checksum; the partial file was deleted."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of one file's transfer: ``max_attempts`` consecutive failures without progress.

    Waits grow ``base_delay × 2^k`` (with jitter) up to ``max_delay``; a server's ``Retry-After``
    is honoured up to ``max_retry_after`` seconds. ``connect_timeout``/``read_timeout`` bound a
    stalled connection, which then counts as a failed attempt.
    """

    max_attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 30.0
    max_retry_after: float = 120.0
    connect_timeout: float = 15.0
    read_timeout: float = 60.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        base = min(self.max_delay, self.base_delay * 2 ** max(attempt - 1, 0))
        return base * (0.75 + 0.5 * random.random())

    def timeout(self) -> httpx2.Timeout:
        return httpx2.Timeout(self.read_timeout, connect=self.connect_timeout)


def hub_endpoint() -> str:
    """``HF_ENDPOINT`` as set now (huggingface_hub reads it once, at import), else its default."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now, else what huggingface_hub read at import."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if env is not None:
        return env.strip().upper() in _TRUE
    return constants.is_offline_mode()


def require_online(what: str) -> None:
    if is_offline():
        raise HubOfflineError(
            f"cannot {what}: Hugging Face offline mode is on (HF_HUB_OFFLINE=1); models already on "
            "disk are still found by `python main.py models --scan`"
        )


def hub_api(token: str | bool | None = None) -> HfApi:
    return HfApi(endpoint=hub_endpoint(), token=token, library_name="kvant", library_version=__version__)


def hub_headers(token: str | bool | None = None) -> dict[str, str]:
    """User agent plus ``Authorization`` from ``token``, ``HF_TOKEN`` or the saved login."""
    return build_hf_headers(token=token, library_name="kvant", library_version=__version__)


def file_url(repo: str, path: str, revision: str = "main") -> str:
    """The ``resolve`` URL of a file, as ``hf_hub_url`` builds it but on :func:`hub_endpoint`.

    (``hf_hub_url(endpoint=...)`` swaps the endpoint only when its import-time template starts
    with ``constants.ENDPOINT``; building the URL here keeps ``HF_ENDPOINT`` set later working.)
    """
    return f"{hub_endpoint()}/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"


def gated_message(repo: str) -> str:
    token = "HF_TOKEN is set but was refused" if os.environ.get("HF_TOKEN") else "HF_TOKEN is not set"
    return (
        f"this model is gated: accept its license on huggingface.co and set HF_TOKEN "
        f"({repo} answered 401/403; {token})"
    )


@contextlib.contextmanager
def hub_errors(what: str, repo: str) -> Iterator[None]:
    """Turn huggingface_hub and network exceptions into :class:`HubError` with plain messages."""
    try:
        yield
    except KvantError:
        raise
    except hf_errors.OfflineModeIsEnabled:
        raise HubOfflineError(f"cannot {what}: Hugging Face offline mode is on (HF_HUB_OFFLINE=1)") from None
    except hf_errors.GatedRepoError:
        raise GatedModelError(gated_message(repo)) from None
    except hf_errors.RepositoryNotFoundError:
        # the Hub answers 401 both for missing repos and for private ones when no token is sent
        raise HubNotFoundError(
            f"there is no model repository {repo!r} on {hub_endpoint()} (if it is private or gated, "
            "accept its license on huggingface.co and set HF_TOKEN)"
        ) from None
    except hf_errors.RevisionNotFoundError:
        raise HubNotFoundError(f"{repo}: that revision does not exist on {hub_endpoint()}") from None
    except hf_errors.EntryNotFoundError:
        raise HubNotFoundError(f"{repo}: the file does not exist ({what})") from None
    except hf_errors.HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        if status in (401, 403):
            raise GatedModelError(gated_message(repo)) from None
        raise HubError(f"cannot {what}: the Hub answered HTTP {status} ({_first_line(err)})") from None
    except httpx2.HTTPError as err:
        raise HubError(
            f"cannot {what}: {hub_endpoint()} is unreachable ({type(err).__name__}: {err})"
        ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return next((line for line in text.splitlines() if line.strip()), type(err).__name__)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


class Retryable(Exception):
    """One attempt failed in a way worth retrying (internal)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def check_status(response: httpx2.Response, repo: str, path: str) -> None:
    """Raise for a non-2xx answer to a file request: gated, missing, retryable or plain error."""
    status = response.status_code
    if status < 300:
        return
    if status in (401, 403):
        raise GatedModelError(gated_message(repo))
    if status == 404:
        raise HubNotFoundError(f"{repo} has no file {path!r} on {hub_endpoint()} (HTTP 404)")
    if status in RETRY_STATUS:
        raise Retryable(f"HTTP {status}", parse_retry_after(response.headers.get("Retry-After")))
    raise HubError(f"downloading {path} from {repo} failed: the server answered HTTP {status}")


def sleep_cancellable(seconds: float, cancel: CancelToken | None, step: float = 0.05) -> None:
    end = time.monotonic() + seconds
    while True:
        if cancel is not None:
            cancel.raise_if_cancelled()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(step, left))


@contextlib.contextmanager
def open_range(
    url: str, start: int, end: int | None, headers: dict[str, str], policy: RetryPolicy
) -> Iterator[httpx2.Response]:
    """One streamed GET of bytes ``start..end`` (inclusive; ``end`` None: to the end of the file)."""
    req_headers = dict(headers)
    req_headers["Accept-Encoding"] = "identity"  # byte offsets must be offsets in the file
    if start > 0 or end is not None:
        req_headers["Range"] = f"bytes={start}-{'' if end is None else end}"
    with get_session().stream("GET", url, headers=req_headers, timeout=policy.timeout()) as response:
        yield response


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (httpx2.TransportError, Retryable)


def with_retries(
    attempt: Callable[[], Any], policy: RetryPolicy, cancel: CancelToken | None, what: str
) -> Generator[tuple[int, float, str], None, Any]:
    """Call ``attempt`` until it succeeds, yielding ``(attempt, delay, reason)`` before each wait."""
    failures = 0
    while True:
        if cancel is not None:
            cancel.raise_if_cancelled()
        try:
            return attempt()
        except TRANSIENT_ERRORS as err:
            failures += 1
            reason = err.reason if isinstance(err, Retryable) else f"{type(err).__name__}: {err}"
            if failures >= policy.max_attempts:
                raise HubError(f"{what} failed after {failures} attempts (last: {reason})") from None
            delay = policy.delay(failures, err.retry_after if isinstance(err, Retryable) else None)
            yield failures, delay, reason
            sleep_cancellable(delay, cancel)
