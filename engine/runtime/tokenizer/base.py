"""The tokenizer of a GGUF model: vocabulary, special tokens, encode and decode, as llama.cpp does them.

This is a port of llama.cpp's ``llama_vocab`` (src/llama-vocab.cpp): the same defaults and metadata keys,
the same detection of end-of-generation tokens by their text, the same special-token splitting, the same
SPM and BPE algorithms and the same detokenizer (with its space clean-up), so that ids match llama.cpp's
for every input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from engine.errors import ModelError
from engine.runtime.tokenizer.bpe import BPESession, make_pre_tokenizer, merge_ranks, pre_tokenizer_for
from engine.runtime.tokenizer.special import (
    ATTR_BYTE,
    ATTR_CONTROL,
    ATTR_LSTRIP,
    ATTR_NORMAL,
    ATTR_RSTRIP,
    ATTR_UNKNOWN,
    ATTR_UNUSED,
    ATTR_USER_DEFINED,
    SpecialMatcher,
)
from engine.runtime.tokenizer.spm import spm_tokenize
from engine.runtime.tokenizer.unicode import byte_decode

# tokenizer.ggml.token_type (llama_token_type) -> llama_token_attr
_TYPE_TO_ATTR = np.array(
    [0, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_CONTROL, ATTR_USER_DEFINED, ATTR_UNUSED, ATTR_BYTE]
)

_SPECIAL_KEYS = (
    ("bos", "tokenizer.ggml.bos_token_id"),
    ("eos", "tokenizer.ggml.eos_token_id"),
    ("eot", "tokenizer.ggml.eot_token_id"),
    ("eom", "tokenizer.ggml.eom_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"),
    ("sep", "tokenizer.ggml.seperator_token_id"),
    ("pad", "tokenizer.ggml.padding_token_id"),
    ("mask", "tokenizer.ggml.mask_token_id"),
    ("fim_pre", "tokenizer.ggml.fim_pre_token_id"),
    ("fim_suf", "tokenizer.ggml.fim_suf_token_id"),
    ("fim_mid", "tokenizer.ggml.fim_mid_token_id"),
    ("fim_pad", "tokenizer.ggml.fim_pad_token_id"),
    ("fim_rep", "tokenizer.ggml.fim_rep_token_id"),
    ("fim_sep", "tokenizer.ggml.fim_sep_token_id"),
    ("fim_pre", "tokenizer.ggml.prefix_token_id"),  # deprecated names
    ("fim_suf", "tokenizer.ggml.suffix_token_id"),
    ("fim_mid", "tokenizer.ggml.middle_token_id"),
)

# texts that make a token a special token of some kind when the metadata does not say (llama.cpp's list)
_AUTO_TEXTS = {
    "eot": (
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<|end_of_text|>",
        "<EOT>",
        "_<EOT>",
        "[EOT]",
        "<｜end▁of▁sentence｜>",
        "<end_of_utterance>",
    ),
    "eom": ("<|eom_id|>",),
    "fim_pre": (
        "<|fim_prefix|>",
        "<fim-prefix>",
        "<fim_prefix>",
        "<｜fim▁begin｜>",
        "<PRE>",
        "▁<PRE>",
        "<|code_prefix|>",
        "<|prefix|>",
    ),
    "fim_suf": (
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<｜fim▁hole｜>",
        "<SUF>",
        "▁<SUF>",
        "<|code_suffix|>",
        "<|suffix|>",
    ),
    "fim_mid": (
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<｜fim▁end｜>",
        "<MID>",
        "▁<MID>",
        "<|code_middle|>",
        "<|middle|>",
    ),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_EOG_TEXTS = (
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
)
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")  # gpt-oss

_ESCAPED_SPACE = "\u2581"  # ▁


_DICT_SLICE = 16384  # tokens hashed per GIL-holding call while building the vocabulary


class Tokenizer:
    """A model's tokenizer, built from its GGUF metadata (``Tokenizer.from_gguf(model)``).

    Besides the methods: ``kind`` ("spm" or "bpe"), ``model`` (tokenizer.ggml.model),
    ``pre_tokenizer`` (tokenizer.ggml.pre as used, "" for SPM), and llama.cpp's vocabulary flags
    ``add_bos``, ``add_eos``, ``add_space_prefix``, ``clean_spaces``, ``ignore_merges``.
    Construction raises :class:`engine.errors.ModelError` for a vocabulary Kvant cannot reproduce.
    """

    def __init__(self, get: Callable[[str], Any]) -> None:
        self._load(get)

    @classmethod
    def from_gguf(cls, model: Any) -> Tokenizer:
        """Build the tokenizer of an opened GGUF model (:class:`engine.gguf.GGUFModel`)."""
        return cls(lambda key: model.get(key))

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> Tokenizer:
        """Build a tokenizer from plain metadata values (key -> value)."""
        return cls(metadata.get)

    # --- loading (llama_vocab::impl::load) -----------------------------------------------------

    def _load(self, get: Callable[[str], Any]) -> None:
        model = get("tokenizer.ggml.model")
        if model is None:
            raise ModelError("the model has no tokenizer (tokenizer.ggml.model is missing)")
        pre = get("tokenizer.ggml.pre")
        pre = "" if pre is None else str(pre)
        self.model = str(model)
        ids: dict[str, int] = dict.fromkeys((k for k, _ in _SPECIAL_KEYS), -1)
        flags: tuple[str, ...] = ()
        if self.model == "llama":
            self.kind = "spm"
            ids.update(bos=1, eos=2, unk=0)
            self.pre_tokenizer = ""
            self.add_space_prefix, self.clean_spaces, self.add_bos, self.add_eos = True, False, True, False
            self.ignore_merges = False
        elif self.model == "gpt2":
            self.kind = "bpe"
            ids.update(bos=11, eos=11)
            self.pre_tokenizer = pre or "default"
            preset, flags = pre_tokenizer_for(self.pre_tokenizer)
            self.add_space_prefix = False
            self.add_bos = "add_bos" in flags
            self.add_eos = False
            self.clean_spaces = "no_clean_spaces" not in flags
            self.ignore_merges = "ignore_merges" in flags
            if "no_bos" in flags:
                ids["bos"] = -1
            merges = get("tokenizer.ggml.merges")
            if merges is None and self.pre_tokenizer != "kimi-k2":
                raise ModelError("the BPE tokenizer has no merges (tokenizer.ggml.merges is missing)")
            self._ranks = merge_ranks(merges or [])
            self._pre = make_pre_tokenizer(preset)
        else:
            raise ModelError(
                f"the tokenizer model {self.model!r} (tokenizer.ggml.model) is not supported; "
                "Kvant reads 'llama' (SentencePiece) and 'gpt2' (byte-level BPE) vocabularies"
            )
        value = get("tokenizer.ggml.add_space_prefix")
        if value is not None:
            self.add_space_prefix = bool(value)

        tokens = get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not tokens:
            raise ModelError("the model has no vocabulary (tokenizer.ggml.tokens is missing or empty)")
        n = len(tokens)
        texts = (
            [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)] if not all(tokens) else list(tokens)
        )
        # In slices: one dict() call over 262k new strings holds the GIL for ~60 ms (hashing them),
        # long enough to stall a GUI thread while a model loads in the background.
        token_to_id: dict[str, int] = {}
        for i in range(0, n, _DICT_SLICE):
            token_to_id.update(
                zip(texts[i : i + _DICT_SLICE], range(i, min(n, i + _DICT_SLICE)), strict=True)
            )
        if len(token_to_id) != n:
            seen: dict[str, int] = {}
            for i, t in enumerate(texts):
                if t in seen:
                    raise ModelError(f"duplicate token in the vocabulary: {t!r} has ids {seen[t]} and {i}")
                seen[t] = i
        scores = get("tokenizer.ggml.scores")
        if scores is not None:
            scores = np.asarray(scores)
            if scores.size < n:
                raise ModelError(f"tokenizer.ggml.scores has {scores.size} entries for {n} tokens")
            score_list = scores[:n].astype(np.float32).astype(np.float64).tolist()
        else:
            score_list = [0.0] * n
        types = get("tokenizer.ggml.token_type")
        if types is not None:
            types = np.asarray(types, dtype=np.int64)
            if types.size < n:
                raise ModelError(f"tokenizer.ggml.token_type has {types.size} entries for {n} tokens")
            types = types[:n]
            attrs = np.where(
                (types >= 0) & (types < len(_TYPE_TO_ATTR)), _TYPE_TO_ATTR[np.clip(types, 0, 6)], 0
            )
        else:
            attrs = np.full(n, ATTR_NORMAL)
        attrs = attrs.astype(np.int64)  # edited in place below, a list at the end

        # special token ids: defaults out of range are dropped, metadata in range wins
        for name, key in _SPECIAL_KEYS:
            if ids[name] >= n:
                ids[name] = -1
            value = get(key)
            if value is None:
                continue
            value = int(value)
            if 0 <= value < n:
                ids[name] = value
        for key, attr in (
            ("tokenizer.ggml.add_bos_token", "add_bos"),
            ("tokenizer.ggml.add_eos_token", "add_eos"),
        ):
            value = get(key)
            if value is not None:
                setattr(self, attr, bool(value))
        if self.add_bos and ids["bos"] < 0:
            raise ModelError("tokenizer.ggml.add_bos_token is true, but the model has no BOS token")
        if self.add_eos and ids["eos"] < 0:
            raise ModelError("tokenizer.ggml.add_eos_token is true, but the model has no EOS token")

        # special tokens found by their text (llama.cpp walks an unordered map; here: lowest id first)
        control = set(np.flatnonzero(attrs & ATTR_CONTROL).tolist())
        for name, candidates in _AUTO_TEXTS.items():
            if ids[name] >= 0:
                continue
            found = [token_to_id[t] for t in candidates if t in token_to_id]
            if found:
                ids[name] = min(found)
                attrs[ids[name]] |= ATTR_CONTROL
                control.add(ids[name])
        for i in control:  # control tokens named "unused..." are unused
            if "unused" in texts[i]:
                attrs[i] |= ATTR_UNUSED
        eog = {ids[k] for k in ("fim_pad", "fim_rep", "fim_sep") if ids[k] >= 0}
        for t in _EOG_TEXTS:
            i = token_to_id.get(t)
            if i is not None:
                eog.add(i)
                attrs[i] |= ATTR_CONTROL
        for t in _ALWAYS_RENDERED:
            i = token_to_id.get(t)
            if i is not None:
                attrs[i] = ATTR_USER_DEFINED
        eog.update(ids[k] for k in ("eos", "eot", "eom") if ids[k] >= 0)
        eog_texts = {texts[i]: i for i in eog}
        if "<|end|>" in eog_texts and (
            ("<|return|>" in eog_texts and ("<|call|>" in eog_texts or "<|calls|>" in eog_texts))
            or (("<|call|>" in eog_texts or "<|calls|>" in eog_texts) and "<|flush|>" in eog_texts)
        ):
            end = eog_texts["<|end|>"]
            eog.discard(end)
            attrs[end] = ATTR_USER_DEFINED
        if "<|tool_response>" in eog_texts and "</s>" in eog_texts:
            s = eog_texts["</s>"]
            eog.discard(s)
            attrs[s] = ATTR_NORMAL

        special = np.flatnonzero(attrs & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)).tolist()
        special.sort(key=lambda i: -len(texts[i].encode("utf-8", errors="surrogateescape")))

        # per-model attributes (llama.cpp sets them by name)
        name = str(get("general.name") or "").lower()
        arch = str(get("general.architecture") or "")
        if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or any(
            s in arch for s in ("nomic-bert-moe", "jina-bert-v3")
        ):
            if "<mask>" in token_to_id:
                attrs[token_to_id["<mask>"]] |= ATTR_LSTRIP
        elif "phi-3" in name or "phi3" in name:
            for i in special:
                attrs[i] |= ATTR_RSTRIP
            for t, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
                if t in token_to_id:
                    i = token_to_id[t]
                    attrs[i] = attrs[i] | ATTR_RSTRIP if on else attrs[i] & ~ATTR_RSTRIP
        elif "modern-bert" in name and "[MASK]" in token_to_id:
            attrs[token_to_id["[MASK]"]] |= ATTR_LSTRIP

        self._texts = texts
        self._scores = score_list
        self._attrs = attrs = attrs.tolist()
        self._token_to_id = token_to_id
        self._ids = ids
        self._eog = frozenset(eog)
        plain = [i for i in special if not attrs[i] & (ATTR_CONTROL | ATTR_UNKNOWN)]
        self._special_plain = SpecialMatcher(plain, texts, attrs)  # special=False: user-defined only
        self._special_all = SpecialMatcher(special, texts, attrs)

    # --- properties -------------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return len(self._texts)

    @property
    def bos_id(self) -> int | None:
        return self._ids["bos"] if self._ids["bos"] >= 0 else None

    @property
    def eos_id(self) -> int | None:
        return self._ids["eos"] if self._ids["eos"] >= 0 else None

    @property
    def eot_id(self) -> int | None:
        return self._ids["eot"] if self._ids["eot"] >= 0 else None

    @property
    def eog_ids(self) -> frozenset[int]:
        """Tokens that end generation (EOS, EOT, <end_of_turn>, <|im_end|>, <|eot_id|>, ...)."""
        return self._eog

    def special_id(self, name: str) -> int | None:
        """An id llama.cpp tracks by role: bos, eos, eot, eom, unk, sep, pad, mask, fim_pre ... fim_sep."""
        i = self._ids[name]
        return i if i >= 0 else None

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    def is_control(self, token: int) -> bool:
        return bool(self._attrs[token] & ATTR_CONTROL)

    def token_attr(self, token: int) -> int:
        """llama.cpp's llama_token_attr bits of a token."""
        return self._attrs[token]

    def token_text(self, token: int) -> str:
        """The vocabulary entry as stored in the GGUF (``▁`` / GPT-2 byte alphabet included)."""
        return self._texts[token]

    def token_id(self, text: str) -> int | None:
        """The id of a vocabulary entry, by its stored text."""
        return self._token_to_id.get(text)

    # --- encoding ---------------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of ``text``, as llama_tokenize. ``add_bos``: add BOS/EOS as the model's metadata
        says (llama.cpp's add_special); ``special``: turn special-token texts into their ids."""
        out: list[int] = []
        fragments = (self._special_all if special else self._special_plain).partition(text)
        if self.kind == "spm":
            if add_bos and self.add_bos:
                out.append(self._ids["bos"])
            prev_special = True
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                    prev_special = True
                    continue
                if self.add_space_prefix and prev_special:
                    frag = " " + frag
                spm_tokenize(frag.replace(" ", _ESCAPED_SPACE), self._token_to_id, self._scores, out)
                prev_special = False
            if add_bos and self.add_eos:
                out.append(self._ids["eos"])
        else:
            session = BPESession(self._token_to_id, self._ranks, self.ignore_merges)
            if add_bos and self.add_bos:
                out.append(self._ids["bos"])
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                else:
                    session.tokenize(self._pre.split(frag), out)
            if add_bos and self.add_eos:
                out.append(self._ids["eos"])
        return out

    # --- decoding ---------------------------------------------------------------------------------

    def token_to_piece(self, token: int, special: bool = True) -> bytes:
        """The raw bytes a token stands for (llama_token_to_piece). With ``special=False`` control and
        unknown tokens give ``b""``. Bytes, not str: one token may hold part of a UTF-8 character."""
        attr = self._attrs[token]
        if attr & (ATTR_UNKNOWN | ATTR_CONTROL):
            if not special:
                return b""
            return self._texts[token].encode("utf-8", errors="surrogateescape")
        text = self._texts[token]
        if attr & ATTR_USER_DEFINED:
            return text.encode("utf-8", errors="surrogateescape")
        if attr & ATTR_NORMAL:
            if self.kind == "spm":
                return text.replace(_ESCAPED_SPACE, " ").encode("utf-8", errors="surrogateescape")
            return byte_decode(text)
        if attr & ATTR_BYTE:
            return bytes([int(text[3:5], 16)])
        return b""

    def detokenize(
        self, tokens: Iterable[int], remove_special: bool = False, unparse_special: bool = True
    ) -> bytes:
        """llama_detokenize: the pieces joined, the first one's leading space dropped where the model adds
        one, BOS/EOS dropped with ``remove_special``, and llama.cpp's space clean-up for BPE models."""
        tokens = list(tokens)
        remove_space = self.add_space_prefix
        if remove_special and self.add_bos and tokens and tokens[0] == self._ids["bos"]:
            remove_space = False
            tokens = tokens[1:]
        if remove_special and self.add_eos and tokens and tokens[-1] == self._ids["eos"]:
            tokens = tokens[:-1]
        parts = []
        for token in tokens:
            piece = self.token_to_piece(token, unparse_special)
            if remove_space and piece[:1] == b" ":
                piece = piece[1:]
            remove_space = False
            parts.append(piece)
        text = b"".join(parts)
        return _clean_spaces(text) if self.clean_spaces else text

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Text of token ids. ``skip_special`` drops BOS/EOS and control tokens (llama.cpp's
        remove_special + not unparse_special); otherwise control tokens appear as their text."""
        data = self.detokenize(ids, remove_special=skip_special, unparse_special=not skip_special)
        return data.decode("utf-8", errors="replace")


def _clean_spaces(data: bytes) -> bytes:
    """The three clean-up passes of llama_vocab::impl::detokenize, byte for byte."""
    text = bytearray(data)
    total = len(text)
    sp, apos = 0x20, 0x27

    # " ?", " !", " .", " ,"
    total1 = total
    total = 1 if total else 0
    for i in range(1, total1):
        x = text[i]
        if text[i - 1] == sp and x in b"?!.,":
            total -= 1
        text[total] = x
        total += 1

    # a lone apostrophe between spaces
    total2 = total
    total = 1 if total else 0
    i = 1
    while i < total2:
        x = text[i]
        if x == apos and i + 1 < total2 and text[i - 1] == sp and text[i + 1] == sp:
            total -= 1
            i += 1
            text[i] = 0
        text[total] = x
        total += 1
        i += 1

    # " 's", " 'm", " 're", " 've"
    total3 = total
    total = 1 if total else 0
    for i in range(1, total3):
        x = text[i]
        if text[i - 1] == sp and x == apos and i + 1 < total3:
            x1 = text[i + 1]
            if x1 in b"td":
                pass
            elif x1 in b"sm":
                total -= 1
            elif i + 2 < total3:
                x2 = text[i + 2]
                if (x1, x2) in ((ord("r"), ord("e")), (ord("v"), ord("e"))):
                    total -= 1
        text[total] = x
        total += 1
    return bytes(text[:total])
