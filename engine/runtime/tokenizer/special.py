"""Splitting text on special tokens before tokenizing it: llama.cpp's tokenizer_st_partition.

Every control, user-defined and unknown token is looked for in the text, longest (in bytes) first; each
occurrence becomes its own fragment. With ``special=False`` control and unknown tokens are not looked
for (they are then ordinary text), but user-defined ones still are: the tokenizer keeps one matcher for
each case. A token with the LSTRIP (RSTRIP) attribute eats the ASCII white space on its left (right).
"""

from __future__ import annotations

from collections.abc import Sequence

# llama_token_attr bits
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_NORMALIZED = 1 << 6
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8
ATTR_SINGLE_WORD = 1 << 9

_C_SPACE = " \t\n\v\f\r"  # isspace() in the C locale

Fragment = str | int  # raw text, or a token id


class SpecialMatcher:
    """The special tokens of a vocabulary, ready to find in a text."""

    def __init__(self, ids: Sequence[int], texts: Sequence[str], attrs: Sequence[int]) -> None:
        self.ids = list(ids)  # in llama.cpp's order: longest UTF-8 text first
        self._texts = texts
        self._attrs = attrs
        self._by_text = {texts[i]: i for i in self.ids}  # token texts are unique
        self._first = frozenset(texts[i][:1] for i in self.ids)
        self._prefixes: frozenset[str] | None = None  # built on first use

    def present(self, text: str) -> set[int]:
        """Ids of the special tokens whose text occurs somewhere in ``text``."""
        found: set[int] = set()
        if not self.ids:
            return found
        if self._prefixes is None:
            self._prefixes = frozenset(t[:k] for t in self._by_text for k in range(1, len(t) + 1))
        first, prefixes, by_text = self._first, self._prefixes, self._by_text
        n = len(text)
        for i, ch in enumerate(text):
            if ch not in first:
                continue
            j = i + 1
            while j <= n:
                piece = text[i:j]
                if piece not in prefixes:
                    break
                if piece in by_text:
                    found.add(by_text[piece])
                j += 1
        return found

    def partition(self, text: str) -> list[Fragment]:
        if not text:
            return []
        present = self.present(text)
        fragments: list[Fragment] = [text]
        if not present:
            return fragments
        texts, attrs = self._texts, self._attrs
        for tid in self.ids:
            if tid not in present:
                continue
            attr = attrs[tid]
            needle = texts[tid]
            out: list[Fragment] = []
            for frag in fragments:
                if isinstance(frag, int) or needle not in frag:
                    out.append(frag)
                    continue
                pos = 0
                end = len(frag)
                while True:
                    match = frag.find(needle, pos)
                    if match < 0:
                        out.append(frag[pos:])
                        break
                    if match > pos:
                        left = frag[pos:match]
                        if attr & ATTR_LSTRIP:
                            left = left.rstrip(_C_SPACE)
                        if left:
                            out.append(left)
                    out.append(tid)
                    pos = match + len(needle)
                    if pos >= end:
                        break
                    if attr & ATTR_RSTRIP:
                        while pos < end and frag[pos] in _C_SPACE:
                            pos += 1
                        if pos >= end:
                            break
            fragments = out
        return fragments
