"""BPE pre-tokenization: llama.cpp's unicode_regex_split, ported.

llama.cpp splits text with a list of regexes, each applied to the pieces left by the previous one. The
common ones (GPT-2, Llama 3, Qwen 2, Qwen 3.5, Kimi K2, AFMoE digits, newline runs) run as hand-written
splitters there; the rest go through std::regex on a "collapsed" text where every non-ASCII code point is
replaced by one byte standing for its class (\\p{L} -> 0xD2 ...). Both paths are reproduced here, the
second with Python's ``re`` (ASCII mode matches ECMAScript's \\s, \\d and \\w).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from engine.runtime.tokenizer._bpe_presets import REGEXES
from engine.runtime.tokenizer.unicode import (
    ACCENT_MARK,
    LETTER,
    MASK_CATEGORIES,
    NUMBER,
    PUNCTUATION,
    SYMBOL,
    WHITESPACE_FLAG,
    byte_encode,
    codepoints,
    text_flags,
)

_WS = WHITESPACE_FLAG
_CR, _LF, _SP, _APOS = 13, 10, 32, 39
_OOR = 0xFFFFFFFF  # llama.cpp's OUT_OF_RANGE code point

# (?i:'s|'t|'re|'ve|'m|'ll|'d): llama.cpp lowercases with its own table, in which only ASCII letters
# map to these (U+0130 -> i and U+212A -> k are the only non-ASCII code points lowering to ASCII).
_CONTRACTION_1 = frozenset(map(ord, "sStTmMdD"))
_CONTRACTION_2 = frozenset(
    (ord(a), ord(b))
    for pair in ("re", "ve", "ll")
    for a in pair[0] + pair[0].upper()
    for b in pair[1] + pair[1].upper()
)
_CONTRACTION_1_CS = frozenset(map(ord, "stmd"))
_CONTRACTION_2_CS = frozenset({(ord("r"), ord("e")), (ord("v"), ord("e")), (ord("l"), ord("l"))})

Offsets = list[int]
Splitter = Callable[[list[int], list[int], Offsets], Offsets]


def _split_gpt2(cpts: list[int], flags: list[int], offsets: Offsets) -> Offsets:
    """'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"""
    out: Offsets = []
    start = 0
    for offset in offsets:
        ini, end = start, start + offset
        start = end
        prev = ini
        pos = ini
        while pos < end:
            cpt = cpts[pos]
            fl = flags[pos]
            if cpt == _APOS and pos + 1 < end:
                c1 = cpts[pos + 1]
                if c1 in _CONTRACTION_1_CS:
                    pos += 2
                    out.append(pos - prev)
                    prev = pos
                    continue
                if pos + 2 < end and (c1, cpts[pos + 2]) in _CONTRACTION_2_CS:
                    pos += 3
                    out.append(pos - prev)
                    prev = pos
                    continue
            fl2 = (flags[pos + 1] if pos + 1 < end else 0) if cpt == _SP else fl
            if fl2 & LETTER or fl2 & NUMBER:
                cls = LETTER if fl2 & LETTER else NUMBER
                pos += cpt == _SP
                while fl2 & cls:
                    pos += 1
                    fl2 = flags[pos] if pos < end else 0
            elif not fl2 & (_WS | LETTER | NUMBER) and fl2:
                pos += cpt == _SP
                while not fl2 & (_WS | LETTER | NUMBER) and fl2:
                    pos += 1
                    fl2 = flags[pos] if pos < end else 0
            else:
                n = 0
                while pos + n < end and flags[pos + n] & _WS:
                    n += 1
                if n > 1 and pos + n < end:
                    pos += n - 1
                elif n > 0:
                    pos += n
                else:
                    pos += 1
            if pos > prev:
                out.append(pos - prev)
            prev = pos
    return out


def _make_llama3(max_digits: int, marks: bool) -> Splitter:
    """Llama 3 (digits in threes), Qwen 2 (single digits) and Qwen 3.5 (single digits, letters take
    combining marks): (?i:'s|...)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|
    \\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"""
    word = LETTER | (ACCENT_MARK if marks else 0)
    other = _WS | LETTER | NUMBER | (ACCENT_MARK if marks else 0)

    def split(cpts: list[int], flags: list[int], offsets: Offsets) -> Offsets:
        out: Offsets = []
        start = 0
        for offset in offsets:
            ini, end = start, start + offset
            start = end
            prev = ini
            pos = ini
            while pos < end:
                cpt = cpts[pos]
                fl = flags[pos]
                if cpt == _APOS and pos + 1 < end:
                    c1 = cpts[pos + 1]
                    if c1 in _CONTRACTION_1:
                        pos += 2
                        out.append(pos - prev)
                        prev = pos
                        continue
                    if pos + 2 < end and (c1, cpts[pos + 2]) in _CONTRACTION_2:
                        pos += 3
                        out.append(pos - prev)
                        prev = pos
                        continue
                if not (cpt in (_CR, _LF) or fl & NUMBER) and (
                    fl & word or (pos + 1 < end and flags[pos + 1] & word)
                ):
                    pos += 1
                    while pos < end and flags[pos] & word:
                        pos += 1
                elif fl & NUMBER:
                    if max_digits == 1:
                        pos += 1
                    else:
                        run = pos
                        while pos < end and flags[pos] & NUMBER:
                            pos += 1
                            if pos - run >= max_digits:
                                out.append(pos - prev)
                                prev = pos
                                run = pos
                else:
                    fl2 = (flags[pos + 1] if pos + 1 < end else 0) if cpt == _SP else fl
                    if not fl2 & other and fl:
                        pos += cpt == _SP
                        while not fl2 & other and fl2:
                            pos += 1
                            fl2 = flags[pos] if pos < end else 0
                        while pos < end and (cpts[pos] == _CR or cpts[pos] == _LF):
                            pos += 1
                    else:
                        n = 0
                        last_rn = 0
                        while pos + n < end and flags[pos + n] & _WS:
                            if cpts[pos + n] == _CR or cpts[pos + n] == _LF:
                                last_rn = pos + n + 1
                            n += 1
                        if last_rn > 0:
                            pos = last_rn
                        elif n > 1 and pos + n < end:
                            pos += n - 1
                        elif n > 0:
                            pos += n
                        else:
                            pos += 1
                if pos > prev:
                    out.append(pos - prev)
                prev = pos
        return out

    return split


def _is_han(cpt: int) -> bool:
    return (
        0x4E00 <= cpt <= 0x9FFF
        or 0x3400 <= cpt <= 0x4DBF
        or 0x20000 <= cpt <= 0x2A6DF
        or 0x2A700 <= cpt <= 0x2B73F
        or 0x2B740 <= cpt <= 0x2B81F
        or 0x2B820 <= cpt <= 0x2CEAF
        or 0x2CEB0 <= cpt <= 0x2EBEF
        or 0xF900 <= cpt <= 0xFAFF
        or 0x2F800 <= cpt <= 0x2FA1F
    )


def _split_kimi_k2(cpts: list[int], flags: list[int], offsets: Offsets) -> Offsets:
    """Kimi K2: Han runs, then a Llama-3-like split whose letter runs exclude Han."""
    out: Offsets = []
    start = 0
    for offset in offsets:
        ini, end = start, start + offset
        start = end
        prev = ini
        pos = ini

        def cpt_at(p: int, end: int = end) -> int:
            return cpts[p] if p < end else _OOR

        def flags_at(p: int, end: int = end) -> int:
            return flags[p] if p < end else 0

        def non_han_letter(p: int) -> bool:
            return bool(flags_at(p) & LETTER) and not _is_han(cpt_at(p))

        while pos < end:
            cpt = cpts[pos]
            fl = flags[pos]
            if _is_han(cpt):
                while _is_han(cpt_at(pos)):
                    pos += 1
            else:
                lead_ok = not (cpt in (_CR, _LF) or fl & LETTER or fl & NUMBER)
                matched = False
                if (fl & LETTER and not _is_han(cpt)) or (lead_ok and non_han_letter(pos + 1)):
                    has_lead = False
                    if lead_ok:
                        has_lead = True
                        pos += 1
                    has_letters = False
                    while non_han_letter(pos):
                        has_letters = True
                        pos += 1
                    if has_letters or (not has_lead and non_han_letter(pos)):
                        if not has_letters:
                            pos += 1
                        while non_han_letter(pos):
                            pos += 1
                        if cpt_at(pos) == _APOS and pos + 1 < end:
                            c1 = cpt_at(pos + 1)
                            if c1 in _CONTRACTION_1:
                                pos += 2
                            elif pos + 2 < end and (c1, cpt_at(pos + 2)) in _CONTRACTION_2:
                                pos += 3
                        matched = True
                    elif has_lead:
                        pos -= 1
                if not matched:
                    if fl & NUMBER:
                        run = pos
                        while flags_at(pos) & NUMBER:
                            pos += 1
                            if pos - run >= 3:
                                out.append(pos - prev)
                                prev = pos
                                run = pos
                    else:
                        fl2 = flags_at(pos + 1) if cpt == _SP else fl
                        if not fl2 & (_WS | LETTER | NUMBER) and fl2:
                            pos += cpt == _SP
                            while not fl2 & (_WS | LETTER | NUMBER) and fl2:
                                pos += 1
                                fl2 = flags_at(pos)
                            while cpt_at(pos) in (_CR, _LF):
                                pos += 1
                        else:
                            n = 0
                            last_rn = 0
                            while flags_at(pos + n) & _WS:
                                if cpt_at(pos + n) in (_CR, _LF):
                                    last_rn = pos + n + 1
                                n += 1
                            if last_rn > 0:
                                pos = last_rn
                            elif n > 1 and pos + n < end:
                                pos += n - 1
                            elif n > 0:
                                pos += n
                            else:
                                pos += 1
            if pos > prev:
                out.append(pos - prev)
            prev = pos
    return out


def _split_digit_groups(cpts: list[int], flags: list[int], offsets: Offsets) -> Offsets:
    """AFMoE / Tiny Aya digits: a run of digits in threes from the right (the text before a run
    joins its first group, as in llama.cpp)."""
    out: Offsets = []
    start = 0
    for offset in offsets:
        ini, end = start, start + offset
        start = end
        prev = ini
        pos = ini
        while pos < end:
            if flags[pos] & NUMBER:
                first = pos
                while pos < end and flags[pos] & NUMBER:
                    pos += 1
                count = pos - first
                cur = first
                if count % 3:
                    cur += count % 3
                    out.append(cur - prev)
                    prev = cur
                while cur < first + count:
                    cur += 3
                    out.append(cur - prev)
                    prev = cur
                continue
            pos += 1
        if prev < end:
            out.append(end - prev)
    return out


def _split_newlines(cpts: list[int], flags: list[int], offsets: Offsets) -> Offsets:
    """[^\\n]+|[\\n]+"""
    out: Offsets = []
    start = 0
    for offset in offsets:
        pos, end = start, start + offset
        start = end
        while pos < end:
            nl = cpts[pos] == _LF
            run = pos
            while pos < end and (cpts[pos] == _LF) == nl:
                pos += 1
            out.append(pos - run)
    return out


_CUSTOM: dict[str, Splitter] = {
    REGEXES["GPT2"][0]: _split_gpt2,
    REGEXES["LLAMA3"][0]: _make_llama3(3, False),
    REGEXES["QWEN2"][0]: _make_llama3(1, False),
    REGEXES["QWEN35"][0]: _make_llama3(1, True),
    "\\p{Han}+": _split_kimi_k2,
    "\\p{AFMoE_digits}": _split_digit_groups,
    "[^\\n]+|[\\n]+": _split_newlines,
    "\\d{1,3}(?=(?:\\d{3})*\\b)": _split_digit_groups,
}

# --- the std::regex path ----------------------------------------------------------------------

_UCAT = {
    "\\p{N}": NUMBER,
    "\\p{L}": LETTER,
    "\\p{P}": PUNCTUATION,
    "\\p{M}": ACCENT_MARK,
    "\\p{S}": SYMBOL,
    "\\p{Lu}": LETTER,
    "\\p{Ll}": LETTER,
    "\\p{Lt}": LETTER,
    "\\p{Lm}": LETTER,
    "\\p{Lo}": LETTER,
}
_UCAT_CHAR = {NUMBER: "\xd1", LETTER: "\xd2", PUNCTUATION: "\xd3", ACCENT_MARK: "\xd4", SYMBOL: "\xd5"}
_UCAT_ASCII = {
    NUMBER: "\x30-\x39",
    LETTER: "\x41-\x5a\x61-\x7a",
    PUNCTUATION: "\x21-\x23\x25-\x2a\x2c-\x2f\x3a-\x3b\x3f-\x40\\\x5b-\\\x5d\x5f\\\x7b\\\x7d",
    ACCENT_MARK: "",
    SYMBOL: "\\\x24\\\x2b\x3c-\x3e\x5e\x60\\\x7c\\\x7e",
}


def uses_categories(expr: str) -> bool:
    return any(cat in expr for cat in _UCAT)


def collapse_regex(expr: str) -> str:
    """llama.cpp's rewrite of \\p{..} classes into collapsed-byte classes."""
    out = []
    inside = False
    i = 0
    while i < len(expr):
        ch = expr[i]
        if ch == "[" and (i == 0 or expr[i - 1] != "\\"):
            out.append("[")
            inside = True
        elif inside and ch == "]" and expr[i - 1] != "\\":
            out.append("]")
            inside = False
        elif ch == "\\" and i + 3 < len(expr) and expr[i + 1] == "p" and expr[i + 2] == "{":
            close = expr.find("}", i + 3)
            pat = expr[i : close + 1] if 0 <= close <= i + 10 else ""
            if pat in _UCAT:
                cat = _UCAT[pat]
                body = _UCAT_CHAR[cat] + _UCAT_ASCII[cat]
                out.append(body if inside else "[" + body + "]")
                i = close + 1
                continue
            out.append(ch)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _to_python(expr: str) -> str:
    # ECMAScript's $ (no multiline) is the end of the input only
    if expr.endswith("$") and not expr.endswith("\\$"):
        expr = expr[:-1] + "\\Z"
    return expr


class PreTokenizer:
    """A compiled regex list; ``split(text)`` gives the words llama.cpp's BPE session merges."""

    def __init__(self, exprs: Sequence[str], byte_level: bool = True) -> None:
        self.exprs = tuple(exprs)
        self.byte_level = byte_level
        self._steps: list[tuple[str, object]] = []
        for expr in self.exprs:
            if expr in _CUSTOM:
                self._steps.append(("custom", _CUSTOM[expr]))
            elif uses_categories(expr):
                if any(ord(c) >= 128 for c in expr):
                    raise ValueError(f"regex {expr!r} mixes unicode categories and non-ASCII characters")
                self._steps.append(("collapsed", re.compile(_to_python(collapse_regex(expr)), re.ASCII)))
            else:
                self._steps.append(("wide", re.compile(_to_python(expr), re.ASCII)))
        self._need_collapse = any(kind == "collapsed" for kind, _ in self._steps)

    def split(self, text: str) -> list[str]:
        if not text:
            return []
        cpts = codepoints(text).tolist()
        flags = text_flags(text)
        offsets = [len(cpts)]
        collapsed = wide = None
        for kind, step in self._steps:
            if kind == "custom":
                offsets = step(cpts, flags, offsets)  # type: ignore[operator]
                continue
            if kind == "collapsed":
                if collapsed is None:
                    collapsed = _collapse_text(text, cpts, flags)
                subject = collapsed
            else:
                if wide is None:
                    wide = _wide_text(text, cpts, flags)
                subject = wide
            offsets = _regex_split(step, subject, offsets)  # type: ignore[arg-type]
        words = []
        pos = 0
        for n in offsets:
            words.append(text[pos : pos + n])
            pos += n
        if self.byte_level:
            return [byte_encode(w) for w in words]
        return words


def _collapse_text(text: str, cpts: list[int], flags: list[int]) -> str:
    out = []
    for ch, cpt, fl in zip(text, cpts, flags, strict=True):
        if cpt < 128:
            out.append(ch)
        elif fl & _WS:
            out.append("\x0b")
        else:
            out.append(_UCAT_CHAR.get(fl & MASK_CATEGORIES, "\xd0"))
    return "".join(out)


def _wide_text(text: str, cpts: list[int], flags: list[int]) -> str:
    if all(c < 128 for c in cpts):
        return text
    return "".join(
        "\x0b" if c > 0x7F and fl & _WS else ch for ch, c, fl in zip(text, cpts, flags, strict=True)
    )


def _regex_split(pattern: re.Pattern[str], subject: str, offsets: Offsets) -> Offsets:
    out: Offsets = []
    start = 0
    for offset in offsets:
        piece = subject[start : start + offset]
        last = 0
        for m in pattern.finditer(piece):
            a, b = m.span()
            if a > last:
                out.append(a - last)
            out.append(b - a)
            last = b
        if last < offset:
            out.append(offset - last)
        start += offset
    return out
