"""A GGUF model: one file, or the shards of a split model opened as one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import GGUFError
from engine.gguf.constants import KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS
from engine.gguf.reader import GGUFFile, MetadataValue, TensorInfo
from engine.gguf.writer import SPLIT_NAME, split_path


class GGUFModel:
    """All shards of a model behind one tensor table; metadata comes from the first shard."""

    def __init__(self, shards: list[GGUFFile]) -> None:
        self.shards = shards
        self.tensors: list[TensorInfo] = []
        self._index: dict[str, TensorInfo] = {}
        for i, shard in enumerate(shards):
            for t in shard.tensors:
                if t.name in self._index:
                    raise GGUFError(
                        f"tensor {t.name!r} appears in both {shards[self._index[t.name].shard].path.name} "
                        f"and {shard.path.name}"
                    )
                info = TensorInfo(t.name, t.type, t.dims, t.offset, t.nbytes, t.file_offset, i)
                self.tensors.append(info)
                self._index[t.name] = info

    @property
    def path(self) -> Path:
        return self.shards[0].path

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self.shards]

    @property
    def metadata(self) -> dict[str, MetadataValue]:
        return self.shards[0].metadata

    @property
    def file_size(self) -> int:
        return sum(s.file_size for s in self.shards)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def get(self, key: str, default: Any = None) -> Any:
        return self.shards[0].get(key, default)

    def tensor(self, name: str) -> TensorInfo:
        t = self._index.get(name)
        if t is None:
            raise GGUFError(f"{self.path.name}: no tensor named {name!r}")
        return t

    def has_tensor(self, name: str) -> bool:
        return name in self._index

    def raw(self, name: str) -> np.ndarray:
        return self.shards[self.tensor(name).shard].raw(name)

    def array(self, name: str) -> np.ndarray:
        return self.shards[self.tensor(name).shard].array(name)

    def release(self, name: str, start: int = 0, stop: int | None = None) -> None:
        """Drop the mapped pages of the tensor's bytes ``start:stop`` (see :meth:`GGUFFile.release`)."""
        self.shards[self.tensor(name).shard].release(name, start, stop)

    def close(self) -> None:
        for s in self.shards:
            s.close()

    def __enter__(self) -> GGUFModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors)


def open_gguf(path: str | Path) -> GGUFModel:
    """Open a GGUF model. A shard of a split model (``*-0000K-of-0000N.gguf``) opens all N."""
    path = Path(path)
    match = SPLIT_NAME.match(path.name)
    first = GGUFFile(path if match is None else split_path_first(path, match))
    try:
        count = int(first.get(KEY_SPLIT_COUNT, 0) or 0)
        if count <= 1 and match is None:
            return GGUFModel([first])
        if match is None:
            raise GGUFError(
                f"{path.name} is shard 1 of {count} of a split model, but its name does not follow "
                f"the NAME-00001-of-{count:05d}.gguf pattern, so the other shards cannot be found"
            )
        named_count = int(match["count"])
        if count != named_count:
            raise GGUFError(
                f"{first.path.name}: its name says {named_count} shards but {KEY_SPLIT_COUNT} says {count}"
            )
    except BaseException:
        first.close()
        raise
    return _open_shards(first, count)


def split_path_first(path: Path, match: Any) -> Path:
    return path.with_name(f"{match['prefix']}-00001-of-{match['count']}.gguf")


def _open_shards(first: GGUFFile, count: int) -> GGUFModel:
    shards = [first]
    try:
        prefix_path = first.path.with_name(SPLIT_NAME.match(first.path.name)["prefix"] + ".gguf")
        for i in range(1, count):
            p = split_path(prefix_path, i, count)
            if not p.exists():
                raise GGUFError(f"shard {i + 1} of {count} is missing: {p}")
            shards.append(GGUFFile(p))
        for i, shard in enumerate(shards):
            no = shard.get(KEY_SPLIT_NO)
            cnt = shard.get(KEY_SPLIT_COUNT)
            if no != i or cnt != count:
                raise GGUFError(
                    f"{shard.path.name}: says it is shard {no} of {cnt} (0-based), expected {i} of {count}"
                )
        expected = first.get(KEY_SPLIT_TENSORS)
        found = sum(len(s.tensors) for s in shards)
        if expected is not None and expected != found:
            raise GGUFError(
                f"{first.path.name}: {KEY_SPLIT_TENSORS} is {expected} but the {count} shards hold {found}"
            )
        return GGUFModel(shards)
    except BaseException:
        for s in shards:
            s.close()
        raise
