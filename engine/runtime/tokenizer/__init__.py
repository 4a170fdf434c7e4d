"""Tokenizers read from GGUF metadata, identical to llama.cpp's: SentencePiece-style (``llama``) and
byte-level BPE (``gpt2``, with llama.cpp's pre-tokenizers), special tokens, streaming decode.

``Tokenizer.from_gguf(model)`` builds one from an opened :class:`engine.gguf.GGUFModel`;
``encode(text, add_bos=True, special=False)`` and ``decode(ids, skip_special=False)`` behave as
llama_tokenize and llama_detokenize; :class:`StreamDecoder` turns ids into text deltas one at a time.
"""

from engine.runtime.tokenizer.base import Tokenizer
from engine.runtime.tokenizer.stream import StreamDecoder

__all__ = ["StreamDecoder", "Tokenizer"]
