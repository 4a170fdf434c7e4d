"""Which quant of a model to get for this machine: :func:`recommend`.

Quality order: fewer bits per weight of the whole file means lower quality (llama.cpp's KLD
and PPL tables in quant-formats.md fall monotonically with size for the common types: Q2_K
0.445, Q3_K_M 0.102, Q4_K_M 0.0313, Q5_K_M 0.0108, Q6_K 0.00545, Q8_0 0.00136 mean KLD), so
quants are ranked by file bits per weight and shown with their KLD where it is known.

A quant fits *comfortably* when everything stays in RAM/VRAM (fully on GPU, partial offload
or in RAM: nothing paged from disk), at least :data:`COMFORT_HEADROOM` of the usable memory
is left over, and the estimate is at least :data:`COMFORT_MIN_TOK_S` tokens/s (about reading
speed). *Tight*: it stays resident but misses the headroom or the speed. *Disk*: it runs with
weights paged from disk; *usable* when at least :data:`USABLE_MIN_TOK_S`.

The recommendation is the highest-quality comfortable quant; without one, the highest-quality
tight one; without one, the highest-quality quant that runs at a usable speed from disk, then
the fastest that runs at all.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from engine.fit.planner import FitPlan, Verdict, plan
from engine.fit.profile import HardwareProfile
from engine.fit.shape import ModelShape, QuantWeights

COMFORT_HEADROOM = 0.10
COMFORT_MIN_TOK_S = 5.0
USABLE_MIN_TOK_S = 1.0


class Tier(enum.Enum):
    COMFORTABLE = "comfortable"
    TIGHT = "tight"
    DISK = "disk"
    NO = "does not run"


@dataclass(frozen=True, slots=True)
class QuantOption:
    quant: str
    file_bytes: int
    bits_per_weight: float
    kld: float | None
    approx: bool
    estimated: bool
    tier: Tier
    plan: FitPlan

    def to_dict(self) -> dict[str, Any]:
        return {
            "quant": self.quant,
            "file_bytes": self.file_bytes,
            "bits_per_weight": round(self.bits_per_weight, 3),
            "kld": self.kld,
            "approx": self.approx,
            "estimated": self.estimated,
            "tier": self.tier.value,
            "plan": self.plan.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class Recommendation:
    model: str
    best: QuantOption | None
    reason: str
    up: QuantOption | None  # next higher quality than best
    down: QuantOption | None  # next lower quality than best
    options: tuple[QuantOption, ...]  # highest quality first

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "best": None if self.best is None else self.best.quant,
            "reason": self.reason,
            "up": None if self.up is None else self.up.quant,
            "down": None if self.down is None else self.down.quant,
            "options": [o.to_dict() for o in self.options],
            "rules": {
                "comfort_headroom": COMFORT_HEADROOM,
                "comfort_min_tok_s": COMFORT_MIN_TOK_S,
                "usable_min_tok_s": USABLE_MIN_TOK_S,
            },
        }


def tier_of(p: FitPlan) -> Tier:
    if not p.verdict.runs:
        return Tier.NO
    if p.verdict is Verdict.DISK:
        return Tier.DISK
    if p.headroom_fraction >= COMFORT_HEADROOM and p.tok_s >= COMFORT_MIN_TOK_S:
        return Tier.COMFORTABLE
    return Tier.TIGHT


def _why_not(o: QuantOption) -> str:
    p = o.plan
    if o.tier is Tier.NO:
        return p.verdict.label
    if o.tier is Tier.DISK:
        return f"{p.verdict.label}, {p.tok_s:.1f} tok/s"
    if o.tier is Tier.TIGHT:
        if p.tok_s < COMFORT_MIN_TOK_S:
            return f"only {p.tok_s:.1f} tok/s"
        return f"only {p.headroom_fraction * 100:.0f}% memory left"
    return p.verdict.label


# 8-bit quants (Q8_0: 8.5 bpw) are within noise of 16-bit (mean KLD 0.00136 on Llama-3-8B).
NEAR_LOSSLESS_BPW = 8.6
NEAR_LOSSLESS_MIN_BPW = 7.9


def recommend(
    shape: ModelShape,
    quants: Iterable[tuple[QuantWeights, float | None]],
    hw: HardwareProfile,
    **plan_kw: Any,
) -> Recommendation:
    """Plan every quant (``(weights, kld)`` pairs) on ``hw`` and pick one (see module docstring)."""
    options = []
    for w, kld in quants:
        p = plan(shape, w, hw, **plan_kw)
        options.append(
            QuantOption(
                quant=w.name,
                file_bytes=w.file_bytes,
                bits_per_weight=w.bits_per_weight(shape.total_params),
                kld=kld,
                approx=w.approx,
                estimated=w.estimated,
                tier=tier_of(p),
                plan=p,
            )
        )
    options.sort(key=lambda o: o.bits_per_weight, reverse=True)
    by_tier = {t: [o for o in options if o.tier is t] for t in Tier}
    best: QuantOption | None
    if by_tier[Tier.COMFORTABLE]:
        comfortable = by_tier[Tier.COMFORTABLE]
        best = comfortable[0]
        reason = (
            f"{best.quant} is the highest-quality quant that fits comfortably: {best.plan.verdict.label}, "
            f"{best.plan.headroom_fraction * 100:.0f}% memory left, about {best.plan.tok_s:.1f} tok/s."
        )
        # Quality saturates at 8-bit: above it, the extra bits cost speed and buy nothing measurable.
        near_lossless = [
            o for o in comfortable if NEAR_LOSSLESS_MIN_BPW <= o.bits_per_weight <= NEAR_LOSSLESS_BPW
        ]
        if best.bits_per_weight > NEAR_LOSSLESS_BPW and near_lossless:
            q8 = near_lossless[0]
            if q8.plan.tok_s > best.plan.tok_s * 1.2:
                reason = (
                    f"{q8.quant} fits comfortably ({q8.plan.verdict.label}, about {q8.plan.tok_s:.1f} "
                    f"tok/s) and is as good as {best.quant} in practice (8-bit quants measure KLD "
                    "~0.001 against 16-bit) "
                    f"while {q8.plan.tok_s / best.plan.tok_s:.1f}× faster."
                )
                best = q8
    elif by_tier[Tier.TIGHT]:
        best = by_tier[Tier.TIGHT][0]
        reason = (
            f"No quant fits comfortably; {best.quant} is the best that stays in memory "
            f"({best.plan.verdict.label}, {_why_not(best)})."
        )
    elif by_tier[Tier.DISK]:
        usable = [o for o in by_tier[Tier.DISK] if o.plan.tok_s >= USABLE_MIN_TOK_S]
        best = usable[0] if usable else max(by_tier[Tier.DISK], key=lambda o: o.plan.tok_s)
        reason = (
            f"Every quant needs part of its weights paged from disk; {best.quant} is the "
            + ("best that still runs at a usable speed" if usable else "fastest")
            + f": about {best.plan.tok_s:.1f} tok/s."
        )
    else:
        best = None
        reason = "No quant of this model runs on this machine: " + (
            options[-1].plan.sentence if options else "the catalog lists none."
        )
    up = down = None
    if best is not None:
        i = options.index(best)
        up = options[i - 1] if i > 0 else None
        down = options[i + 1] if i + 1 < len(options) else None
        if up is not None:
            reason += f" One step up, {up.quant}: {_why_not(up)}."
    return Recommendation(
        model=shape.name, best=best, reason=reason, up=up, down=down, options=tuple(options)
    )
