"""One generic worker: runs an engine generator on Qt's thread pool and turns its events into signals.

The engine's long operations are generators that yield progress events, return a result and
honour a :class:`CancelToken`. :class:`GeneratorWorker` runs such a generator off the UI thread;
the UI connects to ``progress``, ``result``, ``error``, ``cancelled`` and ``finished``.
"""

from __future__ import annotations

import contextlib
import queue
import threading
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
                    _emit(sig.result, stop.value)
                    break
                now = time.monotonic()
                if now - last >= self.min_interval:
                    last = now
                    _emit(sig.progress, event)
                if self.token.cancelled:
                    raise Cancelled("the operation was cancelled")
        except Cancelled:
            _emit(sig.cancelled)
        except Exception as err:  # every failure reaches the UI as a signal, never a crash
            _emit(sig.error, err)
        finally:
            if gen is not None:
                gen.close()
            _emit(sig.finished)


def _emit(signal: Any, *args: Any) -> None:
    """Emit, unless Qt already deleted the receiver's side (the app is shutting down)."""
    with contextlib.suppress(RuntimeError):
        signal.emit(*args)


def callback_generator(
    call: Callable[[Callable[[Any], None]], Any], token: CancelToken, poll: float = 0.05
) -> Generator[Any, None, Any]:
    """Turn a blocking call that reports through a callback into a generator of its events.

    ``call(report)`` runs on a helper thread; every ``report(event)`` is yielded here, in order,
    and the call's return value is returned (its exception raised). A cancel stops waiting at
    once; a result that still arrives afterwards is closed if it has ``close()``.
    """
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    abandoned = threading.Event()
    lock = threading.Lock()

    def target() -> None:
        try:
            value = call(lambda event: events.put(("event", event)))
        except BaseException as err:  # handed to the generator, raised there
            events.put(("error", err))
            return
        with lock:
            if not abandoned.is_set():
                events.put(("result", value))
                return
        _close(value)

    thread = threading.Thread(target=target, name="kvant-callback", daemon=True)
    thread.start()
    try:
        while True:
            try:
                kind, value = events.get(timeout=poll)
            except queue.Empty:
                token.raise_if_cancelled()
                continue
            if kind == "event":
                yield value
            elif kind == "error":
                raise value
            else:
                return value
    finally:
        with lock:  # a result not handed out (cancelled, closed early) is closed, never leaked
            abandoned.set()
            leftovers = []
            while not events.empty():
                leftovers.append(events.get_nowait())
        for kind, value in leftovers:
            if kind == "result":
                _close(value)


def _close(value: Any) -> None:
    close = getattr(value, "close", None)
    if callable(close):
        close()


class WorkerPool:
    """Starts workers and keeps them alive until they finish."""

    MIN_THREADS = 8  # downloads and a chat run for minutes; quick jobs must not queue behind them

    def __init__(self, pool: QThreadPool | None = None) -> None:
        self.pool = pool or QThreadPool.globalInstance()
        if self.pool.maxThreadCount() < self.MIN_THREADS:
            self.pool.setMaxThreadCount(self.MIN_THREADS)
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
