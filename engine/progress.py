"""Cancel tokens and typed progress events shared by every long-running engine operation.

Long work (download, convert, load, generate) is exposed as a generator that yields
events from here and checks a :class:`CancelToken` between steps. The GUI runs such a
generator in one worker and turns the events into Qt signals; the CLI prints them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from engine.errors import Cancelled


class CancelToken:
    """A thread-safe flag: set it from any thread, check it from the worker."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("the operation was cancelled")


@dataclass(frozen=True, slots=True)
class Progress:
    """``done`` of ``total`` units of ``stage`` (total 0 means unknown)."""

    stage: str
    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total > 0 else None
