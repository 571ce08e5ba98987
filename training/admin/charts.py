"""Geometry of the admin's SVG charts (training curves, the score histogram), computed here and drawn by templates.

No chart library: the admin must work offline, and a handful of polylines needs none.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

from policies.models import PolicyVersion

# One chart per spec metric, drawn from the version's TrainingStep rows (the core's names: n3_server.rlhf.metrics).
# "domain": where the figure can lie (the reward model's scores are clamped to 0..1; a KL is never negative), so an
# axis does not run past it.
CURVES = [
    {"key": "objective/scores", "title": "Reward mean", "css": "n3-reward", "domain": (0.0, 1.0),
     # No target line: each version's reward is on its own reward model's scale (README), so no fixed level
     # means "good" across versions.
     "hint": "Good: increasing (on this version's own reward model's scale).", "refs": []},
    {"key": "objective/kl", "title": "KL divergence", "css": "n3-kl", "domain": (0.0, None),
     "hint": "Good: < 10 (close to the base model). Bad: > 20.", "refs": [(10.0, "10"), (20.0, "20")]},
    {"key": "loss/total", "title": "Loss", "css": "n3-loss", "domain": (None, None),
     "hint": "Good: decreasing, then stable.", "refs": []},
]

# How each algorithm's objective/kl is estimated (n3_server.rlhf.ppo, trl_algorithms), said under the KL chart.
KL_NOTES = {
    "ppo": "KL per response, k3 estimate (never negative).",
    "grpo": "KL per response, TRL's k3 estimate (never negative).",
    "rloo": "KL per response, TRL's k1 estimate (the mean log-ratio of a sample): it can dip slightly below 0 "
            "when the policy is close to its reference; the true KL is never negative.",
    "kto": "KL per response: KTO's own estimate at each step (TRL clamps it at 0), the k3 estimate on a final "
           "sample at the last.",
    "dpo": "KL per response: the k3 estimate on a final sample (DPO logs none per step).",
}


def number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def curve_points(steps: Sequence[tuple[int, dict]], key: str) -> list[tuple[float, float]]:
    """(step, value) for every (step, figures) with a finite ``key``."""
    points = []
    for step, figures in steps:
        value = number(figures.get(key)) if isinstance(figures, dict) else None
        if value is not None:
            points.append((float(step), value))
    return points


def nice_axis(low: float, high: float, *, count: int = 5, integer: bool = False,
              domain: tuple[Optional[float], Optional[float]] = (None, None)) -> tuple[float, float, list[float]]:
    """Round bounds and ticks for data in [low, high]: (bottom, top, ticks).

    Ticks are 1, 2 or 5 times a power of ten apart (0.05, 0.1, 0.2, ...), the smallest such spacing giving at most
    ``count`` intervals; bottom and top are the ticks at or just beyond the data (an axis ends on a round number,
    one tick at most past the data). ``integer``: whole-number ticks only (steps). ``domain``: where the quantity can
    lie (a score in 0..1): the axis never extends past it where the data do not.
    """
    if high < low:
        low, high = high, low
    if high == low:  # one value: a small round range around it
        pad = 1.0 if integer else max(abs(low) * 0.1, 0.1)
        low, high = (low, low + pad) if integer else (low - pad, high + pad)
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    spacings = [m * magnitude for m in (1, 2, 5, 10)]
    if integer:
        spacings = [s for s in spacings if s >= 1 and s % 1 == 0] or [float(math.ceil(raw))]
    spacing = next((s for s in spacings if s >= raw * (1 - 1e-9)), spacings[-1])
    bottom = math.floor(low / spacing + 1e-9) * spacing
    top = math.ceil(high / spacing - 1e-9) * spacing
    floor, ceiling = domain
    if floor is not None and low >= floor:
        bottom = max(bottom, floor)
    if ceiling is not None and high <= ceiling:
        top = min(top, ceiling)
    ticks = []
    value = math.ceil(bottom / spacing - 1e-9) * spacing
    while value <= top + spacing * 1e-9:
        ticks.append(round(value, 10) + 0.0)  # + 0.0: no "-0"
        value += spacing
    return round(bottom, 10) + 0.0, round(top, 10) + 0.0, ticks


def _tick_label(value: float, integer: bool) -> str:
    return str(int(round(value))) if integer else f"{value:g}"


def line_chart(series: list[dict], *, refs: Sequence[tuple[float, str]] = (), width: int = 460,
               height: int = 200, domain: tuple[Optional[float], Optional[float]] = (None, None)) -> Optional[dict]:
    """Geometry of an SVG line chart: ``series`` are {"label", "css", "points": [(step, y)]}.

    The y axis spans the data (and the reference lines near it) between round bounds, within ``domain``; the x axis
    (steps) has whole-number ticks. Reference lines (e.g. the spec's KL thresholds) are drawn when they lie near the
    data. Returns None when there is nothing to draw.
    """
    drawn = [s for s in series if s["points"]]
    if not drawn:
        return None
    xs = [x for s in drawn for x, _ in s["points"]]
    ys = [y for s in drawn for _, y in s["points"]]
    y_low, y_high = min(ys), max(ys)
    span = (y_high - y_low) or max(abs(y_high) * 0.1, 0.1)
    # A reference line is shown if it is within half a span of the data, so it never squashes the curve.
    shown_refs = [(v, label) for v, label in refs if y_low - span * 0.5 <= v <= y_high + span * 0.5]
    y_low = min([y_low] + [v for v, _ in shown_refs])
    y_high = max([y_high] + [v for v, _ in shown_refs])
    y_low, y_high, y_ticks = nice_axis(y_low, y_high, domain=domain)
    x_low, x_high, x_ticks = nice_axis(min(xs), max(xs), integer=True)
    left, right, top, bottom = 48, 12, 10, 26
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return round(left + (x - x_low) / (x_high - x_low) * plot_w, 1)

    def sy(y: float) -> float:
        return round(top + (1 - (y - y_low) / (y_high - y_low)) * plot_h, 1)

    return {
        "width": width, "height": height, "left": left, "top": top, "right": width - right,
        "bottom": height - bottom,
        "series": [
            {**s, "path": " ".join(f"{sx(x)},{sy(y)}" for x, y in s["points"]),
             "last": s["points"][-1], "last_xy": (sx(s["points"][-1][0]), sy(s["points"][-1][1])),
             "single": len(s["points"]) == 1}
            for s in drawn
        ],
        "y_ticks": [{"y": sy(t), "label": _tick_label(t, False)} for t in y_ticks],
        "x_ticks": [{"x": sx(t), "label": _tick_label(t, True)} for t in x_ticks],
        "refs": [{"y": sy(v), "label": label} for v, label in shown_refs],
    }


def version_charts(versions: Sequence[PolicyVersion]) -> list[dict]:
    """One chart per curve (reward, KL, loss); several versions are overlaid for comparison. One query per
    version reads its steps."""
    steps = [list(v.steps.order_by("step").values_list("step", "metrics")) for v in versions]
    charts = []
    for curve in CURVES:
        series = [
            {"label": v.version, "css": curve["css"] if i == 0 else f"{curve['css']} n3-second",
             "points": curve_points(steps[i], curve["key"])}
            for i, v in enumerate(versions)
        ]
        chart = line_chart(series, refs=curve["refs"], domain=curve["domain"])
        hint = curve["hint"]
        if curve["key"] == "objective/kl":
            notes = dict.fromkeys(KL_NOTES.get(str((v.config or {}).get("algorithm", "")).lower()) for v in versions)
            hint = " ".join([hint, *(note for note in notes if note)])
        charts.append({"title": curve["title"], "hint": hint, "name": curve["key"], "chart": chart})
    return charts


def histogram(bins: list[dict], *, width: int = 420, height: int = 150) -> dict:
    """Geometry of the score histogram: one bar per bin, coloured by the spec's band it lies in."""
    left, bottom, top = 8, 22, 16
    largest = max([b["count"] for b in bins] + [1])
    bar_w = (width - 2 * left) / len(bins)
    bars = []
    for i, b in enumerate(bins):
        h = (height - top - bottom) * b["count"] / largest
        bars.append({
            **b, "x": round(left + i * bar_w + 1, 1), "w": round(bar_w - 2, 1),
            "y": round(height - bottom - h, 1), "h": round(h, 1),
            "label_x": round(left + i * bar_w + bar_w / 2, 1), "label_y": round(height - bottom - h - 4, 1),
            "key": b["band"].key if b["band"] else "",
        })
    return {
        "width": width, "height": height, "bars": bars, "axis_y": height - bottom, "left": left,
        "right": width - left,
        "edges": [{"x": round(left + i * bar_w, 1), "label": f"{i / len(bins):g}"} for i in range(0, len(bins) + 1, 2)],
        "text_y": height - 6,
    }


