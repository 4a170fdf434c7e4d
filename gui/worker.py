"""One generic worker: runs an engine generator on Qt's thread pool and turns its events into signals.

The engine's long operations are generators that yield progress events, return a result and
honour a :class:`CancelToken`. :class:`GeneratorWorker` runs such a generator off the UI thread;
the UI connects to ``progress``, ``result``, ``error``, ``cancelled`` and ``finished``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from engine.errors import Cancelled
from engine.progress import CancelToken

GeneratorFactory = Callable[[CancelToken], Generator[Any, None, Any]]


class WorkerSignals(QObject):
    progress = Signal(object)  # the engine's event, unchanged
    result = Signal(object)  # the generator's return value
    error = Signal(object)  # the exception (a KvantError carries a user-facing message)
    cancelled = Signal()
    finished = Signal()


class GeneratorWorker(QRunnable):
    """Runs ``factory(cancel_token)`` to completion; progress is throttled to ``min_interval`` s."""

    def __init__(self, factory: GeneratorFactory, min_interval: float = 0.05) -> None:
        super().__init__()
        self.factory = factory
        self.token = CancelToken()
        self.signals = WorkerSignals()
        self.min_interval = min_interval

    def cancel(self) -> None:
        self.token.cancel()

    def run(self) -> None:
        sig = self.signals
        last = 0.0
        gen = None
        try:
            gen = self.factory(self.token)
            while True:
                try:
                    event = next(gen)
                except StopIteration as stop:
                    sig.result.emit(stop.value)
                    break
                now = time.monotonic()
                if now - last >= self.min_interval:
                    last = now
                    sig.progress.emit(event)
                if self.token.cancelled:
                    raise Cancelled("the operation was cancelled")
        except Cancelled:
            sig.cancelled.emit()
        except Exception as err:  # every failure reaches the UI as a signal, never a crash
            sig.error.emit(err)
        finally:
            if gen is not None:
                gen.close()
            sig.finished.emit()


class WorkerPool:
    """Starts workers and keeps them alive until they finish."""

    def __init__(self, pool: QThreadPool | None = None) -> None:
        self.pool = pool or QThreadPool.globalInstance()
        self._running: set[GeneratorWorker] = set()

    def start(self, worker: GeneratorWorker) -> GeneratorWorker:
        self._running.add(worker)
        worker.signals.finished.connect(lambda w=worker: self._running.discard(w))
        self.pool.start(worker)
        return worker

    def cancel_all(self) -> None:
        for w in list(self._running):
            w.cancel()

    def wait(self, msecs: int = -1) -> bool:
        return self.pool.waitForDone(msecs)
