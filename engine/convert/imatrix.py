"""Importance matrices in llama.cpp's formats.

GGUF format (``llama-imatrix`` today): metadata ``general.type = "imatrix"``,
``imatrix.datasets`` (array of strings), ``imatrix.chunk_count`` and ``imatrix.chunk_size``
(u32); per weight tensor ``W`` two F32 tensors, sorted by name: ``W.in_sum2`` (ne = [n_per_row,
n_mat]: the sum over tokens of the squared activations entering each column) and ``W.counts``
(ne = [1, n_mat]: how many tokens were summed, per matrix; n_mat > 1 for stacked experts).
The per-column importance llama-quantize uses is ``in_sum2 / counts`` (1 where a count is 0).

Legacy ``.dat`` format (read only): ``i32 n_entries``, then per entry ``i32 len, name, i32 ncall,
i32 nval, f32 values[nval]``; optionally ``i32 last_call, i32 len, dataset``. Values are stored
scaled by ncall and divided back on loading (as llama-quantize does).

:func:`compute_imatrix` computes one with Kvant's engine exactly as ``llama-imatrix`` does
(tools/imatrix/imatrix.cpp), through the models' activation hook (``net.observer(weight_name, x)``
with the f32 input of each weight's mat-mul): chunks of ``n_ctx`` tokens with BOS, per weight
``blk.*`` the sum over tokens of ``x²`` per column and the token count. Over the default calibration
text (:data:`DEFAULT_CALIBRATION_TEXT`) unless told otherwise. Matches llama.cpp's sums to ≤ 1e-4 in the
first layer and to a median of ~2e-2 in deep ones, where the two forward passes have drifted apart
(tests/test_imatrix_compute.py); quantizing with either imatrix gives the same weighted error to 0.05%.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

from engine.errors import GGUFError, KvantError
from engine.eval import stats
from engine.gguf import MetadataValue, TensorSpec, open_gguf, write_gguf_sync
from engine.progress import CancelToken, Progress

KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUFFIX_SUMS = ".in_sum2"
SUFFIX_COUNTS = ".counts"


@dataclass
class ImatrixEntry:
    sums: np.ndarray  # float32 (n_mat, n_per_row)
    counts: np.ndarray  # float32 (n_mat,)

    def values(self) -> np.ndarray:
        """The flattened per-column importance (n_mat * n_per_row), as llama-quantize computes it."""
        out = np.ones_like(self.sums, dtype=np.float32)
        for j, c in enumerate(self.counts):
            c = np.float32(c)
            if c > 0:
                out[j] = self.sums[j] / c
        return out.reshape(-1)


@dataclass
class Imatrix:
    entries: dict[str, ImatrixEntry] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False

    def values(self, name: str) -> np.ndarray | None:
        e = self.entries.get(name)
        return None if e is None else e.values()

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)


def load_imatrix(path: str | Path) -> Imatrix:
    """Load an imatrix in GGUF or legacy .dat format (detected from the magic)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as err:
        raise KvantError(f"{path}: cannot read the importance matrix: {err.strerror or err}") from None
    if magic == b"GGUF":
        return _load_gguf(path)
    return _load_legacy(path)


def _load_gguf(path: Path) -> Imatrix:
    with open_gguf(path) as m:
        im = Imatrix(
            datasets=list(m.get(KEY_DATASETS, []) or []),
            chunk_count=int(m.get(KEY_CHUNK_COUNT, 0) or 0),
            chunk_size=int(m.get(KEY_CHUNK_SIZE, 0) or 0),
        )
        names = {t.name for t in m.tensors}
        for t in m.tensors:
            if not t.name.endswith(SUFFIX_SUMS):
                continue
            base = t.name[: -len(SUFFIX_SUMS)]
            if base + SUFFIX_COUNTS not in names:
                raise GGUFError(f"{path}: imatrix entry {base} has sums but no counts")
            sums = _f32(m, t.name)
            counts = _f32(m, base + SUFFIX_COUNTS).reshape(-1)
            n_mat = counts.size
            if n_mat == 0 or sums.size % n_mat:
                raise GGUFError(f"{path}: imatrix entry {base}: {sums.size} sums do not fit {n_mat} matrices")
            im.entries[base] = ImatrixEntry(sums.reshape(n_mat, -1).copy(), counts.copy())
    if not im.entries:
        raise GGUFError(f"{path}: not an importance matrix (no *{SUFFIX_SUMS} tensors)")
    return im


def _f32(m, name: str) -> np.ndarray:
    t = m.tensor(name)
    if t.type != T.F32:
        raise GGUFError(f"imatrix tensor {name} is {t.type_name}, expected F32")
    return np.asarray(m.array(name), dtype=np.float32)


def _load_legacy(path: Path) -> Imatrix:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise GGUFError(f"{path}: truncated legacy imatrix at byte {pos}")
        vals = struct.unpack_from(fmt, data, pos)
        pos += size
        return vals

    (n,) = take("<i")
    if n < 1 or n > len(data) // 12:
        raise GGUFError(f"{path}: not an importance matrix (bad entry count {n})")
    im = Imatrix(legacy=True)
    for _ in range(n):
        (ln,) = take("<i")
        if ln <= 0 or pos + ln > len(data):
            raise GGUFError(f"{path}: bad name length {ln} at byte {pos}")
        name = data[pos : pos + ln].decode("utf-8", errors="replace")
        pos += ln
        ncall, nval = take("<ii")
        if nval < 1 or pos + 4 * nval > len(data):
            raise GGUFError(f"{path}: bad value count {nval} for {name}")
        vals = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        # legacy semantics: value = stored / ncall (stored as is when ncall == 0)
        if ncall > 0:
            im.entries[name] = ImatrixEntry(vals.reshape(1, -1).copy(), np.array([ncall], np.float32))
        else:
            im.entries[name] = ImatrixEntry(vals.reshape(1, -1).copy(), np.array([1.0], np.float32))
    if pos + 4 <= len(data):
        (im.chunk_count,) = take("<i")
        if pos + 4 <= len(data):
            (ln,) = take("<i")
            if 0 < ln <= len(data) - pos:
                im.datasets = [data[pos : pos + ln].decode("utf-8", errors="replace")]
    return im


def save_imatrix(im: Imatrix, path: str | Path) -> Path:
    """Write ``im`` in llama.cpp's GGUF imatrix format."""
    meta = {
        "general.type": MetadataValue(V.STRING, "imatrix"),
        KEY_DATASETS: MetadataValue(V.ARRAY, list(im.datasets), V.STRING),
        KEY_CHUNK_COUNT: MetadataValue(V.UINT32, int(im.chunk_count)),
        KEY_CHUNK_SIZE: MetadataValue(V.UINT32, int(im.chunk_size)),
    }
    specs: list[TensorSpec] = []
    data: dict[str, np.ndarray] = {}
    for name in sorted(im.entries):
        e = im.entries[name]
        sums = np.ascontiguousarray(e.sums, dtype=np.float32)
        counts = np.ascontiguousarray(e.counts, dtype=np.float32).reshape(-1)
        specs.append(TensorSpec(name + SUFFIX_SUMS, int(T.F32), (sums.shape[1], sums.shape[0])))
        specs.append(TensorSpec(name + SUFFIX_COUNTS, int(T.F32), (1, counts.size)))
        data[name + SUFFIX_SUMS] = sums
        data[name + SUFFIX_COUNTS] = counts
    return write_gguf_sync(path, meta, specs, lambda s: data[s.name])[0]


# --- computing one: llama-imatrix with Kvant's engine ----------------------------------------------

# The calibration text Kvant ships (public domain; see resources/calibration/README.md): letters D to H of
# The Devil's Dictionary, disjoint from the evaluation text (letters A to C).
DEFAULT_CALIBRATION_TEXT = (
    Path(__file__).resolve().parents[2] / "resources" / "calibration" / "devils-dictionary-d-h.txt"
)
MIN_CTX = 8
# imatrix.cpp's collector ignores a mat-mul over fewer rows than this ("src1->ne[1] < 16").
MIN_ROWS = 16
# llama-imatrix's batching (common_params' n_batch and n_ubatch defaults): it packs
# max(1, N_BATCH // n_ctx) chunks into one batch, which llama.cpp evaluates in micro-batches of N_UBATCH.
LLAMA_N_BATCH = 2048
LLAMA_N_UBATCH = 512


@dataclass(frozen=True, slots=True)
class ImatrixProgress(Progress):
    """Progress of :func:`compute_imatrix`: ``stage`` is ``"load"``, ``"compute"`` (``done``/``total``
    count chunks) or ``"save"``. ``ppl`` is the running perplexity over the chunks so far (as
    llama-imatrix prints it), ``eta_s`` the estimated seconds left."""

    tokens_per_s: float | None = None
    eta_s: float | None = None
    ppl: float | None = None


@dataclass(frozen=True)
class ImatrixResult:
    """An importance matrix computed over ``n_chunks`` chunks of ``n_ctx`` tokens (``path``: where it
    was saved, if it was); ``ppl`` is the model's perplexity on the same chunks (None when not asked)."""

    imatrix: Imatrix
    path: Path | None
    n_ctx: int
    n_chunks: int
    n_tokens_text: int
    ppl: float | None
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.n_chunks * self.n_ctx / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": None if self.path is None else str(self.path),
            "n_ctx": self.n_ctx,
            "n_chunks": self.n_chunks,
            "n_tokens_text": self.n_tokens_text,
            "n_entries": len(self.imatrix),
            "datasets": list(self.imatrix.datasets),
            "ppl": self.ppl,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
        }


def counted_positions(n_ctx: int, alone: bool) -> np.ndarray:
    """Which positions of a chunk llama-imatrix adds to the sums (a bool mask of ``n_ctx``).

    Its collector skips every mat-mul over fewer than :data:`MIN_ROWS` tokens, and llama.cpp runs a
    batch in micro-batches of :data:`LLAMA_N_UBATCH`. A chunk evaluated ``alone`` in its batch
    (always when ``n_ctx > LLAMA_N_BATCH // 2``; otherwise only a last chunk left alone in its
    batch) is cut into batches of ``min(LLAMA_N_BATCH, n_ctx)`` tokens and those into micro-batches
    of 512 from its start, so a short tail micro-batch (e.g. the last 6 tokens with ``n_ctx=1030``)
    is not counted. Chunks that share a batch are split evenly across sequences; for a few odd
    context sizes (such as 515) that may leave a tail micro-batch under 16 tokens, which llama.cpp
    skips and this does not model (all positions count).
    """
    mask = np.ones(n_ctx, dtype=bool)
    if not alone:
        return mask
    n_batch = min(LLAMA_N_BATCH, n_ctx)
    for b0 in range(0, n_ctx, n_batch):
        b1 = min(b0 + n_batch, n_ctx)
        for u0 in range(b0, b1, LLAMA_N_UBATCH):
            u1 = min(u0 + LLAMA_N_UBATCH, b1)
            if u1 - u0 < MIN_ROWS:
                mask[u0:u1] = False
    return mask


def _alone(i: int, n_chunks: int, n_ctx: int) -> bool:
    n_seq = max(1, LLAMA_N_BATCH // n_ctx)
    return n_seq == 1 or (i == n_chunks - 1 and n_chunks % n_seq == 1)


class _Collector:
    """The engine's activation observer: ``IMatrixCollector::collect_imatrix`` for dense mat-muls.

    Per weight it sums ``x²`` per column over the counted tokens (in float64; llama.cpp sums in float32,
    which differs by far less than the forward passes do) and counts the tokens. Like llama-imatrix it
    collects the weights named ``blk.*``, and ``output.weight`` only with ``process_output``: a tied
    output (``token_embd.weight``, Gemma's) is never collected, as in llama.cpp.
    """

    def __init__(self, process_output: bool) -> None:
        self.process_output = process_output
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self._cursor: dict[str, int] = {}
        self._mask = np.ones(0, dtype=bool)

    def wanted(self, name: str) -> bool:
        return name.startswith("blk.") or (self.process_output and name == "output.weight")

    def start_chunk(self, mask: np.ndarray) -> None:
        self._mask = mask
        self._cursor.clear()

    def __call__(self, name: str, x: np.ndarray) -> None:
        if not self.wanted(name):
            return
        x = np.asarray(x)
        if x.ndim != 2:
            raise KvantError(
                f"activations of {name} have shape {x.shape}; only dense mat-muls "
                "(tokens, inputs) are supported"
            )
        c0 = self._cursor.get(name, 0)
        n = x.shape[0]
        if c0 + n > self._mask.size:
            raise KvantError(
                f"the engine reported {c0 + n} rows of activations for {name} "
                f"in a {self._mask.size}-token chunk"
            )
        self._cursor[name] = c0 + n
        keep = self._mask[c0 : c0 + n]
        if not keep.all():
            x = x[keep]
        if x.shape[0] == 0:
            return
        x64 = x.astype(np.float64)
        s = np.einsum("ij,ij->j", x64, x64)
        acc = self.sums.get(name)
        if acc is None:
            self.sums[name] = s
        elif acc.shape != s.shape:
            raise KvantError(f"inconsistent activation size for {name} ({s.size} vs {acc.size})")
        else:
            acc += s
        self.counts[name] = self.counts.get(name, 0) + x.shape[0]

    def check_finite(self) -> None:
        for name, s in self.sums.items():
            if not np.isfinite(s).all():
                raise KvantError(f"non-finite activations in {name}: the model produced inf or NaN")

    def imatrix(self, n_ctx: int, datasets: list[str]) -> Imatrix:
        im = Imatrix(datasets=datasets, chunk_size=n_ctx)
        for name in sorted(self.sums):
            im.entries[name] = ImatrixEntry(
                self.sums[name].astype(np.float32).reshape(1, -1),
                np.array([self.counts[name]], dtype=np.float32),
            )
        # llama-imatrix's m_last_chunk: the largest count in whole chunks
        im.chunk_count = max(self.counts.values(), default=0) // n_ctx
        return im


def _check_cancel(cancel: CancelToken | None) -> None:
    if cancel is not None:
        cancel.raise_if_cancelled()


def _calibration(text: Any, dataset: str | None) -> tuple[str | None, np.ndarray | None, list[str]]:
    """(text, tokens, datasets) from ``text``: None (the default calibration text), a Path (a text
    file), a str (the text itself) or a sequence of token ids (used as they are)."""
    if text is None:
        text = DEFAULT_CALIBRATION_TEXT
        dataset = dataset or text.name
    if isinstance(text, Path):
        try:
            body = text.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise KvantError(f"{text}: cannot read the calibration text: {err}") from None
        return body, None, [dataset or str(text)]
    if isinstance(text, str):
        return text, None, [dataset] if dataset else []
    tokens = np.asarray(text)
    if tokens.ndim != 1 or (tokens.size and not np.issubdtype(tokens.dtype, np.integer)):
        raise KvantError(
            "the calibration input must be a text, a text file's Path or a 1-D sequence of token ids"
        )
    return None, tokens.astype(np.int64), [dataset] if dataset else []


def _open(model: Any, n_ctx: int, threads: int | None, cancel: CancelToken | None) -> tuple[Any, bool]:
    """An open Model as is, or open a GGUF path; -> (model, we_opened)."""
    if hasattr(model, "net") and hasattr(model, "tokenize"):
        if model.n_ctx < n_ctx:
            raise KvantError(
                f"the model was opened with a context of {model.n_ctx} tokens, "
                f"less than the {n_ctx} asked for"
            )
        return model, False
    from engine.runtime.model import open_model

    return open_model(Path(model), n_ctx=n_ctx, threads=threads, cancel=cancel), True


def _bos(model: Any) -> int | None:
    """The BOS id put at the start of every chunk, or None where the vocabulary adds none."""
    tok = model.tokenizer
    if getattr(tok, "add_eos", False):
        raise KvantError("this model's tokenizer appends EOS to every text; llama-imatrix refuses that")
    return tok.bos_id if getattr(tok, "add_bos", False) else None


def compute_imatrix(
    model: Any,
    text: str | Path | Sequence[int] | np.ndarray | None = None,
    out: str | Path | None = None,
    *,
    n_ctx: int = 512,
    chunks: int | None = None,
    process_output: bool = False,
    compute_ppl: bool = True,
    dataset: str | None = None,
    threads: int | None = None,
    cancel: CancelToken | None = None,
) -> Generator[ImatrixProgress, None, ImatrixResult]:
    """Compute an importance matrix with Kvant's engine, exactly as ``llama-imatrix -c n_ctx`` does.

    ``model``: a GGUF path or an open :class:`~engine.runtime.model.Model`. ``text``: the calibration
    text (None: :data:`DEFAULT_CALIBRATION_TEXT`; a Path: a text file; a str: the text; token ids:
    used as they are). The text is tokenized with BOS (no special-token parsing) and cut into
    ``min(chunks, len // n_ctx)`` chunks of ``n_ctx`` tokens (at least two chunks' worth are needed);
    each chunk is evaluated from an empty cache with its first token replaced by BOS, and for every
    weight ``blk.*`` (plus ``output.weight`` with ``process_output``) the squared activations entering
    its mat-mul are summed per column over the chunk's tokens (see :func:`counted_positions`) and the
    tokens counted. ``compute_ppl``: also the perplexity over each chunk's second half, as
    llama-imatrix prints it. ``out``: save the result there in llama.cpp's GGUF imatrix format.

    A generator of :class:`ImatrixProgress` (one per chunk) returning an :class:`ImatrixResult`;
    ``cancel`` is honoured between chunks (raising :class:`~engine.errors.Cancelled`, saving nothing).
    """
    t0 = time.perf_counter()
    _check_cancel(cancel)
    if n_ctx < MIN_CTX:
        raise KvantError(f"the context must be at least {MIN_CTX} tokens, not {n_ctx}")
    if chunks is not None and chunks < 1:
        raise KvantError(f"the number of chunks must be at least 1, not {chunks}")
    body, tokens, datasets = _calibration(text, dataset)
    where = getattr(model, "path", model)
    name = Path(where).name if isinstance(where, str | Path) else type(model).__name__
    yield ImatrixProgress("load", 0, 0, f"loading {name}")
    m, opened = _open(model, n_ctx, threads, cancel)
    try:
        net = m.net
        if not hasattr(net, "observer"):
            raise KvantError(
                f"{type(net).__name__} has no activation hook: Kvant cannot compute an importance matrix "
                "for this architecture yet"
            )
        if tokens is None:
            tokens = np.asarray(m.tokenize(body, add_bos=True), dtype=np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= m.n_vocab):
            raise KvantError(f"token ids must be in 0..{m.n_vocab - 1}")
        if len(tokens) < 2 * n_ctx:
            raise KvantError(
                f"the calibration text is {len(tokens)} tokens; llama-imatrix with a context of {n_ctx} "
                f"needs at least {2 * n_ctx}: use a longer text or a smaller context"
            )
        n = len(tokens) // n_ctx if chunks is None else min(chunks, len(tokens) // n_ctx)
        bos = _bos(m)
        first = n_ctx // 2
        col = _Collector(process_output)
        nll: list[np.ndarray] = []
        ppl: float | None = None
        yield ImatrixProgress("compute", 0, n, f"imatrix: chunk 0/{n}")
        previous = net.observer
        net.observer = col
        try:
            t_start = time.perf_counter()
            for i in range(n):
                _check_cancel(cancel)
                ids = tokens[i * n_ctx : (i + 1) * n_ctx].copy()
                if bos is not None:
                    ids[0] = bos
                col.start_chunk(counted_positions(n_ctx, _alone(i, n, n_ctx)))
                logits = m.logits(ids.tolist())
                col.check_finite()
                if compute_ppl:
                    targets = tokens[i * n_ctx + first + 1 : (i + 1) * n_ctx]
                    nll.append(stats.token_nll(logits[first : n_ctx - 1], targets))
                    ppl = math.exp(float(np.concatenate(nll).mean()))
                del logits
                elapsed = time.perf_counter() - t_start
                tps = (i + 1) * n_ctx / elapsed if elapsed > 0 else None
                msg = f"imatrix: chunk {i + 1}/{n}" + (f", PPL {ppl:.4f}" if ppl is not None else "")
                yield ImatrixProgress(
                    "compute", i + 1, n, msg, tokens_per_s=tps, eta_s=elapsed / (i + 1) * (n - i - 1), ppl=ppl
                )
        finally:
            net.observer = previous
    finally:
        if opened:
            m.close()
    im = col.imatrix(n_ctx, datasets)
    path = None
    if out is not None:
        _check_cancel(cancel)
        yield ImatrixProgress("save", 0, 1, f"saving {Path(out).name}")
        path = save_imatrix(im, out)
        yield ImatrixProgress("save", 1, 1, f"saved {path.name}")
    return ImatrixResult(im, path, n_ctx, n, len(tokens), ppl, time.perf_counter() - t0)


def compute_imatrix_sync(
    *args: Any, progress: Callable[[ImatrixProgress], None] | None = None, **kwargs: Any
) -> ImatrixResult:
    """Run :func:`compute_imatrix` to completion, passing each event to ``progress`` if given."""
    gen = compute_imatrix(*args, **kwargs)
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(ev)
