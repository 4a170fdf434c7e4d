"""``kvant info MODEL``: what a GGUF file holds, from its header alone."""

from __future__ import annotations

import argparse

from engine.cli import add_json_flag, emit
from engine.gguf import read_model_info
from engine.library import resolve_model
from engine.paths import KvantPaths


def _template_line(info) -> str:
    if info.chat_template:
        return "yes"
    if info.base_model:
        return "no: looks like a base model (continues text; chat --raw)"
    return "no (built-in fallback)"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="show a model's architecture, size and quantization")
    p.add_argument("model", help="a .gguf path (any shard of a split model), a library id, or 'default'")
    add_json_flag(p)
    p.set_defaults(func=run)


def _fmt_count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def run(args: argparse.Namespace) -> int:
    info = read_model_info(resolve_model(args.model, KvantPaths.default()))
    d = info.to_dict()
    types = ", ".join(f"{k}×{v}" for k, v in info.tensor_types.items())
    rows = [
        ("name", info.name),
        ("architecture", info.architecture),
        ("parameters", f"{_fmt_count(info.parameters)} ({info.parameters:,})"),
        ("quantization", f"{info.file_type or '?'}, {info.bits_per_weight:.2f} bits per weight"),
        ("tensor types", types),
        ("layers", info.layers),
        ("context length", info.context_length),
        ("embedding", info.embedding_length),
        ("feed-forward", info.feed_forward_length),
        ("heads / KV heads", f"{info.heads} / {info.kv_heads}"),
        ("head dim K / V", f"{info.head_dim_k} / {info.head_dim_v}"),
        ("sliding window", info.sliding_window or "none"),
        ("experts", f"{info.experts_used} of {info.experts}" if info.experts else "none"),
        (
            "vocabulary",
            f"{info.vocab_size:,} ({info.tokenizer}, pre: {info.tokenizer_pre})" if info.vocab_size else "?",
        ),
        ("chat template", _template_line(info)),
        ("file size", f"{info.file_size / 2**20:.1f} MiB in {len(info.shards)} file(s)"),
    ]
    width = max(len(k) for k, _ in rows)
    human = "\n".join(f"{k.rjust(width)}  {v}" for k, v in rows)
    emit(args, d, human)
    return 0
