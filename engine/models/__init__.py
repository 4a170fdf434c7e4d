"""Model architectures: one file per architecture, registered by GGUF ``general.architecture``."""

from __future__ import annotations

from engine.errors import ModelError
from engine.gguf import GGUFModel
from engine.models.gemma3 import Gemma3

ARCHITECTURES = {"gemma3": Gemma3}


def load_model(gguf_model: GGUFModel, n_ctx: int = 4096):
    """Build the model for an opened GGUF file, with a KV cache of ``n_ctx`` positions."""
    arch = gguf_model.get("general.architecture")
    cls = ARCHITECTURES.get(arch)
    if cls is None:
        raise ModelError(
            f"{gguf_model.path.name}: architecture {arch!r} is not supported by the CPU engine "
            f"(supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    return cls.from_gguf(gguf_model, n_ctx=n_ctx)


__all__ = ["ARCHITECTURES", "Gemma3", "load_model"]
