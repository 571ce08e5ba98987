"""The policies API's JSON: camelCase on the wire, snake_case in Python.

The training request's fields are derived from ``TrainingConfig`` (see ``config_fields``), so a new
config field is accepted, validated and documented without touching this file.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import re
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, Optional

from django.core.validators import RegexValidator
from django.utils import timezone
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.reverse import reverse

from n3_server.rlhf import PRESETS, ConfigError, RewardModelConfig, TrainingConfig
from n3_server.rlhf.metrics import SPEC_NAMES
from policies.models import PolicyVersion
from training.deployment import HumanScore, human_scores
from training.jobs.events import MAX_LIMIT as MAX_EVENTS_LIMIT
from training.jobs.status import PHASE_WORDS, Timing, timing
from training.selectors import QueueState, queue_state

from .query import QuerySerializer


def to_camel(name: str) -> str:
    """``reward_model_config`` -> ``rewardModelConfig``: the one mapping from Python names to JSON names."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def camel_keys(data: Any) -> Any:
    """A stored snake_case dict (a TrainingConfig.to_dict()) with camelCase keys, nested dicts too."""
    if isinstance(data, Mapping):
        return {to_camel(str(key)): camel_keys(value) for key, value in data.items()}
    return data


# --- strict JSON fields ------------------------------------------------------------------------
# DRF's fields are lenient because they also parse HTML forms ("1e-5" -> 1e-5, true -> 1.0).
# A JSON API should refuse a string where the schema says number, so these accept JSON types only.


class StrictCharField(serializers.CharField):
    """A JSON string. Whitespace is kept (a response's leading spaces are part of it), yet a
    whitespace-only value counts as blank (the pattern documents that in the schema)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)
        if not self.allow_blank:
            self.validators.append(RegexValidator(r"\S", message=self.error_messages["blank"]))

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    """A finite JSON number (integers too); not a string, not a boolean."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer (1000 or 1e3); not 2.5, not "3", not true. Within 32 bits unless told otherwise,
    so that every value fits the database's integer columns."""

    def __init__(self, **kwargs):
        kwargs.setdefault("min_value", -(2**31))
        kwargs.setdefault("max_value", 2**31 - 1)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        if isinstance(data, float) and not (math.isfinite(data) and data.is_integer()):
            self.fail("invalid")
        return super().to_internal_value(int(data))


class StrictBooleanField(serializers.BooleanField):
    """JSON true or false only."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class StrictSerializer(serializers.Serializer):
    """Refuses keys it does not know, naming them as the client wrote them: a misspelt
    ``"maxStep"`` or a snake_case ``"max_steps"`` must not be silently ignored."""

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            known = {field.field_name for field in self._writable_fields}
            unknown = {key: [_unknown_message(str(key), known)] for key in data if key not in known}
            if unknown:
                raise serializers.ValidationError(unknown)
        return super().to_internal_value(data)


class StrictSerializerExtension(OpenApiSerializerExtension):
    """The schema says what StrictSerializer does: no properties beyond the listed ones
    (``additionalProperties: false``), so generated clients and fuzzers do not send keys that are refused."""

    target_class = StrictSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        return {**schema, "additionalProperties": False}


def _unknown_message(key: str, known: set[str]) -> str:
    hint = to_camel(key)
    return f"Unknown field; did you mean '{hint}'?" if hint != key and hint in known else "Unknown field."


# --- training configuration --------------------------------------------------------------------


def _field_for(annotation: Any, **kwargs) -> serializers.Field:
    """A strict DRF field for a dataclass field's type; unknown types pass through for the dataclass to check."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _field_for(args[0], allow_null=True, **kwargs)
    if annotation is bool:
        return StrictBooleanField(**kwargs)
    if annotation is int:
        return StrictIntegerField(**kwargs)
    if annotation is float:
        return StrictFloatField(**kwargs)
    if annotation is str:
        return StrictCharField(**kwargs)
    if typing.get_origin(annotation) is list and args == [str]:
        return serializers.ListField(child=StrictCharField(), **kwargs)
    if dataclasses.is_dataclass(annotation):
        return config_serializer(annotation)(**kwargs)
    return serializers.JSONField(**kwargs)


def config_fields(cls: type) -> dict[str, serializers.Field]:
    """One optional camelCase field per dataclass field, reading and writing the snake_case name."""
    hints = typing.get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        name = to_camel(f.name)
        source = {"source": f.name} if name != f.name else {}  # DRF refuses a redundant source
        fields[name] = _field_for(hints[f.name], required=False, **source)
    return fields


@cache
def config_serializer(cls: type) -> type[StrictSerializer]:
    """A serializer class for a config dataclass, e.g. TrainingConfig -> TrainingConfigSerializer."""

    def get_fields(self):
        return {**StrictSerializer.get_fields(self), **config_fields(cls)}

    return type(f"{cls.__name__}Serializer", (StrictSerializer,), {
        "get_fields": get_fields,
        "__doc__": f"{cls.__name__} fields in camelCase; all optional.",
    })


class TrainPolicyRequestSerializer(StrictSerializer):
    """Any TrainingConfig field in camelCase (``maxSteps``, ``learningRate``, ``rewardModelConfig``
    {``numEpochs``, ...}), applied over the preset, then over the agent's defaults."""

    dryRun = StrictBooleanField(
        source="dry_run", default=False, help_text="true: estimate only (200); false: queue training (202)"
    )

    def get_fields(self):
        preset = serializers.ChoiceField(
            choices=list(PRESETS), required=False, help_text="A configuration preset from the spec",
            error_messages={"invalid_choice": f"Unknown preset \"{{input}}\"; choose one of {', '.join(PRESETS)}."},
        )
        return {**super().get_fields(), "preset": preset, **config_fields(TrainingConfig)}

    @staticmethod
    def as_sent(exc: Exception) -> Exception:
        """A ConfigError about named TrainingConfig fields (snake_case paths) as the 400 of a field the client
        sent: ``errors`` keyed by camelCase paths (``rewardModelConfig.maxLength``), field names in the reasons
        camelCase too. Any other exception unchanged."""
        if not isinstance(exc, ConfigError) or not exc.errors:
            return exc
        return serializers.ValidationError({
            ".".join(map(to_camel, path.split("."))): [_SNAKE_FIELD.sub(lambda m: to_camel(m[0]), r) for r in reasons]
            for path, reasons in exc.errors.items()
        })


# A snake_case TrainingConfig / RewardModelConfig field name inside a message.
_SNAKE_NAMES = {f.name for cls in (TrainingConfig, RewardModelConfig) for f in dataclasses.fields(cls) if "_" in f.name}
_SNAKE_FIELD = re.compile(r"\b(?:{})\b".format("|".join(sorted(_SNAKE_NAMES, key=len, reverse=True))))


# --- responses ---------------------------------------------------------------------------------
# Metrics are stored under the training core's names (training.jobs.progress); here, at the edge, they take the spec's
# camelCase ones.

# A version's latest figures: the core's name -> the API's (the spec's four first: always present, null until known).
METRIC_NAMES = {
    **SPEC_NAMES, "phase": "phase", "reward_model_loss": "rewardModelLoss", "reward_model": "rewardModel",
    "duration_seconds": "durationSeconds", "warnings": "warnings", "evaluation": "evaluation",
}
SUMMARY_METRICS = tuple(SPEC_NAMES.values())  # rewardMean, rewardStd, kl, loss
# Stored for the admin's version page only (its phase counter and ETA: training.jobs.status), not part of the bodies.
PAGE_ONLY_METRICS = frozenset({"phase_progress"})
# metrics.reward_model (the core's RewardModel.metrics, plain figures): the ones the API shows, in its order.
REWARD_MODEL_KEYS = {
    "val_mse": "valMse", "val_mse_baseline": "valMseBaseline", "val_pearson": "pearson", "val_spearman": "spearman",
    "train_loss": "trainLoss", "train_size": "trainSize", "val_size": "valSize", "epochs": "epochs",
    "fit_seconds": "fitSeconds", "validation": "validation", "best_epoch": "bestEpoch",
}
# metrics.evaluation (the core's TrainingResult.evaluation as training.jobs.progress stores it). Every figure is shown,
# null when the core left one out, so the block has one shape; the samples only in a version's own body.
EVALUATION_KEYS = {
    "better": "better", "baseline": "baseline", "scored_by": "scoredBy", "n": "n", "win_rate": "winRate",
    "win_rate_ci": "winRateCi", "reward_mean": "rewardMean", "baseline_reward_mean": "baselineRewardMean",
    "reward_diff": "rewardDiff", "reward_diff_ci": "rewardDiffCi", "kl": "kl", "response_length": "responseLength",
    "baseline_response_length": "baselineResponseLength", "split_seed": "splitSeed",
    "heldout_prompts": "heldoutPrompts", "verdict": "verdict", "kept_start": "keptStart",
    "reward_model_ok": "rewardModelOk", "judge_win_rates": "judgeWinRates", "judge_agreement": "judgeAgreement",
    "policy_reward_model": "policyRewardModel", "advice": "advice",
}
# metrics.evaluation.policy_reward_model: what the reward model the policy trained against says (optimistic)
POLICY_REWARD_MODEL_KEYS = {"win_rate": "winRate", "win_rate_ci": "winRateCi", "reward_diff": "rewardDiff"}
EVALUATION_SAMPLE_KEYS = {
    "prompt": "prompt", "response": "response", "baseline_response": "baselineResponse", "score": "score",
    "baseline_score": "baselineScore",
}


def api_metrics(metrics: Optional[Mapping], *, samples: bool) -> dict[str, Any]:
    """A version's stored metrics as the API shows them: the spec's four figures first, then the rest renamed;
    the evaluation's samples only when ``samples``."""
    data: dict[str, Any] = {name: None for name in SUMMARY_METRICS}
    for key, value in (metrics or {}).items():
        if key in PAGE_ONLY_METRICS:
            continue
        if key == "reward_model" and isinstance(value, Mapping):
            value = {name: value[k] for k, name in REWARD_MODEL_KEYS.items() if k in value}
        elif key == "evaluation" and isinstance(value, Mapping):
            value = api_evaluation(value, samples=samples)
        data[METRIC_NAMES.get(key, key)] = value
    return data


def api_evaluation(evaluation: Mapping, *, samples: bool) -> dict[str, Any]:
    if "skipped" in evaluation:
        return {"skipped": evaluation["skipped"]}
    block = {name: evaluation.get(key) for key, name in EVALUATION_KEYS.items()}
    if isinstance(block["policyRewardModel"], Mapping):
        block["policyRewardModel"] = {
            name: block["policyRewardModel"].get(key) for key, name in POLICY_REWARD_MODEL_KEYS.items()
        }
    if samples:
        block["samples"] = [
            {name: sample.get(key) for key, name in EVALUATION_SAMPLE_KEYS.items()}
            for sample in evaluation.get("samples") or [] if isinstance(sample, Mapping)
        ]
    return block


def api_step(step: int, figures: Mapping) -> dict[str, Any]:
    """One TrainingStep as a history entry: step, rewardMean, rewardStd, kl, loss, then the core's own names."""
    entry = {"step": step, **{name: figures.get(key) for key, name in SPEC_NAMES.items()}}
    entry.update({key: value for key, value in figures.items() if key not in entry})
    return entry


_NUMBER_OR_NULL = {"type": "number", "nullable": True}
_INTERVAL = {"type": "array", "items": _NUMBER_OR_NULL, "minItems": 2, "maxItems": 2, "nullable": True,
             "description": "95 % bootstrap interval [low, high]"}
_WARNINGS = {"type": "array", "items": {"type": "string"},
             "description": "What training warned about in plain English, e.g. a reward model no better than "
                              "predicting the mean score"}

# metrics.evaluation as the API shows it (api_evaluation): the version against the model it started from, on prompts
# held out of its training. Every figure is scored by this version's own reward model.
_EVALUATION_FIGURES = {
    "better": {"type": "boolean", "nullable": True,
               "description": "The reward model passed its quality check and winRateCi's lower bound, judged by "
                              "reward models the policy was not trained against, is above 0.5"},
    "baseline": {"type": "string", "nullable": True, "description": "What the version started from, in words"},
    "scoredBy": {"type": "string", "nullable": True, "description": "Which reward model(s) scored both sides"},
    "n": {"type": "integer", "nullable": True, "description": "(held-out prompt, sample) pairs compared"},
    "heldoutPrompts": {"type": "integer", "nullable": True,
                       "description": "How many prompts a seeded split held out of training"},
    "splitSeed": {"type": "integer", "nullable": True},
    "winRate": {**_NUMBER_OR_NULL, "description": "P(the version's response scores higher than the baseline's); "
                                                  "ties count half"},
    "winRateCi": _INTERVAL,
    "rewardMean": {**_NUMBER_OR_NULL, "description": "Mean score of the version's responses"},
    "baselineRewardMean": {**_NUMBER_OR_NULL, "description": "Mean score of the baseline's responses"},
    "rewardDiff": {**_NUMBER_OR_NULL, "description": "rewardMean - baselineRewardMean"},
    "rewardDiffCi": _INTERVAL,
    "kl": {**_NUMBER_OR_NULL, "description": "KL(version || baseline) on the held-out prompts, nats per response"},
    "responseLength": {**_NUMBER_OR_NULL, "description": "Mean response length, tokens"},
    "baselineResponseLength": _NUMBER_OR_NULL,
    "verdict": {"type": "string", "nullable": True,
                "description": "Why the version is, or is not, better than its start, in one sentence"},
    "advice": {"type": "string", "nullable": True,
               "description": "When the version is not better: what to change for the next one, in one line "
                              "(more feedback, more steps, or the reward model's warning)"},
    "keptStart": {"type": "boolean", "nullable": True,
                  "description": "True when the trained policy was not credibly better and the version keeps its "
                                 "starting model's weights instead (TrainingConfig.fall_back_to_start)"},
    "rewardModelOk": {"type": "boolean", "nullable": True,
                      "description": "The reward model passed its quality check (no reward-model warning)"},
    "judgeWinRates": {"type": "array", "items": {"type": "number"}, "nullable": True,
                      "description": "The win rate by each judge (cross-validation fold reward model)"},
    "judgeAgreement": {**_NUMBER_OR_NULL, "description": "Share of the judges that see a win rate above 0.5"},
    "policyRewardModel": {
        "type": "object", "nullable": True,
        "description": "The win rate by the reward model the policy trained against: optimistic by construction; "
                       "far above winRate, it says the policy learned that model's quirks",
        "properties": {"winRate": _NUMBER_OR_NULL, "winRateCi": _INTERVAL, "rewardDiff": _NUMBER_OR_NULL},
    },
}
_EVALUATION_SAMPLES = {
    "type": "array", "description": "Up to 8 held-out prompts with both responses and their scores",
    "items": {"type": "object", "properties": {
        "prompt": {"type": "string"}, "response": {"type": "string"}, "baselineResponse": {"type": "string"},
        "score": _NUMBER_OR_NULL, "baselineScore": _NUMBER_OR_NULL,
    }},
}
_EVALUATION_SKIPPED = {
    "type": "object", "properties": {"skipped": {"type": "string", "description": "Why it was not evaluated"}},
    "required": ["skipped"],
}


def _evaluation_schema(*, samples: bool) -> dict:
    properties = {**_EVALUATION_FIGURES, "samples": _EVALUATION_SAMPLES} if samples else _EVALUATION_FIGURES
    evaluated = {"type": "object", "properties": properties, "required": list(_EVALUATION_FIGURES)}
    return {
        "oneOf": [evaluated, _EVALUATION_SKIPPED],
        "description": "Is this version better than the model it started from? Absent for versions not evaluated "
                       "(still training, failed, or trained before evaluations); {skipped: reason} when skipped."
                       + ("" if samples else " The version's own body adds the samples."),
    }


def _metrics_schema(*, detail: bool) -> dict:
    properties = {
        **{name: _NUMBER_OR_NULL for name in SUMMARY_METRICS},
        "warnings": _WARNINGS,
        "evaluation": _evaluation_schema(samples=detail),
    }
    required = list(SUMMARY_METRICS)
    if detail:
        properties["history"] = {"type": "array", "items": {"type": "object", "additionalProperties": True},
                                 "description": "One entry per logged step: step, rewardMean, kl, loss, ..."}
        required.append("history")
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": True}


@extend_schema_field(_metrics_schema(detail=False))
class MetricsSummaryField(serializers.Field):
    """The latest figures (rewardMean, rewardStd, kl, loss always present, null until known), warnings and the
    evaluation once there are any; no history, no evaluation samples. Reads the version's metrics only."""

    def __init__(self, **kwargs):
        super().__init__(read_only=True, **kwargs)

    def to_representation(self, metrics):
        return api_metrics(metrics, samples=False)


@extend_schema_field(_metrics_schema(detail=True))
class MetricsField(serializers.Field):
    """The latest figures plus ``history``, one dict per logged step (its TrainingStep rows, one query), and the
    evaluation's samples."""

    def __init__(self, **kwargs):
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, version: PolicyVersion):
        steps = version.steps.order_by("step").values_list("step", "metrics")
        return {**api_metrics(version.metrics, samples=True), "history": [api_step(*row) for row in steps]}


@extend_schema_field(OpenApiTypes.URI)
class VersionUrlField(serializers.Field):
    def __init__(self, **kwargs):
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, version: PolicyVersion):
        return reverse(
            "policies:version-detail", kwargs={"agent": version.agent.name, "version": version.version},
            request=self.context.get("request"),
        )


_HUMAN_SCORE = {
    "type": "object",
    "description": "The A/B result from people: feedback tied to this version (its `policyVersion`), how much of it "
                   "is scored, and the mean score with its 95 % t-interval (null below 2 scored records)",
    "properties": {
        "n": {"type": "integer", "description": "Feedback records tied to this version"},
        "nScored": {"type": "integer", "description": "Of those, scored"},
        "mean": {**_NUMBER_OR_NULL, "description": "Mean score of the scored ones"},
        "ci": {**_INTERVAL, "description": "95 % interval of the mean [low, high] (Student's t)"},
    },
    "required": ["n", "nScored", "mean", "ci"],
}


def api_human_score(score: HumanScore) -> dict[str, Any]:
    return {"n": score.n, "nScored": score.n_scored, "mean": score.mean, "ci": list(score.ci) if score.ci else None}


_PROGRESS = {
    "type": "object",
    "description": "Where the training stands: the current phase and its counter (the admin's status box shows the "
                   "same). The reward model, evaluation and saving phases count their own units while the version "
                   "runs; in the policy phase, before any phase and once the version ended, the counter is its "
                   "policy steps (trainingSteps of maxSteps)",
    "properties": {
        "phase": {"type": "string", "nullable": True, "description": "The training's current (or last) phase, the "
                  f"core's name ({', '.join(PHASE_WORDS)}); null before it started, and once trained"},
        "done": {"type": "integer", "description": "Units done in the phase"},
        "total": {"type": "integer", "description": "Units the phase takes"},
        "unit": {"type": "string", "description": 'What is counted: "steps", "reward-model batches", ...'},
    },
    "required": ["phase", "done", "total", "unit"],
}


TIMING_KEYS = ("elapsedSeconds", "estimatedFinish", "progress")


class PolicyVersionSummarySerializer(serializers.Serializer):
    """One item of ``GET /api/policies/<agent>``. Its human scores come from ``context["human_scores"]``
    (training.deployment.human_scores: one query for a whole list), else one query for this version.

    Its last keys (elapsedSeconds, estimatedFinish, progress) were added after the others: training.jobs.status.timing,
    the figures of the admin's status box, read from the version's own fields (no query)."""

    version = serializers.CharField(read_only=True, help_text='"v1", "v2", ... per agent')
    policyId = serializers.CharField(source="policy_id", read_only=True)
    agent = serializers.CharField(source="agent.name", read_only=True)
    status = serializers.ChoiceField(choices=PolicyVersion.Status.choices, read_only=True)
    createdAt = serializers.DateTimeField(source="queued_at", read_only=True)
    feedbackCount = serializers.IntegerField(source="feedback_count", read_only=True)
    trainingSteps = serializers.IntegerField(source="step", read_only=True, help_text="PPO steps done")
    maxSteps = serializers.IntegerField(source="max_steps", read_only=True)
    modelPath = serializers.CharField(source="model_path", read_only=True, allow_null=True)
    rewardModelPath = serializers.CharField(source="reward_model_path", read_only=True, allow_null=True)
    metrics = MetricsSummaryField()
    warnings = serializers.SerializerMethodField()
    active = serializers.SerializerMethodField()
    trafficShare = serializers.SerializerMethodField()
    humanScore = serializers.SerializerMethodField()
    url = VersionUrlField()
    elapsedSeconds = serializers.SerializerMethodField()
    estimatedFinish = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()

    def _timing(self, version: PolicyVersion) -> Timing:
        cached = getattr(self, "_timed", None)
        if cached is None or cached[0] != version.pk:
            now = self.context.setdefault("now", timezone.now())  # one moment for a whole list
            self._timed = cached = (version.pk, timing(version, now=now))
        return cached[1]

    @extend_schema_field({**_NUMBER_OR_NULL, "description": "Seconds since it started running; once it ended, how "
                          "long it ran; null while queued"})
    def get_elapsedSeconds(self, version: PolicyVersion) -> Optional[float]:
        elapsed = self._timing(version).elapsed
        return round(elapsed, 1) if elapsed is not None else None

    @extend_schema_field({"type": "string", "format": "date-time", "nullable": True, "description": "Queued or "
                          "running: when the current phase (progress.phase) is estimated to end, from its recent "
                          "pace (the admin's \"remaining\" figure); in the policy phase, about when training ends "
                          "(evaluation and saving follow). Null when there is no estimate yet, and once it ended"})
    def get_estimatedFinish(self, version: PolicyVersion) -> Optional[str]:
        eta = self._timing(version).eta
        if eta is None or not version.is_active:
            return None
        return serializers.DateTimeField().to_representation(
            self.context["now"] + datetime.timedelta(seconds=round(eta)))

    @extend_schema_field(_PROGRESS)
    def get_progress(self, version: PolicyVersion) -> dict[str, Any]:
        t = self._timing(version)
        return {"phase": t.phase or None, "done": t.done, "total": t.total, "unit": t.unit}

    @extend_schema_field(_WARNINGS)
    def get_warnings(self, version: PolicyVersion) -> list[str]:
        return version.warnings

    @extend_schema_field({"type": "boolean", "description": "The agent's active version (promoted)"})
    def get_active(self, version: PolicyVersion) -> bool:
        return version.agent.active_version_id == version.pk

    @extend_schema_field({**_NUMBER_OR_NULL, "description": "Its share of the agent's traffic split; null when the "
                                                            "split does not name it or there is none"})
    def get_trafficShare(self, version: PolicyVersion) -> Optional[float]:
        return (version.agent.traffic or {}).get(version.version)

    @extend_schema_field(_HUMAN_SCORE)
    def get_humanScore(self, version: PolicyVersion) -> dict[str, Any]:
        scores = self.context.get("human_scores")
        score = scores[version.pk] if scores and version.pk in scores else human_scores([version])[version.pk]
        return api_human_score(score)

    def to_representation(self, instance):
        data = super().to_representation(instance)
        for key in ("modelPath", "rewardModelPath"):
            data[key] = data[key] or None  # "" until trained
        return data


class PolicyVersionSerializer(PolicyVersionSummarySerializer):
    """``GET /api/policies/<agent>/<version>``: the spec's "Training Success" body once trained,
    and the job's progress before (status, step, maxSteps, metrics, startedAt, heartbeatAt)."""

    rewardMean = serializers.SerializerMethodField()
    rewardStd = serializers.SerializerMethodField()
    step = serializers.IntegerField(read_only=True)
    metrics = MetricsField()
    config = serializers.SerializerMethodField(help_text="The full resolved TrainingConfig, camelCase")
    error = serializers.CharField(read_only=True, allow_null=True)
    promotionNote = serializers.CharField(
        source="promotion_note", read_only=True, allow_null=True,
        help_text="Why the version was promoted after training or not (the request's promote); null when not asked",
    )
    cancelRequested = serializers.BooleanField(source="cancel_requested", read_only=True)
    queuedAt = serializers.DateTimeField(source="queued_at", read_only=True)
    startedAt = serializers.DateTimeField(source="started_at", read_only=True, allow_null=True)
    finishedAt = serializers.DateTimeField(source="finished_at", read_only=True, allow_null=True)
    heartbeatAt = serializers.DateTimeField(source="heartbeat_at", read_only=True, allow_null=True)
    queuePosition = serializers.SerializerMethodField()
    waitingFor = serializers.SerializerMethodField()

    def _queue_state(self, version: PolicyVersion) -> Optional[QueueState]:
        cached = getattr(self, "_queue", None)
        if cached is None or cached[0] != version.pk:
            self._queue = cached = (version.pk, queue_state(version=version))
        return cached[1]

    @extend_schema_field({"type": "integer", "nullable": True, "description": "Queued: 1 when it is the next training "
                          "to start (of every agent's queued versions); null once it has started"})
    def get_queuePosition(self, version: PolicyVersion) -> Optional[int]:
        state = self._queue_state(version)
        return state.position if state else None

    @extend_schema_field({"type": "string", "nullable": True, "description": "Queued: what it waits for, naming the "
                          "trainings (and other model jobs) ahead of it; null once it has started"})
    def get_waitingFor(self, version: PolicyVersion) -> Optional[str]:
        state = self._queue_state(version)
        return state.waiting_for if state else None

    @extend_schema_field(_NUMBER_OR_NULL)
    def get_rewardMean(self, version: PolicyVersion):
        return version.reward_mean

    @extend_schema_field(_NUMBER_OR_NULL)
    def get_rewardStd(self, version: PolicyVersion):
        return version.reward_std

    @extend_schema_field({"type": "object", "additionalProperties": True})
    def get_config(self, version: PolicyVersion):
        return camel_keys(version.config or {})

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["error"] = data["error"] or None
        data["promotionNote"] = data["promotionNote"] or None
        for key in TIMING_KEYS:  # the body's last keys here too (added after the others)
            data[key] = data.pop(key)
        return data


class EventQuerySerializer(QuerySerializer):
    """The query parameters of GET /api/policies/<agent>/<version>/events; one it does not know is refused."""

    after = serializers.IntegerField(
        required=False, min_value=0, max_value=2**53,
        help_text="List the events after this id (the last one seen): poll with it for new events",
    )
    limit = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_EVENTS_LIMIT, default=100, help_text="Events per page (default 100)",
    )



class EventSerializer(serializers.Serializer):
    """One event of a version's training (training.jobs.events.Event)."""

    id = serializers.IntegerField(help_text="Increases in the order the events happen; stable: poll with ?after=")
    createdAt = serializers.DateTimeField(
        source="created_at", allow_null=True, help_text="When it happened; null for a step whose time is unknown",
    )
    level = serializers.ChoiceField(choices=["info", "warning", "error"])
    type = serializers.ChoiceField(
        choices=["queued", "started", "reward_model.epoch", "reward_model.fitted", "policy.step", "warning",
                 "evaluation", "promotion", "end"],
        help_text="reward_model.epoch: an epoch's train loss and validation MSE (of a fold when it cross-validates); "
                  "policy.step: every n-th step's figures (about 100 per run); end: data.status is trained, failed "
                  "or cancelled, data.error why",
    )
    message = serializers.CharField(help_text="The event in words")
    data = serializers.SerializerMethodField()

    @extend_schema_field({"type": "object", "additionalProperties": True,
                          "description": "The event's figures, camelCase (e.g. epoch, valMse; step, rewardMean, kl)"})
    def get_data(self, event) -> dict[str, Any]:
        return camel_keys(event.data)


class EventPageSerializer(serializers.Serializer):
    """A page of a version's events, oldest first."""

    next = serializers.URLField(
        allow_null=True, help_text="The next page; null when there are no more events yet (poll again later with "
                                   "?after=<the last id>)",
    )
    results = EventSerializer(many=True)


class DeploymentSerializer(serializers.Serializer):
    """An agent's deployment state: what answers ``"model": "<agent>"`` at the inference process."""

    agent = serializers.CharField(read_only=True)
    activeVersion = serializers.CharField(
        source="active_version", read_only=True, allow_null=True,
        help_text='The promoted version ("v3"); null when none is',
    )
    traffic = serializers.DictField(
        child=serializers.FloatField(), read_only=True,
        help_text='The split among trained versions ({"v3": 0.9, "v4": 0.1}, summing to 1); {} sends all traffic '
                  "to activeVersion",
    )
    recordServed = serializers.BooleanField(
        source="record_served", read_only=True,
        help_text="Each served response is stored as unscored feedback tied to its version (review queue)",
    )


class PromotionSerializer(DeploymentSerializer):
    """The deployment state after a promotion, with why a second thought was due."""

    warning = serializers.CharField(
        read_only=True, allow_null=True,
        help_text="Set when the promoted version's evaluation does not say it is better than its start (the version "
                  "is promoted all the same): the evaluation's verdict in one sentence",
    )


class AgentSerializer(DeploymentSerializer):
    """An agent in the list of agents: its deployment (what GET .../traffic answers) and its counts."""

    feedbackCount = serializers.IntegerField(source="feedback_count", read_only=True, help_text="Feedback records")
    scoredCount = serializers.IntegerField(
        source="scored_count", read_only=True, help_text="Records with a score (what training reads)",
    )
    versionCount = serializers.IntegerField(
        source="version_count", read_only=True, help_text="Policy versions, whatever their status",
    )


TRAFFIC_REQUEST = {
    "type": "object",
    "description": 'The new traffic split: version -> share ({"v3": 0.9, "v4": 0.1}); shares are numbers in (0, 1] '
                   "summing to 1, over trained versions; {} clears the split. `recordServed` (optional) sets the "
                   "record-served switch; a body with only `recordServed` leaves the split as it is.",
    "properties": {"recordServed": {"type": "boolean"}},
    "additionalProperties": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1},
}


def traffic_request(data: Any) -> tuple[Optional[dict], Optional[bool]]:
    """A PUT traffic body as (shares or None to leave the split, recordServed or None); 400 for a non-object or a
    recordServed that is not a boolean. The shares are checked by the service."""
    if not isinstance(data, Mapping):
        raise serializers.ValidationError('Expected a JSON object such as {"v3": 0.9, "v4": 0.1}')
    shares = {str(key): value for key, value in data.items() if key != "recordServed"}
    record_served = data.get("recordServed")
    if "recordServed" in data and not isinstance(record_served, bool):
        raise serializers.ValidationError({"recordServed": ["Must be true or false."]})
    return (None if not shares and "recordServed" in data else shares), record_served


class RoundedFloatField(serializers.FloatField):
    """A figure for display, to 6 decimals: equal scores of 0.7 average 0.7 (not 0.7000000000000001), spread 0."""

    def to_representation(self, value):
        return round(float(value), 6) + 0.0


def _nullable_count(description: str) -> dict:
    return {"type": "integer", "nullable": True, "description": description}


class PreferenceDataSerializer(serializers.Serializer):
    """What KTO or DPO would train on (n3_server.rlhf.preference_data.PreferenceCounts), the counts the admin's Train
    preview shows: DPO's pairs, KTO's classes; the other algorithm's counts are null."""

    algorithm = serializers.ChoiceField(choices=["kto", "dpo"])
    pairs = serializers.SerializerMethodField()
    desirable = serializers.SerializerMethodField()
    undesirable = serializers.SerializerMethodField()
    leftOut = serializers.SerializerMethodField()
    heldoutPrompts = serializers.IntegerField(
        source="heldout_prompts", help_text="Prompts set aside for the evaluation: their feedback is not counted",
    )

    @extend_schema_field(_nullable_count(
        "DPO: pairs of responses to the same prompt whose scores differ by at least dpo_pair_margin"
    ))
    def get_pairs(self, counts) -> Optional[int]:
        return counts.examples if counts.algorithm == "dpo" else None

    @extend_schema_field(_nullable_count("KTO: examples scored >= kto_desirable_threshold"))
    def get_desirable(self, counts) -> Optional[int]:
        return counts.desirable if counts.algorithm == "kto" else None

    @extend_schema_field(_nullable_count("KTO: examples scored <= kto_undesirable_threshold"))
    def get_undesirable(self, counts) -> Optional[int]:
        return counts.undesirable if counts.algorithm == "kto" else None

    @extend_schema_field(_nullable_count("KTO: records scored between the two thresholds, left out"))
    def get_leftOut(self, counts) -> Optional[int]:
        return counts.left_out if counts.algorithm == "kto" else None


class DryRunSerializer(serializers.Serializer):
    """The spec's dry-run body, plus ``warnings`` about the feedback (an empty list when all is well),
    ``estimateSource``: where estimatedTimeMinutes comes from, and ``preferenceData``: what KTO/DPO would train on."""

    status = serializers.SerializerMethodField()
    feedbackCount = serializers.IntegerField(source="feedback_count", help_text="Scored feedback samples")
    estimatedSteps = serializers.IntegerField(source="estimated_steps")
    estimatedTimeMinutes = serializers.FloatField(
        source="estimated_time_minutes", help_text="Extrapolated from timings measured on the workers' machine, or a "
        "rough default when this configuration has not been measured yet (see estimateSource)",
    )
    estimateSource = serializers.ChoiceField(
        source="estimate_source", choices=["measured", "rough", "default"],
        help_text='"measured": from this configuration\'s measured timings; "rough": not measured yet, a figure from '
        "the model's size, the lengths and the machine's speed (scaled by a measured configuration where there is "
        'one), while the worker measures it (the next dry run after that answers "measured"); "default": what '
        'releases before "rough" said instead (no longer answered)',
    )
    scoreMean = RoundedFloatField(source="score_mean")
    scoreStd = RoundedFloatField(source="score_std")
    modelConfig = serializers.DictField(
        source="model_config", help_text="base_model, use_lora, learning_rate (snake_case, as in the spec)"
    )
    warnings = serializers.ListField(child=serializers.CharField())
    preferenceData = PreferenceDataSerializer(
        source="preference", allow_null=True,
        help_text="KTO/DPO: the labelled examples or preference pairs the scored feedback yields, counted as the "
        "training counts them. Null for the other algorithms, and for an agent with more scored feedback than "
        "N3_ESTIMATE_SAMPLE (the dry run reads a sample; the training request counts all of it and refuses too few)",
    )

    @extend_schema_field({"type": "string", "enum": ["dry_run"]})
    def get_status(self, estimate) -> str:
        return "dry_run"
