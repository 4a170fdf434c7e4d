"""Streaming detokenization that never splits a UTF-8 character."""

from __future__ import annotations

from typing import Protocol


class _Pieces(Protocol):
    def token_to_piece(self, token: int, special: bool = True) -> bytes: ...


def complete_prefix(data: bytes | bytearray) -> int:
    """Length of the longest prefix of ``data`` that does not end inside a UTF-8 sequence."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        c = data[n - back]
        if c & 0xC0 == 0x80:  # continuation byte: keep looking for the lead
            continue
        if c & 0xE0 == 0xC0:
            need = 2
        elif c & 0xF0 == 0xE0:
            need = 3
        elif c & 0xF8 == 0xF0:
            need = 4
        else:
            need = 1
        return n - back if need > back else n
    return n


class StreamDecoder:
    """Turns token ids, one at a time, into text deltas.

    The deltas join to the concatenated token pieces (llama_token_to_piece, as llama-server streams
    them), held back while a character is incomplete; bytes that can never form a character come out as
    U+FFFD. ``skip_special`` renders control tokens as nothing instead of their text.
    """

    def __init__(self, tokenizer: _Pieces, skip_special: bool = False) -> None:
        self._tokenizer = tokenizer
        self._special = not skip_special
        self._pending = bytearray()

    def push(self, token: int) -> str:
        """Add one token; returns the text it completes (possibly "")."""
        self._pending += self._tokenizer.token_to_piece(token, self._special)
        cut = complete_prefix(self._pending)
        if cut == 0:
            return ""
        out = bytes(self._pending[:cut]).decode("utf-8", errors="replace")
        del self._pending[:cut]
        return out

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character comes out as U+FFFD)."""
        out = bytes(self._pending).decode("utf-8", errors="replace")
        self._pending.clear()
        return out
