"""Chat templates: llama.cpp's built-in formats, real Hugging Face templates, and the sandbox.

The expected strings of the built-in formats were written by reading llama.cpp's ``llm_chat_apply_template``
(``src/llama-chat.cpp``); where llama-cpp-python is installed, the last test also asks the real function.
"""

from __future__ import annotations

import ctypes
import datetime
import json
from pathlib import Path

import pytest

from engine.errors import KvantError, TemplateError
from engine.runtime.chat_template import BUILTIN_FORMATS, ChatTemplate, builtin_format_for

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"

CONV = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi!"},
    {"role": "user", "content": "How are you?"},
]

# llm_chat_apply_template(CONV, add_ass=true), derived by hand from llama.cpp's source.
EXPECTED = {
    "chatml": "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
    "<|im_start|>assistant\nHi!<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n",
    "gemma": "<start_of_turn>user\nYou are terse.\n\nHello<end_of_turn>\n"
    "<start_of_turn>model\nHi!<end_of_turn>\n"
    "<start_of_turn>user\nHow are you?<end_of_turn>\n<start_of_turn>model\n",
    "llama3": "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHi!<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "llama2": "[INST] You are terse.\nHello [/INST]Hi!</s>[INST] How are you? [/INST]",
    "llama2-sys": "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\n"
    "Hello [/INST]Hi!</s>[INST] How are you? [/INST]",
    "mistral-v1": " [INST] You are terse.\n\nHello [/INST] Hi!</s> [INST] How are you? [/INST]",
    "mistral-v3": "[INST] You are terse.\n\nHello[/INST] Hi!</s>[INST] How are you?[/INST]",
    "mistral-v3-tekken": "[INST]You are terse.\n\nHello[/INST]Hi!</s>[INST]How are you?[/INST]",
    "mistral-v7": "[SYSTEM_PROMPT] You are terse.[/SYSTEM_PROMPT]"
    "[INST] Hello[/INST] Hi!</s>[INST] How are you?[/INST]",
    "phi3": "<|system|>\nYou are terse.<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi!<|end|>\n"
    "<|user|>\nHow are you?<|end|>\n<|assistant|>\n",
}


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


# --- built-in formats ---------------------------------------------------------------------------------------


def test_every_builtin_has_an_expected_string():
    assert set(EXPECTED) == set(BUILTIN_FORMATS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_matches_llama_cpp(name):
    t = ChatTemplate.builtin(name)
    assert t.source == f"builtin:{name}"
    assert t.render(CONV) == EXPECTED[name]


def test_builtin_add_generation_prompt_false():
    conv = CONV[:2]
    assert ChatTemplate.builtin("chatml").render(conv, add_generation_prompt=False) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
    )
    assert ChatTemplate.builtin("gemma").render(conv, add_generation_prompt=False) == (
        "<start_of_turn>user\nYou are terse.\n\nHello<end_of_turn>\n"
    )
    assert ChatTemplate.builtin("phi3").render(conv, add_generation_prompt=False).endswith("Hello<|end|>\n")
    # llama.cpp ignores add_ass for the [INST] formats: the user turn already ends the prompt.
    assert ChatTemplate.builtin("llama2").render(conv, add_generation_prompt=False) == (
        "[INST] You are terse.\nHello [/INST]"
    )


def test_gemma_single_user_turn():
    assert ChatTemplate.builtin("gemma").render([{"role": "user", "content": "Hello"}]) == (
        "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"
    )


def test_gemma_folds_system_into_first_user_turn_and_trims():
    msgs = [
        {"role": "system", "content": "  Be brief.\n"},
        {"role": "user", "content": " Hi there \n"},
    ]
    assert ChatTemplate.builtin("gemma").render(msgs) == (
        "<start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n<start_of_turn>model\n"
    )


def test_gemma_multi_turn_without_system():
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    assert ChatTemplate.builtin("gemma").render(msgs, add_generation_prompt=False) == (
        "<start_of_turn>user\na<end_of_turn>\n<start_of_turn>model\nb<end_of_turn>\n"
        "<start_of_turn>user\nc<end_of_turn>\n<start_of_turn>model\nd<end_of_turn>\n"
    )


def test_gemma_system_waits_for_a_user_turn_and_concatenates():
    # As llama.cpp: system prompts accumulate (no separator) and go to the next *user* turn.
    msgs = [
        {"role": "system", "content": "s1"},
        {"role": "system", "content": "s2"},
        {"role": "assistant", "content": "m"},
        {"role": "user", "content": "u"},
    ]
    assert ChatTemplate.builtin("gemma").render(msgs) == (
        "<start_of_turn>model\nm<end_of_turn>\n<start_of_turn>user\ns1s2\n\nu<end_of_turn>\n<start_of_turn>model\n"
    )


def test_trimming_differs_between_formats():
    msgs = [{"role": "user", "content": "  x \n"}]
    assert (
        ChatTemplate.builtin("chatml").render(msgs)
        == "<|im_start|>user\n  x \n<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (
        ChatTemplate.builtin("llama3")
        .render(msgs)
        .startswith("<|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>")
    )


def test_unknown_builtin():
    with pytest.raises(TemplateError, match="no built-in chat format 'vicuna'"):
        ChatTemplate.builtin("vicuna")


def test_builtin_stop_strings():
    assert ChatTemplate.builtin("gemma", eos_token="<eos>").stop_strings == ("<end_of_turn>", "<eos>")
    assert ChatTemplate.builtin("chatml").stop_strings == ("<|im_end|>",)
    assert ChatTemplate.builtin("llama3").stop_strings == ("<|eot_id|>",)
    assert ChatTemplate.builtin("phi3").stop_strings == ("<|end|>",)
    assert ChatTemplate.builtin("mistral-v7", eos_token="</s>").stop_strings == ("</s>",)


@pytest.mark.parametrize(
    ("arch", "tokens", "expected"),
    [
        ("gemma3", None, "gemma"),
        ("gemma2", None, "gemma"),
        ("gemma", None, "gemma"),
        ("qwen2", None, "chatml"),
        ("qwen3", None, "chatml"),
        ("phi3", None, "phi3"),
        ("llama", ["<|begin_of_text|>", "<|start_header_id|>", "<|eot_id|>"], "llama3"),
        ("llama", ["<s>", "</s>", "[INST]", "[/INST]"], "mistral-v3"),
        ("llama", ["<s>", "[INST]", "[SYSTEM_PROMPT]"], "mistral-v7"),
        ("llama", ["<s>", "</s>", "<unk>"], "llama2-sys"),
        ("mamba", None, "chatml"),
        (None, None, "chatml"),
    ],
)
def test_builtin_format_for_architecture(arch, tokens, expected):
    assert builtin_format_for(arch, tokens) == expected


# --- real Hugging Face templates ---------------------------------------------------------------------------


def test_gemma3_hf_template_matches_builtin():
    t = ChatTemplate.from_jinja(fixture("gemma3_it.jinja"), bos_token="<bos>", eos_token="<eos>")
    assert t.render(CONV) == EXPECTED["gemma"]
    assert t.render(CONV[1:]) == ChatTemplate.builtin("gemma").render(CONV[1:])
    assert t.render(CONV[:2], add_generation_prompt=False) == (
        "<start_of_turn>user\nYou are terse.\n\nHello<end_of_turn>\n"
    )
    assert "<end_of_turn>" in t.stop_strings and "<eos>" in t.stop_strings


def test_gemma3_hf_template_keeps_bos_when_the_tokenizer_does_not_add_it():
    t = ChatTemplate.from_jinja(fixture("gemma3_it.jinja"), bos_token="<bos>", strip_bos=False)
    assert t.render([{"role": "user", "content": "Hi"}]) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    )


def test_gemma3_hf_template_raise_exception():
    t = ChatTemplate.from_jinja(fixture("gemma3_it.jinja"), bos_token="<bos>")
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(TemplateError, match="rejected the conversation: Conversation roles must alternate"):
        t.render(msgs)


def test_llama3_hf_template():
    t = ChatTemplate.from_jinja(fixture("llama3_instruct.jinja"), bos_token="<|begin_of_text|>")
    assert t.render(CONV) == EXPECTED["llama3"]
    assert "<|eot_id|>" in t.stop_strings
    raw = ChatTemplate.from_jinja(
        fixture("llama3_instruct.jinja"), bos_token="<|begin_of_text|>", strip_bos=False
    )
    assert raw.render(CONV[:2], add_generation_prompt=False) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
    )


def test_mistral_hf_template():
    t = ChatTemplate.from_jinja(fixture("mistral_instruct_v0.2.jinja"), bos_token="<s>", eos_token="</s>")
    conv = CONV[1:]
    assert t.render(conv) == "[INST] Hello [/INST]Hi!</s>[INST] How are you? [/INST]"
    # llama.cpp detects this template as its "llama2" format, which gives the same text.
    assert t.render(conv) == ChatTemplate.builtin("llama2").render(conv)
    assert t.stop_strings == ("</s>",)
    with pytest.raises(TemplateError, match="Conversation roles must alternate"):
        t.render(CONV)


QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def test_qwen_hf_template_without_tools():
    t = ChatTemplate.from_jinja(fixture("qwen2.5_instruct.jinja"), eos_token="<|im_end|>")
    assert t.render([{"role": "user", "content": "Hi"}]) == (
        f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert t.render(CONV) == EXPECTED["chatml"]
    assert t.stop_strings == ("<|im_end|>",)


def test_qwen_hf_template_with_tools_uses_hf_tojson():
    t = ChatTemplate.from_jinja(fixture("qwen2.5_instruct.jinja"))
    tools = [
        {"type": "function", "function": {"name": "get_weather", "description": "°C in a <city> & more"}}
    ]
    out = t.render([{"role": "user", "content": "Weather?"}], tools=tools)
    # Hugging Face's tojson: no HTML escaping, non-ASCII kept, default separators.
    tool_json = (
        '{"type": "function", "function": {"name": "get_weather", "description": "°C in a <city> & more"}}'
    )
    assert out == (
        f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{tool_json}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tools_must_be_json():
    t = ChatTemplate.from_jinja(fixture("qwen2.5_instruct.jinja"))
    with pytest.raises(TemplateError, match="JSON"):
        t.render([{"role": "user", "content": "x"}], tools=[{"f": object()}])


def test_hf_environment_features():
    text = (
        "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}{{ m.content }}"
        "{% if loop.index > 2 %}{% break %}{% endif %}{% endfor %}|{{ strftime_now('%Y') }}"
        "|{{ {'b': [1, 'é']} | tojson(indent=1) }}|{% set ns = namespace(system='ok') %}{{ ns.system }}"
        "|{% generation %}gen{% endgeneration %}|{{ bos_token }}{{ eos_token }}"
    )
    t = ChatTemplate.from_jinja(text, bos_token="B", eos_token="E", strip_bos=False)
    msgs = [{"role": "system", "content": "s"}] + [{"role": "user", "content": str(i)} for i in range(5)]
    year = str(datetime.datetime.now().year)
    assert (
        t.render(msgs) == f"01|{year}|{json.dumps({'b': [1, 'é']}, indent=1, ensure_ascii=False)}|ok|gen|BE"
    )


def test_trim_and_lstrip_blocks_like_hf():
    text = "{% for m in messages %}\n    {% if true %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n"
    assert ChatTemplate.from_jinja(text).render([{"role": "user", "content": "a"}]) == "[a]\n"


# --- errors -------------------------------------------------------------------------------------------------


def test_syntax_error_names_the_line():
    with pytest.raises(TemplateError, match="syntax error on line 3") as info:
        ChatTemplate.from_jinja(
            "{{ bos_token }}\n{% for m in messages %}{{ m.content }}{% endfor %}\n{{ foo( }}"
        )
    assert isinstance(info.value, KvantError)


def test_unclosed_block_is_a_syntax_error():
    with pytest.raises(TemplateError, match="syntax error on line"):
        ChatTemplate.from_jinja("{% for m in messages %}\n{{ m.content }}\n")


def test_runtime_error_names_the_line():
    t = ChatTemplate.from_jinja("ok\n{{ 1 // 0 }}")
    with pytest.raises(TemplateError, match="failed on line 2: ZeroDivisionError"):
        t.render([{"role": "user", "content": "x"}])


def test_empty_template():
    with pytest.raises(TemplateError, match="empty"):
        ChatTemplate.from_jinja("   ")


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ("hello", "must be a list"),
        ({"role": "user", "content": "x"}, "must be a list"),
        ([{"role": "bot", "content": "x"}], "message 0 has role 'bot'"),
        ([{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}], "message 1 has role 'tool'"),
        ([{"role": "user", "content": None}], "message 0 \\(user\\) must have text content"),
        ([{"role": "user"}], "must have text content"),
        ([("user", "x")], "message 0 must be a dict"),
    ],
)
@pytest.mark.parametrize("source", ["builtin", "jinja"])
def test_message_validation(messages, match, source):
    t = (
        ChatTemplate.builtin("gemma")
        if source == "builtin"
        else ChatTemplate.from_jinja(fixture("gemma3_it.jinja"))
    )
    with pytest.raises(TemplateError, match=match):
        t.render(messages)


def test_render_does_not_touch_the_callers_messages():
    msgs = [{"role": "user", "content": "x", "extra": [1]}]
    ChatTemplate.from_jinja(fixture("qwen2.5_instruct.jinja")).render(msgs)
    assert msgs == [{"role": "user", "content": "x", "extra": [1]}]


# --- the sandbox --------------------------------------------------------------------------------------------


# CANARY is replaced by a path in the test's tmp_path; a template that ran a command would create it.
EXPLOITS = [
    # CVE-2024-34359 (llama-cpp-python): reach os through a template's globals.
    "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch CANARY') }}",
    "{% for x in ().__class__.__base__.__subclasses__() %}{% if 'warning' in x.__name__ %}"
    "{{ x()._module.__builtins__['__import__']('os').popen('touch CANARY').read() }}{% endif %}{% endfor %}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch CANARY').read() }}",
    "{{ joiner.__init__.__globals__.os.system('touch CANARY') }}",
    "{{ namespace.__init__.__globals__.os.system('touch CANARY') }}",
    "{{ lipsum.__globals__['os'].popen('touch CANARY').read() }}",
    "{{ lipsum.__globals__.os.popen('touch CANARY').read() }}",
    "{{ raise_exception.__globals__['__builtins__']['eval']('1') }}",
    "{{ strftime_now.__globals__.datetime }}",
    "{{ (messages|attr('__class__')) }}",
    "{{ messages[0]['__class__'] }}",
    "{{ '{0.__class__.__init__.__globals__}'.format(messages) }}",
    "{{ messages|map(attribute='__class__')|list }}",
    "{{ self._TemplateReference__context }}",
    "{{ messages.append('x') }}",
    "{{ messages[0].update({'role': 'system'}) }}",
    # Unused, but still an attempt: refused at once, not left as a silent undefined.
    "{% set x = ''.__class__ %}harmless",
    "{{ 'x' * 100000000 }}",
    "{{ 7 ** 9999999 }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(99999999999) %}{% endfor %}",
]


@pytest.mark.parametrize("exploit", EXPLOITS, ids=[f"exploit{i}" for i in range(len(EXPLOITS))])
def test_sandbox_blocks_exploits(tmp_path, exploit):
    canary = tmp_path / "CANARY"
    t = ChatTemplate.from_jinja(exploit.replace("CANARY", str(canary)), source="gguf")
    with pytest.raises(TemplateError, match="tried an unsafe operation") as info:
        t.render([{"role": "user", "content": "hi"}])
    assert "chat template in the GGUF file" in str(info.value)
    assert not canary.exists()


def test_sandbox_caps_output(monkeypatch):
    import engine.runtime.chat_template as ct

    monkeypatch.setattr(ct, "_MIN_OUTPUT_CAP", 1000)
    t = ChatTemplate.from_jinja("{% for i in range(100) %}{{ 'y' * 100 }}{% endfor %}")
    with pytest.raises(TemplateError, match=r"unsafe operation.*more than 1,000 characters"):
        t.render([{"role": "user", "content": "x"}])


# --- from_gguf ----------------------------------------------------------------------------------------------


class FakeModel:
    def __init__(self, meta):
        self.meta = meta

    def get(self, key, default=None):
        return self.meta.get(key, default)


GEMMA_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "hello", "<start_of_turn>", "<end_of_turn>"]


def test_from_gguf_without_template_uses_the_architecture():
    model = FakeModel(
        {
            "general.architecture": "gemma3",
            "tokenizer.ggml.tokens": GEMMA_TOKENS,
            "tokenizer.ggml.bos_token_id": 2,
            "tokenizer.ggml.eos_token_id": 1,
        }
    )
    t = ChatTemplate.from_gguf(model)
    assert t.source == "builtin:gemma"
    assert (t.bos_token, t.eos_token) == ("<bos>", "<eos>")
    assert t.stop_strings == ("<end_of_turn>", "<eos>")
    assert t.render(CONV) == EXPECTED["gemma"]


def test_from_gguf_with_template():
    model = FakeModel(
        {
            "general.architecture": "gemma3",
            "tokenizer.chat_template": fixture("gemma3_it.jinja"),
            "tokenizer.ggml.tokens": GEMMA_TOKENS,
            "tokenizer.ggml.bos_token_id": 2,
            "tokenizer.ggml.eos_token_id": 1,
            "tokenizer.ggml.eot_token_id": 6,
            "tokenizer.ggml.add_bos_token": True,
        }
    )
    t = ChatTemplate.from_gguf(model)
    assert t.source == "gguf"
    assert t.render(CONV) == EXPECTED["gemma"]
    assert t.stop_strings == ("<end_of_turn>", "<eos>")
    model.meta["tokenizer.ggml.add_bos_token"] = False
    assert ChatTemplate.from_gguf(model).render(CONV).startswith("<bos><start_of_turn>user\n")


def test_from_gguf_bad_token_ids_are_ignored():
    model = FakeModel({"general.architecture": "qwen2", "tokenizer.ggml.bos_token_id": 99})
    t = ChatTemplate.from_gguf(model)
    assert (t.source, t.bos_token, t.eos_token) == ("builtin:chatml", "", "")


def test_from_gguf_hostile_template_fails_at_render_not_load(tmp_path):
    from engine.gguf import TensorSpec, open_gguf, write_gguf_sync

    canary = tmp_path / "CANARY"
    meta = {
        "general.architecture": "llama",
        "tokenizer.ggml.tokens": ["<s>", "</s>", "a"],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.chat_template": "{{ cycler.__init__.__globals__.os.system('touch " + str(canary) + "') }}",
    }
    spec = TensorSpec("t", 0, (4,))  # one small F32 tensor
    path = write_gguf_sync(tmp_path / "m.gguf", meta, [spec], lambda s: bytes(16))[0]
    with open_gguf(path) as model:
        t = ChatTemplate.from_gguf(model)
    assert t.source == "gguf"
    with pytest.raises(TemplateError, match="tried an unsafe operation"):
        t.render([{"role": "user", "content": "hi"}])
    assert not canary.exists()


def test_default_model_uses_the_builtin_gemma_format(default_model):
    from engine.gguf import open_gguf

    with open_gguf(default_model) as model:
        t = ChatTemplate.from_gguf(model)
    assert t.source == "builtin:gemma"
    assert (t.bos_token, t.eos_token) == ("<bos>", "<eos>")
    assert "<end_of_turn>" in t.stop_strings
    assert t.render([{"role": "user", "content": "Hi"}]) == (
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    )


# --- optional: ask llama.cpp itself ------------------------------------------------------------------------


def test_builtins_against_llama_cpp_itself():
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
    convs = [
        CONV,
        CONV[1:],
        [{"role": "user", "content": "Hello"}],
        [{"role": "system", "content": "  Be brief.\n"}, {"role": "user", "content": " Hi \n"}],
        [
            {"role": "user", "content": "x"},
            {"role": "system", "content": "late"},
            {"role": "user", "content": "y"},
        ],
        [
            {"role": "system", "content": "s1"},
            {"role": "system", "content": "s2"},
            {"role": "user", "content": "ü ✓"},
        ],
    ]
    for name in BUILTIN_FORMATS:
        for conv in convs:
            for add in (True, False):
                arr = (llama_cpp.llama_chat_message * len(conv))()
                keep = []
                for i, m in enumerate(conv):
                    role, content = m["role"].encode(), m["content"].encode()
                    keep += [role, content]
                    arr[i].role, arr[i].content = role, content
                buf = ctypes.create_string_buffer(1 << 16)
                n = llama_cpp.llama_chat_apply_template(name.encode(), arr, len(conv), add, buf, len(buf))
                assert n >= 0, name
                expected = buf.raw[:n].decode()
                assert ChatTemplate.builtin(name).render(conv, add) == expected, (name, conv, add)
