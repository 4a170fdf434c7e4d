"""engine.fit.calibration: synthetic measurements, correction factors, the file."""

from __future__ import annotations

import json
import math

import pytest

from engine.errors import KvantError
from engine.fit import (
    CALIBRATION_FILE,
    CalibrationStore,
    HardwareProfile,
    Measurement,
    load_catalog,
    measurement_from_plan,
    plan,
)
from engine.paths import KvantPaths


@pytest.fixture
def store(tmp_path):
    return CalibrationStore.default(KvantPaths(tmp_path))


def test_default_location(tmp_path, store):
    assert store.path == tmp_path / "cache" / CALIBRATION_FILE
    assert store.load() == [] and store.correction("m").samples == 0


def test_speed_factor_is_the_geometric_mean_and_specific_records_win(store):
    for pred, meas in ((40.0, 20.0), (40.0, 80.0)):  # ratios 0.5 and 2 -> geometric mean 1
        store.record(Measurement("box", "llama", "Q4_K_M", 4096, pred, measured_tok_s=meas))
    store.record(Measurement("box", "llama", "Q8_0", 4096, 20.0, measured_tok_s=15.0))
    store.record(Measurement("other", "llama", "Q4_K_M", 4096, 10.0, measured_tok_s=100.0))
    c = store.correction("box", "llama", "Q4_K_M")
    assert c.scope == "machine+model+quant" and c.samples == 2 and c.tok_s == pytest.approx(1.0)
    c = store.correction("box", "llama", "Q6_K")  # no record for that quant: the model's
    assert c.scope == "machine+model" and c.tok_s == pytest.approx(math.exp(math.log(0.5 * 2 * 0.75) / 3))
    c = store.correction("box", "gemma", "Q4_K_M")
    assert c.scope == "machine" and c.samples == 3
    assert store.correction("other").tok_s == 10.0  # clamped to MAX_FACTOR
    assert store.correction("nowhere").scope == "none"
    data = json.loads(store.path.read_text(encoding="utf-8"))
    assert data["version"] == 1 and len(data["records"]) == 4 and data["records"][0]["at"]


def test_buffer_factor_and_applying_a_correction(store):
    m = load_catalog().find("llama-3.1-8b")[0]
    shape, w = m.shape(), m.weights("Q4_K_M")
    hw = HardwareProfile.custom(ram_gb=32, cpu_bandwidth_gbs=50)
    p = plan(shape, w, hw, n_ctx=8192)
    used = sum(d.used_bytes for d in p.devices)
    fixed = sum(d.weights_bytes + d.kv_bytes for d in p.devices)
    # a run measured 60% of the predicted speed and buffers twice the estimate
    rec = measurement_from_plan(
        p, hw.key, measured_tok_s=p.tok_s * 0.6, measured_bytes=fixed + 2 * (used - fixed)
    )
    store.record(rec)
    c = store.correction(hw.key, shape.name, w.name)
    assert c.tok_s == pytest.approx(0.6) and c.buffers == pytest.approx(2.0)
    p2 = plan(shape, w, hw, n_ctx=8192, correction=c.tok_s, buffer_factor=c.buffers)
    assert p2.tok_s == pytest.approx(p.tok_s * 0.6, rel=1e-3)
    assert p2.device("cpu").compute_bytes == pytest.approx(2 * p.device("cpu").compute_bytes, abs=1)
    # recording the corrected plan stores the uncorrected prediction, so factors do not compound
    assert measurement_from_plan(p2, hw.key).predicted_tok_s == pytest.approx(p.tok_s, rel=1e-3)


def test_damaged_file_and_bad_records(store):
    store.path.parent.mkdir(parents=True, exist_ok=True)
    store.path.write_text("{not json", encoding="utf-8")
    assert store.load() == []
    store.record(Measurement("box", "m", "q", 1, 10.0, measured_tok_s=5.0))  # replaces it atomically
    assert len(store.load()) == 1
    assert not list(store.path.parent.glob("*.partial"))
    with pytest.raises(KvantError):
        store.record(Measurement("box", "m", "q", 1, 10.0, measured_tok_s=0.0))


def test_record_run_of_a_real_file_feeds_the_correction(store, default_model):
    """A real load of the default model: the record carries the planner's prediction for the file."""
    from engine.fit import describe_gguf, record_run
    from engine.gguf import open_gguf

    hw = HardwareProfile.custom(ram_gb=16, cpu_bandwidth_gbs=20, disk_gb=100)
    with open_gguf(default_model) as m:
        shape, weights = describe_gguf(m)
    expected = plan(shape, weights, hw, n_ctx=1024, on_disk=True)
    rec = record_run(default_model, n_ctx=1024, measured_tok_s=expected.tok_s / 2, measured_bytes=400 << 20,
                     hardware=hw, store=store)  # fmt: skip
    assert rec.model == shape.name and rec.quant == weights.name and rec.n_ctx == 1024
    assert rec.predicted_tok_s == pytest.approx(expected.tok_s) and rec.at
    assert rec.predicted_fixed_bytes and rec.predicted_bytes > rec.predicted_fixed_bytes
    assert store.load() == [rec]
    c = store.correction(hw.key, shape.name, weights.name)
    assert c.scope == "machine+model+quant" and c.tok_s == pytest.approx(0.5)
    # the next plan on that machine uses it
    again = plan(shape, weights, hw, n_ctx=1024, on_disk=True, correction=c.tok_s)
    assert again.tok_s == pytest.approx(expected.tok_s / 2)
