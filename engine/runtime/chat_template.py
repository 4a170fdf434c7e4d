"""Chat templates: a conversation (a list of role/content messages) to the prompt text a model expects.

A GGUF file may carry a Hugging Face Jinja template in ``tokenizer.chat_template``. It comes from a file,
so it is untrusted: it renders in Jinja's immutable sandbox, tightened further (an attempt to reach Python
internals raises at once instead of yielding an undefined value, repeated strings, ranges and output are
bounded), with what Hugging Face's ``apply_chat_template`` provides: ``raise_exception``,
``strftime_now``, its ``tojson`` (no HTML escaping, ``ensure_ascii=False``), ``bos_token``/``eos_token``,
the loop-controls extension and ``trim_blocks``/``lstrip_blocks``.

Without a template, a built-in format for the architecture is used; each produces exactly what llama.cpp's
``llm_chat_apply_template`` (``src/llama-chat.cpp``) produces for the same messages.

Like llama.cpp's ``common_chat_template_direct_apply``, a leading ``bos_token`` in a rendered template
is dropped when the tokenizer adds BOS itself (``tokenizer.ggml.add_bos_token``), so the prompt never
starts with two. The built-in formats never emit BOS.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import TemplateError

__all__ = ["BUILTIN_FORMATS", "ChatTemplate", "builtin_format_for"]

ROLES = ("system", "user", "assistant")

# Limits for untrusted templates (generous: real templates stay far below them).
_MAX_REPEAT = 1_000_000  # characters or items a single ``*`` may produce
_MAX_POWER = 4096  # largest integer exponent
_MAX_RANGE_TOTAL = 1_000_000  # items all ``range()`` calls of one render may produce together
_MIN_OUTPUT_CAP = 16 * 1024 * 1024  # characters; or 8x the messages' text, whichever is more

# Attribute names no chat template has a reason to touch, on top of Jinja's sandbox rules
# (which already refuse every name starting with "_" and the internals of functions, frames, generators).
_DENIED_ATTRIBUTES = frozenset(
    {
        "os",
        "sys",
        "popen",
        "system",
        "spawn",
        "subprocess",
        "builtins",
        "globals",
        "locals",
        "eval",
        "exec",
        "compile",
        "import_module",
        "mro",
        "f_globals",
        "f_locals",
        "f_builtins",
        "func_globals",
        "gi_frame",
        "gi_code",
        "cr_frame",
        "tb_frame",
        "co_code",
        "load_module",
    }
)

_PLAIN = (str, int, float, bool, type(None), list, tuple, dict)

# End-of-turn markers worth stopping on when they appear in a template's text.
_KNOWN_TURN_ENDS = (
    "<end_of_turn>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<|eot|>",
    "<|END_OF_TURN_TOKEN|>",
    "<|end_of_text|>",
    "<|endoftext|>",
)


# --- built-in formats (llama.cpp's llm_chat_apply_template) ----------------------------------------------


def _trim(s: str) -> str:
    # llama.cpp's trim(): C isspace (space, \t, \n, \v, \f, \r) at both ends.
    return s.strip(" \t\n\v\f\r")


def _fmt_chatml(msgs: Sequence[Mapping[str, str]], add_ass: bool) -> str:
    out = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs]
    if add_ass:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def _fmt_gemma(msgs: Sequence[Mapping[str, str]], add_ass: bool) -> str:
    out: list[str] = []
    system_prompt = ""
    for m in msgs:
        if m["role"] == "system":
            # Gemma has no system turn: it is merged into the next user turn.
            system_prompt += _trim(m["content"])
            continue
        role = "model" if m["role"] == "assistant" else m["role"]
        out.append(f"<start_of_turn>{role}\n")
        if system_prompt and role != "model":
            out.append(system_prompt + "\n\n")
            system_prompt = ""
        out.append(_trim(m["content"]) + "<end_of_turn>\n")
    if add_ass:
        out.append("<start_of_turn>model\n")
    return "".join(out)


def _fmt_llama3(msgs: Sequence[Mapping[str, str]], add_ass: bool) -> str:
    out = [
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{_trim(m['content'])}<|eot_id|>" for m in msgs
    ]
    if add_ass:
        out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(out)


def _fmt_phi3(msgs: Sequence[Mapping[str, str]], add_ass: bool) -> str:
    out = [f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in msgs]
    if add_ass:
        out.append("<|assistant|>\n")
    return "".join(out)


def _llama2(support_system: bool) -> Callable[[Sequence[Mapping[str, str]], bool], str]:
    def fmt(msgs: Sequence[Mapping[str, str]], add_ass: bool) -> str:
        # llama.cpp ignores add_ass here: a user turn already ends with [/INST].
        out = ["[INST] "]
        inside_turn = True
        for m in msgs:
            if not inside_turn:
                inside_turn = True
                out.append("[INST] ")
            if m["role"] == "system":
                out.append(
                    f"<<SYS>>\n{m['content']}\n<</SYS>>\n\n" if support_system else m["content"] + "\n"
                )
            elif m["role"] == "user":
                out.append(m["content"] + " [/INST]")
            else:
                out.append(m["content"] + "</s>")
                inside_turn = False
        return "".join(out)

    return fmt


def _mistral(variant: str) -> Callable[[Sequence[Mapping[str, str]], bool], str]:
    leading = " " if variant == "v1" else ""
    trailing = "" if variant == "v3-tekken" else " "
    trim_assistant = variant == "v3"

    def fmt(msgs: Sequence[Mapping[str, str]], add_ass: bool) -> str:
        out: list[str] = []
        inside_turn = False
        for m in msgs:
            if not inside_turn:
                out.append(f"{leading}[INST]{trailing}")
                inside_turn = True
            if m["role"] == "system":
                out.append(m["content"] + "\n\n")
            elif m["role"] == "user":
                out.append(f"{m['content']}{leading}[/INST]")
            else:
                content = _trim(m["content"]) if trim_assistant else m["content"]
                out.append(f"{trailing}{content}</s>")
                inside_turn = False
        return "".join(out)

    return fmt


def _fmt_mistral_v7(msgs: Sequence[Mapping[str, str]], add_ass: bool) -> str:
    out: list[str] = []
    for m in msgs:
        if m["role"] == "system":
            out.append(f"[SYSTEM_PROMPT] {m['content']}[/SYSTEM_PROMPT]")
        elif m["role"] == "user":
            out.append(f"[INST] {m['content']}[/INST]")
        else:
            out.append(f" {m['content']}</s>")
    return "".join(out)


# name -> (formatter, end-of-turn markers). Names are llama.cpp's template names.
_BUILTINS: Mapping[str, tuple[Callable[[Sequence[Mapping[str, str]], bool], str], tuple[str, ...]]] = (
    types.MappingProxyType(
        {
            "gemma": (_fmt_gemma, ("<end_of_turn>",)),
            "chatml": (_fmt_chatml, ("<|im_end|>",)),
            "llama3": (_fmt_llama3, ("<|eot_id|>",)),
            "llama2": (_llama2(support_system=False), ("</s>",)),
            "llama2-sys": (_llama2(support_system=True), ("</s>",)),
            "mistral-v1": (_mistral("v1"), ("</s>",)),
            "mistral-v3": (_mistral("v3"), ("</s>",)),
            "mistral-v3-tekken": (_mistral("v3-tekken"), ("</s>",)),
            "mistral-v7": (_fmt_mistral_v7, ("</s>",)),
            "phi3": (_fmt_phi3, ("<|end|>",)),
        }
    )
)
BUILTIN_FORMATS: tuple[str, ...] = tuple(_BUILTINS)

_ARCH_FORMATS: Mapping[str, str] = types.MappingProxyType(
    {
        "gemma": "gemma",
        "gemma2": "gemma",
        "gemma3": "gemma",
        "gemma3n": "gemma",
        "qwen": "chatml",
        "qwen2": "chatml",
        "qwen2moe": "chatml",
        "qwen2vl": "chatml",
        "qwen3": "chatml",
        "qwen3moe": "chatml",
        "phi3": "phi3",
    }
)


def builtin_format_for(architecture: str | None, tokens: Sequence[str] | None = None) -> str:
    """The built-in format for a model without a template of its own.

    Gemma, Qwen and Phi-3 follow from the architecture. ``llama`` covers Llama 2, Llama 3 and Mistral, told
    apart by their vocabulary's control tokens. Anything else gets ChatML, llama.cpp's default.
    """
    arch = (architecture or "").lower()
    if arch in _ARCH_FORMATS:
        return _ARCH_FORMATS[arch]
    if arch == "llama":
        vocab = set(tokens or ())
        if "<|start_header_id|>" in vocab:
            return "llama3"
        if "[SYSTEM_PROMPT]" in vocab:
            return "mistral-v7"
        if "[INST]" in vocab:
            return "mistral-v3"
        return "llama2-sys"
    return "chatml"


# --- the sandbox ------------------------------------------------------------------------------------------


class _Raised(Exception):
    """``raise_exception()`` called by a template."""


class _GenerationTag(jinja2.ext.Extension):
    """Hugging Face's ``{% generation %}...{% endgeneration %}`` (assistant-token masks): renders its body."""

    tags = frozenset({"generation"})

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, failing loudly and bounding the obvious resource attacks."""

    intercepted_binops = frozenset({"*", "**"})

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        # Plain data under a suspicious name (a namespace field "system") is fine; anything else is not.
        if isinstance(attr, str) and attr.lower() in _DENIED_ATTRIBUTES and not isinstance(value, _PLAIN):
            return False
        if isinstance(value, types.ModuleType):
            return False
        return super().is_safe_attribute(obj, attr, value)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        # The stock sandbox returns an undefined value that raises only when used; refuse at once.
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} value")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(count, int)
                    and len(seq) * count > _MAX_REPEAT
                ):
                    raise SecurityError(f"repeating a value to more than {_MAX_REPEAT:,} items")
        elif operator == "**" and isinstance(right, int) and abs(right) > _MAX_POWER:
            raise SecurityError(f"raising to a power larger than {_MAX_POWER}")
        return super().call_binop(context, operator, left, right)


class _RangeBudget:
    """``range()`` for one render: all its calls together produce at most ``_MAX_RANGE_TOTAL`` items."""

    def __init__(self) -> None:
        self.left = _MAX_RANGE_TOTAL

    def __call__(self, *args: int) -> range:
        try:
            r = range(*args)
            n = len(r)
        except OverflowError:
            raise SecurityError(f"a range of more than {_MAX_RANGE_TOTAL:,} items") from None
        self.left -= n
        if self.left < 0:
            raise SecurityError(f"ranges of more than {_MAX_RANGE_TOTAL:,} items in all")
        return r


def _raise_exception(message: object) -> None:
    raise _Raised(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Hugging Face's override: Jinja's own tojson escapes HTML characters, which templates do not expect.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _make_env() -> _Sandbox:
    env = _Sandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _template_line(err: BaseException) -> int | None:
    """The template line an error was raised on, from Jinja's rewritten traceback."""
    line = None
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# --- the public class -------------------------------------------------------------------------------------


class ChatTemplate:
    """Renders messages to a prompt; build one with :meth:`from_gguf`, :meth:`from_jinja` or :meth:`builtin`.

    ``source`` says where it came from (``"gguf"``, ``"jinja"`` or ``"builtin:<name>"``); ``stop_strings``
    are the end-of-turn markers, as text, that end the model's reply.
    """

    def __init__(
        self,
        *,
        source: str,
        text: str | None,
        builtin: str | None,
        bos_token: str,
        eos_token: str,
        stop_strings: Sequence[str],
        strip_bos: bool,
    ) -> None:
        self.source = source
        self.text = text
        self.builtin_name = builtin
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.stop_strings: tuple[str, ...] = tuple(dict.fromkeys(s for s in stop_strings if s))
        self.strip_bos = strip_bos
        self._env: _Sandbox | None = None
        self._template: jinja2.Template | None = None
        if text is not None:
            self._env = _make_env()
            try:
                self._template = self._env.from_string(text)
            except jinja2.TemplateSyntaxError as err:
                raise TemplateError(
                    f"{_label(source)} has a syntax error on line {err.lineno}: {err.message}"
                ) from None
            except SecurityError as err:
                raise TemplateError(f"{_label(source)} tried an unsafe operation: {err}") from None

    # constructors

    @classmethod
    def builtin(cls, name: str, *, bos_token: str = "", eos_token: str = "") -> ChatTemplate:
        """One of :data:`BUILTIN_FORMATS` (llama.cpp's names)."""
        if name not in _BUILTINS:
            raise TemplateError(
                f"there is no built-in chat format {name!r}; the built-in formats are {', '.join(_BUILTINS)}"
            )
        stops = (*_BUILTINS[name][1], eos_token)
        return cls(
            source=f"builtin:{name}",
            text=None,
            builtin=name,
            bos_token=bos_token,
            eos_token=eos_token,
            stop_strings=stops,
            strip_bos=True,
        )

    @classmethod
    def from_jinja(
        cls,
        text: str,
        *,
        bos_token: str = "",
        eos_token: str = "",
        strip_bos: bool = True,
        extra_stop_strings: Sequence[str] = (),
        source: str = "jinja",
    ) -> ChatTemplate:
        """A Hugging Face Jinja template; syntax errors raise :class:`TemplateError` here, not at render."""
        if not isinstance(text, str) or not text.strip():
            raise TemplateError(f"{_label(source)} is empty or not text")
        stops = [m for m in _KNOWN_TURN_ENDS if m in text]
        return cls(
            source=source,
            text=text,
            builtin=None,
            bos_token=bos_token,
            eos_token=eos_token,
            stop_strings=[*stops, *extra_stop_strings, eos_token],
            strip_bos=strip_bos,
        )

    @classmethod
    def from_gguf(cls, model: Any) -> ChatTemplate:
        """The template a GGUF model carries, or the built-in format for its architecture.

        ``model`` is an :class:`engine.gguf.GGUFModel` (anything with ``get(key, default)``).
        """
        tokens = model.get("tokenizer.ggml.tokens")
        tokens = tokens if isinstance(tokens, list) else None

        def token(key: str) -> str:
            tid = model.get(key)
            if tokens is None or not isinstance(tid, int) or not 0 <= tid < len(tokens):
                return ""
            return tokens[tid] if isinstance(tokens[tid], str) else ""

        bos, eos = token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")
        eot = token("tokenizer.ggml.eot_token_id")
        add_bos = model.get("tokenizer.ggml.add_bos_token")
        text = model.get("tokenizer.chat_template")
        if isinstance(text, str) and text.strip():
            return cls.from_jinja(
                text,
                bos_token=bos,
                eos_token=eos,
                strip_bos=add_bos is not False,
                extra_stop_strings=[eot],
                source="gguf",
            )
        name = builtin_format_for(model.get("general.architecture"), tokens)
        tmpl = cls.builtin(name, bos_token=bos, eos_token=eos)
        if eot:
            tmpl.stop_strings = tuple(dict.fromkeys((*tmpl.stop_strings, eot)))
        return tmpl

    # rendering

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The prompt for ``messages``; with ``add_generation_prompt`` it ends where the reply begins.

        ``tools`` (JSON-schema function descriptions) reach Jinja templates that support them; the built-in
        formats ignore them.
        """
        msgs = _validate(messages)
        if self._template is None:
            assert self.builtin_name is not None
            return _BUILTINS[self.builtin_name][0](msgs, bool(add_generation_prompt))
        if tools is not None:
            tools = _validate_tools(tools)
        out = self._render_jinja(msgs, bool(add_generation_prompt), tools)
        if self.strip_bos and self.bos_token and out.startswith(self.bos_token):
            out = out[len(self.bos_token) :]
        return out

    def _render_jinja(self, msgs: list[dict[str, str]], add_generation_prompt: bool, tools: Any) -> str:
        assert self._template is not None and self._env is not None
        cap = max(_MIN_OUTPUT_CAP, 8 * sum(len(m["content"]) for m in msgs))
        where = _label(self.source)
        try:
            parts: list[str] = []
            size = 0
            stream: Iterator[str] = self._template.generate(
                messages=msgs,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                tools=tools,
                documents=None,
                range=_RangeBudget(),
            )
            for piece in stream:
                size += len(piece)
                if size > cap:
                    raise SecurityError(f"producing more than {cap:,} characters")
                parts.append(piece)
            return "".join(parts)
        except SecurityError as err:
            raise TemplateError(
                f"{where} tried an unsafe operation and was stopped, nothing was run: {err}"
            ) from None
        except _Raised as err:
            raise TemplateError(f"{where} rejected the conversation: {err}") from None
        except (
            jinja2.TemplateError,
            ArithmeticError,
            LookupError,
            TypeError,
            ValueError,
            RecursionError,
        ) as err:
            line = _template_line(err)
            at = f" on line {line}" if line else ""
            raise TemplateError(f"{where} failed{at}: {type(err).__name__}: {err}") from None

    def __repr__(self) -> str:
        return f"ChatTemplate(source={self.source!r}, stop_strings={self.stop_strings!r})"


def _label(source: str) -> str:
    return "the chat template in the GGUF file" if source == "gguf" else f"the chat template ({source})"


def _validate(messages: object) -> list[dict[str, str]]:
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
        raise TemplateError(
            "chat messages must be a list of {'role': ..., 'content': ...} dicts, "
            f"got {type(messages).__name__}"
        )
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TemplateError(
                f"chat message {i} must be a dict with 'role' and 'content', got {type(m).__name__}"
            )
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise TemplateError(
                f"chat message {i} has role {role!r}; the role must be one of {', '.join(ROLES)}"
            )
        if not isinstance(content, str):
            raise TemplateError(
                f"chat message {i} ({role}) must have text content, got {type(content).__name__}"
            )
        out.append({"role": role, "content": content})
    return out


def _validate_tools(tools: object) -> list[Any]:
    if isinstance(tools, str | bytes | Mapping) or not isinstance(tools, Sequence):
        raise TemplateError(f"chat tools must be a list of JSON objects, got {type(tools).__name__}")
    try:
        # A deep, plain copy: the template sees only JSON data.
        return json.loads(json.dumps(list(tools)))
    except (TypeError, ValueError) as err:
        raise TemplateError(f"chat tools must be JSON-serialisable: {err}") from None
