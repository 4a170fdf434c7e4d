"""GGUF container constants, taken from llama.cpp's own ``gguf`` package where it has them."""

from __future__ import annotations

import struct

import gguf
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = gguf.GGUF_DEFAULT_ALIGNMENT
MAX_DIMS = 4
MAX_NAME_BYTES = 63  # ggml's GGML_MAX_NAME is 64 including the terminating NUL
MAX_ARRAY_NESTING = 8
KEY_ALIGNMENT = "general.alignment"
KEY_ARCHITECTURE = "general.architecture"
KEY_SPLIT_NO = "split.no"
KEY_SPLIT_COUNT = "split.count"
KEY_SPLIT_TENSORS = "split.tensors.count"
# llama.cpp names shards NAME-00001-of-00003.gguf (gguf-split)
SPLIT_NAME_PATTERN = r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$"

# struct format and size of each scalar value type
SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
SCALAR_SIZES: dict[GGUFValueType, int] = {t: struct.calcsize("<" + f) for t, f in SCALAR_FORMATS.items()}
NUMPY_DTYPES: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<u1",
    GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4",
    GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8",
}
# smallest encoded size of one value of each type (strings: the u64 length; arrays: type + count)
MIN_VALUE_SIZE: dict[GGUFValueType, int] = {**SCALAR_SIZES, GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12}

# numpy dtypes of tensor types that are plain element arrays
PLAIN_TENSOR_DTYPES: dict[int, str] = {
    GGMLQuantizationType.F32: "<f4",
    GGMLQuantizationType.F16: "<f2",
    GGMLQuantizationType.F64: "<f8",
    GGMLQuantizationType.I8: "<i1",
    GGMLQuantizationType.I16: "<i2",
    GGMLQuantizationType.I32: "<i4",
    GGMLQuantizationType.I64: "<i8",
}


def type_name(type_id: int) -> str:
    try:
        return GGMLQuantizationType(type_id).name
    except ValueError:
        return f"unknown type {type_id}"


def block_geometry(type_id: int) -> tuple[int, int] | None:
    """``(elements per block, bytes per block)`` of a GGML tensor type, or None if unknown."""
    try:
        return GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
    except (ValueError, KeyError):
        return None


def align_up(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment
