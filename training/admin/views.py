"""Admin pages for agents and policy versions beyond Django's forms: the Train form and its preview, a version's
page (live status, curves, evaluation), the comparison of two versions, the agent page's panels.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Optional

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_POST

from feedback.selectors import score_summary
from n3_server.rlhf import PRESETS, RLHFError, TrainingConfig, TrainingEstimate
from n3_server.rlhf.preference_data import PREFERENCE_ALGORITHMS
from n3site.exceptions import ServiceError
from policies.models import Agent, PolicyVersion
from policies.selectors import get_policy_version

from ..comparisons import DEFAULT_PROMPTS as DEFAULT_COMPARISON_PROMPTS
from ..comparisons import comparison_panel as blind_comparison_panel
from ..comparisons import start_comparison
from ..deployment import (
    HumanScore,
    human_scores,
    promote_version,
    promotion_warning,
    set_traffic,
)
from ..jobs.events import fitted_reward_model
from ..jobs.status import duration, progress
from ..samples import SAMPLE_MAX_NEW_TOKENS, request_samples, sample_prompts, samples_state
from ..selectors import version_comparison
from ..services import (
    cancel_training,
    estimate_training_request,
    preset_values,
    queue_training_request,
    resolve_training_config,
)
from .charts import histogram, number, version_charts
from .forms import TrainForm

# --- views: policy version --------------------------------------------------------------------


def version_context(version: PolicyVersion) -> dict:
    """Everything the version page draws besides Django's own form."""
    others = (
        PolicyVersion.objects.filter(agent=version.agent).exclude(pk=version.pk).order_by("-number")
    )
    return {
        "version": version,
        "progress": progress(version),
        "charts": version_charts([version]),
        "summary": summary_rows([version]),
        "reward_model": [(k, _format(v)) for k, v in _scalars(reward_model_figures(version))],
        "config_json": json.dumps(version.config, indent=2, sort_keys=True),
        "warnings": version.warnings,
        "evaluation": evaluation_view(version),
        "compare_choices": others,
    }


SUMMARY_FIELDS = [
    ("Status", lambda v: v.get_status_display()),
    ("Reward mean", lambda v: v.reward_mean),
    ("Reward std", lambda v: v.reward_std),
    ("KL", lambda v: v.kl),
    ("Loss", lambda v: v.loss),
    ("Steps", lambda v: f"{v.step} / {v.max_steps}"),
    ("Feedback", lambda v: v.feedback_count),
    ("Base model", lambda v: (v.config or {}).get("base_model")),
    ("Algorithm", lambda v: (v.config or {}).get("algorithm")),
    ("Learning rate", lambda v: (v.config or {}).get("learning_rate")),
    ("LoRA", lambda v: (v.config or {}).get("use_lora")),
    ("Duration", lambda v: duration((v.finished_at - v.started_at).total_seconds())
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
        numbers = [number(x) for x in values]
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
    try:
        cancel_training(version=version)
    except (ServiceError, RLHFError) as exc:
        messages.error(request, f"Could not cancel {version}: {exc}")
    else:
        messages.success(request, f"Cancel requested for {version}; the run stops after its current step.")
    return redirect("admin:policies_policyversion_change", version.pk)


def compare_versions(request: HttpRequest, pk: int, model_admin: admin.ModelAdmin):
    """Two versions side by side: figures, overlaid curves, and (on request: POST) greedy samples, generated by the
    worker (training.samples) while the page polls ``?samples=status``."""
    version = get_object_or_404(PolicyVersion.objects.select_related("agent"), pk=pk)
    if request.method == "POST" and not request.user.has_perm("policies.change_policyversion"):
        # Both forms here ("Generate samples", "Start blind comparison") queue a worker job that writes files:
        # viewing the page is not enough to start one.
        raise PermissionDenied
    other_id = request.GET.get("other", "")
    if not other_id.isdigit():
        messages.error(request, "Choose a version to compare with.")
        return redirect("admin:policies_policyversion_change", version.pk)
    other = get_object_or_404(PolicyVersion.objects.select_related("agent"), pk=int(other_id))
    pair = [version, other]
    status = 200
    if request.method == "POST" and "blind" in request.POST:  # "Start blind comparison": queued for the worker
        started = start_blind_comparison(request, version, other)
        if started is not None:
            return started
        status = 400  # the page again, with the reason (messages)
    if request.GET.get("blind") == "status":
        comparison = blind_comparison_panel(version=version, other=other)["comparison"]
        return JsonResponse({"status": comparison.status if comparison else "none"})
    prompts = sample_prompts(agent=version.agent)
    if request.method == "POST" and status == 200:  # "Generate samples": queued for the worker; the page then polls
        for v in pair:
            state = request_samples(version=v, prompts=prompts)
            if state["status"] == "error":
                messages.error(request, f"{v.version}: {state['error']}")
        return redirect(f"{request.path}?other={other.pk}")
    samples = samples_view(pair, prompts)
    if request.GET.get("samples") == "status":
        return JsonResponse({"pending": samples["pending"]})
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
        "human": human_score_rows(pair),
        "not_comparable": NOT_COMPARABLE,
        "samples": samples,
        "max_new_tokens": SAMPLE_MAX_NEW_TOKENS,
        "samples_status_url": f"{request.path}?other={other.pk}&samples=status",
        "blind": blind_comparison_panel(version=version, other=other),
        "blind_status_url": f"{request.path}?other={other.pk}&blind=status",
        # Both forms queue worker jobs: shown to those who may start them (the POSTs check it too).
        "can_change": request.user.has_perm("policies.change_policyversion"),
    }
    return TemplateResponse(request, "admin/policies/policyversion/compare.html", context, status=status)


def start_blind_comparison(request: HttpRequest, version: PolicyVersion, other: PolicyVersion):
    """The compare page's "Start blind comparison": prompts chosen and responses queued (training.comparisons).
    A redirect once started; None when it was not (the reason in messages): a count that is not a whole number in
    range ("-5", "abc" became 20 prompts before), or nothing to compare on."""
    if not request.user.has_perm("policies.change_policyversion"):
        raise PermissionDenied
    count = request.POST.get("count", "").strip()
    try:
        if count and not count.isdecimal():
            raise ServiceError(f"Number of prompts must be a whole number, got {count!r}")
        comparison = start_comparison(version=version, other=other, user=request.user,
                                      count=int(count) if count else DEFAULT_COMPARISON_PROMPTS)
    except ServiceError as exc:
        messages.error(request, f"No blind comparison started: {exc}")
        return None
    # Up to DRAWS_PER_PAIR prompts are drawn per pair asked for: pairs answered alike are ties, not votes.
    messages.success(request, f"Blind comparison {comparison.pk} started for {comparison.requested} pairs on "
                              f"{comparison.items.count()} prompts drawn ({comparison.prompt_source}); a worker is "
                              "generating the responses.")
    return redirect(f"{request.path}?other={other.pk}#n3-blind-comparison")


# metrics.reward_model (the core's names) shown, in reading order, with words for people.
REWARD_MODEL_LABELS = {
    "validation": "Validated by", "val_mse": "Validation MSE",
    "val_mse_baseline": "Validation MSE of predicting the mean",
    "val_pearson": "Pearson r (validation)", "val_spearman": "Spearman rank r (validation)",
    "train_loss": "Training loss", "train_size": "Training samples", "val_size": "Validation samples",
    "epochs": "Epochs (at most)", "best_epoch": "Epochs kept (best validation MSE)", "fit_seconds": "Fit time (s)",
}


def _scalars(table: Optional[dict]) -> list[tuple[str, Any]]:
    """A reward-model metrics dict's labelled plain values as (label, value), in reading order."""
    table = table or {}
    return [
        (label, table[key]) for key, label in REWARD_MODEL_LABELS.items()
        if key in table and (table[key] is None or isinstance(table[key], (int, float, str)))
    ]


def reward_model_figures(version: PolicyVersion) -> Optional[dict]:
    """metrics.reward_model, which a run writes when it ends; before that, once the reward model is fitted, the
    figures its training.log states (the policy phase need not show "Not trained yet")."""
    figures = (version.metrics or {}).get("reward_model")
    if not isinstance(figures, dict) and version.started_at is not None:
        figures = fitted_reward_model(version)
    return figures


def _reward_model_rows(pair: Sequence[PolicyVersion]) -> list[dict]:
    tables = [dict(_scalars(reward_model_figures(v))) for v in pair]
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
    reward = f"{_fixed(e.get('baseline_reward_mean'))} → {_fixed(e.get('reward_mean'))}"
    sentence = (
        f"Better than its start: {verdict} — win rate {_percent(e.get('win_rate'))} "
        f"(95 % interval {_percent_interval(e.get('win_rate_ci'))}) on {n if n is not None else '—'} held-out samples, "
        f"reward {reward}, KL {_short(e.get('kl'))}"
    )
    diff = number(e.get("reward_diff"))
    if e.get("verdict"):  # versions trained since verdicts exist: the trainer's sentence says why
        sentence = f"{str(e['verdict'])[:1].upper()}{str(e['verdict'])[1:]}"
    rows = [
        ("Started from", e.get("baseline") or "—"),
        ("Scored by", e.get("scored_by") or "—"),
        ("Win rate", f"{_percent(e.get('win_rate'))} (95 % interval {_percent_interval(e.get('win_rate_ci'))})"),
        ("Reward (start → version)", reward),
        ("Reward difference", f"{'—' if diff is None else signed(diff)} "
                              f"(95 % interval {_interval(e.get('reward_diff_ci'))})"),
        ("KL from its start", f"{_short(e.get('kl'))} nats per response"),
        ("Response length (start → version)",
         f"{_short(e.get('baseline_response_length'))} → {_short(e.get('response_length'))} tokens"),
        ("Held-out prompts", f"{_format(e.get('heldout_prompts'))} (split seed {_format(e.get('split_seed'))})"),
        ("Samples compared", _format(n)),
    ]
    if isinstance(e.get("policy_reward_model"), dict):  # what the model the policy trained against says
        own = e["policy_reward_model"]
        rows.insert(3, ("Win rate by the reward model it trained against",
                        f"{_percent(own.get('win_rate'))} (95 % interval {_percent_interval(own.get('win_rate_ci'))})"))
    if e.get("kept_start"):
        rows.insert(0, ("Weights", "the starting model's, kept: the trained policy was not credibly better"))
    samples = [
        {**s, "score": _fixed(s.get("score")), "baseline_score": _fixed(s.get("baseline_score"))}
        for s in e.get("samples") or [] if isinstance(s, dict)
    ]
    return {"sentence": sentence, "verdict": verdict, "better": better is True, "rows": rows, "samples": samples,
            "advice": str(e["advice"]) if e.get("advice") else None}


def _evaluation_rows(views: Sequence[Optional[dict]]) -> list[dict]:
    """evaluation_view()s' figures side by side (never ranked: each compares a version with its own start)."""
    tables = [dict(view["rows"]) if view and "rows" in view else {} for view in views]
    labels = next((list(t) for t in tables if t), [])
    return [{"label": label, "cells": [t.get(label, "—") for t in tables]} for label in labels]


def _percent(value: Any) -> str:
    value = number(value)
    return "—" if value is None else f"{100 * value:.0f} %"


def _percent_interval(bounds: Any) -> str:
    low, high = _bounds(bounds)
    return "—" if low is None or high is None else f"{100 * low:.0f}–{100 * high:.0f} %"


def _interval(bounds: Any) -> str:
    low, high = _bounds(bounds)
    return "—" if low is None or high is None else f"{signed(low, plus='')} to {signed(high, plus='')}"


def signed(value: float, *, plus: str = "+") -> str:
    """A difference to two decimals with its sign ("+0.19", "-0.05"), and one that rounds to zero as "0.00": no
    "-0.00" for a difference too small to show."""
    text = f"{value:.2f}"
    if float(text) == 0:
        return "0.00"
    return text if value < 0 else f"{plus}{text}"


def _bounds(bounds: Any) -> tuple[Optional[float], Optional[float]]:
    if isinstance(bounds, (list, tuple)) and len(bounds) == 2:
        return number(bounds[0]), number(bounds[1])
    return None, None


def _fixed(value: Any) -> str:
    value = number(value)
    return "—" if value is None else f"{value:.2f}"


def _short(value: Any) -> str:
    """3.1, 12.4, 0.043: one decimal from 1 up, two significant digits below."""
    value = number(value)
    if value is None:
        return "—"
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.2g}"


def samples_view(pair: Sequence[PolicyVersion], prompts: list[str]) -> dict:
    """The samples panel: each version's samples_state, and rows of (prompt, output per version) once any are done."""
    columns = [samples_state(version=v, prompts=prompts) for v in pair]
    done = any(c["status"] == "done" for c in columns)
    rows = [
        {"prompt": p, "outputs": [c["outputs"][i] if i < len(c["outputs"]) else "" for c in columns]}
        for i, p in enumerate(prompts)
    ] if done else []
    return {
        "prompts": prompts, "columns": list(zip(pair, columns)), "rows": rows,
        "pending": any(c["status"] == "generating" for c in columns),
        "requested": any(c["status"] != "none" for c in columns),
        "can_generate": any(c["status"] in ("none", "error") for c in columns),
    }


# --- views: agent ------------------------------------------------------------------------------


def train_agent(request: HttpRequest, pk: int, model_admin: admin.ModelAdmin):
    """Train form -> dry-run preview (estimate, warnings, resolved config) -> confirm -> start."""
    agent = get_object_or_404(Agent, pk=pk)
    if not request.user.has_perm("policies.add_policyversion"):
        raise PermissionDenied
    preview = None
    if request.method == "POST":
        form = TrainForm(request.POST, agent=agent)
        if form.is_valid():
            # The same services as the REST API's train_policy (dry run, then queue).
            request_args = {
                "agent_name": agent.name, "overrides": form.overrides(), "preset": form.cleaned_data["preset"] or None,
            }
            try:
                if "confirm" in request.POST:
                    version = queue_training_request(**request_args, user=request.user)
                    messages.success(request, f"Training {version} queued ({version.max_steps or '?'} steps).")
                    return redirect("admin:policies_policyversion_change", version.pk)
                estimate = estimate_training_request(**request_args)
                config = resolve_training_config(agent=agent, overrides=request_args["overrides"],
                                                 preset=request_args["preset"])
                preview = train_preview(estimate, config)
            except (RLHFError, ServiceError) as exc:
                form.add_service_error(exc)  # beside the field it names
    else:
        form = TrainForm(agent=agent)
        form.initial = _initial_from_version(request, agent, form)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": Agent._meta,
        "original": agent,
        "agent": agent,
        "title": f"Train {agent.name}",
        "form": form,
        "preview": preview,
        "presets": {name: json.dumps(preset_values(name), sort_keys=True) for name in PRESETS},
        "defaults": json.dumps(agent.default_training_config or {}, sort_keys=True),
    }
    return TemplateResponse(request, "admin/policies/agent/train.html", context)


def train_preview(estimate: TrainingEstimate, config: TrainingConfig) -> dict:
    """The Train page's dry run: the estimate, the run's algorithm, start and promotion, and for KTO/DPO what the
    feedback gives them (the same count the training would make)."""
    preference = None
    if config.algorithm in PREFERENCE_ALGORITHMS:
        counts = estimate.preference
        preference = {
            "count": counts.examples if counts else None,
            "label": "preference pairs" if config.algorithm == "dpo" else "KTO examples",
            "text": counts.describe(config) if counts else (
                f"Not counted here: the dry run reads a sample of the {estimate.feedback_count} scored records "
                "(more than N3_ESTIMATE_SAMPLE); Start training counts them on all of them and refuses too few."
            ),
        }
    return {
        "estimate": estimate,
        "config": config,
        "preference": preference,
        "config_json": json.dumps(config.to_dict(), indent=2, sort_keys=True),
    }


def _initial_from_version(request: HttpRequest, agent: Agent, form: TrainForm) -> dict:
    """Retrain: the form filled with an earlier version's full config."""
    version_id = request.GET.get("from_version", "")
    if not version_id.isdigit():
        return {}
    version = PolicyVersion.objects.filter(pk=int(version_id), agent=agent).first()
    if version is None:
        raise Http404("No such version of this agent")
    return form.initial_from_config(version.config or {})


def agent_panels(agent: Agent) -> dict:
    """The agent page's extra panels: feedback summary with histogram, its versions with their human scores, and
    the deployment form."""
    summary = score_summary(agent_name=agent.name)
    versions = list(agent.versions.order_by("-number"))
    scores = human_scores(versions)
    traffic = agent.traffic or {}
    rows = [{
        "version": v, "active": v.pk == agent.active_version_id, "share": traffic.get(v.version),
        "human": human_score_text(scores[v.pk]), "human_score": scores[v.pk],
        "can_deploy": v.status == PolicyVersion.Status.TRAINED,
    } for v in versions]
    return {
        "summary": summary,
        "histogram": histogram(summary.bins),
        "versions": versions,
        "version_rows": rows,
        "deployable": [row for row in rows if row["can_deploy"]],
        "active_version": next((row["version"] for row in rows if row["active"]), None),
        "traffic": sorted(traffic.items(), key=lambda item: int(item[0][1:])),
        "deploy_url": reverse("admin:policies_agent_deploy", args=[agent.pk]),
        "review_url": reverse("review:queue") + f"?agent={agent.name}",
        "feedback_url": reverse("admin:feedback_feedback_changelist") + f"?agent__id__exact={agent.pk}",
        "train_url": reverse("admin:policies_agent_train", args=[agent.pk]),
    }


@require_POST
def deploy_agent(request: HttpRequest, pk: int, model_admin: admin.ModelAdmin):
    """The agent page's deployment form: promote a version ("promote": "v3"), or set the traffic split (share_v3,
    share_v4, ...: blank leaves a version out; all blank clears the split) and the record-served switch; the same
    services as the REST API."""
    agent = get_object_or_404(Agent, pk=pk)
    if not request.user.has_perm("policies.change_policyversion"):
        raise PermissionDenied
    try:
        if request.POST.get("promote"):
            version = request.POST["promote"]
            found = get_policy_version(agent_name=agent.name, version=version)
            warning = promotion_warning(found)
            if warning and request.POST.get("confirmed") != "1":  # a second thought first, stating the evaluation
                return TemplateResponse(request, "admin/policies/agent/promote_confirm.html", {
                    **model_admin.admin_site.each_context(request), "agent": agent, "warning": warning,
                    "version": found,
                    "active": agent.active_version.version if agent.active_version else None,
                    "title": f"Promote {version}?",
                })
            promote_version(agent_name=agent.name, version=version)
            messages.success(request, f"Promoted {version}: it now answers every request for {agent.name}.")
        else:
            shares = {}
            for key, value in request.POST.items():
                if key.startswith("share_") and value.strip():
                    try:
                        shares[key.removeprefix("share_")] = float(value)
                    except ValueError:
                        raise ServiceError(f"{key.removeprefix('share_')}: '{value}' is not a number") from None
            set_traffic(agent_name=agent.name, shares=shares, record_served=request.POST.get("record_served") == "on")
            split = ", ".join(f"{name} {share:g}" for name, share in sorted(shares.items())) or "none"
            messages.success(request, f"Deployment of {agent.name} saved (traffic split: {split}).")
    except (ServiceError, RLHFError) as exc:
        messages.error(request, f"Not saved: {exc}")
    return redirect(reverse("admin:policies_agent_change", args=[agent.pk]) + "#n3-deployment-panel")


# --- human scores ---------------------------------------------------------------------------------------------------


def human_score_text(score: HumanScore) -> str:
    """"0.72 [0.64, 0.80] (n 40 scored of 52)", or what is missing."""
    if score.mean is None:
        return f"— (0 scored of {score.n})" if score.n else "—"
    interval = f" [{score.ci[0]:.2f}, {score.ci[1]:.2f}]" if score.ci else ""
    return f"{score.mean:.2f}{interval} ({score.n_scored} scored of {score.n})"


def human_score_rows(pair: Sequence[PolicyVersion]) -> dict:
    """The compare page's human-score rows: per version n, n scored, mean [CI], and the difference of the first
    minus the second with its interval (training.selectors.version_comparison, as the API's compare answers it)."""
    compared = version_comparison(a=pair[1], b=pair[0])  # b minus a: the page's version minus the other
    first, second = compared.score_b, compared.score_a
    scores = {pair[0].pk: first, pair[1].pk: second}
    diff = compared.difference
    if diff.difference is None:
        difference = "— (each version needs scored feedback tied to it)"
    else:
        interval = f" (95 % interval {signed(diff.ci[0])} to {signed(diff.ci[1])})" if diff.ci else ""
        difference = f"{signed(diff.difference)}{interval}"
    rows = [
        {"label": "Feedback tied to it", "cells": [str(scores[v.pk].n) for v in pair]},
        {"label": "Scored", "cells": [str(scores[v.pk].n_scored) for v in pair]},
        {"label": "Mean human score [95 % interval]", "cells": [
            "—" if s.mean is None else f"{s.mean:.2f}" + (f" [{s.ci[0]:.2f}, {s.ci[1]:.2f}]" if s.ci else "")
            for s in (first, second)
        ]},
    ]
    return {"rows": rows, "difference": difference, "first_better": bool(diff.ci and diff.ci[0] > 0)}
