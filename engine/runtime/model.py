"""``engine.open_model``: a loaded model with its tokenizer, chat template and generation loop."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import Cancelled, ModelError
from engine.gguf import ModelInfo, model_info, open_gguf
from engine.progress import CancelToken, Progress
from engine.runtime.chat_template import ChatTemplate
from engine.runtime.generate import GenerationEvent, generate
from engine.runtime.sampling import SamplingParams
from engine.runtime.tokenizer import Tokenizer

ProgressCallback = Callable[[Progress], None]
# what a load says while Numba compiles kernels that are not in its cache yet
FIRST_COMPILE = "compiling the kernels (first run only: later loads take them from the cache)"


class Model:
    """A model ready to run: tokenize, evaluate logits, generate, chat.

    Not thread-safe for concurrent generations: one generation at a time per Model.
    """

    def __init__(
        self,
        path: Path,
        gguf: Any,
        net: Any,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        load_seconds: float,
        offload: Any = None,
        threads: int | None = None,
    ) -> None:
        self.path = path
        self._gguf = gguf
        self.net = net
        self.tokenizer = tokenizer
        self.template = template
        self.load_seconds = load_seconds
        self.info: ModelInfo = model_info(gguf)
        self._cached: list[int] = []  # the tokens in the KV cache, in order
        # engine.runtime.cuda.OffloadInfo: GPU layers, devices, or why offload is unavailable
        self.offload = offload
        # CPU threads of the kernels; Numba's setting is per calling thread, so every call sets it
        self.threads = threads or default_threads()

    # --- text ------------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self.net.n_ctx

    @property
    def n_vocab(self) -> int:
        return self.net.n_vocab

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos, special=special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    # --- evaluation --------------------------------------------------------------------------
    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits (len(ids), n_vocab) float32 for the whole sequence, from an empty cache."""
        ids = [int(t) for t in ids]
        if not ids:
            raise ModelError("logits() needs at least one token")
        if len(ids) > self.n_ctx:
            raise ModelError(f"{len(ids)} tokens do not fit in the context window of {self.n_ctx}")
        self._cached.clear()
        self.net.reset()
        self._use_threads()
        return self.net.forward(np.asarray(ids, np.int32), 0)

    def reset(self) -> None:
        self._cached.clear()
        self.net.reset()

    # --- generation ----------------------------------------------------------------------------
    def generate(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams | None = None,
        *,
        cancel: CancelToken | None = None,
        **sampling: Any,
    ) -> Iterator[GenerationEvent]:
        """Stream a continuation of ``prompt_ids``; keyword arguments override ``params``' fields."""
        params = _params(params, sampling)
        return self._threaded(
            generate(
                self.net,
                self.tokenizer,
                prompt_ids,
                params,
                eog_ids=self.tokenizer.eog_ids,
                stop_strings=(),
                cached_ids=self._cached,
                cancel=cancel,
            )
        )

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        text = self.template.render(list(messages), add_generation_prompt=True)
        return self.tokenizer.encode(text, add_bos=True, special=True)

    def chat(
        self,
        messages: Sequence[dict[str, str]],
        params: SamplingParams | None = None,
        *,
        cancel: CancelToken | None = None,
        **sampling: Any,
    ) -> Iterator[GenerationEvent]:
        """Answer the last user message of a conversation, streaming; stops at end of turn."""
        params = _params(params, sampling)
        return self._threaded(
            generate(
                self.net,
                self.tokenizer,
                self.chat_prompt(messages),
                params,
                eog_ids=self.tokenizer.eog_ids,
                stop_strings=self.template.stop_strings,
                cached_ids=self._cached,
                cancel=cancel,
            )
        )

    def complete(
        self,
        messages: Sequence[dict[str, str]],
        params: SamplingParams | None = None,
        *,
        cancel: CancelToken | None = None,
        **sampling: Any,
    ) -> Iterator[GenerationEvent]:
        """Continue a conversation written as one plain text (:func:`completion_text`), without the
        chat template: what a base model (``info.base_model``) is for.  Stops at end of text."""
        return self.generate(self.tokenize(completion_text(messages)), params, cancel=cancel, **sampling)

    def _use_threads(self) -> None:
        import numba

        numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))

    def _threaded(self, events: Iterator[GenerationEvent]) -> Iterator[GenerationEvent]:
        """``events``, run with this model's thread count on whichever thread consumes them."""
        self._use_threads()
        yield from events

    def close(self) -> None:
        gpu = getattr(self.net, "gpu", None)
        if gpu is not None:
            gpu.close()  # device memory goes back when the arrays are dropped
        self._gguf.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def completion_text(messages: Sequence[dict[str, str]]) -> str:
    """A conversation as one plain text for a model to continue: every turn's content in order
    (the system prompt first), the model's turns exactly as it wrote them (they continue the text
    before them), any other turn on a new line unless the text so far ends in whitespace."""
    text = ""
    for m in messages:
        content = m["content"]
        if m["role"] != "assistant" and text and not text[-1].isspace():
            text += "\n"
        text += content
    if not text:
        raise ModelError("there is no text to continue")
    return text


def default_threads() -> int:
    """Threads for the CPU kernels: the physical cores (as llama.cpp chooses; decode is bound by memory
    bandwidth, and SMT siblings spinning at OpenMP barriers only take the CPU from the app), at most
    Numba's pool (``NUMBA_NUM_THREADS``, which also lets a user choose)."""
    import os

    import numba
    import psutil

    if os.environ.get("NUMBA_NUM_THREADS"):
        return numba.config.NUMBA_NUM_THREADS
    physical = psutil.cpu_count(logical=False) or numba.config.NUMBA_NUM_THREADS
    return max(1, min(physical, numba.config.NUMBA_NUM_THREADS))


def _params(params: SamplingParams | None, overrides: dict[str, Any]) -> SamplingParams:
    base = params or SamplingParams()
    return dataclasses.replace(base, **overrides) if overrides else base


def prepare_runtime() -> None:
    """Import the inference runtime and finish Numba's lazy set-up (its extra typing registries, loaded
    on the first compile or cache load). Both hold the GIL for tens of milliseconds; an app calls this in
    a background thread at start-up, while nothing is loading, so that a later :func:`open_model` on a
    worker thread never stalls the UI thread. Idempotent and cheap after the first call."""
    from numba.core.registry import cpu_target

    import engine.models  # noqa: F401  (Numba and the kernels)

    cpu_target.target_context.refresh()


def open_model(
    path: str | Path,
    *,
    n_ctx: int = 4096,
    n_gpu_layers: int | str = 0,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Model:
    """Open a GGUF model for inference (weights stay memory-mapped).

    ``progress`` receives :class:`Progress` events while loading; ``cancel`` stops the load
    between steps with :class:`Cancelled`.

    ``n_gpu_layers``: how many layers run on NVIDIA GPUs (the last ones; with every layer, the
    output layer too when it fits), ``"all"``, or ``"auto"`` (the most that fit in free VRAM with
    the planner's margin).  Without numba-cuda (``pip install 'kvant[cuda]'``), a GPU or a recent
    enough driver the model runs on the CPU; ``Model.offload`` (:class:`engine.runtime.cuda.OffloadInfo`)
    says what was chosen or why offload is unavailable, and the progress events say it too.
    """
    from engine._jit import on_compile
    from engine.models import load_model  # heavy: Numba kernels
    from engine.runtime.cuda.offload import OffloadInfo, offload_model, parse_gpu_layers

    requested = parse_gpu_layers(n_gpu_layers)
    if threads is not None and threads < 1:
        raise ModelError(f"threads must be at least 1, not {threads}")
    threads = threads or default_threads()
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    t0 = time.perf_counter()
    steps = ["reading the header", "tokenizer", "weights and kernels", "ready"]
    if requested != 0:
        steps.insert(3, "GPU offload")

    def notify(i: int, message: str | None = None) -> None:
        if progress is not None:
            progress(Progress("load", i, len(steps) - 1, message or steps[i]))

    def step(i: int, message: str | None = None) -> None:
        if cancel is not None and cancel.cancelled:
            raise Cancelled("loading the model was cancelled")
        notify(i, message)

    path = Path(path)
    step(0)
    gguf = open_gguf(path)
    try:
        step(1)
        tokenizer = Tokenizer.from_gguf(gguf)
        template = ChatTemplate.from_gguf(gguf)
        step(2)
        with on_compile(lambda: notify(2, FIRST_COMPILE)):
            net = load_model(gguf, n_ctx=n_ctx)
        offload = OffloadInfo(0, int(getattr(getattr(net, "params", None), "n_layer", 0)))
        if requested != 0:
            step(3)
            offload = offload_model(net, gguf, requested, n_ctx, log=lambda m: step(3, m))
            step(3, offload.message())
        step(len(steps) - 1)
    except BaseException:
        gguf.close()
        raise
    return Model(path, gguf, net, tokenizer, template, time.perf_counter() - t0, offload, threads)
