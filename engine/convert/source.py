"""Conversion sources: what a plan and a conversion need to read from a model.

A source has ordered metadata, a tensor table (name, ggml dims, type) and reads float32 rows
of a tensor on demand, so a conversion never holds more than a chunk of one tensor in memory.
:class:`GGUFSource` reads any GGUF (split models too); ``engine.convert.hf`` adds Hugging Face
safetensors folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from gguf import GGMLQuantizationType as T

from engine.convert.rules import HParams
from engine.errors import ModelError
from engine.gguf import GGUFModel, MetadataValue, open_gguf
from engine.gguf.constants import block_geometry
from engine.quant import dequantize


@dataclass(frozen=True, slots=True)
class SourceTensor:
    name: str
    dims: tuple[int, ...]  # ggml order, ne0 (row length) first
    type: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.dims))

    @property
    def n_rows(self) -> int:
        n = 1
        for d in self.dims[1:]:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        block, size = block_geometry(self.type)
        n = 1
        for d in self.dims:
            n *= d
        return n // block * size

    @property
    def row_bytes(self) -> int:
        block, size = block_geometry(self.type)
        return self.dims[0] // block * size


class Source(Protocol):
    description: str
    metadata: dict[str, MetadataValue]
    tensors: list[SourceTensor]

    def hparams(self) -> HParams: ...

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray: ...

    def read_raw(self, name: str) -> np.ndarray: ...

    def close(self) -> None: ...


def hparams_from_metadata(meta: dict[str, MetadataValue]) -> HParams:
    """The hyperparameters llama.cpp's type rules use, from GGUF metadata."""

    def get(key: str, default: int = 0) -> int:
        mv = meta.get(key)
        if mv is None:
            return default
        v = mv.value
        if isinstance(v, np.ndarray):  # per-layer arrays: llama.cpp's n_gqa() looks at layer 0
            return int(v[0]) if v.size else default
        return int(v)

    arch_mv = meta.get("general.architecture")
    arch = str(arch_mv.value) if arch_mv is not None else ""
    n_head = get(f"{arch}.attention.head_count")
    return HParams(
        arch=arch,
        n_layer=get(f"{arch}.block_count"),
        n_head=n_head,
        n_head_kv=get(f"{arch}.attention.head_count_kv", n_head),
        n_expert=get(f"{arch}.expert_count"),
        n_dense_lead=get(f"{arch}.leading_dense_block_count"),
    )


class GGUFSource:
    """A GGUF model (one file or all shards) as a conversion source."""

    def __init__(self, path: str | Path) -> None:
        self.model: GGUFModel = open_gguf(path)
        self.description = str(self.model.path)
        self.metadata = dict(self.model.metadata)
        self.tensors = [SourceTensor(t.name, tuple(t.dims), int(t.type)) for t in self.model.tensors]
        self._index = {t.name: t for t in self.tensors}

    def hparams(self) -> HParams:
        return hparams_from_metadata(self.metadata)

    def read_raw(self, name: str) -> np.ndarray:
        return self.model.raw(name)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (rows = all dims but the first, flattened) as float32 (n, ne0)."""
        t = self._index[name]
        rb = t.row_bytes
        raw = self.model.raw(name)[start * rb : stop * rb]
        ne0 = t.dims[0]
        if t.type == T.F32:
            return raw.view(np.float32).reshape(-1, ne0)
        if t.type == T.F16:
            return raw.view(np.float16).reshape(-1, ne0).astype(np.float32)
        if t.type == T.BF16:
            bits = raw.view(np.uint16).reshape(-1, ne0).astype(np.uint32) << 16
            return bits.view(np.float32)
        try:
            return dequantize(raw, t.type, (stop - start, ne0))
        except Exception as err:  # QuantError for types we cannot read
            raise ModelError(f"{self.description}: cannot read tensor {name}: {err}") from err

    def close(self) -> None:
        self.model.close()
