"""A repository's GGUF files grouped into quants, with names parsed from file names.

A quant is one file, all shards ``NAME-0000k-of-0000n.gguf`` of one model, or those shards
in a sub-folder (unsloth: ``UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-00001-of-00003.gguf``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.gguf import SPLIT_NAME_PATTERN

# Hub file names vary in case; local shards are opened by their exact llama.cpp names.
SPLIT_NAME = re.compile(SPLIT_NAME_PATTERN, re.IGNORECASE)

_QUANT_TOKEN = r"(?:[0-9]|K|NL|XXS|XS|S|M|L|XL|XXL|R4)"
QUANT_NAME = re.compile(
    r"(?<![A-Za-z0-9])("
    r"(?:UD-)?(?:I?Q[1-8](?:_" + _QUANT_TOKEN + r")*|TQ[12]_0|MXFP4(?:_MOE)?|BF16|FP?16|FP?32|F64)"
    r")(?![A-Za-z0-9])",
    re.IGNORECASE,
)

# Nominal bits per weight of whole models in each quant (llama.cpp's quantize table: the mix of
# types a preset writes, embeddings and norms included). Real files differ a little by model.
NOMINAL_BPW: dict[str, float] = {
    "F64": 64.0,
    "F32": 32.0,
    "FP32": 32.0,
    "F16": 16.0,
    "FP16": 16.0,
    "BF16": 16.0,
    "Q8_0": 8.5,
    "Q6_K": 6.56,
    "Q5_K_M": 5.69,
    "Q5_K_S": 5.54,
    "Q5_1": 6.0,
    "Q5_0": 5.5,
    "Q4_K_M": 4.85,
    "Q4_K_S": 4.58,
    "Q4_1": 5.0,
    "Q4_0": 4.5,
    "Q4_0_4_4": 4.5,
    "Q4_0_4_8": 4.5,
    "Q4_0_8_8": 4.5,
    "MXFP4": 4.25,
    "MXFP4_MOE": 4.25,
    "IQ4_NL": 4.5,
    "IQ4_XS": 4.25,
    "Q3_K_L": 4.27,
    "Q3_K_M": 3.91,
    "Q3_K_S": 3.5,
    "IQ3_M": 3.66,
    "IQ3_S": 3.44,
    "IQ3_XS": 3.3,
    "IQ3_XXS": 3.06,
    "Q2_K": 3.35,
    "Q2_K_S": 3.18,
    "IQ2_M": 2.7,
    "IQ2_S": 2.5,
    "IQ2_XS": 2.31,
    "IQ2_XXS": 2.06,
    "IQ1_M": 1.75,
    "IQ1_S": 1.56,
    "TQ2_0": 2.06,
    "TQ1_0": 1.69,
}


def parse_quant_name(name: str) -> str | None:
    """The quant in a file or folder name (``Llama-3-8B.Q4_K_M.gguf`` → ``Q4_K_M``), upper case.

    The last match wins, so a model name that happens to look like a quant does not; the
    shard suffix and ``.gguf`` are ignored. Unsloth's dynamic quants keep their ``UD-`` prefix.
    """
    base = name.rsplit("/", 1)[-1]
    m = SPLIT_NAME.match(base)
    stem = m["prefix"] if m else re.sub(r"\.gguf$", "", base, flags=re.IGNORECASE)
    found = [match.group(1) for match in QUANT_NAME.finditer(stem)]
    return found[-1].upper() if found else None


def nominal_bpw(quant: str | None) -> float | None:
    """Nominal bits per weight of ``quant``; ``UD-Q2_K_XL`` falls back to ``Q2_K``'s."""
    if not quant:
        return None
    key = quant.upper().removeprefix("UD-")
    while key:
        if key in NOMINAL_BPW:
            return NOMINAL_BPW[key]
        if "_" not in key:
            return None
        key = key.rsplit("_", 1)[0]
    return None


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One file of a Hub repository; ``sha256`` is its LFS checksum (None for non-LFS files)."""

    path: str
    size: int
    sha256: str | None = None
    blob_id: str | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "blob_id": self.blob_id}


@dataclass(frozen=True, slots=True)
class Quant:
    """One downloadable model variant: its files (shards in order) and their total size."""

    name: str  # Q4_K_M, UD-IQ1_S, ... (the file stem when no quant can be parsed)
    key: str  # unique in the repo: folder/stem without the shard suffix
    files: tuple[RemoteFile, ...]
    shard_count: int = 1  # how many shards the names announce
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def first(self) -> RemoteFile:
        return self.files[0]

    @property
    def is_split(self) -> bool:
        return self.shard_count > 1

    @property
    def complete(self) -> bool:
        """All announced shards are present in the repository."""
        return len(self.files) == self.shard_count

    @property
    def folder(self) -> str:
        return self.first.path.rpartition("/")[0]

    def bits_per_weight(self, n_params: int | None = None) -> float | None:
        """``size × 8 / n_params`` when the parameter count is known, else the nominal value."""
        if n_params:
            return round(self.size * 8 / n_params, 3)
        return nominal_bpw(self.name)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "key": self.key,
            "size": self.size,
            "shards": self.shard_count,
            "complete": self.complete,
            "bpw": self.bits_per_weight(),
            "files": [f.to_dict() for f in self.files],
        }


def is_model_gguf(path: str) -> bool:
    """A GGUF that holds a model (not a vision projector ``mmproj-*.gguf``)."""
    base = path.rsplit("/", 1)[-1].lower()
    return base.endswith(".gguf") and not base.startswith("mmproj")


def group_quants(files: Iterable[RemoteFile]) -> list[Quant]:
    """Group a repository's files into quants, smallest first (non-GGUF files are ignored)."""
    groups: dict[tuple[str, int], list[tuple[int, RemoteFile]]] = {}
    for f in files:
        if not is_model_gguf(f.path):
            continue
        folder, _, base = f.path.rpartition("/")
        m = SPLIT_NAME.match(base)
        stem = m["prefix"] if m else base[: -len(".gguf")]
        key = f"{folder}/{stem}" if folder else stem
        count = int(m["count"]) if m else 1
        groups.setdefault((key, count), []).append((int(m["no"]) if m else 1, f))
    quants = []
    for (key, count), members in groups.items():
        members.sort(key=lambda nf: nf[0])
        folder, _, stem = key.rpartition("/")
        name = parse_quant_name(stem + ".gguf") or (parse_quant_name(folder) if folder else None) or stem
        quants.append(Quant(name, key, tuple(f for _, f in members), count))
    # the same key twice (e.g. a single file and a split set of one stem) must stay unique
    seen: dict[str, int] = {}
    unique = []
    for q in sorted(quants, key=lambda q: (q.size, q.key)):
        n = seen.get(q.key, 0)
        seen[q.key] = n + 1
        unique.append(q if n == 0 else Quant(q.name, f"{q.key}#{n + 1}", q.files, q.shard_count))
    return unique


def select_quant(quants: list[Quant], wanted: str, repo: str = "") -> Quant:
    """The quant whose key, or else whose name, matches ``wanted`` (case-insensitive)."""
    from engine.hub._http import HubNotFoundError

    w = wanted.strip().lower()
    for matches in (
        [q for q in quants if q.key.lower() == w],
        [q for q in quants if q.name.lower() == w],
        [q for q in quants if q.name.lower().removeprefix("ud-") == w.removeprefix("ud-")],
    ):
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            keys = ", ".join(q.key for q in matches)
            raise HubNotFoundError(f"{repo}: {wanted!r} matches several files ({keys}); give one of those")
    available = ", ".join(q.name for q in quants) or "none"
    raise HubNotFoundError(f"{repo} has no GGUF quant {wanted!r} (available: {available})")
