"""Quant names parsed from file names, and files grouped into quants (no network)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.hub import HubNotFoundError, RemoteFile, group_quants, nominal_bpw, parse_quant_name, select_quant


@pytest.mark.parametrize(
    ("name", "quant"),
    [
        ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("llama-2-7b.Q4_K_M.gguf", "Q4_K_M"),
        ("mistral_q4_k_m.gguf", "Q4_K_M"),
        ("DeepSeek-R1-UD-IQ1_S-00001-of-00003.gguf", "UD-IQ1_S"),
        ("gemma-3-27b-it-UD-Q2_K_XL.gguf", "UD-Q2_K_XL"),
        ("Qwen2.5-7B-Instruct-IQ2_XXS.gguf", "IQ2_XXS"),
        ("Qwen2.5-7B-Instruct-bf16-00002-of-00004.gguf", "BF16"),
        ("phi-2.Q8_0.gguf", "Q8_0"),
        ("model-f16.gguf", "F16"),
        ("gpt-oss-20b-MXFP4.gguf", "MXFP4"),
        ("Q4_0_4_4.gguf", "Q4_0_4_4"),
        ("Qwen3-4B-IQ4_XS.GGUF", "IQ4_XS"),
        ("Qwen3-4B.gguf", None),
        ("Q3-model-Q5_K_S.gguf", "Q5_K_S"),  # the last match wins
    ],
)
def test_parse_quant_name(name, quant):
    assert parse_quant_name(name) == quant


def test_nominal_bpw():
    assert nominal_bpw("Q4_K_M") == pytest.approx(4.85)
    assert nominal_bpw("UD-Q2_K_XL") == nominal_bpw("Q2_K")
    assert nominal_bpw("BF16") == 16
    assert nominal_bpw("weird") is None


@given(
    model=st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,8}(-[0-9]{1,2}[Bb])?", fullmatch=True),
    quant=st.sampled_from(["Q4_K_M", "IQ2_XXS", "Q8_0", "BF16", "IQ1_S", "Q6_K", "UD-IQ1_M", "Q3_K_L"]),
    sep=st.sampled_from(["-", ".", "_"]),
    lower=st.booleans(),
    shard=st.sampled_from(["", "-00001-of-00003", "-00002-of-00010"]),
)
def test_parse_quant_name_round_trip(model, quant, sep, lower, shard):
    q = quant.lower() if lower else quant
    assert parse_quant_name(f"{model}{sep}{q}{shard}.gguf") == quant


def _f(path, size=10):
    return RemoteFile(path, size, sha256="a" * 64)


def test_group_quants_single_split_and_folder():
    files = [
        _f("UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-00002-of-00003.gguf", 20),
        _f("UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-00001-of-00003.gguf", 20),
        _f("UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-00003-of-00003.gguf", 5),
        _f("Q8_0/DeepSeek-R1-Q8_0-00001-of-00002.gguf", 100),  # one shard missing
        _f("DeepSeek-R1-Q4_K_M.gguf", 30),
        _f("mmproj-F16.gguf", 3),
        _f("README.md", 1),
        _f("imatrix.dat", 1),
    ]
    quants = {q.name: q for q in group_quants(files)}
    assert set(quants) == {"UD-IQ1_S", "Q8_0", "Q4_K_M"}
    ud = quants["UD-IQ1_S"]
    assert ud.size == 45 and ud.is_split and ud.complete and ud.folder == "UD-IQ1_S"
    assert [f.path[-19:] for f in ud.files] == [
        "-00001-of-00003.gguf"[-19:],
        "-00002-of-00003.gguf"[-19:],
        "-00003-of-00003.gguf"[-19:],
    ]
    assert not quants["Q8_0"].complete
    assert quants["Q4_K_M"].bits_per_weight() == pytest.approx(4.85)
    assert quants["Q4_K_M"].bits_per_weight(n_params=60) == pytest.approx(4.0)
    assert [q.name for q in group_quants(files)] == ["Q4_K_M", "UD-IQ1_S", "Q8_0"]  # smallest first


def test_select_quant():
    quants = group_quants([_f("a-Q4_K_M.gguf"), _f("b/a-Q4_K_M.gguf"), _f("a-UD-IQ1_S.gguf")])
    assert select_quant(quants, "b/a-Q4_K_M").key == "b/a-Q4_K_M"
    assert select_quant(quants, "iq1_s").name == "UD-IQ1_S"
    with pytest.raises(HubNotFoundError, match="several"):
        select_quant(quants, "q4_k_m")
    with pytest.raises(HubNotFoundError, match="available"):
        select_quant(quants, "Q2_K")
