"""SentencePiece-style tokenization (``tokenizer.ggml.model == "llama"``): llama.cpp's llm_tokenizer_spm.

The text (spaces already turned into ``▁``) starts as one symbol per character; the adjacent pair whose
concatenation is the highest-scoring vocabulary entry is merged (ties: leftmost first) until no pair is
in the vocabulary. A symbol that is not a token falls back to its UTF-8 bytes (``<0xXX>``).
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush

from engine.errors import ModelError


def byte_token(token_to_id: dict[str, int], byte: int) -> int:
    """llama_vocab::byte_to_token for SPM: ``<0xXX>``, else the byte itself as a one-byte token."""
    tid = token_to_id.get(f"<0x{byte:02X}>")
    if tid is None:
        tid = token_to_id.get(chr(byte) if byte < 0x80 else chr(0xDC00 + byte))
    if tid is None:
        raise ModelError(f"the SPM vocabulary has no byte-fallback token for byte 0x{byte:02X}")
    return tid


def spm_tokenize(text: str, token_to_id: dict[str, int], scores: list[float], out: list[int]) -> None:
    n = len(text)
    if n == 0:
        return
    get = token_to_id.get
    length = [1] * n
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1

    heap = []
    for i in range(1, n):
        tid = get(text[i - 1 : i + 1])
        if tid is not None:
            heap.append((-scores[tid], i - 1, i, 2))
    heapify(heap)

    while heap:
        _, left, right, size = heappop(heap)
        ln = length[left]
        rn = length[right]
        if ln == 0 or rn == 0 or ln + rn != size:
            continue
        ln += rn
        length[left] = ln
        length[right] = 0
        after = nxt[right]
        nxt[left] = after
        if after >= 0:
            prev[after] = left
        before = prev[left]
        if before != -1:
            size = length[before] + ln
            tid = get(text[before : before + size])
            if tid is not None:
                heappush(heap, (-scores[tid], before, left, size))
        if after != -1:
            size = ln + length[after]
            tid = get(text[left : left + size])
            if tid is not None:
                heappush(heap, (-scores[tid], left, after, size))

    i = 0
    while i != -1:
        piece = text[i : i + length[i]]
        tid = get(piece)
        if tid is not None:
            out.append(tid)
        else:
            for b in piece.encode("utf-8", errors="surrogatepass"):
                out.append(byte_token(token_to_id, b))
        i = nxt[i]
