"""Code point classes and the GPT-2 byte alphabet, as llama.cpp's unicode.cpp has them."""

from __future__ import annotations

import numpy as np

from engine.runtime.tokenizer._unicode_data import RANGES, WHITESPACE

# llama.cpp's unicode_cpt_flags bits
UNDEFINED = 0x0001
NUMBER = 0x0002  # \p{N}
LETTER = 0x0004  # \p{L}
SEPARATOR = 0x0008  # \p{Z}
ACCENT_MARK = 0x0010  # \p{M}
PUNCTUATION = 0x0020  # \p{P}
SYMBOL = 0x0040  # \p{S}
CONTROL = 0x0080  # \p{C}
MASK_CATEGORIES = 0x00FF
WHITESPACE_FLAG = 0x0100  # \s

MAX_CODEPOINTS = 0x110000


def _build_flags() -> np.ndarray:
    pairs = [p.split(":") for p in "".join(RANGES).split()]
    starts = np.array([int(a, 16) for a, _ in pairs], dtype=np.int64)
    values = np.array([int(b, 16) for _, b in pairs], dtype=np.uint16)
    table = np.repeat(values[:-1], np.diff(starts)).astype(np.uint16)
    assert table.size == MAX_CODEPOINTS
    table[list(WHITESPACE)] |= WHITESPACE_FLAG
    table.flags.writeable = False
    return table


FLAGS: np.ndarray = _build_flags()  # read-only uint16 flags of every code point (~2 MB, ~8 ms to build)


def codepoints(text: str) -> np.ndarray:
    """The code points of ``text`` as a uint32 array."""
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")


def text_flags(text: str) -> list[int]:
    """llama.cpp's flags of each code point of ``text``."""
    cpts = codepoints(text)
    table = FLAGS
    inside = cpts < MAX_CODEPOINTS
    if inside.all():
        return table[cpts].tolist()
    return np.where(inside, table[np.minimum(cpts, MAX_CODEPOINTS - 1)], UNDEFINED).tolist()


def _gpt2_byte_alphabet() -> list[str]:
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out = [""] * 256
    n = 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


BYTE_TO_UNICODE: tuple[str, ...] = tuple(_gpt2_byte_alphabet())
UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_UNICODE)}
# str.translate table: a latin-1 decoded byte string -> the GPT-2 alphabet
_BYTE_ENCODE_TABLE = {b: c for b, c in enumerate(BYTE_TO_UNICODE)}


def byte_encode(word: str) -> str:
    """A word in GPT-2's byte alphabet (each UTF-8 byte becomes one printable code point)."""
    return word.encode("utf-8", errors="surrogatepass").decode("latin-1").translate(_BYTE_ENCODE_TABLE)


def byte_decode(text: str) -> bytes:
    """GPT-2 byte alphabet -> raw bytes, as llama.cpp's llama_decode_text (unknown code points are
    written as ``[UNK_BYTE_0x..]`` followed by the whole text, as llama.cpp does)."""
    out = bytearray()
    for ch in text:
        b = UNICODE_TO_BYTE.get(ch)
        if b is not None:
            out.append(b)
        else:
            utf8 = ch.encode("utf-8", errors="surrogateescape")
            whole = text.encode("utf-8", errors="surrogateescape")
            out += b"[UNK_BYTE_0x" + utf8.hex().encode() + whole + b"]"
    return bytes(out)
