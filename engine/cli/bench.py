"""``kvant bench``: speed next to llama.cpp. ``bench quant`` (quantizer) or ``bench MODEL`` (generation)."""

from __future__ import annotations

import argparse

from engine.cli import add_json_flag, drive, emit
from engine.library import resolve_model
from engine.paths import KvantPaths


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure speed next to llama.cpp: 'bench quant' or 'bench MODEL'",
        description="'bench quant': quantize/dequantize MB/s per type (Kvant, gguf-py, llama.cpp). "
        "'bench MODEL': load time, prefill and decode tok/s, time to first token, peak RSS.",
    )
    p.add_argument("target", help="'quant', or a model (.gguf path, library id, 'default')")
    p.add_argument("--types", help="quant: comma-separated types (default: every quantizable type)")
    p.add_argument("--rows", type=int, default=4096, help="quant: matrix rows (default 4096)")
    p.add_argument("--cols", type=int, default=4096, help="quant: matrix columns (default 4096)")
    p.add_argument("--repeat", type=int, default=3, help="quant: timed repeats, best kept (default 3)")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--vs-llamacpp", action="store_true", help="model: run llama.cpp side by side")
    p.add_argument(
        "--n-gpu-layers",
        default="0",
        help="model: layers on NVIDIA GPUs (a number, 'all' or 'auto'; needs pip install 'kvant[cuda]')",
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "—" if v is None else fmt.format(v)


def run(args: argparse.Namespace) -> int:
    if args.target == "quant":
        from engine.bench import bench_quant

        types = args.types.split(",") if args.types else None
        res = drive(bench_quant(types, rows=args.rows, cols=args.cols, repeat=args.repeat), args)
        lines = [
            f"{res.rows}×{res.cols} f32, best of {res.repeat}, {res.threads} threads; "
            f"llama.cpp {res.llamacpp_version or 'not installed'} (1 thread, as llama-quantize per call)",
            "",
            "| type | imatrix | Kvant 1 thr | Kvant all | gguf-py | llama.cpp | vs llama.cpp | vs gguf-py "
            "| bit-exact | dequant Kvant | dequant gguf-py | dequant Kvant 1 thr CPU "
            "| dequant llama.cpp 1 thr CPU | dequant vs llama.cpp | dequant bit-exact |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res.results:
            lines.append(
                f"| {r.type} | {'yes' if r.imatrix else 'no'} "
                f"| {r.kvant_1t_mb_s:.1f} | {r.kvant_nt_mb_s:.1f} "
                f"| {_f(r.gguf_py_mb_s)} | {_f(r.llamacpp_1t_mb_s)} | {_f(r.vs_llamacpp, '{:.2f}×')} "
                f"| {_f(r.vs_gguf_py, '{:.1f}×')} | {'—' if r.bit_exact is None else r.bit_exact} "
                f"| {r.dequant_kvant_nt_melem_s:.0f} | {_f(r.dequant_gguf_py_melem_s, '{:.0f}')} "
                f"| {_f(r.dequant_kvant_1t_cpu_melem_s, '{:.0f}')} "
                f"| {_f(r.dequant_llamacpp_1t_cpu_melem_s, '{:.0f}')} "
                f"| {_f(r.dequant_vs_llamacpp_1t, '{:.2f}×')} "
                f"| {'—' if r.dequant_bit_exact is None else r.dequant_bit_exact} |"
            )
        lines.append(
            "\nQuantize in MB/s of float32 input; dequantize in M elements/s. 1-thread CPU columns: process "
            "CPU time, Kvant and llama.cpp (to_float) interleaved."
        )
        emit(args, res.to_dict(), "\n".join(lines))
        return 0

    from engine.bench import bench_generate
    from engine.runtime.cuda import parse_gpu_layers

    path = resolve_model(args.target, KvantPaths.default())
    res = drive(
        bench_generate(
            path,
            n_prompt=args.prompt_tokens,
            n_gen=args.gen_tokens,
            threads=args.threads,
            vs_llamacpp=args.vs_llamacpp,
            n_gpu_layers=parse_gpu_layers(args.n_gpu_layers),
        ),
        args,
    )
    rows = [("Kvant", res.kvant)] + ([("llama.cpp", res.llamacpp)] if res.llamacpp else [])
    lines = [
        f"{path.name} ({res.file_mb:.0f} MB), {res.threads} threads, "
        f"prompt {res.n_prompt}, decode {res.n_gen}",
        *([res.gpu["message"]] if res.gpu and res.n_gpu_layers not in (0, None) else []),
        *([f"GPU decode launches: {', '.join(res.gpu_launch_modes)}"] if res.gpu_launch_modes else []),
        *(["greedy tokens picked on the GPU (ids, not logits, come back)"] if res.greedy_on_gpu else []),
        *_traffic_lines(res),
        "",
        "| engine | runtime init s | load s | warm-up s | prefill tok/s | decode tok/s | first token s "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in rows:
        lines.append(
            f"| {name} | {s.runtime_init_s:.2f} | {s.load_s:.2f} | {s.warmup_s:.2f} | {s.prefill_tok_s:.1f} "
            f"| {s.decode_tok_s:.1f} | {s.ttft_s:.2f} | {_f(s.peak_rss_mb, '{:.0f}')} |"
        )
    ratios = res.ratios()
    if ratios:
        lines.append(f"\nKvant / llama.cpp: prefill {ratios['prefill']:.2f}×, decode {ratios['decode']:.2f}×")
    elif args.vs_llamacpp:
        lines.append("\nllama-cpp-python is not installed: no side-by-side numbers")
    emit(args, res.to_dict(), "\n".join(lines))
    return 0


def _traffic_lines(res) -> list[str]:
    """What a decoded token reads, the GPU's part, and the GPU's bandwidth limit (issue #7's bar)."""
    t = res.traffic
    if t is None or not t.gpu_bytes_per_token:
        return []
    mb, share = t.bytes_per_token / 1e6, 100 * t.gpu_share
    out = [f"weights read per token: {mb:.0f} MB, {share:.0f}% of them on GPUs"]
    limit = t.limit_tok_s
    if limit is not None:
        out.append(
            f"{t.gpu_name}'s memory bandwidth ({t.gpu_bandwidth_bytes_s / 1e9:.0f} GB/s) allows "
            f"{limit:.0f} tok/s: decode at {100 * res.kvant.decode_tok_s / limit:.1f}% of it"
        )
    return out
