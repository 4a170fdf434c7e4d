"""Base-model log-probabilities cached in llama.cpp's ``--kl-divergence-base`` file format.

A base model that does not fit in memory beside its quant is run once, writing this file; the quant is
then compared against the file. The format is llama.cpp's own (``tools/perplexity/perplexity.cpp``), so a
file written by ``llama-perplexity --kl-divergence-base F`` can be read here and the other way round:

====================  =====================================================================
bytes                 content (little-endian)
====================  =====================================================================
8                     ``_logits_``
4                     ``n_ctx`` (int32)
4                     ``n_vocab`` (int32)
4                     ``n_chunk`` (int32)
4 · n_chunk · n_ctx   the evaluated tokens (int32), as tokenized (no BOS substitution)
per chunk             ``n_ctx - 1 - n_ctx // 2`` rows (the scored positions), each of
                      ``nv = 2 · ceil(n_vocab / 2) + 4`` uint16: two float32 (``scale``,
                      ``min_log_prob``) then one uint16 ``q`` per token, padded to even
====================  =====================================================================

A row stores ``log p(i) ≈ scale · q(i) + min_log_prob`` for logits within 16 of the row's maximum
(``q = 0`` below that, and such tokens are left out of the KLD): the step is at most 16/65535, so each
log-probability is off by at most ~1.2e-4. A correct token whose logit is more than 16 below the row's
maximum is stored as 0 too, so the base's NLL read back is capped at ``16 + log Σ exp(l - max)``: PPL(base)
from a cache comes out slightly lower than the exact one (0.1% on the default model, 4 chunks of 512),
exactly as llama.cpp's PPL(base) in ``--kl-divergence`` mode (the KLD is unaffected: such tokens are left
out of it). Size: ``2 · nv`` bytes per scored token; for Gemma 3's 262,144-token vocabulary, 134 MB per
chunk of 512 tokens.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine.errors import KvantError

MAGIC = b"_logits_"
HEADER_BYTES = 8 + 4 + 4 + 4


def row_width(n_vocab: int) -> int:
    """uint16 values per stored row: 4 for the two float32, then the vocabulary padded to even."""
    return 2 * ((n_vocab + 1) // 2) + 4


def scored_per_chunk(n_ctx: int) -> int:
    """Tokens scored in one chunk of ``n_ctx``: positions ``n_ctx//2 .. n_ctx-2`` predict the next one."""
    return n_ctx - 1 - n_ctx // 2


def encode_rows(logits: np.ndarray) -> np.ndarray:
    """llama.cpp's 16-bit log-probability rows (n, :func:`row_width`) of float32 ``logits`` (n, n_vocab).

    Replicates ``log_softmax(n_vocab, logits, uint16_t * log_prob, tok)`` in float32 arithmetic.
    """
    x = np.ascontiguousarray(logits, dtype=np.float32)
    n, n_vocab = x.shape
    out = np.zeros((n, row_width(n_vocab)), np.uint16)
    header = out[:, :4].view(np.float32)  # (n, 2) float32 sharing the rows' memory
    for r in range(n):
        row = x[r]
        max_logit = row.max()
        min_logit = max(row.min(), max_logit - np.float32(16))
        sum_exp = np.exp(row - max_logit).sum(dtype=np.float64)
        log_sum_exp = np.float32(np.log(sum_exp))
        scale = np.float32((max_logit - min_logit) / np.float32(65535))
        header[r, 0] = scale
        header[r, 1] = np.float32(min_logit - max_logit - log_sum_exp)
        if scale == 0:
            continue
        q = (
            np.rint((np.float32(1) / scale) * (row - min_logit)).astype(np.int64) & 0xFFFF
        )  # C's int -> uint16
        out[r, 4 : 4 + n_vocab] = np.where(row > min_logit, q, 0)
    return out


def decode_rows(rows: np.ndarray, n_vocab: int) -> np.ndarray:
    """Log-probabilities (n, n_vocab) float32 from stored rows, as llama.cpp reads them."""
    rows = np.ascontiguousarray(rows, dtype=np.uint16)
    header = rows[:, :4].copy().view(np.float32)
    scale, min_log_prob = header[:, 0:1], header[:, 1:2]
    return scale * rows[:, 4 : 4 + n_vocab].astype(np.float32) + min_log_prob


class BaseLogitsWriter:
    """Write a base-logits file chunk by chunk; the file appears under its name only on :meth:`commit`.

    Until then it is ``NAME.partial``; :meth:`abort` (or leaving a ``with`` block on an exception)
    deletes it, so an interrupted base pass never leaves a file that looks complete.
    """

    def __init__(self, path: str | Path, n_ctx: int, n_vocab: int, tokens: np.ndarray) -> None:
        self.path = Path(path)
        self.n_ctx = int(n_ctx)
        self.n_vocab = int(n_vocab)
        tokens = np.asarray(tokens, dtype="<i4")
        if tokens.ndim != 1 or len(tokens) % self.n_ctx:
            raise KvantError(f"the evaluated tokens ({len(tokens)}) are not whole chunks of {self.n_ctx}")
        self.n_chunk = len(tokens) // self.n_ctx
        self._written = 0
        self._tmp = self.path.with_name(self.path.name + ".partial")
        try:
            self._fh = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        except OSError as err:
            raise KvantError(
                f"cannot write the base logits file {self._tmp}: {err.strerror or err}"
            ) from None
        self._fh.write(MAGIC)
        self._fh.write(np.array([self.n_ctx, self.n_vocab, self.n_chunk], "<i4").tobytes())
        self._fh.write(tokens.tobytes())

    def write_chunk(self, rows: np.ndarray) -> None:
        """One chunk's scored rows, as from :func:`encode_rows`."""
        want = (scored_per_chunk(self.n_ctx), row_width(self.n_vocab))
        if rows.shape != want or rows.dtype != np.uint16:
            raise KvantError(f"a chunk of the base logits file must be uint16 {want}, not {rows.shape}")
        if self._written >= self.n_chunk:
            raise KvantError(f"the base logits file already holds its {self.n_chunk} chunks")
        self._fh.write(np.ascontiguousarray(rows, dtype="<u2").tobytes())
        self._written += 1

    def commit(self) -> Path:
        if self._written != self.n_chunk:
            self.abort()
            raise KvantError(f"the base logits file got {self._written} of its {self.n_chunk} chunks")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> BaseLogitsWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None or not self._fh.closed:
            self.abort()


class BaseLogitsFile:
    """A base-logits file opened for reading (memory-mapped; nothing is loaded until used)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as fh:
                head = fh.read(HEADER_BYTES)
        except OSError as err:
            raise KvantError(f"cannot read the base logits file {self.path}: {err.strerror or err}") from None
        if len(head) < HEADER_BYTES or head[:8] != MAGIC:
            raise KvantError(f"{self.path} is not a base logits file (llama.cpp's _logits_ format)")
        n_ctx, n_vocab, n_chunk = (int(v) for v in np.frombuffer(head[8:], "<i4"))
        if n_ctx < 4 or n_vocab < 1 or n_chunk < 1:
            raise KvantError(f"{self.path}: bad header (n_ctx {n_ctx}, n_vocab {n_vocab}, chunks {n_chunk})")
        self.n_ctx, self.n_vocab = n_ctx, n_vocab
        self._rows = scored_per_chunk(n_ctx)
        self._nv = row_width(n_vocab)
        tokens_bytes = 4 * n_chunk * n_ctx
        chunk_bytes = 2 * self._rows * self._nv
        have = (
            (size - HEADER_BYTES - tokens_bytes) // chunk_bytes if size >= HEADER_BYTES + tokens_bytes else 0
        )
        if have < n_chunk:
            # llama.cpp stops at the first chunk it cannot read; a truncated file is an error here.
            raise KvantError(
                f"{self.path} is truncated: its header promises {n_chunk} chunks but it holds {have}"
            )
        self.n_chunk = n_chunk
        self.tokens = np.fromfile(self.path, "<i4", count=n_chunk * n_ctx, offset=HEADER_BYTES).astype(
            np.int32
        )
        self._data_offset = HEADER_BYTES + tokens_bytes
        self._map = np.memmap(
            self.path, "<u2", "r", offset=self._data_offset, shape=(n_chunk, self._rows, self._nv)
        )

    def chunk_rows(self, i: int) -> np.ndarray:
        """The stored uint16 rows of chunk ``i`` (a read-only memory-mapped view)."""
        return self._map[i]

    def chunk_logp(self, i: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Decoded log-probabilities of rows ``lo:hi`` of chunk ``i`` (float32)."""
        return decode_rows(self._map[i, lo:hi], self.n_vocab)

    def close(self) -> None:
        self._map = None  # type: ignore[assignment]

    def __enter__(self) -> BaseLogitsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
