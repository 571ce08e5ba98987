"""Admin pages for agents and policy versions beyond Django's forms: training, progress, curves, comparison.

The charts are plain SVG computed here and drawn by templates (no chart library: the admin must work
offline and a handful of polylines needs none). ``training`` modules are imported where they are used:
they pull in torch and transformers, which listing and scoring feedback should not have to load.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from feedback.models import Feedback
from n3site.exceptions import ServiceError

from .models import Agent, PolicyVersion
from .services import cancel_policy_training, estimate_policy_training, queue_policy_training

LOG_TAIL_LINES = 80
SAMPLE_PROMPTS = 3
SAMPLE_MAX_NEW_TOKENS = 32

# --- metrics -----------------------------------------------------------------------------------

# One chart per spec metric; training.services writes each history entry with these names.
CURVES = [
    {"key": "rewardMean", "title": "Reward mean", "css": "n3-reward",
     "hint": "Good: increasing. Target > 0.7.", "refs": [(0.7, "target 0.7")]},
    {"key": "kl", "title": "KL divergence", "css": "n3-kl",
     "hint": "Good: < 10 (close to the base model). Bad: > 20.", "refs": [(10.0, "10"), (20.0, "20")]},
    {"key": "loss", "title": "Loss", "css": "n3-loss",
     "hint": "Good: decreasing, then stable.", "refs": []},
]


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def curve_points(history: Sequence[dict], key: str) -> list[tuple[float, float]]:
    """(step, value) for every history entry with a finite ``key``."""
    points = []
    for index, entry in enumerate(history or []):
        value = _number(entry.get(key)) if isinstance(entry, dict) else None
        if value is not None:
            points.append((_number(entry.get("step")) or float(index + 1), value))
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
    """One chart per curve (reward, KL, loss); several versions are overlaid for comparison."""
    charts = []
    for curve in CURVES:
        series = [
            {"label": v.version, "css": curve["css"] if i == 0 else f"{curve['css']} n3-second",
             "points": curve_points((v.metrics or {}).get("history", []), curve["key"])}
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


# --- progress ----------------------------------------------------------------------------------


def version_dir(version: PolicyVersion) -> Path:
    from training.services import version_dir as _version_dir

    return _version_dir(version.agent.name, version.number)


def log_tail(version: PolicyVersion, lines: int = LOG_TAIL_LINES) -> Optional[str]:
    """The last ``lines`` lines of the version's training.log, or None when there is none yet."""
    path = version_dir(version) / "training.log"
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))  # the tail is in the last 64 KiB
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    return "\n".join(text.splitlines()[-lines:])


def progress(version: PolicyVersion) -> dict:
    """What the live status box shows: step of max steps, elapsed, ETA, latest figures, log tail."""
    now = timezone.now()
    end = version.finished_at or now
    elapsed = (end - version.started_at).total_seconds() if version.started_at else None
    eta = None
    if version.is_active and elapsed and version.step and version.max_steps > version.step:
        eta = elapsed / version.step * (version.max_steps - version.step)
    metrics = version.metrics or {}
    history = metrics.get("history") or []
    return {
        "status": version.status,
        "step": version.step,
        "maxSteps": version.max_steps,
        "percent": round(100 * version.step / version.max_steps, 1) if version.max_steps else 0,
        "phase": metrics.get("phase", ""),
        "elapsedSeconds": round(elapsed) if elapsed is not None else None,
        "etaSeconds": round(eta) if eta is not None else None,
        "elapsed": _duration(elapsed),
        "eta": _duration(eta),
        "rewardMean": metrics.get("rewardMean"),
        "kl": metrics.get("kl"),
        "loss": metrics.get("loss"),
        "historyLength": len(history),
        "heartbeatAt": version.heartbeat_at.isoformat() if version.heartbeat_at else None,
        "cancelRequested": version.cancel_requested,
        "error": version.error,
        "logTail": log_tail(version),
        "active": version.is_active,
    }


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


# --- views: policy version --------------------------------------------------------------------


def version_context(version: PolicyVersion) -> dict:
    """Everything the version page draws besides Django's own form."""
    metrics = version.metrics or {}
    others = (
        PolicyVersion.objects.filter(agent=version.agent).exclude(pk=version.pk).order_by("-number")
    )
    return {
        "version": version,
        "progress": progress(version),
        "charts": version_charts([version]),
        "summary": summary_rows([version]),
        "reward_model": [(k, _format(v)) for k, v in _scalars(metrics.get("rewardModel"))],
        "config_json": json.dumps(version.config, indent=2, sort_keys=True),
        "warnings": version.warnings,
        "evaluation": evaluation_view(version),
        "compare_choices": others,
    }


SUMMARY_FIELDS = [
    ("Status", lambda v: v.get_status_display()),
    ("Reward mean", lambda v: (v.metrics or {}).get("rewardMean")),
    ("Reward std", lambda v: (v.metrics or {}).get("rewardStd")),
    ("KL", lambda v: (v.metrics or {}).get("kl")),
    ("Loss", lambda v: (v.metrics or {}).get("loss")),
    ("Steps", lambda v: f"{v.step} / {v.max_steps}"),
    ("Feedback", lambda v: v.feedback_count),
    ("Base model", lambda v: (v.config or {}).get("base_model")),
    ("Algorithm", lambda v: (v.config or {}).get("algorithm")),
    ("Learning rate", lambda v: (v.config or {}).get("learning_rate")),
    ("LoRA", lambda v: (v.config or {}).get("use_lora")),
    ("Duration", lambda v: _duration((v.finished_at - v.started_at).total_seconds())
     if v.finished_at and v.started_at else ""),
]
# Which way is better, for highlighting the better side of a comparison. Not the reward: each version's reward is
# its own reward model's score, so two versions' rewards are on different scales (their evaluations compare each
# one with its start instead).
_HIGHER_IS_BETTER = {"KL": False}
NOT_COMPARABLE = (
    "Each version's reward is measured by its own reward model, so rewards are not comparable across versions; "
    "compare their evaluations against their starting models instead."
)


def summary_rows(versions: Sequence[PolicyVersion]) -> list[dict]:
    rows = []
    for label, get in SUMMARY_FIELDS:
        values = [get(v) for v in versions]
        best = None
        numbers = [_number(x) for x in values]
        if label in _HIGHER_IS_BETTER and len(versions) > 1 and all(n is not None for n in numbers) \
                and len(set(numbers)) > 1:
            best = numbers.index(max(numbers) if _HIGHER_IS_BETTER[label] else min(numbers))
        rows.append({
            "label": label,
            "cells": [{"value": _format(x), "best": i == best} for i, x in enumerate(values)],
        })
    return rows


def _format(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def version_progress_json(request: HttpRequest, pk: int) -> JsonResponse:
    version = get_object_or_404(PolicyVersion.objects.select_related("agent"), pk=pk)
    return JsonResponse(progress(version))


def version_charts_fragment(request: HttpRequest, pk: int):
    """The charts block alone, swapped into the page while a run is going."""
    version = get_object_or_404(PolicyVersion.objects.select_related("agent"), pk=pk)
    return TemplateResponse(request, "admin/policies/policyversion/_charts.html", {"charts": version_charts([version])})


@require_POST
def cancel_version(request: HttpRequest, pk: int, model_admin: admin.ModelAdmin):
    version = get_object_or_404(PolicyVersion.objects.select_related("agent"), pk=pk)
    if not model_admin.has_change_permission(request, version):
        raise PermissionDenied
    from training.rlhf.errors import RLHFError

    try:
        cancel_policy_training(agent_name=version.agent.name, version=version.version)
    except (ServiceError, RLHFError) as exc:
        messages.error(request, f"Could not cancel {version}: {exc}")
    else:
        messages.success(request, f"Cancel requested for {version}; the run stops after its current step.")
    return redirect("admin:policies_policyversion_change", version.pk)


def compare_versions(request: HttpRequest, pk: int, model_admin: admin.ModelAdmin):
    """Two versions side by side: figures, overlaid curves, and (on request) greedy samples."""
    version = get_object_or_404(PolicyVersion.objects.select_related("agent"), pk=pk)
    other_id = request.GET.get("other", "")
    if not other_id.isdigit():
        messages.error(request, "Choose a version to compare with.")
        return redirect("admin:policies_policyversion_change", version.pk)
    other = get_object_or_404(PolicyVersion.objects.select_related("agent"), pk=int(other_id))
    pair = [version, other]
    samples = None
    if request.GET.get("samples"):
        prompts = sample_prompts(agent=version.agent)
        samples = {
            "prompts": prompts,
            "columns": [generate_samples(model_path=v.model_path, prompts=prompts) for v in pair],
        }
        samples["rows"] = [
            {"prompt": p, "outputs": [col["outputs"][i] if col["outputs"] else "" for col in samples["columns"]]}
            for i, p in enumerate(prompts)
        ]
    evaluations = [evaluation_view(v) for v in pair]
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": PolicyVersion._meta,
        "title": f"Compare {version} with {other}",
        "version": version,
        "other": other,
        "pair": pair,
        "summary": summary_rows(pair),
        "charts": version_charts(pair),
        "reward_model_rows": _reward_model_rows(pair),
        "evaluations": list(zip(pair, evaluations)),
        "evaluation_rows": _evaluation_rows(evaluations),
        "not_comparable": NOT_COMPARABLE,
        "samples": samples,
        "max_new_tokens": SAMPLE_MAX_NEW_TOKENS,
    }
    return TemplateResponse(request, "admin/policies/policyversion/compare.html", context)


# metrics.rewardModel as training.services names it, in reading order, with words for people.
REWARD_MODEL_LABELS = {
    "validation": "Validated by", "valMse": "Validation MSE", "valMseBaseline": "Validation MSE of predicting the mean",
    "pearson": "Pearson r (validation)", "spearman": "Spearman rank r (validation)", "trainLoss": "Training loss",
    "trainSize": "Training samples", "valSize": "Validation samples", "epochs": "Epochs (at most)", "bestEpoch": "Epochs kept (best validation MSE)",
    "fitSeconds": "Fit time (s)",
}


def _scalars(table: Optional[dict]) -> list[tuple[str, Any]]:
    """A reward-model metrics dict's plain values as (label, value), known names first."""
    order = list(REWARD_MODEL_LABELS)
    items = [(k, v) for k, v in (table or {}).items() if v is None or isinstance(v, (int, float, str))]
    items.sort(key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0]))
    return [(REWARD_MODEL_LABELS.get(k, k), v) for k, v in items]


def _reward_model_rows(pair: Sequence[PolicyVersion]) -> list[dict]:
    tables = [dict(_scalars((v.metrics or {}).get("rewardModel"))) for v in pair]
    keys = sorted(set().union(*tables))
    return [{"label": k, "cells": [_format(t.get(k)) for t in tables]} for k in keys]


# --- evaluation: the version against the model it started from --------------------------------------------------


def evaluation_view(version: PolicyVersion) -> Optional[dict]:
    """metrics.evaluation in words: {"sentence", "verdict", "rows", "samples"}, {"skipped": reason} when it was
    skipped, None when there is none (not trained yet, or trained before versions were evaluated)."""
    e = version.evaluation
    if e is None:
        return None
    if "skipped" in e:
        return {"skipped": str(e["skipped"])}
    better = e.get("better")
    verdict = "yes" if better is True else "no" if better is False else "—"
    n = e.get("n")
    reward = f"{_fixed(e.get('baselineRewardMean'))} → {_fixed(e.get('rewardMean'))}"
    sentence = (
        f"Better than its start: {verdict} — win rate {_percent(e.get('winRate'))} "
        f"(95 % interval {_percent_interval(e.get('winRateCi'))}) on {n if n is not None else '—'} held-out samples, "
        f"reward {reward}, KL {_short(e.get('kl'))}"
    )
    diff = _number(e.get("rewardDiff"))
    rows = [
        ("Started from", e.get("baseline") or "—"),
        ("Scored by", e.get("scoredBy") or "—"),
        ("Win rate", f"{_percent(e.get('winRate'))} (95 % interval {_percent_interval(e.get('winRateCi'))})"),
        ("Reward (start → version)", reward),
        ("Reward difference", f"{'—' if diff is None else f'{diff:+.2f}'} "
                              f"(95 % interval {_interval(e.get('rewardDiffCi'))})"),
        ("KL from its start", f"{_short(e.get('kl'))} nats per response"),
        ("Response length (start → version)",
         f"{_short(e.get('baselineResponseLength'))} → {_short(e.get('responseLength'))} tokens"),
        ("Held-out prompts", f"{_format(e.get('heldoutPrompts'))} (split seed {_format(e.get('splitSeed'))})"),
        ("Samples compared", _format(n)),
    ]
    samples = [
        {**s, "score": _fixed(s.get("score")), "baselineScore": _fixed(s.get("baselineScore"))}
        for s in e.get("samples") or [] if isinstance(s, dict)
    ]
    return {"sentence": sentence, "verdict": verdict, "better": better is True, "rows": rows, "samples": samples}


def _evaluation_rows(views: Sequence[Optional[dict]]) -> list[dict]:
    """evaluation_view()s' figures side by side (never ranked: each compares a version with its own start)."""
    tables = [dict(view["rows"]) if view and "rows" in view else {} for view in views]
    labels = next((list(t) for t in tables if t), [])
    return [{"label": label, "cells": [t.get(label, "—") for t in tables]} for label in labels]


def _percent(value: Any) -> str:
    value = _number(value)
    return "—" if value is None else f"{100 * value:.0f} %"


def _percent_interval(bounds: Any) -> str:
    low, high = _bounds(bounds)
    return "—" if low is None or high is None else f"{100 * low:.0f}–{100 * high:.0f} %"


def _interval(bounds: Any) -> str:
    low, high = _bounds(bounds)
    return "—" if low is None or high is None else f"{low:.2f} to {high:.2f}"


def _bounds(bounds: Any) -> tuple[Optional[float], Optional[float]]:
    if isinstance(bounds, (list, tuple)) and len(bounds) == 2:
        return _number(bounds[0]), _number(bounds[1])
    return None, None


def _fixed(value: Any) -> str:
    value = _number(value)
    return "—" if value is None else f"{value:.2f}"


def _short(value: Any) -> str:
    """3.1, 12.4, 0.043: one decimal from 1 up, two significant digits below."""
    value = _number(value)
    if value is None:
        return "—"
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.2g}"


def sample_prompts(*, agent: Agent, count: int = SAMPLE_PROMPTS) -> list[str]:
    """The agent's most recent distinct prompts: what its users actually ask."""
    prompts: list[str] = []
    for prompt in Feedback.objects.filter(agent=agent).order_by("-created_at").values_list("prompt", flat=True)[:200]:
        if prompt not in prompts:
            prompts.append(prompt)
        if len(prompts) == count:
            break
    return prompts


def generate_samples(*, model_path: str, prompts: list[str], max_new_tokens: int = SAMPLE_MAX_NEW_TOKENS) -> dict:
    """Greedy completions of ``prompts`` by the policy at ``model_path``: {"outputs": [...], "error": ""}.

    Greedy decoding so that differences come from the weights, not from sampling noise.
    """
    from training.services import absolute_path

    if not model_path or not absolute_path(model_path).is_dir():
        return {"outputs": [], "error": f"No policy files at {model_path or '(no path recorded)'}."}
    model_path = str(absolute_path(model_path))
    if not prompts:
        return {"outputs": [], "error": "This agent has no feedback prompts to try."}
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.rlhf.data import format_query

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        return {"outputs": [], "error": f"Cannot load the policy at {model_path}: {exc}"}
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs = []
    with torch.no_grad():
        for prompt in prompts:
            inputs = tokenizer(format_query(prompt), return_tensors="pt", truncation=True, max_length=256)
            generated = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
            )
            new_tokens = generated[0, inputs["input_ids"].shape[1]:]
            outputs.append(tokenizer.decode(new_tokens, skip_special_tokens=True))
    return {"outputs": outputs, "error": ""}


# --- views: agent ------------------------------------------------------------------------------


class TrainForm(forms.Form):
    """A preset plus the overrides people change most; anything else goes in the JSON box."""

    preset = forms.ChoiceField(required=False, choices=lambda: [("", "— none —")] + [(n, n) for n in _presets()])
    base_model = forms.CharField(required=False, help_text="Hub id, local path, or n3-tiny (built locally, offline).")
    max_steps = forms.IntegerField(required=False, min_value=1)
    learning_rate = forms.FloatField(required=False, min_value=0, widget=forms.TextInput(attrs={"size": 10}))
    batch_size = forms.IntegerField(required=False, min_value=1)
    use_lora = forms.NullBooleanField(
        required=False, widget=forms.Select(choices=[("unknown", "as configured"), ("true", "yes"), ("false", "no")]),
        label="Use LoRA",
    )
    extra = forms.CharField(
        required=False, label="Other overrides (JSON)",
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": '{"init_kl_coef": 0.5, "target_kl": 3.0}'}),
        help_text="TrainingConfig fields (snake_case); the fields above win over the same keys here.",
    )

    def clean_extra(self) -> dict:
        text = self.cleaned_data["extra"].strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("Give a JSON object of TrainingConfig fields.")
        return value

    def overrides(self) -> dict:
        data = dict(self.cleaned_data["extra"])
        for name in ("base_model", "max_steps", "learning_rate", "batch_size", "use_lora"):
            value = self.cleaned_data.get(name)
            if value not in (None, ""):
                data[name] = value
        return data


def train_agent(request: HttpRequest, pk: int, model_admin: admin.ModelAdmin):
    """Train form -> dry-run preview (estimate, warnings, resolved config) -> confirm -> start."""
    agent = get_object_or_404(Agent, pk=pk)
    if not request.user.has_perm("policies.add_policyversion"):
        raise PermissionDenied
    from training.rlhf.errors import RLHFError

    preview = None
    if request.method == "POST":
        form = TrainForm(request.POST)
        if form.is_valid():
            # The same services as the REST API's train_policy (dry run, then queue).
            request_args = {
                "agent_name": agent.name, "overrides": form.overrides(), "preset": form.cleaned_data["preset"] or None,
            }
            try:
                if "confirm" in request.POST:
                    version = queue_policy_training(**request_args, user=request.user)
                    messages.success(request, f"Training {version} queued ({version.max_steps or '?'} steps).")
                    return redirect("admin:policies_policyversion_change", version.pk)
                from training.services import resolve_training_config

                estimate = estimate_policy_training(**request_args)
                config = resolve_training_config(agent=agent, overrides=request_args["overrides"],
                                                 preset=request_args["preset"])
                preview = {"estimate": estimate, "config_json": json.dumps(config.to_dict(), indent=2, sort_keys=True)}
            except (RLHFError, ServiceError) as exc:
                form.add_error(None, str(exc))
    else:
        form = TrainForm(initial=_initial_from_version(request, agent))
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": Agent._meta,
        "original": agent,
        "agent": agent,
        "title": f"Train {agent.name}",
        "form": form,
        "preview": preview,
        "presets": {name: json.dumps(values, sort_keys=True) for name, values in _presets().items()},
        "defaults": json.dumps(agent.default_training_config or {}, sort_keys=True),
    }
    return TemplateResponse(request, "admin/policies/agent/train.html", context)


def _presets() -> dict:
    from training.rlhf.config import PRESETS

    return PRESETS


def _initial_from_version(request: HttpRequest, agent: Agent) -> dict:
    """Retrain: the form filled with an earlier version's full config."""
    version_id = request.GET.get("from_version", "")
    if not version_id.isdigit():
        return {}
    version = PolicyVersion.objects.filter(pk=int(version_id), agent=agent).first()
    if version is None:
        raise Http404("No such version of this agent")
    from training.rlhf.config import TrainingConfig

    known = set(TrainingConfig.field_names())
    config = {k: v for k, v in (version.config or {}).items() if k in known}
    return {"extra": json.dumps(config, indent=2, sort_keys=True)}


def agent_panels(agent: Agent) -> dict:
    """The agent page's extra panels: feedback summary with histogram, and its versions."""
    from feedback.review import score_summary

    summary = score_summary(agent_name=agent.name)
    versions = list(agent.versions.order_by("-number"))
    return {
        "summary": summary,
        "histogram": histogram(summary.bins),
        "versions": versions,
        "review_url": reverse("review:queue") + f"?agent={agent.name}",
        "feedback_url": reverse("admin:feedback_feedback_changelist") + f"?agent__id__exact={agent.pk}",
        "train_url": reverse("admin:policies_agent_train", args=[agent.pk]),
    }
