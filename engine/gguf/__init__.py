"""GGUF files: a fast memory-mapped reader, split models, a streaming writer, model info."""

from engine.gguf.constants import SPLIT_NAME_PATTERN
from engine.gguf.info import ModelInfo, model_info, read_model_info
from engine.gguf.model import GGUFModel, open_gguf
from engine.gguf.reader import GGUFFile, GGUFHeader, GGUFIncomplete, MetadataValue, TensorInfo, parse_header
from engine.gguf.writer import SplitPolicy, TensorSpec, metadata_value, write_gguf, write_gguf_sync

__all__ = [
    "SPLIT_NAME_PATTERN",
    "GGUFFile",
    "GGUFHeader",
    "GGUFIncomplete",
    "GGUFModel",
    "MetadataValue",
    "ModelInfo",
    "SplitPolicy",
    "TensorInfo",
    "TensorSpec",
    "metadata_value",
    "model_info",
    "open_gguf",
    "parse_header",
    "read_model_info",
    "write_gguf",
    "write_gguf_sync",
]
