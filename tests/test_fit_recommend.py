"""engine.fit.recommend: the best quant that fits comfortably, and the steps up and down."""

from __future__ import annotations

import json

import pytest

from engine.fit import HardwareProfile, Tier, Verdict, load_catalog, recommend


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _rec(catalog, model_id, hw, **kw):
    m = catalog.find(model_id)[0]
    return recommend(m.shape(), [(m.weights(q), q.kld) for q in m.quants], hw, **kw)


def test_llama_8b_on_an_8gb_gpu(catalog):
    hw = HardwareProfile.custom(ram_gb=32, vram_gb=[8], gpu_names=["RTX 4060"], cpu_bandwidth_gbs=60)
    rec = _rec(catalog, "llama-3.1-8b", hw, n_ctx=8192)
    names = [o.quant for o in rec.options]
    assert names[0] == "F16" and names[-1] == "Q2_K"  # highest quality first
    bpws = [o.bits_per_weight for o in rec.options]
    assert bpws == sorted(bpws, reverse=True)
    # Q6_K (6.6 GB) + 1 GiB KV + buffers > 7 GiB usable: partial offload; Q5_K_M fits on the GPU
    by = {o.quant: o for o in rec.options}
    assert by["Q5_K_M"].plan.verdict is Verdict.FULL_GPU and by["Q5_K_M"].tier is Tier.COMFORTABLE
    assert by["Q6_K"].plan.verdict is Verdict.PARTIAL_OFFLOAD
    best = rec.best
    assert best is not None and best.tier is Tier.COMFORTABLE
    # the highest-quality comfortable one, with one step each way
    assert all(o.tier is not Tier.COMFORTABLE for o in rec.options[: rec.options.index(best)])
    assert rec.up is rec.options[rec.options.index(best) - 1]
    assert rec.down is rec.options[rec.options.index(best) + 1]
    assert best.quant in rec.reason and "comfortably" in rec.reason and rec.up.quant in rec.reason
    json.dumps(rec.to_dict())


def test_small_machine_takes_a_smaller_quant(catalog):
    small = HardwareProfile.custom(ram_gb=6, cpu_bandwidth_gbs=30)
    big = HardwareProfile.custom(ram_gb=64, vram_gb=[24], gpu_names=["RTX 4090"], cpu_bandwidth_gbs=80)
    r_small = _rec(catalog, "llama-3.1-8b", small, n_ctx=4096)
    r_big = _rec(catalog, "llama-3.1-8b", big, n_ctx=4096)
    assert r_small.best.bits_per_weight < r_big.best.bits_per_weight
    assert r_small.best.plan.verdict is Verdict.RAM


def test_deepseek_r1_with_80gb_has_only_disk_options(catalog):
    hw = HardwareProfile.custom(ram_gb=80, cpu_bandwidth_gbs=80)
    rec = _rec(catalog, "unsloth/DeepSeek-R1-GGUF", hw, n_ctx=4096)
    assert all(o.tier is Tier.DISK for o in rec.options)
    assert rec.best is not None and rec.best.plan.tok_s >= 1.0
    assert rec.best.quant in ("UD-IQ1_S", "UD-IQ1_M") and "paged from disk" in rec.reason


def test_nothing_runs(catalog):
    hw = HardwareProfile.custom(ram_gb=64, disk_gb=10)
    rec = _rec(catalog, "unsloth/DeepSeek-R1-GGUF", hw)
    assert rec.best is None and rec.up is None and "No quant" in rec.reason
    assert all(o.tier is Tier.NO for o in rec.options)


def test_quality_saturates_at_8_bit(catalog):
    """F16 fits but crawls from RAM while Q8_0 fits on the GPU: Q8_0, not F16 (KLD ~0.001 apart)."""
    hw = HardwareProfile.custom(ram_gb=32, vram_gb=[12], gpu_names=["RTX 4070"], cpu_bandwidth_gbs=60)
    rec = _rec(catalog, "llama-3.1-8b", hw, n_ctx=4096)
    by = {o.quant: o for o in rec.options}
    assert by["F16"].tier is Tier.COMFORTABLE and by["Q8_0"].tier is Tier.COMFORTABLE
    assert by["Q8_0"].plan.tok_s > 1.2 * by["F16"].plan.tok_s
    assert rec.best.quant == "Q8_0" and "as good as F16" in rec.reason
    assert rec.up is not None and rec.up.bits_per_weight > rec.best.bits_per_weight  # F16 still offered
    # below 8 bits nothing changes: a 6 GB machine still takes the best quant that fits
    small = _rec(catalog, "llama-3.1-8b", HardwareProfile.custom(ram_gb=6, cpu_bandwidth_gbs=30), n_ctx=4096)
    assert small.best.bits_per_weight < 7.9 and "highest-quality" in small.reason
