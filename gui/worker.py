"""One generic worker: runs an engine generator on a thread of its own and turns its events into signals.

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

from PySide6.QtCore import QObject, Signal

from engine.errors import Cancelled
from engine.progress import CancelToken

GeneratorFactory = Callable[[CancelToken], Generator[Any, None, Any]]


class WorkerSignals(QObject):
    progress = Signal(object)  # the engine's event, unchanged
    result = Signal(object)  # the generator's return value
    error = Signal(object)  # the exception (a KvantError carries a user-facing message)
    cancelled = Signal()
    finished = Signal()


class GeneratorWorker:
    """Runs ``factory(cancel_token)`` to completion; progress is throttled to ``min_interval`` s."""

    def __init__(self, factory: GeneratorFactory, min_interval: float = 0.05) -> None:
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
    """Starts each worker on a new thread of its own and keeps it alive until it finishes.

    Not Qt's thread pool: its threads outlive their jobs, and a thread that has run Numba's parallel
    kernels keeps an idle OpenMP team for as long as it lives.  With more OpenMP threads alive than
    cores, GNU OpenMP stops spinning between parallel regions and every kernel pays a futex wake-up:
    a chat answer decoded at half the command line's speed.  A thread per job takes its team with it
    when the job ends, so the decode thread is the only OpenMP team (measured: benchmarks/bench_gui_chat.py).
    """

    def __init__(self) -> None:
        # a worker stays referenced until the UI thread has handled its ``finished`` signal, so its
        # queued signals (result, error, finished) are all delivered; its thread is joined by wait()
        self._running: set[GeneratorWorker] = set()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def start(self, worker: GeneratorWorker) -> GeneratorWorker:
        self._running.add(worker)
        worker.signals.finished.connect(lambda w=worker: self._running.discard(w))
        thread = threading.Thread(target=self._run, args=(worker,), name="kvant-worker", daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()
        return worker

    def _run(self, worker: GeneratorWorker) -> None:
        try:
            worker.run()
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    @property
    def active(self) -> int:
        """Workers whose thread is still running."""
        with self._lock:
            return len(self._threads)

    def cancel_all(self) -> None:
        for w in list(self._running):
            w.cancel()

    def wait(self, msecs: int = -1) -> bool:
        """Wait until every worker has finished (at most ``msecs`` ms; -1: no limit); True if they have."""
        deadline = None if msecs < 0 else time.monotonic() + msecs / 1000
        while True:
            with self._lock:
                threads = list(self._threads)
            if not threads:
                return True
            for t in threads:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                t.join(left)
                if deadline is not None and time.monotonic() >= deadline:
                    with self._lock:
                        return not self._threads
