"""The Learn page, offscreen: the picture and sound demos follow their sliders, playback is available
only with QtMultimedia, and a real tensor is quantized to every type with its error and histogram."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytestmark = pytest.mark.gui

from engine.convert.synthetic import SyntheticSpec, write_synthetic  # noqa: E402
from engine.library import Library, register_file  # noqa: E402
from engine.paths import KvantPaths  # noqa: E402
from gui.worker import WorkerPool  # noqa: E402

SPEC = SyntheticSpec("llama", 1, 256, 256, 4, 2, 64, 256, "F16", 9)


@pytest.fixture
def paths(tmp_path):
    return KvantPaths(tmp_path / "home").ensure()


@pytest.fixture
def page(qtbot, paths):
    from gui.pages.learn import LearnPage

    workers = WorkerPool()
    p = LearnPage(paths, workers)
    qtbot.addWidget(p)
    p.resize(1000, 700)
    p.show()
    yield p
    workers.cancel_all()
    workers.wait(20_000)


def test_tabs_open(qtbot, page):
    titles = [page.tabs.tabText(i) for i in range(page.tabs.count())]
    assert titles == ["What it is", "Picture", "Sound", "Model weights"]
    for i in range(page.tabs.count()):
        page.tabs.setCurrentIndex(i)
        assert page.tabs.currentWidget().isVisible()
    text = page.intro.toPlainText()
    assert "quantization error" in text and "KL divergence" in text and "1.58" in text


def test_picture_loses_colours_as_bits_fall(qtbot, page):
    from gui.pages.learn import psnr

    page.tabs.setCurrentIndex(1)
    seen = {}
    for bits in (8, 5, 3, 1):
        page.image_slider.setValue(bits)
        levels = len(np.unique(page.reduced[..., 0]))
        seen[bits] = (levels, psnr(page._image, page.reduced))
        assert levels <= 2**bits
        assert f"{bits} bit" in page.image_bits_label.text()
    assert seen[8][1] == math.inf  # 8 bits per channel is the original
    assert seen[5][1] > seen[3][1] > seen[1][1]
    assert page.reduced_view.pixmap().width() == page._image.shape[1]
    assert "PSNR" in page.image_stats.text()
    page.dither_check.setChecked(True)  # dithering changes the picture, not the levels
    assert len(np.unique(page.reduced[..., 0])) <= 2


def test_sound_noise_grows_as_bits_fall(qtbot, page, monkeypatch):
    from gui.pages.learn import AUDIO_AVAILABLE, NO_AUDIO_WHY, demo_chord, quantize_audio, snr_db

    page.tabs.setCurrentIndex(2)
    sig = demo_chord()
    snrs = {}
    for bits in (16, 8, 4):
        page.sound_slider.setValue(bits)
        q = page.quantized_sound
        assert np.abs(q - sig).max() <= 2.0 ** -(bits - 1) / 2 + 1e-12  # at most half a step
        snrs[bits] = snr_db(sig, quantize_audio(sig, bits))
        assert f"{bits} bits" in page.sound_bits_label.text()
        labels = [label for label, _, _ in page.wave_view.signals()]
        assert labels == ["original", f"{bits}-bit"]
        assert page.error_view.signals()[0][0].startswith("error")
    # about 6 dB per bit
    assert 40 < snrs[16] - snrs[8] < 56 and 18 < snrs[8] - snrs[4] < 30
    assert "Signal-to-noise" in page.sound_stats.text()
    # playback: inside Kvant with QtMultimedia, else the WAV opens in the system's audio player
    assert page.play_original.isEnabled() and page.play_quant.isEnabled()
    if not AUDIO_AVAILABLE:
        import wave

        from PySide6.QtGui import QDesktopServices

        assert page.play_original.toolTip() == NO_AUDIO_WHY
        opened = []
        monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()) or True)
        page.set_sound_bits(4)
        page.play_quant.click()
        page.play_original.click()
        assert [Path(p).name for p in opened] == ["learn-quantized-4bit.wav", "learn-original-16bit.wav"]
        with wave.open(opened[0]) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
            assert w.getframerate() > 0 and w.getsampwidth() == 2
        assert len(np.unique(pcm)) <= 16  # 4 bits: at most 16 levels were written


def test_model_tensor_quantized_to_every_type(qtbot, page, paths, tmp_path):
    # a few types, so that a cold Numba cache (kernels compiled on first use) stays quick enough
    types = ("F16", "Q8_0", "Q4_K", "Q4_0", "Q2_K")
    page.demo_types = types
    model = write_synthetic(tmp_path / "tiny.gguf", SPEC)
    entry = register_file(Library(paths.library_file), model)
    page.tabs.setCurrentIndex(3)
    page.set_entries([entry])
    qtbot.waitUntil(lambda: page.demo is not None, timeout=600_000)
    demo = page.demo
    assert demo.source_type == "F16" and demo.tensor.endswith(".weight") and len(demo.shape) == 2
    assert [r.type for r in demo.results] == list(types)
    by = {r.type: r for r in demo.results}
    assert by["Q8_0"].rmse < by["Q4_K"].rmse < by["Q2_K"].rmse
    assert by["F16"].rmse == 0 and math.isinf(by["F16"].snr_db)  # the tensor is stored as F16
    assert by["Q4_0"].bits_per_weight == pytest.approx(4.5)
    assert page.type_table.rowCount() == len(types)
    # the histogram shows the original and the selected type (Q2_K first), highlighted on the chart
    series = page.histogram.series()
    assert [s[0].split()[0] for s in series] == ["F16", "Q2_K"]
    assert [p.label for p in page.error_chart.points() if p.highlight] == ["Q2_K"]
    assert sum(series[0][1]) == pytest.approx(demo.n_values, rel=0.01)
    row = next(r for r in range(page.type_table.rowCount()) if page.type_table.item(r, 0).text() == "Q4_0")
    page.type_table.selectRow(row)
    assert page.histogram.series()[1][0].startswith("Q4_0")
    assert {p.label for p in page.error_chart.points()} == set(types) - {"F16"}
    # choosing another tensor quantizes that one
    page.tensor_combo.setCurrentIndex(page.tensor_combo.count() - 1)
    name = page.tensor_combo.currentData()
    qtbot.waitUntil(lambda: page.demo.tensor == name, timeout=600_000)


def test_learn_page_in_the_window(qtbot, paths):
    from gui.main_window import MainWindow

    w = MainWindow(paths)
    qtbot.addWidget(w)
    w.show()
    w.show_page("Learn")
    assert w.learn_page.isVisible()
    w.close()
