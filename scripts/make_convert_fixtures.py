"""Make the conversion fixtures: llama.cpp's ``llama_model_quantize`` on tiny synthetic models.

For every model of ``engine.convert.synthetic.FIXTURE_MODELS`` (regenerated from its seed, never
stored) and every case below (a preset, optionally with the synthetic importance matrix and
llama.cpp ``--tensor-type`` overrides), quantize with llama.cpp (nthread=2) and record, in
``tests/fixtures/convert/<model>.json``: the KV key order, per tensor (in file order) its name,
type and the sha256 of its data, and the sha256 of the whole file.  Cases llama.cpp refuses are
recorded with ``"error"``.

Run:  python scripts/make_convert_fixtures.py   (needs llama-cpp-python 0.3.36, the oracle; a dev
dependency of this script only)

      python scripts/make_convert_fixtures.py --hf-check   converts the tiny Hugging Face folders of
      tests/test_convert_hf.py (llama BF16 shards -> F16 and Q8_0, gemma3 -> F32) with Kvant and
      checks that llama.cpp loads each result and evaluates a few tokens to finite logits.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.convert.rules import FTYPES  # noqa: E402
from engine.convert.synthetic import FIXTURE_MODELS, synthetic_imatrix, write_synthetic  # noqa: E402
from engine.gguf import open_gguf  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "convert"

PLAIN = [
    "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q4_0", "Q4_1", "Q5_0",
    "Q5_1", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K", "IQ4_NL", "IQ4_XS", "TQ2_0", "TQ1_0", "IQ3_M",
]  # fmt: skip
WITH_IMATRIX = [
    "Q4_K_M", "Q4_0", "Q5_0", "IQ4_XS", "IQ4_NL", "Q2_K", "Q3_K_S", "Q6_K",
    "IQ3_M", "IQ3_XXS", "IQ2_M", "IQ2_XXS", "IQ1_M", "IQ1_S",
]  # fmt: skip
OVERRIDES = [("Q4_K_M", ["ffn_down=q8_0", "attn_(q|k)=q5_k"])]


def cases() -> list[dict]:
    out = [{"preset": p, "imatrix": False, "overrides": []} for p in PLAIN]
    out += [{"preset": p, "imatrix": True, "overrides": []} for p in WITH_IMATRIX]
    out += [{"preset": p, "imatrix": False, "overrides": o} for p, o in OVERRIDES]
    return out


def llama_quantize(src: Path, dst: Path, preset: str, imatrix=None, overrides=()) -> bool:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = 2
    params.ftype = FTYPES[preset][0]
    keep = []
    if imatrix is not None:
        arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix.entries) + 1))()
        for i, name in enumerate(sorted(imatrix.entries)):
            vals = np.ascontiguousarray(imatrix.values(name), dtype=np.float32)
            keep.append(vals)
            nm = name.encode()
            keep.append(nm)
            arr[i].name = nm
            arr[i].data = vals.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = vals.size
        arr[len(imatrix.entries)].name = None
        params.imatrix = arr
        keep.append(arr)
    if overrides:
        import gguf

        tt = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, o in enumerate(overrides):
            pat, _, typ = o.rpartition("=")
            tt[i].pattern = pat.encode()
            tt[i].type = int(gguf.GGMLQuantizationType[typ.upper()])
        tt[len(overrides)].pattern = None
        params.tt_overrides = tt
        keep.append(tt)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    return rc == 0


def describe(path: Path) -> dict:
    with open_gguf(path) as m:
        tensors = [
            [t.name, t.type_name, hashlib.sha256(m.raw(t.name).tobytes()).hexdigest()[:32]] for t in m.tensors
        ]
        keys = list(m.metadata)
    return {
        "keys": keys,
        "tensors": tensors,
        "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "size": path.stat().st_size,
    }


def hf_check() -> None:
    import llama_cpp

    sys.path.insert(0, str(ROOT))
    from engine.convert import convert_sync
    from tests.test_convert_hf import llama_folder, test_gemma3_import

    with tempfile.TemporaryDirectory() as tmp:
        folder, _ = llama_folder.__wrapped__(Path(tmp))
        for preset in ("F16", "Q8_0"):
            out = convert_sync(folder, Path(tmp) / f"llama-{preset}.gguf", preset).path
            llm = llama_cpp.Llama(str(out), n_ctx=32, verbose=False)
            llm.eval([6, 0, 1, 2])
            assert np.isfinite(llm.scores[3]).all()
            print("llama", preset, "loads and runs in llama.cpp")
        gdir = Path(tmp) / "g"
        gdir.mkdir()
        test_gemma3_import(gdir)
        llm = llama_cpp.Llama(str(gdir / "g.gguf"), n_ctx=32, verbose=False)
        llm.eval([2, 4, 4])
        assert np.isfinite(llm.scores[2]).all()
        print("gemma3 F32 loads and runs in llama.cpp")


def main() -> None:
    if sys.argv[1:] == ["--hf-check"]:
        hf_check()
        return
    OUT.mkdir(parents=True, exist_ok=True)
    only = set(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in FIXTURE_MODELS.items():
            if only and name not in only:
                continue
            src = write_synthetic(Path(tmp) / f"{name}.gguf", spec)
            im = synthetic_imatrix(spec)
            results = []
            for case in cases():
                dst = Path(tmp) / "out.gguf"
                dst.unlink(missing_ok=True)
                cim = im if case["imatrix"] else None
                ok = llama_quantize(src, dst, case["preset"], cim, case["overrides"])
                rec = dict(case)
                if ok and dst.exists():
                    rec.update(describe(dst))
                else:
                    rec["error"] = "llama_model_quantize failed"
                results.append(rec)
                tag = "imatrix" if case["imatrix"] else ""
                print(name, case["preset"], tag, rec.get("error", "ok"), flush=True)
            doc = {
                "source": "llama-cpp-python 0.3.36 llama_model_quantize, nthread=2",
                "model": name,
                "spec": spec.to_dict(),
                "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
                "cases": results,
            }
            (OUT / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
