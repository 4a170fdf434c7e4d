"""Byte-level BPE (``tokenizer.ggml.model == "gpt2"``): llama.cpp's llm_tokenizer_bpe.

The text is cut into words by the pre-tokenizer named by ``tokenizer.ggml.pre`` (see
:mod:`engine.runtime.tokenizer.pretokenize`), each word is written in GPT-2's byte alphabet, and within a
word the adjacent pair with the lowest merge rank is merged (ties: leftmost first) until no pair has a
rank. A final symbol that is not a token is emitted byte by byte where the bytes are tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from heapq import heapify, heappop, heappush

from engine.errors import ModelError
from engine.runtime.tokenizer._bpe_presets import PRE_TOKENIZERS, REGEXES
from engine.runtime.tokenizer.pretokenize import PreTokenizer

UNSUPPORTED_PRE = {
    "gemma4": "its BPE works on raw UTF-8 with SentencePiece-style spaces",
    "granite-embed-multi-311m": "its BPE works on raw UTF-8 with SentencePiece-style spaces",
    "sarvam-moe": "its BPE works on raw UTF-8 with SentencePiece-style spaces",
    "whitespace": "it is a whitespace (WordPiece-like) tokenizer",
    "superbpe": "its digit regex matches empty strings, which Kvant does not reproduce",
}


def merge_ranks(merges: Sequence[str]) -> dict[tuple[str, str], int]:
    """``tokenizer.ggml.merges`` ("left right" per line) -> rank; the first occurrence of a pair wins."""
    ranks: dict[tuple[str, str], int] = {}
    for i, merge in enumerate(merges):
        pos = merge.find(" ", 1)
        pair = (merge[:pos], merge[pos + 1 :]) if pos != -1 else ("", "")
        ranks.setdefault(pair, i)
    return ranks


def pre_tokenizer_for(name: str) -> tuple[str, tuple[str, ...]]:
    """(preset, flags) for a ``tokenizer.ggml.pre`` value; raises ModelError for names Kvant lacks."""
    if name in UNSUPPORTED_PRE:
        raise ModelError(f"the BPE pre-tokenizer {name!r} is not supported: {UNSUPPORTED_PRE[name]}")
    preset = PRE_TOKENIZERS.get(name)
    if preset is None:
        raise ModelError(
            f"unknown BPE pre-tokenizer {name!r} (tokenizer.ggml.pre); Kvant knows llama.cpp's names"
        )
    return preset


def make_pre_tokenizer(preset: str) -> PreTokenizer:
    return PreTokenizer(REGEXES[preset], byte_level=True)


class BPESession:
    """Merges words into token ids; keeps a cache of the words it has seen during one encode call."""

    def __init__(
        self, token_to_id: dict[str, int], ranks: dict[tuple[str, str], int], ignore_merges: bool
    ) -> None:
        self.token_to_id = token_to_id
        self.ranks = ranks
        self.ignore_merges = ignore_merges
        self._cache: dict[str, list[int]] = {}

    def tokenize(self, words: list[str], out: list[int]) -> None:
        cache = self._cache
        for word in words:
            ids = cache.get(word)
            if ids is None:
                ids = cache[word] = self._word(word)
            out.extend(ids)

    def _word(self, word: str) -> list[int]:
        get = self.token_to_id.get
        if self.ignore_merges:
            tid = get(word)
            if tid is not None:
                return [tid]
        n = len(word)
        if n == 0:
            return []
        ranks = self.ranks
        length = [1] * n
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1

        heap = []
        for i in range(1, n):
            rank = ranks.get((word[i - 1], word[i]))
            if rank is not None:
                heap.append((rank, i - 1, i, word[i - 1 : i + 1]))
        heapify(heap)

        while heap:
            _, left, right, text = heappop(heap)
            ln = length[left]
            rn = length[right]
            if ln == 0 or rn == 0:
                continue
            if word[left : left + ln] + word[right : right + rn] != text:
                continue
            ln += rn
            length[left] = ln
            length[right] = 0
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prev[after] = left
            before = prev[left]
            merged = word[left : left + ln]
            if before != -1:
                lt = word[before : before + length[before]]
                rank = ranks.get((lt, merged))
                if rank is not None:
                    heappush(heap, (rank, before, left, lt + merged))
            if after != -1:
                rt = word[after : after + length[after]]
                rank = ranks.get((merged, rt))
                if rank is not None:
                    heappush(heap, (rank, left, after, merged + rt))

        ids: list[int] = []
        for i in range(n):
            if length[i] == 0:
                continue
            piece = word[i : i + length[i]]
            tid = get(piece)
            if tid is not None:
                ids.append(tid)
                continue
            for b in piece.encode("utf-8", errors="surrogatepass"):
                tid = get(chr(b) if b < 0x80 else chr(0xDC00 + b))
                if tid is not None:
                    ids.append(tid)
        return ids
