"""Tests for ``kvant hw`` through engine.cli.run_cli."""

from __future__ import annotations

import json

import pytest

from engine.cli import run_cli
from engine.hardware import BandwidthInfo
from engine.hardware import bandwidth as bandwidth_mod

TOP_KEYS = {
    "system",
    "machine",
    "cpu",
    "memory",
    "disk",
    "gpus",
    "gpu_note",
    "unified_memory",
    "bandwidth",
    "bandwidth_note",
}


@pytest.fixture
def cli_env(monkeypatch, tmp_path):
    """A private KVANT_HOME and an instant fake probe."""
    monkeypatch.setenv("KVANT_HOME", str(tmp_path / "home"))
    calls: list[dict] = []

    def fake_measure(**kwargs) -> BandwidthInfo:
        calls.append(kwargs)
        return BandwidthInfo(
            single_thread_bytes_per_s=12_340_000_000,
            all_threads_bytes_per_s=23_450_000_000,
            threads=kwargs.get("threads") or 1,
            buffer_bytes=kwargs.get("buffer_bytes") or 1,
            repeats=1,
            method="fake",
            measured_at="2025-01-01T00:00:00+00:00",
        )

    monkeypatch.setattr(bandwidth_mod, "measure_bandwidth", fake_measure)
    return calls


def run_json(capsys, *argv: str) -> dict:
    assert run_cli(["hw", "--json", *argv]) == 0
    out = capsys.readouterr().out
    return json.loads(out)


def test_hw_json_has_expected_keys_and_plausible_values(cli_env, capsys, tmp_path):
    data = run_json(capsys)
    assert set(data) == TOP_KEYS
    assert data["cpu"]["logical_cores"] >= 1 and data["cpu"]["model_name"]
    assert data["memory"]["total_bytes"] > 0
    assert data["disk"]["free_bytes"] > 0
    assert data["disk"]["path"] == str(tmp_path / "home" / "models")
    assert isinstance(data["gpus"], list)
    if not data["gpus"]:
        assert data["gpu_note"]
    assert data["bandwidth"]["single_thread_gb_per_s"] == 12.34
    assert data["bandwidth"]["cached"] is False
    assert len(cli_env) == 1
    assert cli_env[0]["threads"] == data["cpu"]["usable_threads"]
    assert cli_env[0]["buffer_bytes"] <= bandwidth_mod.DEFAULT_BUFFER_BYTES


def test_hw_json_uses_cache_then_refresh_remeasures(cli_env, capsys):
    run_json(capsys)
    cached = run_json(capsys)
    assert cached["bandwidth"]["cached"] is True and len(cli_env) == 1
    refreshed = run_json(capsys, "--refresh")
    assert refreshed["bandwidth"]["cached"] is False and len(cli_env) == 2


def test_hw_no_bandwidth(cli_env, capsys):
    data = run_json(capsys, "--no-bandwidth")
    assert data["bandwidth"] is None and data["bandwidth_note"]
    assert cli_env == []


def test_refresh_and_no_bandwidth_conflict(cli_env, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(["hw", "--refresh", "--no-bandwidth"])
    assert exc.value.code == 2


def test_hw_human_table(cli_env, capsys):
    assert run_cli(["hw"]) == 0
    out = capsys.readouterr().out
    labels = [line.split()[0] for line in out.splitlines()]
    for label in ("CPU", "Cores", "SIMD", "RAM", "Swap", "Disk", "GPU", "Bandwidth"):
        assert label in labels
    assert "23.4 GB/s with" in out
    assert not out.lstrip().startswith("{")


def test_human_table_lists_gpus_and_unified_memory(tmp_path):
    from engine.cli.hw import format_hardware
    from engine.hardware import (
        CpuInfo,
        DiskInfo,
        GpuInfo,
        HardwareInfo,
        MemoryInfo,
        UnifiedMemoryInfo,
    )

    gib = 1024**3
    info = HardwareInfo(
        system="darwin",
        machine="arm64",
        cpu=CpuInfo("Apple M2 Pro", "arm64", 10, 10, 10, ("neon", "fp16", "dotprod"), "sysctl"),
        memory=MemoryInfo(32 * gib, 20 * gib, 0, 0),
        disk=DiskInfo(tmp_path / "models", tmp_path, 500 * gib, 100 * gib),
        gpus=(GpuInfo(0, "NVIDIA RTX 4090", 24 * gib, 22 * gib, (8, 9), "550.54.15", "12.4"),),
        gpu_note="1 of 2 NVIDIA GPUs skipped: GPU 1 could not be queried (Unknown Error).",
        unified_memory=UnifiedMemoryInfo(32 * gib, int(32 * gib * 0.7)),
        bandwidth=None,
        bandwidth_note="not measured (skipped on request)",
    )
    text = format_hardware(info)
    assert "Apple M2 Pro (arm64)" in text
    assert "NEON FP16 DOTPROD" in text
    assert (
        "GPU 0      NVIDIA RTX 4090, 24.0 GiB (22.0 GiB free), compute 8.9, driver 550.54.15, CUDA 12.4"
        in text
    )
    assert "GPU 1 could not be queried" in text
    assert "22.4 GiB usable by it (estimate)" in text
    assert "not created yet" in text
    assert "Swap       none" in text
    assert "Bandwidth  not measured (skipped on request)" in text
