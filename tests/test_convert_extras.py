"""Conversion extras: importance-matrix I/O, the dynamic-1.58 policy, the convert CLI."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

from engine.cli import run_cli
from engine.convert import Imatrix, ImatrixEntry, load_imatrix, make_plan, save_imatrix
from engine.convert.source import SourceTensor, hparams_from_metadata
from engine.convert.synthetic import SyntheticSpec, synthetic_imatrix, write_synthetic
from engine.errors import KvantError
from engine.gguf import MetadataValue, open_gguf

TINY = SyntheticSpec("llama", 2, 256, 256, 4, 2, 64, 256, "F32", 9)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("tiny") / "tiny.gguf", TINY)


# --- importance matrix ------------------------------------------------------------------------


def test_imatrix_gguf_roundtrip(tmp_path):
    im = Imatrix(datasets=["wiki.txt"], chunk_count=3, chunk_size=512)
    im.entries["blk.0.ffn_down.weight"] = ImatrixEntry(
        np.arange(8, dtype=np.float32).reshape(2, 4), np.array([2.0, 0.0], np.float32)
    )
    path = save_imatrix(im, tmp_path / "im.gguf")
    with open_gguf(path) as m:
        assert m.get("general.type") == "imatrix"
        assert [t.name for t in m.tensors] == [
            "blk.0.ffn_down.weight.in_sum2",
            "blk.0.ffn_down.weight.counts",
        ]
        assert m.tensor("blk.0.ffn_down.weight.in_sum2").dims == (4, 2)
        assert m.tensor("blk.0.ffn_down.weight.counts").dims == (1, 2)
    back = load_imatrix(path)
    assert back.datasets == ["wiki.txt"] and back.chunk_count == 3 and back.chunk_size == 512
    # sums / count per matrix; a matrix with count 0 gets 1 (as llama-quantize does)
    assert back.values("blk.0.ffn_down.weight").tolist() == [0, 0.5, 1, 1.5, 1, 1, 1, 1]


def test_imatrix_legacy_dat(tmp_path):
    parts = [struct.pack("<i", 1)]
    name = b"blk.0.attn_q.weight"
    parts += [struct.pack("<i", len(name)), name, struct.pack("<ii", 4, 3)]
    parts.append(np.array([4.0, 8.0, 12.0], "<f4").tobytes())
    ds = b"calib.txt"
    parts += [struct.pack("<i", 100), struct.pack("<i", len(ds)), ds]
    (tmp_path / "im.dat").write_bytes(b"".join(parts))
    im = load_imatrix(tmp_path / "im.dat")
    assert im.legacy and im.chunk_count == 100 and im.datasets == ["calib.txt"]
    assert im.values("blk.0.attn_q.weight").tolist() == [1.0, 2.0, 3.0]


def test_imatrix_errors(tmp_path):
    (tmp_path / "bad.dat").write_bytes(b"\x05\x00\x00\x00abc")
    with pytest.raises(KvantError):
        load_imatrix(tmp_path / "bad.dat")
    with pytest.raises(KvantError):
        load_imatrix(tmp_path / "missing.gguf")


def test_imatrix_size_mismatch_is_an_error(tiny, tmp_path):
    im = synthetic_imatrix(TINY)
    e = im.entries["blk.0.ffn_up.weight"]
    im.entries["blk.0.ffn_up.weight"] = ImatrixEntry(e.sums[:, :128].copy(), e.counts)
    from engine.convert import convert_sync

    with pytest.raises(KvantError, match="importance matrix"):
        convert_sync(tiny, tmp_path / "o.gguf", "Q4_K_M", imatrix=im)
    assert not (tmp_path / "o.gguf").exists()


# --- dynamic-1.58 policy ----------------------------------------------------------------------


class FakeSource:
    """A header-only DeepSeek-like MoE model (plans never read data)."""

    def __init__(self) -> None:
        self.description = "fake deepseek2"
        self.metadata = {
            "general.architecture": MetadataValue(V.STRING, "deepseek2"),
            "deepseek2.block_count": MetadataValue(V.UINT32, 16),
            "deepseek2.attention.head_count": MetadataValue(V.UINT32, 16),
            "deepseek2.attention.head_count_kv": MetadataValue(V.UINT32, 16),
            "deepseek2.expert_count": MetadataValue(V.UINT32, 8),
            "deepseek2.leading_dense_block_count": MetadataValue(V.UINT32, 2),
        }
        e, f = 512, 256
        names: list[tuple[str, tuple[int, ...]]] = [
            ("token_embd.weight", (e, 1024)),
            ("output.weight", (e, 1024)),
            ("output_norm.weight", (e,)),
        ]
        for i in range(16):
            b = f"blk.{i}."
            names += [
                (b + "attn_norm.weight", (e,)),
                (b + "attn_q_a.weight", (e, 256)),
                (b + "attn_q_b.weight", (256, 512)),
                (b + "attn_kv_a_mqa.weight", (e, 256)),
                (b + "attn_kv_b.weight", (256, 512)),
                (b + "attn_output.weight", (512, e)),
                (b + "ffn_norm.weight", (e,)),
            ]
            if i < 2:
                names += [
                    (b + "ffn_gate.weight", (e, f)),
                    (b + "ffn_up.weight", (e, f)),
                    (b + "ffn_down.weight", (f, e)),
                ]
            else:
                names += [
                    (b + "ffn_gate_inp.weight", (e, 8)),
                    (b + "exp_probs_b.bias", (8,)),
                    (b + "ffn_gate_exps.weight", (e, f, 8)),
                    (b + "ffn_up_exps.weight", (e, f, 8)),
                    (b + "ffn_down_exps.weight", (f, e, 8)),
                    (b + "ffn_gate_shexp.weight", (e, f)),
                    (b + "ffn_up_shexp.weight", (e, f)),
                    (b + "ffn_down_shexp.weight", (f, e)),
                ]
        self.tensors = [SourceTensor(n, d, int(T.BF16 if len(d) > 1 else T.F32)) for n, d in names]

    def hparams(self):
        return hparams_from_metadata(self.metadata)

    def close(self) -> None:
        pass


def test_dynamic_158_policy_rules():
    plan = make_plan(FakeSource(), policy="dynamic-1.58")
    t = {p.name: p.dst_type for p in plan.tensors}
    assert plan.preset == "TQ1_0" and plan.policy == "dynamic-1.58"  # no imatrix: ternary bulk
    assert t["output.weight"] == "Q6_K" and t["token_embd.weight"] == "Q4_K"
    assert t["output_norm.weight"] == "F32" and t["blk.5.ffn_gate_inp.weight"] == "BF16"  # router kept
    assert t["blk.5.exp_probs_b.bias"] == "F32"
    assert t["blk.0.ffn_down.weight"] == "Q6_K" and t["blk.1.ffn_up.weight"] == "Q4_K"  # dense head
    assert t["blk.5.ffn_down_shexp.weight"] == "Q6_K" and t["blk.5.ffn_up_shexp.weight"] == "Q6_K"
    assert t["blk.2.ffn_down_exps.weight"] == "Q2_K"  # first MoE down_proj higher
    assert t["blk.3.ffn_down_exps.weight"] == "TQ1_0"
    assert t["blk.9.ffn_up_exps.weight"] == "TQ1_0" and t["blk.15.ffn_gate_exps.weight"] == "TQ1_0"
    assert t["blk.4.attn_kv_b.weight"] == "Q6_K" and t["blk.4.attn_q_b.weight"] == "Q4_K"
    assert t["blk.4.attn_kv_a_mqa.weight"] == "Q6_K" and t["blk.4.attn_output.weight"] == "Q5_K"
    assert 1.5 < plan.bits_per_weight < 3.5

    im = Imatrix(entries={"x": ImatrixEntry(np.ones((1, 1), np.float32), np.ones(1, np.float32))})
    t2 = {p.name: p.dst_type for p in make_plan(FakeSource(), policy="dynamic-1.58", imatrix=im).tensors}
    assert t2["blk.9.ffn_up_exps.weight"] == "IQ1_S" and t2["blk.2.ffn_down_exps.weight"] == "IQ2_XXS"

    # user overrides win over the policy
    t3 = make_plan(FakeSource(), policy="dynamic-1.58", overrides=["ffn_up_exps=Q2_K"])
    assert {p.name: p.dst_type for p in t3.tensors}["blk.9.ffn_up_exps.weight"] == "Q2_K"


def test_dynamic_158_on_a_dense_model(tiny, tmp_path):
    from engine.convert import convert_sync

    r = convert_sync(tiny, tmp_path / "o.gguf", policy="dynamic-1.58")
    t = {p.name: p.dst_type for p in r.plan.tensors}
    assert t["blk.0.ffn_down.weight"] == "Q6_K" and t["blk.1.ffn_up.weight"] == "TQ1_0"
    with open_gguf(r.path) as m:
        assert m.get("general.file_type") == 36
        assert m.tensor("blk.1.ffn_up.weight").type_name == "TQ1_0"


# --- CLI --------------------------------------------------------------------------------------


def test_cli_dry_run_json(tiny, capsys):
    assert run_cli(["convert", str(tiny), "--preset", "q4_k_m", "--dry-run", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["preset"] == "Q4_K_M" and d["file_type"] == 15
    by = {t["name"]: t for t in d["tensors"]}
    assert by["blk.1.attn_v.weight"]["target_type"] == "Q6_K"  # use_more_bits(1, 2)
    assert by["blk.0.attn_v.weight"]["target_type"] == "Q4_K"
    assert by["blk.0.attn_q.weight"]["bytes"] == 256 * 256 // 256 * 144


def test_cli_convert_with_override(tiny, tmp_path, capsys):
    out = tmp_path / "o.gguf"
    rc = run_cli(
        ["convert", str(tiny), str(out), "--preset", "Q8_0", "--override", "ffn_down=Q6_K", "--json"]
    )
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["path"] == str(out)
    with open_gguf(out) as m:
        assert m.tensor("blk.0.ffn_down.weight").type_name == "Q6_K"
        assert m.tensor("blk.0.ffn_up.weight").type_name == "Q8_0"


def test_cli_errors(tiny, tmp_path, capsys):
    assert run_cli(["convert", str(tiny), "--preset", "Q4_K_M"]) == 1  # no output path
    assert run_cli(["convert", str(tiny), str(tmp_path / "o.gguf"), "--preset", "Q9_9"]) == 1
    assert run_cli(["convert", str(tiny), str(tmp_path / "o.gguf"), "--override", "nope", "--json"]) == 1
    assert "QuantError" in capsys.readouterr().out
    assert not (tmp_path / "o.gguf").exists()
