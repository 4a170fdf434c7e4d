# ruff: noqa: E501  (llama.cpp's regexes are kept verbatim, one per line)
"""Pre-tokenizer presets of llama.cpp's BPE tokenizer, ported from its src/llama-vocab.cpp.

``PRE_TOKENIZERS`` maps a GGUF ``tokenizer.ggml.pre`` name to the preset (regex list) it selects and the
vocabulary flags llama.cpp sets with it; ``REGEXES`` holds llama.cpp's regex lists verbatim (its
std::regex / custom-splitter input, before unicode-category collapsing).
"""

from __future__ import annotations

REGEXES: dict[str, tuple[str, ...]] = {}

REGEXES["LLAMA3"] = (
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
REGEXES["DBRX"] = REGEXES["LLAMA3"]
REGEXES["SMAUG"] = REGEXES["LLAMA3"]
REGEXES["CHATGLM4"] = REGEXES["LLAMA3"]
REGEXES["JAIS2"] = (
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s{512}(?!\\S)|\\s{256}(?!\\S)|\\s{128}(?!\\S)|\\s{64}(?!\\S)|\\s{32}(?!\\S)|\\s{16}(?!\\S)|\\s{8}(?!\\S)|\\s{4}(?!\\S)|\\s{1,2}(?!\\S)|\\s{1}",
)
REGEXES["DEEPSEEK_LLM"] = (
    "[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    "\\s?[!-/:-~！-／：-～‘-‟\u3000-。]+",
    "\\s+$",
    "[一-龥ࠀ-一가-\ud7ff]+",
    "\\p{N}+",
)
REGEXES["DEEPSEEK3_LLM"] = (
    "\\p{N}{1,3}",
    "[一-龥\u3040-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
)
REGEXES["HUNYUAN_DENSE"] = REGEXES["DEEPSEEK3_LLM"]
REGEXES["JOYAI_LLM"] = REGEXES["DEEPSEEK3_LLM"]
REGEXES["HY_V4"] = REGEXES["DEEPSEEK3_LLM"]
REGEXES["SPARK2_5"] = (
    "\\p{N}{1,3}",
    "[一-龥\u3040-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+|[\r\n]|\\s+(?!\\S)|\\s+",
    "\\p{N}",
)
REGEXES["YOUTU"] = (
    "[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥\u3040-ゟ゠-ヿ]+",
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
REGEXES["DEEPSEEK_CODER"] = (
    "[\r\n]",
    "\\s?\\p{L}+",
    "\\s?\\p{P}+",
    "[一-龥ࠀ-一가-\ud7ff]+",
    "\\p{N}",
)
REGEXES["FALCON"] = (
    "[\\p{P}\\$\\+<=>\\^~\\|`]+",
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
    "[0-9][0-9][0-9]",
)
REGEXES["STARCODER"] = (
    "\\p{N}",
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
)
REGEXES["REFACT"] = REGEXES["STARCODER"]
REGEXES["COMMAND_R"] = REGEXES["STARCODER"]
REGEXES["SMOLLM"] = REGEXES["STARCODER"]
REGEXES["CODESHELL"] = REGEXES["STARCODER"]
REGEXES["EXAONE"] = REGEXES["STARCODER"]
REGEXES["MINERVA"] = REGEXES["STARCODER"]
REGEXES["MELLUM2"] = REGEXES["STARCODER"]
REGEXES["GPT2"] = ("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",)
REGEXES["MPT"] = REGEXES["GPT2"]
REGEXES["OLMO"] = REGEXES["GPT2"]
REGEXES["JAIS"] = REGEXES["GPT2"]
REGEXES["TRILLION"] = REGEXES["GPT2"]
REGEXES["GRANITE_DOCLING"] = REGEXES["GPT2"]
REGEXES["STABLELM2"] = (
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
REGEXES["QWEN2"] = REGEXES["STABLELM2"]
REGEXES["HUNYUAN"] = REGEXES["STABLELM2"]
REGEXES["SOLAR_OPEN"] = REGEXES["STABLELM2"]
REGEXES["GROK_2"] = REGEXES["STABLELM2"]
REGEXES["QWEN35"] = (
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
REGEXES["PORO"] = (" ?[^(\\s|.,!?…。，、।۔،)]+",)
REGEXES["BLOOM"] = REGEXES["PORO"]
REGEXES["GPT3_FINNISH"] = REGEXES["PORO"]
REGEXES["VIKING"] = (
    " ?[^(\\s|.,!?…。，、।۔،)]+",
    "\\p{N}",
)
REGEXES["TEKKEN"] = (
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
REGEXES["CHAMELEON"] = (
    "<sentinel:[0-9]+>",
    "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
    "([\\t\\n]|    |  )",
    "\\p{N}",
    "[\\p{P}!-/:-@\\[-`{-~]",
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
)
REGEXES["GPT4O"] = (
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
REGEXES["MINIMAX_M2"] = REGEXES["GPT4O"]
REGEXES["GRANITE_EMB_MULTI"] = (
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}\\p{M}])([^a-z]))*((?=[\\p{L}\\p{M}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}\\p{M}])([^a-z]))+((?=[\\p{L}\\p{M}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
REGEXES["TINY_AYA"] = (
    "\\d{1,3}(?=(?:\\d{3})*\\b)",
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
REGEXES["KIMI_K2"] = ("\\p{Han}+",)
REGEXES["BAILINGMOE"] = (
    "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",
)
REGEXES["SEED_CODER"] = (
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
REGEXES["UFAKZEKA"] = (
    "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
REGEXES["AFMOE"] = (
    "\\p{AFMoE_digits}",
    "[一-鿿㐀-䶿豈-\ufaff\u3040-ゟ゠-ヿ･-ﾟ⼀-\u2fdfเ-\u0e7f\u0e80-\u0effក-\u17ffက-႟ꩠ-ꩿꧠ-\ua9ff가-\ud7afᄀ-ᇿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
REGEXES["LAGUNA"] = (
    "[^\\n]+|[\\n]+",
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
REGEXES["EXAONE_MOE"] = (
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",
)
REGEXES["MINICPM5"] = (
    "\\p{N}{1,3}",
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
REGEXES["DEFAULT"] = (
    "[\\p{P}\\$\\+<=>\\^~\\|]+",
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
    "\\p{N}+",
    "[0-9][0-9][0-9]",
)

# name -> (preset, flags): flags override the BPE defaults (add_bos=False, clean_spaces=True,
# ignore_merges=False); "no_bos" clears the BOS id, as llama.cpp does for GLM.
PRE_TOKENIZERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "default": ("DEFAULT", ()),
    "minicpm5": ("MINICPM5", ("ignore_merges",)),
    "llama3": ("LLAMA3", ("ignore_merges", "add_bos")),
    "llama-v3": ("LLAMA3", ("ignore_merges", "add_bos")),
    "llama-bpe": ("LLAMA3", ("ignore_merges", "add_bos")),
    "falcon3": ("LLAMA3", ("ignore_merges", "add_bos")),
    "falcon-h1": ("LLAMA3", ("ignore_merges", "add_bos")),
    "pixtral": ("LLAMA3", ("ignore_merges", "add_bos")),
    "midm-2.0": ("LLAMA3", ("ignore_merges", "add_bos")),
    "lfm2": ("LLAMA3", ("ignore_merges", "add_bos")),
    "jina-v5-nano": ("LLAMA3", ("ignore_merges", "add_bos")),
    "deepseek-llm": ("DEEPSEEK_LLM", ("no_clean_spaces",)),
    "deepseek-coder": ("DEEPSEEK_CODER", ("no_clean_spaces",)),
    "deepseek-v3": ("DEEPSEEK3_LLM", ("no_clean_spaces",)),
    "spark2_5": ("SPARK2_5", ("no_clean_spaces",)),
    "youtu": ("YOUTU", ("no_clean_spaces", "ignore_merges")),
    "falcon": ("FALCON", ()),
    "mpt": ("MPT", ()),
    "starcoder": ("STARCODER", ()),
    "gpt-2": ("GPT2", ()),
    "phi-2": ("GPT2", ()),
    "jina-es": ("GPT2", ()),
    "jina-de": ("GPT2", ()),
    "gigachat": ("GPT2", ()),
    "jina-v2-es": ("GPT2", ()),
    "jina-v2-de": ("GPT2", ()),
    "a.x-4.0": ("GPT2", ()),
    "mellum": ("GPT2", ()),
    "modern-bert": ("GPT2", ()),
    "jais-2": ("JAIS2", ()),
    "jina-v1-en": ("GPT2", ()),
    "jina-v2-code": ("GPT2", ()),
    "roberta-bpe": ("GPT2", ()),
    "refact": ("REFACT", ()),
    "command-r": ("COMMAND_R", ("no_clean_spaces",)),
    "qwen2": ("QWEN2", ("no_clean_spaces",)),
    "deepseek-r1-qwen": ("QWEN2", ("no_clean_spaces",)),
    "kormo": ("QWEN2", ("no_clean_spaces",)),
    "f2llmv2": ("QWEN2", ("no_clean_spaces",)),
    "qwen35": ("QWEN35", ("no_clean_spaces",)),
    "stablelm2": ("STABLELM2", ()),
    "olmo": ("OLMO", ()),
    "dbrx": ("DBRX", ()),
    "smaug-bpe": ("SMAUG", ()),
    "poro-chat": ("PORO", ("no_clean_spaces",)),
    "chatglm-bpe": ("CHATGLM4", ("no_bos",)),
    "glm4": ("CHATGLM4", ("ignore_merges", "no_bos")),
    "glm5": ("CHATGLM4", ("ignore_merges", "no_bos")),
    "viking": ("VIKING", ("no_clean_spaces",)),
    "jais": ("JAIS", ()),
    "tekken": ("TEKKEN", ("no_clean_spaces", "ignore_merges", "add_bos")),
    "smollm": ("SMOLLM", ("no_clean_spaces",)),
    "codeshell": ("CODESHELL", ()),
    "bloom": ("BLOOM", ()),
    "gpt3-finnish": ("GPT3_FINNISH", ()),
    "exaone": ("EXAONE", ()),
    "exaone4": ("GPT2", ()),
    "exaone-moe": ("EXAONE_MOE", ()),
    "chameleon": ("CHAMELEON", ("add_bos", "no_clean_spaces")),
    "minerva-7b": ("MINERVA", ()),
    "megrez": ("QWEN2", ()),
    "gpt-4o": ("GPT4O", ("no_clean_spaces",)),
    "llama4": ("GPT4O", ("no_clean_spaces",)),
    "kanana2": ("GPT4O", ("no_clean_spaces",)),
    "talkie": ("GPT4O", ("no_clean_spaces",)),
    "granite-embed-multi-97m": ("GRANITE_EMB_MULTI", ("no_clean_spaces", "ignore_merges")),
    "tiny_aya": ("TINY_AYA", ("no_clean_spaces",)),
    "cohere2moe": ("TINY_AYA", ("no_clean_spaces",)),
    "trillion": ("TRILLION", ("no_clean_spaces",)),
    "granite-docling": ("GRANITE_DOCLING", ("no_clean_spaces",)),
    "bailingmoe": ("BAILINGMOE", ("no_clean_spaces",)),
    "bailingmoe2": ("BAILINGMOE", ("no_clean_spaces",)),
    "llada-moe": ("BAILINGMOE", ("no_clean_spaces",)),
    "seed-coder": ("SEED_CODER", ("no_clean_spaces",)),
    "hunyuan": ("HUNYUAN", ("no_clean_spaces",)),
    "hunyuan-dense": ("HUNYUAN_DENSE", ("no_clean_spaces",)),
    "hy_v4": ("HY_V4", ("no_clean_spaces",)),
    "joyai-llm": ("JOYAI_LLM", ("no_clean_spaces",)),
    "kimi-k2": ("KIMI_K2", ("no_clean_spaces",)),
    "ufakzeka": ("UFAKZEKA", ("no_clean_spaces",)),
    "grok-2": ("GROK_2", ("no_clean_spaces",)),
    "afmoe": ("AFMOE", ("no_clean_spaces",)),
    "laguna": ("LAGUNA", ("no_clean_spaces",)),
    "minimax-m2": ("MINIMAX_M2", ("no_clean_spaces",)),
    "solar-open": ("SOLAR_OPEN", ("no_clean_spaces",)),
    "mellum2": ("MELLUM2", ()),
}
