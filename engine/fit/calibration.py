"""Predicted vs. measured memory and speed, and the correction they imply.

The engine records a :class:`Measurement` after a real run (peak memory, decode tok/s) next
to what the planner predicted; :meth:`CalibrationStore.correction` turns the records into a
:class:`Correction` for later plans on the same machine: the geometric mean of measured /
predicted tok/s, and of measured / predicted compute-buffer bytes (weights and KV cache are
counted exactly; the buffers are the estimate). The most specific records win: same machine,
model and quant; else same machine and model; else the whole machine. Factors are clamped to
[:data:`MIN_FACTOR`, :data:`MAX_FACTOR`] so one bad record cannot wreck the planner.

Stored as JSON in ``KvantPaths.cache / CALIBRATION_FILE``, written atomically.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import KvantError
from engine.library import atomic_write_text
from engine.paths import KvantPaths

CALIBRATION_FILE = "fit_calibration.json"
FORMAT_VERSION = 1
MIN_FACTOR = 0.1
MAX_FACTOR = 10.0
MAX_RECORDS = 1000


@dataclass(frozen=True, slots=True)
class Measurement:
    machine: str  # HardwareProfile.key
    model: str
    quant: str
    n_ctx: int
    predicted_tok_s: float
    measured_tok_s: float | None = None
    predicted_bytes: int | None = None  # everything the plan puts in memory
    predicted_fixed_bytes: int | None = None  # of which weights + KV (exact)
    measured_bytes: int | None = None
    at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class Correction:
    tok_s: float = 1.0
    buffers: float = 1.0
    samples: int = 0
    scope: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _clamp(x: float) -> float:
    return min(MAX_FACTOR, max(MIN_FACTOR, x))


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def measurement_from_plan(
    plan: Any,
    machine: str,
    *,
    measured_tok_s: float | None = None,
    measured_bytes: int | None = None,
) -> Measurement:
    """A record for a :class:`engine.fit.FitPlan` and what a real run measured."""
    used = sum(d.used_bytes for d in plan.devices)
    fixed = sum(d.weights_bytes + d.kv_bytes for d in plan.devices)
    return Measurement(
        machine=machine,
        model=plan.model,
        quant=plan.quant,
        n_ctx=plan.n_ctx,
        predicted_tok_s=plan.tok_s / plan.correction if plan.correction else plan.tok_s,
        measured_tok_s=measured_tok_s,
        predicted_bytes=used,
        predicted_fixed_bytes=fixed,
        measured_bytes=measured_bytes,
    )


def record_run(
    path: str | Path,
    *,
    n_ctx: int,
    measured_tok_s: float | None,
    measured_bytes: int | None = None,
    hardware: Any = None,
    store: CalibrationStore | None = None,
    kv_type: str = "f16",
) -> Measurement:
    """Record what a real run of the local GGUF ``path`` measured next to what the planner predicts
    for it on ``hardware`` (a :class:`engine.fit.HardwareProfile`; default: this machine, detected),
    and return the record. ``measured_bytes``: the memory the loaded model took (process RSS after
    load minus before). Reads only the file's header."""
    from engine.fit.planner import plan
    from engine.fit.profile import HardwareProfile
    from engine.fit.shape import describe_gguf
    from engine.gguf import open_gguf

    if hardware is None:
        from engine.hardware import detect

        hardware = HardwareProfile.from_hardware_info(detect(bandwidth=True))
    store = CalibrationStore.default() if store is None else store
    with open_gguf(path) as model:
        shape, weights = describe_gguf(model)
    predicted = plan(shape, weights, hardware, n_ctx=n_ctx, kv_type=kv_type, on_disk=True)
    m = measurement_from_plan(
        predicted, hardware.key, measured_tok_s=measured_tok_s, measured_bytes=measured_bytes
    )
    return store.record(m)


class CalibrationStore:
    """The calibration file. Reads are tolerant (a damaged file counts as empty)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def default(cls, paths: KvantPaths | None = None) -> CalibrationStore:
        paths = KvantPaths.default() if paths is None else paths
        return cls(paths.cache / CALIBRATION_FILE)

    def load(self) -> list[Measurement]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return []
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            return []
        out = []
        for rec in data.get("records", []):
            try:
                out.append(Measurement.from_dict(rec))
            except TypeError:
                continue
        return out

    def record(self, m: Measurement) -> Measurement:
        if m.predicted_tok_s <= 0 and m.measured_tok_s is not None:
            raise KvantError("a calibration record needs a positive predicted tok/s")
        if m.measured_tok_s is not None and m.measured_tok_s <= 0:
            raise KvantError("a measured speed must be positive")
        if not m.at:
            m = Measurement(**{**m.to_dict(), "at": datetime.now(UTC).isoformat(timespec="seconds")})
        records = [*self.load(), m][-MAX_RECORDS:]
        text = json.dumps({"version": FORMAT_VERSION, "records": [r.to_dict() for r in records]}, indent=1)
        atomic_write_text(self.path, text + "\n")
        return m

    def correction(self, machine: str, model: str | None = None, quant: str | None = None) -> Correction:
        records = [r for r in self.load() if r.machine == machine]
        scopes = []
        if model is not None and quant is not None:
            scopes.append(
                ("machine+model+quant", [r for r in records if r.model == model and r.quant == quant])
            )
        if model is not None:
            scopes.append(("machine+model", [r for r in records if r.model == model]))
        scopes.append(("machine", records))
        for scope, recs in scopes:
            speed = [
                r.measured_tok_s / r.predicted_tok_s
                for r in recs
                if r.measured_tok_s and r.predicted_tok_s > 0
            ]
            buffers = []
            for r in recs:
                if r.measured_bytes and r.predicted_bytes and r.predicted_fixed_bytes is not None:
                    est = r.predicted_bytes - r.predicted_fixed_bytes
                    real = r.measured_bytes - r.predicted_fixed_bytes
                    if est > 0 and real > 0:
                        buffers.append(real / est)
            if speed or buffers:
                return Correction(
                    tok_s=_clamp(_geomean(speed)) if speed else 1.0,
                    buffers=_clamp(_geomean(buffers)) if buffers else 1.0,
                    samples=len(recs),
                    scope=scope,
                )
        return Correction()
