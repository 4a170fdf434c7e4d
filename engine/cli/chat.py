"""``kvant chat MODEL``: stream a reply to a prompt, or talk interactively."""

from __future__ import annotations

import argparse
import sys

from engine.cli import add_json_flag, emit
from engine.errors import KvantError
from engine.library import resolve_model
from engine.paths import KvantPaths
from engine.progress import CancelToken


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("chat", help="chat with a model (streams tokens, prints speed)")
    p.add_argument("model", help="a .gguf path, a library id, or 'default'")
    p.add_argument("--prompt", help="one message to answer; without it, an interactive session")
    p.add_argument("--system", help="a system prompt")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ctx", type=int, default=4096, help="context window in tokens (default 4096)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--n-gpu-layers",
        default="0",
        help="layers on NVIDIA GPUs: a number, 'all' or 'auto' (needs pip install 'kvant[cuda]')",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="no chat template: continue the text as is (the system prompt, then the turns); for base models",
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def _sampling(args: argparse.Namespace) -> dict:
    return {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "min_p": args.min_p,
        "repeat_penalty": args.repeat_penalty,
        "seed": args.seed,
    }


def _stats(done) -> dict:
    return {
        "finish_reason": done.finish_reason,
        "prompt_tokens": done.n_prompt,
        "cached_tokens": done.n_cached,
        "generated_tokens": done.n_generated,
        "prefill_tok_s": done.prefill_tok_s,
        "decode_tok_s": done.decode_tok_s,
        "time_to_first_token_s": done.ttft_s,
    }


def _stats_line(done) -> str:
    def f(v, unit):
        return f"{v:.1f} {unit}" if v is not None else "–"

    reason = {
        "stop": "end of turn",
        "length": "max tokens",
        "context": "context full",
        "cancelled": "stopped",
    }
    return (
        f"[{done.n_generated} tokens, {reason.get(done.finish_reason, done.finish_reason)} · "
        f"prefill {f(done.prefill_tok_s, 'tok/s')} · decode {f(done.decode_tok_s, 'tok/s')} · "
        f"first token {f(done.ttft_s, 's')}]"
    )


def _answer(model, messages, args, raw: bool, cancel: CancelToken, stream: bool):
    events = (
        model.complete(messages, cancel=cancel, **_sampling(args))
        if raw
        else model.chat(messages, cancel=cancel, **_sampling(args))
    )
    text = []
    done = None
    for ev in events:
        if ev.text:
            text.append(ev.text)
            if stream:
                sys.stdout.write(ev.text)
                sys.stdout.flush()
        if ev.kind == "done":
            done = ev
    return "".join(text), done


CALIBRATE_MIN_TOKENS = 16  # decoded tokens an answer needs before its speed counts as a measurement


def _calibrate(model, path, args, done) -> None:
    """Record the answer's decode speed next to the planner's prediction (engine.fit calibration), when
    the placement is the planner's own (CPU only, or "auto"); a failure here never stops the chat."""
    if done is None or not done.decode_tok_s or done.n_generated < CALIBRATE_MIN_TOKENS:
        return
    requested = getattr(model.offload, "requested", 0) if model.offload is not None else 0
    if requested not in (0, None, "auto"):
        return
    try:
        from engine.fit import record_run

        record_run(path, n_ctx=model.n_ctx, measured_tok_s=done.decode_tok_s)
    except (KvantError, OSError):
        pass


def run(args: argparse.Namespace) -> int:
    from engine.runtime.model import open_model

    path = resolve_model(args.model, KvantPaths.default())
    if not args.json:
        print(f"Loading {path.name}…", file=sys.stderr)
    model = open_model(path, n_ctx=args.ctx, threads=args.threads, n_gpu_layers=args.n_gpu_layers)
    if not args.json and model.offload is not None and model.offload.requested not in (0, None):
        print(model.offload.message(), file=sys.stderr)
    if not args.json and not args.raw and model.info.base_model:
        print(base_model_note(model.info.name), file=sys.stderr)
    cancel = CancelToken()
    messages = [{"role": "system", "content": args.system}] if args.system else []
    try:
        if args.prompt is not None:
            messages.append({"role": "user", "content": args.prompt})
            text, done = _answer(model, messages, args, args.raw, cancel, stream=not args.json)
            _calibrate(model, path, args, done)
            if args.json:
                gpu = model.offload.to_dict() if model.offload is not None else None
                emit(args, {"model": str(path), "text": text, **_stats(done), "gpu": gpu}, "")
            else:
                sys.stdout.write("\n")
                print(_stats_line(done), file=sys.stderr)
            return 0
        return _interactive(model, messages, args, cancel, path)
    finally:
        model.close()


def base_model_note(name: str) -> str:
    return (
        f"note: {name} looks like a base (pretrained) model: its file has no chat template and its name "
        "does not say instruct or chat, so it continues text rather than answering; try --raw"
    )


def _interactive(model, messages, args, cancel: CancelToken, model_path) -> int:
    how = "no template: continuing the text" if args.raw else f"{model.template.source} template"
    print(
        f"Chatting with {model.info.name} ({how}). Empty line or Ctrl-D ends; Ctrl-C stops a reply.",
        file=sys.stderr,
    )
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not line.strip():
            return 0
        messages.append({"role": "user", "content": line})
        cancel = CancelToken()
        try:
            text, done = _answer(model, messages, args, args.raw, cancel, stream=True)
        except KeyboardInterrupt:
            cancel.cancel()
            text, done = "", None
        except KvantError as err:
            print(f"\nkvant: {err}", file=sys.stderr)
            messages.pop()
            continue
        sys.stdout.write("\n")
        if done is not None:
            print(_stats_line(done), file=sys.stderr)
            _calibrate(model, model_path, args, done)
        # a raw reply continues the text as it came; a chat reply is a turn of its own
        messages.append({"role": "assistant", "content": text if args.raw else text.strip()})
