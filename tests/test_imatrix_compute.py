"""engine.convert.compute_imatrix against llama.cpp's llama-imatrix (tests/fixtures/imatrix/).

The fixture is llama.cpp's own per-column sums of x² and token counts for every weight it collects,
over 2 chunks of 128 tokens of the shipped calibration text, made by scripts/make_imatrix_fixture.py
with imatrix.cpp's collector replicated in a cb_eval callback.

Tolerances, measured (ours vs llama.cpp, per-column relative error |ours - ref| / ref):

- layer 0, where both engines see the same inputs: attn_q/k/v ≤ 1.1e-6, ffn_gate/up ≤ 1.3e-4,
  attn_output ≤ 1.2e-4, ffn_down ≤ 8.0e-3 (its input went through GELU's f16 table); medians ≤ 9e-5.
- deeper layers: the engines' residual streams drift apart to ~5e-3 relative from layer 3 on
  (``scripts/debug_llama_ops.py --trace``: each op on llama.cpp's inputs agrees to ≤ 4e-4, but
  f16/Q8 rounding differences are amplified layer after layer), so the sums agree to a median of
  ≤ 2.4e-2 per tensor and a largest error of ≤ 1.3e-2 of the tensor's largest sum. Sums of the same
  weight in adjacent layers differ by a median of ≥ 15%, so the bars below still catch a wrong tensor.

Over more tokens the per-token drift averages out: at llama-imatrix's defaults over the whole
calibration text (42 chunks of 512), measured once against the same cb_eval collector, every count is
identical (21,504) and the sums agree to a per-tensor median of ≤ 3.3e-3 and ≤ 1.7e-3 of the largest sum.

What that difference costs: none measurable — quantizing with our imatrix instead of llama.cpp's
changes the imatrix-weighted error by < 0.1% (test_quantizing_with_it_*).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from engine.convert import Imatrix, compute_imatrix, load_imatrix
from engine.convert.imatrix import (
    DEFAULT_CALIBRATION_TEXT,
    ImatrixProgress,
    _Collector,
    compute_imatrix_sync,
    counted_positions,
)
from engine.errors import Cancelled, KvantError
from engine.progress import CancelToken

FIXTURE = Path(__file__).parent / "fixtures" / "imatrix" / "llama_imatrix_ctx128.npz"

# (largest per-column relative error in layer 0, measured): see the module docstring
LAYER0_MAX_REL = {
    "attn_q": 1e-5,
    "attn_k": 1e-5,
    "attn_v": 1e-5,
    "ffn_gate": 1e-3,
    "ffn_up": 1e-3,
    "attn_output": 1e-3,
    "ffn_down": 3e-2,
}
LAYER0_MEDIAN_REL = 5e-4
ALL_MEDIAN_REL = 4e-2  # measured ≤ 2.4e-2; adjacent layers differ by ≥ 0.15
ALL_NORM_MAX = 2.5e-2  # measured ≤ 1.3e-2 (|ours - ref|.max() / ref.max())


def drain(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return stop.value, events


@pytest.fixture(scope="module")
def fx():
    return np.load(FIXTURE)


@pytest.fixture(scope="module")
def model(default_model):
    import engine

    m = engine.open_model(default_model, n_ctx=128)
    yield m
    m.close()


@pytest.fixture(scope="module")
def computed(model, fx, tmp_path_factory):
    out = tmp_path_factory.mktemp("imatrix") / "out.imatrix.gguf"
    gen = compute_imatrix(model, fx["tokens"], out, n_ctx=128, dataset="calibration-fixture")
    result, events = drain(gen)
    return result, events, out


def rel_errors(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    ours, ref = ours.astype(np.float64), ref.astype(np.float64)
    nz = ref > 0
    assert (ours[~nz] == 0).all(), "a column llama.cpp never activates is non-zero in ours"
    return np.abs(ours - ref)[nz] / ref[nz]


# --- the fixture and the calibration text ------------------------------------------------------------
def test_fixture_is_for_the_shipped_calibration_text(fx, model):
    text = DEFAULT_CALIBRATION_TEXT.read_text(encoding="utf-8")
    assert str(fx["text_sha256"]) == hashlib.sha256(text.encode("utf-8")).hexdigest()
    ours = model.tokenize(text, add_bos=True)
    assert len(ours) >= 40 * 512  # enough for 40 chunks of llama-imatrix's default context
    assert ours[: len(fx["tokens"])] == fx["tokens"].tolist()


# --- against llama.cpp -------------------------------------------------------------------------------
def test_same_weights_and_counts_as_llama_cpp(computed, fx):
    result, _, _ = computed
    im = result.imatrix
    assert sorted(im.entries) == fx["names"].tolist()
    assert len(im) == 18 * 7
    # the tied output (token_embd.weight) goes through a mat-mul but llama-imatrix never collects it,
    # not even with --process-output (which looks for output.weight only)
    assert "token_embd.weight" in fx["mm_weights"].tolist()
    assert fx["names_process_output"].tolist() == fx["names"].tolist()
    for name, e in im.entries.items():
        assert e.sums.shape == (1, fx[name + ".in_sum2"].size)
        assert e.counts.tolist() == fx[name + ".counts"].tolist() == [256.0]
    assert (im.chunk_count, im.chunk_size) == (2, 128)
    assert (result.n_chunks, result.n_ctx) == (2, 128)


def test_process_output_changes_nothing_for_a_tied_output(model, fx):
    im = compute_imatrix_sync(
        model, fx["tokens"], n_ctx=128, chunks=1, process_output=True, compute_ppl=False
    )
    assert sorted(im.imatrix.entries) == fx["names_process_output"].tolist()
    assert all(e.counts.tolist() == [128.0] for e in im.imatrix.entries.values())


def test_layer0_sums_match_llama_cpp_tightly(computed, fx):
    im = computed[0].imatrix
    for kind, tol in LAYER0_MAX_REL.items():
        name = f"blk.0.{kind}.weight"
        rel = rel_errors(im.entries[name].sums[0], fx[name + ".in_sum2"])
        assert rel.max() <= tol, (name, rel.max())
        assert np.median(rel) <= LAYER0_MEDIAN_REL, (name, np.median(rel))


def test_all_sums_match_llama_cpp(computed, fx):
    im = computed[0].imatrix
    worst_median = worst_norm = 0.0
    for name in fx["names"].tolist():
        ours, ref = im.entries[name].sums[0], fx[name + ".in_sum2"]
        rel = rel_errors(ours, ref)
        norm = float(np.abs(ours.astype(np.float64) - ref).max() / ref.max())
        assert np.median(rel) <= ALL_MEDIAN_REL, (name, np.median(rel))
        assert norm <= ALL_NORM_MAX, (name, norm)
        worst_median, worst_norm = max(worst_median, float(np.median(rel))), max(worst_norm, norm)
    print(f"worst per-tensor median relative error {worst_median:.1e}, worst normalized {worst_norm:.1e}")


def test_progress_events(computed):
    result, events, _ = computed
    assert all(isinstance(e, ImatrixProgress) for e in events)
    assert [e.stage for e in events] == ["load", "compute", "compute", "compute", "save", "save"]
    assert [e.done for e in events if e.stage == "compute"] == [0, 1, 2]
    assert events[3].ppl is not None and events[3].ppl == result.ppl
    assert 1 < result.ppl < 1000


# --- the saved file ------------------------------------------------------------------------------------
def test_saved_file_round_trips(computed):
    result, _, out = computed
    assert result.path == out and out.exists()
    back = load_imatrix(out)
    assert back.datasets == ["calibration-fixture"]
    assert (back.chunk_count, back.chunk_size) == (2, 128)
    assert sorted(back.entries) == sorted(result.imatrix.entries)
    for name, e in result.imatrix.entries.items():
        np.testing.assert_array_equal(back.entries[name].sums, e.sums)
        np.testing.assert_array_equal(back.entries[name].counts, e.counts)


def test_saved_file_reads_in_gguf_py(computed):
    from gguf import GGMLQuantizationType, GGUFReader

    result, _, out = computed
    r = GGUFReader(out)

    def value(key):
        f = r.fields[key]
        return f.contents()

    assert value("general.type") == "imatrix"
    assert value("imatrix.datasets") == ["calibration-fixture"]
    assert value("imatrix.chunk_count") == 2 and value("imatrix.chunk_size") == 128
    tensors = {t.name: t for t in r.tensors}
    assert len(tensors) == 2 * len(result.imatrix)
    # llama.cpp's order: weights sorted by name, each with its in_sum2 then its counts
    order = [n + suffix for n in sorted(result.imatrix.entries) for suffix in (".in_sum2", ".counts")]
    assert [t.name for t in r.tensors] == order
    for name, e in result.imatrix.entries.items():
        s, c = tensors[name + ".in_sum2"], tensors[name + ".counts"]
        assert s.tensor_type == c.tensor_type == GGMLQuantizationType.F32
        assert [int(v) for v in s.shape] == [e.sums.shape[1], 1]
        assert [int(v) for v in c.shape] == [1, 1]
        np.testing.assert_array_equal(np.asarray(s.data).reshape(-1), e.sums[0])
        assert float(np.asarray(c.data).reshape(-1)[0]) == 256.0


def test_saved_file_reads_in_ggml_gguf_reader(computed):
    """ggml's own C reader (``gguf_init_from_file``, what llama-quantize's imatrix loader calls)."""
    pytest.importorskip("llama_cpp")
    import ctypes

    from engine.bench.llamacpp import load_ggml

    result, _, out = computed
    g = load_ggml()
    vp, i64, cp = ctypes.c_void_p, ctypes.c_int64, ctypes.c_char_p

    class Params(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", vp)]

    for fn, res, args in (
        ("gguf_init_from_file", vp, [cp, Params]),
        ("gguf_free", None, [vp]),
        ("gguf_find_key", i64, [vp, cp]),
        ("gguf_get_val_u32", ctypes.c_uint32, [vp, i64]),
        ("gguf_get_val_str", cp, [vp, i64]),
        ("gguf_get_arr_n", ctypes.c_size_t, [vp, i64]),
        ("gguf_get_arr_str", cp, [vp, i64, ctypes.c_size_t]),
        ("gguf_get_n_tensors", i64, [vp]),
        ("gguf_get_tensor_name", cp, [vp, i64]),
        ("gguf_get_tensor_type", ctypes.c_int, [vp, i64]),
        ("gguf_get_tensor_offset", ctypes.c_size_t, [vp, i64]),
        ("gguf_get_tensor_size", ctypes.c_size_t, [vp, i64]),
        ("gguf_get_data_offset", ctypes.c_size_t, [vp]),
    ):
        getattr(g, fn).restype, getattr(g, fn).argtypes = res, args
    ctx = g.gguf_init_from_file(str(out).encode(), Params(True, None))
    assert ctx, "ggml's GGUF reader rejected the file"
    try:
        assert g.gguf_get_val_str(ctx, g.gguf_find_key(ctx, b"general.type")) == b"imatrix"
        assert g.gguf_get_val_u32(ctx, g.gguf_find_key(ctx, b"imatrix.chunk_count")) == 2
        assert g.gguf_get_val_u32(ctx, g.gguf_find_key(ctx, b"imatrix.chunk_size")) == 128
        key = g.gguf_find_key(ctx, b"imatrix.datasets")
        assert [g.gguf_get_arr_str(ctx, key, i) for i in range(g.gguf_get_arr_n(ctx, key))] == [
            b"calibration-fixture"
        ]
        n = g.gguf_get_n_tensors(ctx)
        assert n == 2 * len(result.imatrix)
        base = g.gguf_get_data_offset(ctx)
        raw = out.read_bytes()
        for i in range(n):
            name = g.gguf_get_tensor_name(ctx, i).decode()
            assert g.gguf_get_tensor_type(ctx, i) == 0  # GGML_TYPE_F32
            off, size = base + g.gguf_get_tensor_offset(ctx, i), g.gguf_get_tensor_size(ctx, i)
            data = np.frombuffer(raw[off : off + size], np.float32)
            w, kind = name.rsplit(".", 1)
            e = result.imatrix.entries[w]
            np.testing.assert_array_equal(data, e.sums[0] if kind == "in_sum2" else e.counts)
    finally:
        g.gguf_free(ctx)


# --- cancel --------------------------------------------------------------------------------------------
def test_cancel_stops_between_chunks_and_saves_nothing(model, fx, tmp_path):
    cancel = CancelToken()
    out = tmp_path / "never.imatrix.gguf"
    gen = compute_imatrix(model, fx["tokens"], out, n_ctx=128, cancel=cancel, compute_ppl=False)
    seen = []
    with pytest.raises(Cancelled):
        for ev in gen:
            seen.append((ev.stage, ev.done))
            if ev.stage == "compute" and ev.done == 1:
                cancel.cancel()
    assert seen[-1] == ("compute", 1)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert model.net.observer is None  # the hook is given back


# --- using it ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("qtype", ["Q3_K", "IQ4_XS"])
def test_quantizing_with_it_lowers_the_weighted_error(computed, fx, default_model, qtype):
    from engine.gguf import open_gguf
    from engine.quant import dequantize, quantize

    name = "blk.12.ffn_down.weight"  # a deep layer, where ours and llama.cpp's sums differ most
    with open_gguf(default_model) as g:
        t = g.tensor(name)
        w = dequantize(g.raw(name), t.type, t.shape)
    ours = computed[0].imatrix.values(name)
    llama = fx[name + ".in_sum2"] / fx[name + ".counts"][0]

    def weighted_error(imatrix):
        d = dequantize(quantize(w, qtype, imatrix), qtype, w.shape)
        return float((((w - d) ** 2) * llama[None, :]).sum(dtype=np.float64))

    e_none, e_ours, e_llama = weighted_error(None), weighted_error(ours), weighted_error(llama)
    assert e_ours < 0.8 * e_none  # measured: 0.57 (Q3_K), 0.44 (IQ4_XS)
    assert e_ours == pytest.approx(e_llama, rel=1e-3)  # measured: within 1.2e-4 (Q3_K), 3.1e-4 (IQ4_XS)


# --- the protocol, on a stand-in model (no real model needed) --------------------------------------------
class _Tok:
    bos_id = 2
    add_bos = True
    add_eos = False


class _Net:
    def __init__(self) -> None:
        self.observer = None
        self.n_ctx = 64
        self.n_vocab = 1000


class _FakeModel:
    """Tokens are their own activations: weight W of layer 0 sees rows [id, 1]."""

    def __init__(self) -> None:
        self.net = _Net()
        self.tokenizer = _Tok()
        self.n_ctx = 64
        self.n_vocab = 1000
        self.evaluated: list[list[int]] = []

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return [2] * add_bos + [10 + (ord(c) % 90) for c in text]

    def logits(self, ids):
        self.evaluated.append(list(ids))
        x = np.stack([np.asarray(ids, np.float32), np.ones(len(ids), np.float32)], axis=1)
        for piece in (x[:5], x[5:]):  # the engine may report a chunk in several micro-batches
            self.net.observer("blk.0.ffn_up.weight", piece)
        self.net.observer("token_embd.weight", x)
        self.net.observer("output.weight", x)
        return np.zeros((len(ids), self.n_vocab), np.float32)


def test_chunks_bos_and_sums_on_a_stand_in():
    m = _FakeModel()
    tokens = list(range(100, 100 + 16 * 5 + 3))  # 5 whole chunks of 16 and 3 tokens left over
    res = compute_imatrix_sync(m, tokens, n_ctx=16, chunks=4, compute_ppl=False)
    assert [len(c) for c in m.evaluated] == [16] * 4
    for i, ids in enumerate(m.evaluated):
        assert ids == [2, *tokens[i * 16 + 1 : (i + 1) * 16]]  # first token of each chunk -> BOS
    e = res.imatrix.entries["blk.0.ffn_up.weight"]
    expect = sum(float(t) ** 2 for c in m.evaluated for t in c)
    assert e.sums[0, 0] == pytest.approx(expect, rel=1e-7)
    assert e.sums[0, 1] == 64.0 and e.counts.tolist() == [64.0]
    assert sorted(res.imatrix.entries) == ["blk.0.ffn_up.weight"]  # no output without process_output
    assert (res.imatrix.chunk_count, res.imatrix.chunk_size, res.n_chunks) == (4, 16, 4)
    assert m.net.observer is None

    res = compute_imatrix_sync(_FakeModel(), tokens, n_ctx=16, process_output=True, compute_ppl=False)
    assert sorted(res.imatrix.entries) == ["blk.0.ffn_up.weight", "output.weight"]  # never token_embd
    assert res.n_chunks == 5 and res.imatrix.entries["output.weight"].counts.tolist() == [80.0]


def test_text_input_and_errors_on_a_stand_in(tmp_path):
    m = _FakeModel()
    res = compute_imatrix_sync(m, "x" * 40, n_ctx=16, compute_ppl=True)
    assert res.n_tokens_text == 41 and res.n_chunks == 2 and res.imatrix.datasets == []
    assert res.ppl == pytest.approx(1000.0)  # uniform logits over 1000 tokens
    f = tmp_path / "calib.txt"
    f.write_text("y" * 40, encoding="utf-8")
    res = compute_imatrix_sync(_FakeModel(), f, n_ctx=16, compute_ppl=False)
    assert res.imatrix.datasets == [str(f)]
    with pytest.raises(KvantError, match="at least 32"):
        compute_imatrix_sync(_FakeModel(), "x" * 20, n_ctx=16)
    with pytest.raises(KvantError, match="chunks"):
        compute_imatrix_sync(_FakeModel(), "x" * 40, n_ctx=16, chunks=0)
    with pytest.raises(KvantError, match="context"):
        compute_imatrix_sync(_FakeModel(), "x" * 40, n_ctx=4)
    with pytest.raises(KvantError, match="context of 64"):
        compute_imatrix_sync(_FakeModel(), "x" * 400, n_ctx=128)
    with pytest.raises(KvantError, match="cannot read"):
        compute_imatrix_sync(_FakeModel(), tmp_path / "missing.txt", n_ctx=16)


def test_collector_semantics():
    rng = np.random.default_rng(0)
    col = _Collector(process_output=False)
    col.start_chunk(np.ones(32, bool))
    x = rng.standard_normal((32, 8)).astype(np.float32)
    col("blk.1.attn_q.weight", x[:20])
    col("blk.1.attn_q.weight", x[20:])
    col("token_embd.weight", x)
    col("output.weight", x)
    assert list(col.sums) == ["blk.1.attn_q.weight"]
    np.testing.assert_allclose(
        col.sums["blk.1.attn_q.weight"], (x.astype(np.float64) ** 2).sum(0), rtol=1e-12
    )
    assert col.counts["blk.1.attn_q.weight"] == 32
    with pytest.raises(KvantError, match="rows"):
        col("blk.1.attn_q.weight", x[:1])  # more rows than the chunk has
    col.start_chunk(np.ones(32, bool))
    with pytest.raises(KvantError, match="inconsistent"):
        col("blk.1.attn_q.weight", x[:, :4])
    with pytest.raises(KvantError, match="dense"):
        col("blk.2.ffn_down_exps.weight", x.reshape(4, 8, 8))
    im = col.imatrix(32, ["d"])
    assert isinstance(im, Imatrix) and im.chunk_count == 1 and im.datasets == ["d"]


def test_counted_positions_follow_llama_cpp_micro_batches():
    # evaluated alone: batches of min(2048, n_ctx), micro-batches of 512; a tail under 16 is skipped
    assert counted_positions(512, True).all() and counted_positions(128, True).all()
    m = counted_positions(1030, True)
    assert m[:1024].all() and not m[1024:].any()
    m = counted_positions(2060, True)
    assert m[:2048].all() and not m[2048:].any()  # second batch of 12 tokens
    m = counted_positions(1500, True)
    assert m.all()  # micro-batches 512, 512, 476
    assert counted_positions(8, True).sum() == 0  # alone and short: llama.cpp collects nothing
    assert counted_positions(8, False).all()  # packed with other chunks: all collected


# --- the command line ----------------------------------------------------------------------------------
def test_cli_writes_an_imatrix(default_model, tmp_path, capsys):
    import json

    from engine.cli import run_cli

    out = tmp_path / "m.imatrix.gguf"
    argv = [
        "imatrix",
        str(default_model),
        "--ctx",
        "64",
        "--chunks",
        "1",
        "--no-ppl",
        "-o",
        str(out),
        "--json",
    ]
    assert run_cli(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["path"] == str(out) and data["n_chunks"] == 1 and data["n_ctx"] == 64
    assert data["n_entries"] == 126 and data["ppl"] is None
    im = load_imatrix(out)
    assert im.datasets == [DEFAULT_CALIBRATION_TEXT.name] and (im.chunk_count, im.chunk_size) == (1, 64)
    assert all(e.counts.tolist() == [64.0] for e in im.entries.values())

    argv = ["imatrix", str(default_model), "--text", str(tmp_path / "nope.txt"), "-o", str(out), "--json"]
    assert run_cli(argv) == 1
    assert "cannot read the calibration text" in json.loads(capsys.readouterr().out)["message"]
