"""``kvant eval``: what quantization cost — perplexity, and KL divergence against the original.

``kvant eval BASE QUANT`` compares a quant with its base (the unquantized or a higher-precision model)
on a text, as ``llama-perplexity --kl-divergence`` does; ``kvant eval MODEL`` measures one model's
perplexity as ``llama-perplexity`` does.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from engine.cli import add_json_flag, drive, emit
from engine.errors import KvantError
from engine.library import resolve_model
from engine.paths import KvantPaths

DESCRIPTION = """\
Measure what quantization cost.

With BASE and QUANT: perplexity (PPL) of both, KL divergence (KLD) of the quant's next-token
distribution from the base's, the rate at which both pick the same most likely token, and Δp (the
change in the correct token's probability), over the second half of every chunk of CTX tokens, exactly
as llama.cpp's llama-perplexity --kl-divergence. With one MODEL: its perplexity only.

Which number matters: KLD (lower is better; 0 means identical predictions). Weight error (--weights:
RMSE, SNR per tensor) shows where precision was lost but not what it cost, because the same weight
error hurts some tensors far more than others; PPL scores only the correct token and can even improve
by chance. llama.cpp's reference KLDs (Llama 3 8B, wikitext): Q8_0 0.0014, Q6_K 0.0055, Q5_K_M 0.011,
Q4_K_M 0.031, Q3_K_M 0.10, Q2_K 0.45.

Compare numbers only across the same text, context size and chunk count."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="perplexity and KL divergence of a quant against its base (which number matters: KLD)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "models", nargs="+", metavar="MODEL", help="BASE QUANT to compare, or one MODEL for its PPL"
    )
    p.add_argument(
        "--text",
        type=Path,
        default=None,
        help="UTF-8 text to evaluate on (default: the shipped public-domain text, "
        "resources/devils-dictionary-a-c.txt, 13,200 tokens)",
    )
    p.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default 512, as llama-perplexity)")
    p.add_argument("--chunks", type=int, default=None, help="evaluate only the first N chunks")
    p.add_argument(
        "--base-logits",
        type=Path,
        default=None,
        metavar="FILE",
        help="cache of the base's log-probabilities (llama.cpp's --kl-divergence-base format): written by "
        "a first run, so the base never runs beside the quant; with it, BASE may be left out "
        "(eval QUANT --base-logits FILE). ~134 MB per 512-token chunk for a 262k vocabulary",
    )
    p.add_argument(
        "--weights",
        action="store_true",
        help="also report per-tensor weight error (RMSE, max |error|, SNR dB, relative error); needs BASE "
        "as a GGUF. Informative only: judge quality by KLD",
    )
    p.add_argument("--threads", type=int, default=None)
    add_json_flag(p)
    p.set_defaults(func=run)


def _text(args: argparse.Namespace) -> str:
    from engine.eval import DEFAULT_TEXT

    path = args.text or DEFAULT_TEXT
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise KvantError(f"cannot read the text {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise KvantError(f"{path} is not UTF-8 text") from None


def run(args: argparse.Namespace) -> int:
    from engine.eval import evaluate, perplexity, weight_report

    if len(args.models) > 2:
        raise KvantError("eval takes one MODEL (perplexity) or BASE and QUANT (comparison)")
    paths = KvantPaths.default()
    models = [resolve_model(m, paths) for m in args.models]
    cache = args.base_logits
    use_cache_only = len(models) == 1 and cache is not None
    if len(models) == 1 and not use_cache_only:
        if args.weights:
            raise KvantError("--weights compares two models: give BASE and QUANT")
        res = drive(
            perplexity(models[0], _text(args), args.ctx, n_chunks=args.chunks, threads=args.threads), args
        )
        data = {"model": str(models[0]), "text": str(args.text or "default"), **res.to_dict()}
        emit(args, data, format_perplexity(models[0].name, res))
        return 0

    if use_cache_only:
        if not Path(cache).exists():
            raise KvantError(f"{cache} does not exist: the first run needs BASE and QUANT to write it")
        base, quant = None, models[0]
        text = _text(args) if args.text is not None else None
    else:
        base, quant = models
        text = _text(args)
    res = drive(
        evaluate(base, quant, text, args.ctx, None, cache, n_chunks=args.chunks, threads=args.threads), args
    )
    data = {
        "base": str(base) if base else None,
        "quant": str(quant),
        "base_logits": str(cache) if cache else None,
    }
    data.update(res.to_dict())
    human = format_comparison(base.name if base else f"{Path(cache).name} (cached base)", quant.name, res)
    if args.weights:
        if base is None:
            raise KvantError("--weights needs the BASE model file, not only its cached logits")
        report = drive(weight_report(base, quant), args)
        data["weights"] = report.to_dict()
        human += "\n\n" + format_weights(report)
    emit(args, data, human)
    return 0


# --- formatting -------------------------------------------------------------------------------------------
def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def format_perplexity(name: str, r) -> str:
    rows = [
        ("model", name),
        ("PPL", f"{r.ppl:.4f} ± {r.ppl_err:.4f}"),
        ("scored tokens", f"{r.n_tokens:,} ({r.n_chunks} chunks of {r.n_ctx}, second halves)"),
        ("per chunk", " ".join(f"[{i + 1}]{v:.4f}" for i, v in enumerate(r.chunk_ppl))),
        ("time", f"{r.seconds:.1f} s ({r.tokens_per_second:.0f} tokens/s)"),
    ]
    return _table(rows)


def _pct(v: float) -> str:
    return f"{100 * v:.3f}%"


def format_comparison(base: str, quant: str, r) -> str:
    k, d = r.kld, r.dp
    rows = [
        ("base", base),
        ("quant", quant),
        ("tokens", f"{r.n_tokens:,} scored in {r.n_chunks} chunks of {r.n_ctx}"),
        ("", ""),
        ("KLD (mean)  <- the number that matters", f"{k.mean:.6f} ± {k.mean_err:.6f}"),
        ("KLD median / 99% / max", f"{k.median:.6f} / {k.percentile(99.0):.6f} / {k.maximum:.6f}"),
        ("same top token", f"{_pct(r.same_top)} ± {_pct(r.same_top_err)}"),
        ("PPL(Q)", f"{r.ppl_quant:.4f} ± {r.ppl_quant_err:.4f}"),
        ("PPL(base)", f"{r.ppl_base:.4f} ± {r.ppl_base_err:.4f}"),
        ("PPL(Q)/PPL(base)", f"{r.ppl_ratio:.6f} ± {r.ppl_ratio_err:.6f}"),
        ("ln(PPL(Q)/PPL(base))", f"{r.ln_ppl_ratio:.6f} ± {r.ln_ppl_ratio_err:.6f}"),
        (
            "Cor(ln PPL(Q), ln PPL(base))",
            f"{100 * r.ln_ppl_correlation:.2f}%" if math.isfinite(r.ln_ppl_correlation) else "–",
        ),
        ("Δp mean / RMS", f"{_pct(d.mean)} ± {_pct(d.mean_err)} / {_pct(d.rms)} ± {_pct(d.rms_err)}"),
        ("", ""),
        ("KLD percentiles", ""),
        *[(f"  {p:g}%", f"{v:.6f}") for p, v in k.percentiles if p not in (75.0, 25.0)],
        ("  median", f"{k.median:.6f}"),
        ("  min / max", f"{k.minimum:.6f} / {k.maximum:.6f}"),
        ("Δp percentiles", ""),
        *[(f"  {p:g}%", _pct(v)) for p, v in d.percentiles],
        ("  median", _pct(d.median)),
        ("  min / max", f"{_pct(d.minimum)} / {_pct(d.maximum)}"),
        ("", ""),
        (
            "time",
            f"{r.seconds:.1f} s (base {'from cache' if r.base_from_cache else f'{r.seconds_base:.1f} s'}, "
            f"quant {r.seconds_quant:.1f} s)",
        ),
    ]
    return "\n".join(line.rstrip() for line in _table(rows).splitlines())


def format_weights(report) -> str:
    header = ("tensor", "type", "RMSE", "max |err|", "SNR dB", "rel err")
    lines = [
        (
            t.name,
            f"{t.base_type}->{t.quant_type}",
            f"{t.rmse:.3e}",
            f"{t.max_abs:.3e}",
            f"{t.snr_db:.2f}",
            f"{t.rel_err:.4f}",
        )
        for t in report.tensors
    ]
    o = report.overall
    lines.append(
        ("all tensors", "", f"{o.rmse:.3e}", f"{o.max_abs:.3e}", f"{o.snr_db:.2f}", f"{o.rel_err:.4f}")
    )
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    out = [
        "Weight error per tensor (informative: where precision was lost; quality is judged by KLD above)",
        "  ".join(
            h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))
        ),
    ]
    for r in lines:
        out.append(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    if report.skipped:
        out.append(f"not compared (only in one file, or shapes differ): {', '.join(report.skipped)}")
    return "\n".join(out)
