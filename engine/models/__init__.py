"""Model architectures: one file per architecture, registered by GGUF ``general.architecture``."""

from __future__ import annotations

from engine.errors import ModelError
from engine.gguf import GGUFModel
from engine.models.gemma3 import Gemma3
from engine.models.llama import Llama
from engine.models.phi3 import Phi3
from engine.models.qwen2 import Qwen2
from engine.models.qwen3 import Qwen3

ARCHITECTURES = {"gemma3": Gemma3, "llama": Llama, "qwen2": Qwen2, "qwen3": Qwen3, "phi3": Phi3}


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


__all__ = ["ARCHITECTURES", "Gemma3", "Llama", "Phi3", "Qwen2", "Qwen3", "load_model"]
