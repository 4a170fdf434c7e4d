"""``kvant imatrix MODEL -o OUT.imatrix.gguf``: compute an importance matrix with Kvant's engine.

Exactly ``llama-imatrix``'s protocol (chunks of ``--ctx`` tokens with BOS, per weight the sum of the
squared activations entering its mat-mul, per column, and the token count), saved in llama.cpp's GGUF
imatrix format, which ``convert --imatrix`` and llama.cpp's ``llama-quantize --imatrix`` read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.cli import add_json_flag, drive, emit

DESCRIPTION = """\
Compute an importance matrix for MODEL with Kvant's own engine, as llama.cpp's llama-imatrix does: the
text is cut into chunks of CTX tokens (each starting with BOS), every chunk is run through the model, and
for each weight of the transformer blocks the squared activations entering it are summed per column.
Quantizing with it (convert --imatrix OUT) keeps the columns that matter most more precise; the very
low-bit presets (IQ1_S, IQ2_XXS, IQ2_XS, ...) need one.

By default it runs over the shipped public-domain calibration text (resources/calibration/, letters D-H of
The Devil's Dictionary, 21,665 tokens: 42 chunks of 512). The output is llama.cpp's GGUF imatrix format."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "imatrix",
        help="compute an importance matrix (llama-imatrix's protocol) for quantizing with --imatrix",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="a .gguf path, a library id, or 'default'")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        metavar="OUT",
        help="where to write the importance matrix (e.g. model.imatrix.gguf)",
    )
    p.add_argument(
        "--text",
        type=Path,
        default=None,
        metavar="FILE",
        help="UTF-8 calibration text (default: resources/calibration/devils-dictionary-d-h.txt)",
    )
    p.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default 512, as llama-imatrix)")
    p.add_argument("--chunks", type=int, default=None, help="use only the first N chunks (default: all)")
    p.add_argument(
        "--process-output",
        action="store_true",
        help="also collect output.weight, as llama-imatrix --process-output (never a tied output)",
    )
    p.add_argument("--no-ppl", action="store_true", help="do not compute the perplexity on the way")
    p.add_argument("--threads", type=int, default=None)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.convert import compute_imatrix
    from engine.library import resolve_model
    from engine.paths import KvantPaths

    model = resolve_model(args.model, KvantPaths.default())
    gen = compute_imatrix(
        model,
        args.text,
        args.output,
        n_ctx=args.ctx,
        chunks=args.chunks,
        process_output=args.process_output,
        compute_ppl=not args.no_ppl,
        threads=args.threads,
    )
    result = drive(gen, args)
    data = {"model": str(model), "text": str(args.text or "default"), **result.to_dict()}
    ppl = f", PPL {result.ppl:.4f}" if result.ppl is not None else ""
    human = (
        f"wrote {result.path}: {len(result.imatrix)} weights, {result.n_chunks} chunks of {result.n_ctx} "
        f"tokens{ppl}, in {result.seconds:.1f} s ({result.tokens_per_second:.0f} tokens/s)"
    )
    emit(args, data, human)
    return 0
