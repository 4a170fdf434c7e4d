"""Decode speed of a chat answer in the desktop app next to the same answer on the command line.

The app runs each answer on a worker thread while the UI thread renders the stream; the command
line runs it on the main thread.  Both should decode at the same speed.  Runs the Chat page
offscreen with the default model (greedy, 64 tokens, three answers in new chats), then the same
prompt through ``Model.chat`` on the main thread as often.

Run:  NUMBA_NUM_THREADS=2 python benchmarks/bench_gui_chat.py [--rounds 3] [--tokens 64]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

PROMPT = "The history of the Roman Empire"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()

    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    app = QApplication([])  # noqa: F841  (kept alive for the page)
    import engine
    from engine.library import DEFAULT_MODEL_ID, Library
    from engine.paths import KvantPaths
    from gui.pages.chat import ChatPage
    from gui.worker import WorkerPool

    entry = Library(KvantPaths.default().library_file).get(DEFAULT_MODEL_ID)
    if entry is None:
        sys.exit("the default model is not in the library: run `python main.py setup` first")

    def wait(cond, timeout: float = 600.0) -> None:
        end = time.monotonic() + timeout
        loop, timer = QEventLoop(), QTimer()
        timer.setInterval(20)
        timer.timeout.connect(lambda: (cond() or time.monotonic() > end) and loop.quit())
        timer.start()
        if not cond():
            loop.exec()
        timer.stop()

    engine.prepare_runtime()
    workers = WorkerPool()
    home = Path(tempfile.mkdtemp(prefix="kvant-bench-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    page = ChatPage(KvantPaths(home).ensure(), workers)
    page.resize(1000, 700)
    page.show()
    page.set_entries([entry])
    page.set_gpu_layers(0)
    page.ctx_spin.setValue(1024)
    page.temperature.setValue(0.0)
    page.max_tokens.setValue(args.tokens)

    def gui_answer() -> float:
        page.new_chat()
        page.input.setPlainText(PROMPT)
        page.send()
        wait(lambda: page.model is not None)
        wait(lambda: page.is_generating, 10)
        wait(lambda: not page.is_generating)
        return page._last_event.decode_tok_s

    def cli_answer() -> float:
        last = None
        for ev in page.model.chat(
            [{"role": "user", "content": PROMPT}], max_tokens=args.tokens, temperature=0.0
        ):
            last = ev
        page.model.reset()
        return last.decode_tok_s

    gui_answer()  # load the model, first compile/caches
    # the app's answers first: once the main thread has run the kernels it keeps an OpenMP team,
    # which the app never does (its UI thread runs no kernels) and which would slow the workers
    gui = []
    for _ in range(args.rounds):
        gui.append(gui_answer())
        workers.wait(30000)
    cli = [cli_answer() for _ in range(args.rounds)]
    workers.cancel_all()
    workers.wait(30000)
    page.shutdown()
    g, c = max(gui), max(cli)
    print(f"decode tok/s, app (worker thread): {', '.join(f'{v:.1f}' for v in gui)}  best {g:.1f}")
    print(f"decode tok/s, main thread:         {', '.join(f'{v:.1f}' for v in cli)}  best {c:.1f}")
    print(f"app / main thread: {g / c:.2f}")
    sys.stdout.flush()
    os._exit(0)  # skip Qt's teardown of a page whose model was closed above


if __name__ == "__main__":
    main()
