"""A model's vital statistics, read from its GGUF header only (no tensor data touched)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gguf

from engine.gguf.model import GGUFModel, open_gguf


@dataclass(frozen=True, slots=True)
class ModelInfo:
    path: str
    architecture: str
    name: str
    parameters: int
    layers: int | None
    context_length: int | None
    embedding_length: int | None
    feed_forward_length: int | None
    heads: int | None
    kv_heads: int | list[int] | None
    head_dim_k: int | None
    head_dim_v: int | None
    sliding_window: int | None
    experts: int | None
    experts_used: int | None
    vocab_size: int | None
    tokenizer: str | None
    tokenizer_pre: str | None
    chat_template: bool
    file_type: str | None
    file_size: int
    tensor_bytes: int
    bits_per_weight: float
    tensor_types: dict[str, int]
    tensor_count: int
    shards: list[str] = field(default_factory=list)
    gguf_version: int = 3
    # No chat template and no name that says instruction-tuned: most likely a pretrained (base)
    # model, which continues text rather than answering (see :func:`looks_like_base_model`).
    base_model: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def _kv_heads(v: Any) -> int | list[int] | None:
    if v is None:
        return None
    if hasattr(v, "tolist"):
        values = [int(x) for x in v.tolist()]
        return values[0] if len(set(values)) == 1 else values
    return int(v)


def _file_type_name(ftype: int | None) -> str | None:
    if ftype is None:
        return None
    try:
        return gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return f"unknown ({ftype})"


# Words in a model's name, fine-tune label or tags that mean it was tuned to follow instructions:
# Gemma's "-it", "Instruct", "Chat", and the names of the tuning methods.
_TUNED = re.compile(
    r"(?<![a-z0-9])(it|instruct|instruction|chat|sft|dpo|orpo|kto|rlhf|assistant|conversational)(?![a-z])"
)


def looks_like_base_model(model: GGUFModel) -> bool:
    """Whether ``model`` looks like a pretrained (base) model: its GGUF has no chat template and
    neither its name, fine-tune label, tags nor file name say it was tuned for instructions or chat.
    Such a model continues text; wrapped in a chat template it usually answers with nonsense."""
    if model.get("tokenizer.chat_template") is not None:
        return False
    tags = model.get("general.tags")
    words = [model.path.stem, *(str(model.get(f"general.{k}", "")) for k in ("name", "finetune", "basename"))]
    words += [str(t) for t in tags] if isinstance(tags, list) else []
    return not any(_TUNED.search(w.lower().replace("_", "-")) for w in words)


def model_info(model: GGUFModel) -> ModelInfo:
    arch = str(model.get("general.architecture", "unknown"))

    def a(key: str) -> Any:
        return model.get(f"{arch}.{key}")

    n_params = sum(t.n_elements for t in model.tensors)
    tensor_bytes = model.tensor_bytes
    heads = _int(a("attention.head_count") if not hasattr(a("attention.head_count"), "tolist") else None)
    embd = _int(a("embedding_length"))
    default_head = embd // heads if embd and heads else None
    tokens = model.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if tokens is not None else _int(a("vocab_size"))
    types = Counter(t.type_name for t in model.tensors)
    return ModelInfo(
        path=str(model.path),
        architecture=arch,
        name=str(model.get("general.name", model.path.stem)),
        parameters=n_params,
        layers=_int(a("block_count")),
        context_length=_int(a("context_length")),
        embedding_length=embd,
        feed_forward_length=_int(a("feed_forward_length"))
        if not hasattr(a("feed_forward_length"), "tolist")
        else int(max(a("feed_forward_length"))),
        heads=heads,
        kv_heads=_kv_heads(a("attention.head_count_kv")),
        head_dim_k=_int(a("attention.key_length")) or default_head,
        head_dim_v=_int(a("attention.value_length")) or default_head,
        sliding_window=_int(a("attention.sliding_window")),
        experts=_int(a("expert_count")),
        experts_used=_int(a("expert_used_count")),
        vocab_size=vocab,
        tokenizer=model.get("tokenizer.ggml.model"),
        tokenizer_pre=model.get("tokenizer.ggml.pre"),
        chat_template=model.get("tokenizer.chat_template") is not None,
        file_type=_file_type_name(_int(model.get("general.file_type"))),
        file_size=model.file_size,
        tensor_bytes=tensor_bytes,
        bits_per_weight=round(tensor_bytes * 8 / n_params, 4) if n_params else 0.0,
        tensor_types=dict(sorted(types.items(), key=lambda kv: (-kv[1], kv[0]))),
        tensor_count=len(model.tensors),
        shards=[str(p) for p in model.paths],
        gguf_version=model.shards[0].version,
        base_model=looks_like_base_model(model),
    )


def read_model_info(path: str | Path) -> ModelInfo:
    with open_gguf(path) as model:
        return model_info(model)
