"""Geometry of the admin's SVG charts (training curves, the score histogram), computed here and drawn by templates.

No chart library: the admin must work offline, and a handful of polylines needs none.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

from policies.models import PolicyVersion

# One chart per spec metric, drawn from the version's TrainingStep rows (the core's names: training.rlhf.metrics).
CURVES = [
    {"key": "objective/scores", "title": "Reward mean", "css": "n3-reward",
     "hint": "Good: increasing. Target > 0.7.", "refs": [(0.7, "target 0.7")]},
    {"key": "objective/kl", "title": "KL divergence", "css": "n3-kl",
     "hint": "Good: < 10 (close to the base model). Bad: > 20.", "refs": [(10.0, "10"), (20.0, "20")]},
    {"key": "loss/total", "title": "Loss", "css": "n3-loss",
     "hint": "Good: decreasing, then stable.", "refs": []},
]


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


def _nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 0.5 and len(ticks) < 12:
        ticks.append(round(value, 10))
        value += step
    return ticks


def line_chart(series: list[dict], *, refs: Sequence[tuple[float, str]] = (), width: int = 460,
               height: int = 200) -> Optional[dict]:
    """Geometry of an SVG line chart: ``series`` are {"label", "css", "points": [(x, y)]}.

    Reference lines (e.g. the spec's KL thresholds) are drawn when they lie near the data.
    Returns None when there is nothing to draw.
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
    ticks = _nice_ticks(y_low, y_high)
    y_low, y_high = min(ticks[0], y_low), max(ticks[-1], y_high)
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_high = x_low + 1
    left, right, top, bottom = 48, 12, 10, 26
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return round(left + (x - x_low) / (x_high - x_low) * plot_w, 1)

    def sy(y: float) -> float:
        return round(top + (1 - (y - y_low) / (y_high - y_low)) * plot_h, 1)

    x_ticks = _nice_ticks(x_low, x_high, 5)
    return {
        "width": width, "height": height, "left": left, "top": top, "right": width - right,
        "bottom": height - bottom,
        "series": [
            {**s, "path": " ".join(f"{sx(x)},{sy(y)}" for x, y in s["points"]),
             "last": s["points"][-1], "last_xy": (sx(s["points"][-1][0]), sy(s["points"][-1][1])),
             "single": len(s["points"]) == 1}
            for s in drawn
        ],
        "y_ticks": [{"y": sy(t), "label": f"{t:g}"} for t in ticks if y_low <= t <= y_high],
        "x_ticks": [{"x": sx(t), "label": f"{t:g}"} for t in x_ticks if x_low <= t <= x_high],
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
        chart = line_chart(series, refs=curve["refs"])
        charts.append({"title": curve["title"], "hint": curve["hint"], "name": curve["key"], "chart": chart})
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


