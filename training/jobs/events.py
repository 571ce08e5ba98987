"""A version's training as a list of events (queued, started, reward-model epochs, policy steps, warnings,
evaluation, promotion, end), like a fine-tuning job's events: derived from what the training already writes, no
table of their own.

Sources: the version's fields (queued, started, finished, error, promotion note, metrics.evaluation), its
TrainingStep rows (every ``step_stride`` steps) and its training.log, whose lines the training core writes as it goes
(reward-model epochs with their validation figures, the reward model's fit, warnings; the steps' times). A version
whose training.log is gone still lists what the database holds, the steps without their times.

Event ids are stable integers that increase in the order the events happen: a stage (queued 1, started 2, the
reward model and warnings before the first step 3, the policy phase 4, evaluation 5, promotion 6, end 7) times
``STAGE`` plus a position in the stage, a step's position being ten times its number (the warnings logged after a
step follow it). A poller asks for ``after`` the last id it saw: what the training writes later only ever gets
larger ids. While a version runs, events of the policy phase are listed up to the step the database has (the log
runs ahead of the step rows, written every N3_METRICS_INTERVAL s), so a later step can never come in under an id a
poller has passed.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Optional

from django.db.models import F, Q
from django.db.models.functions import Mod

from n3_server.rlhf.layout import LOG_FILE
from n3_server.rlhf.metrics import SPEC_NAMES
from policies.models import PolicyVersion, TrainingStep

from .. import files

Status = PolicyVersion.Status

STAGE = 10**12
QUEUED, STARTED, SETUP, POLICY, EVALUATION, PROMOTION, END = range(1, 8)
# About this many step events per run: a 1000-step run lists every 10th step (and its first and last).
STEP_EVENTS = 100
MAX_LIMIT = 1000


@dataclass(frozen=True)
class Event:
    id: int
    created_at: Optional[datetime]  # None: a step whose time is unknown (its training.log is gone)
    level: str  # "info", "warning", "error"
    type: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)  # snake_case keys; the API camel-cases them


def step_stride(max_steps: int) -> int:
    """List every n-th policy step, so that a run lists about STEP_EVENTS of them."""
    return max(1, -(-max_steps // STEP_EVENTS))


def version_events(*, version: PolicyVersion, after: Optional[int] = None,
                   limit: Optional[int] = None) -> tuple[list[Event], bool]:
    """The version's events in the order they happened, those with an id above ``after``, at most ``limit``; and
    whether more follow."""
    events = [event for event in _all_events(version) if after is None or event.id > after]
    if limit is None or len(events) <= limit:
        return events, False
    return events[:limit], True


def _all_events(version: PolicyVersion) -> list[Event]:
    log = _read_log(files.version_dir(version.agent.name, version.number) / LOG_FILE)
    # While it runs: the policy phase up to the step the database has (see the module's docstring).
    through = version.step if version.is_active else None
    events = [_queued(version)]
    if version.started_at:
        events.append(Event(STARTED * STAGE, version.started_at, "info", "started",
                            f"Training started on {version.feedback_count} feedback samples",
                            {"feedback_count": version.feedback_count}))
    events += _log_events(log, through=through)
    events += _step_events(version, log, through=through)
    if not version.is_active:
        events += _outcome_events(version, log)
    return sorted(events, key=lambda event: event.id)


def fitted_reward_model(version: PolicyVersion) -> Optional[dict[str, Any]]:
    """The reward model's validation figures as its training.log states them once it is fitted, under
    metrics.reward_model's names; None before the fit. A run writes metrics.reward_model only when it ends, so this
    is what the version page shows during the policy phase."""
    for line in reversed(_read_log(files.version_dir(version.agent.name, version.number) / LOG_FILE)):
        if (match := _FITTED.match(line.message)) is not None:
            return {"validation": match["validation"], "val_mse": _number(match["val_mse"]),
                    "val_mse_baseline": _number(match["baseline"]), "val_pearson": _number(match["pearson"]),
                    "val_spearman": _number(match["spearman"]), "best_epoch": int(match["best"]),
                    "epochs": int(match["epochs"])}
    return None


def _queued(version: PolicyVersion) -> Event:
    config = version.config or {}
    data = {"max_steps": version.max_steps, "algorithm": config.get("algorithm"),
            "base_model": config.get("base_model"), "init_from": config.get("init_from")}
    return Event(QUEUED * STAGE, version.queued_at, "info", "queued",
                 f"Queued: {version.max_steps} steps of {str(data['algorithm'] or 'training').upper()} "
                 f"on {data['base_model'] or 'the base model'}", data)


# --- training.log ------------------------------------------------------------------------------------------------
# The training core's lines (its _run_log format: "2026-12-07 21:52:16,752 INFO message"); continuation lines (a
# traceback) carry no time and are skipped.
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (INFO|WARNING|ERROR|DEBUG|CRITICAL) (.*)$")
_FIT = re.compile(r"^reward model(?: \((?P<fit>[^)]*)\))?: .* \d+ train / \d+ validation samples")
_EPOCH = re.compile(r"^reward model epoch (\d+)/(\d+) train_loss=(\S+) val_mse=(\S+)$")
_FITTED = re.compile(
    r"^reward model \((?P<validation>[^)]*)\): val_mse=(?P<val_mse>\S+) \(predict-the-mean (?P<baseline>\S+)\), "
    r"pearson=(?P<pearson>\S+), spearman=(?P<spearman>\S+), best epoch (?P<best>\d+) of (?P<epochs>\d+)$"
)
_STEP = re.compile(r"^\S+ step (\d+)/\d+ ")
# The end's own words (the version's error says it again): not listed as warnings.
_ENDING = ("Training cancelled", "Training failed")


@dataclass(frozen=True)
class _LogLine:
    at: datetime
    level: str
    message: str


def _read_log(path: Path) -> list[_LogLine]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    lines = []
    for raw in text.splitlines():
        match = _LINE.match(raw)
        if match:
            # The training process's local time (logging's asctime), as an aware datetime
            at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").astimezone().astimezone(UTC)
            lines.append(_LogLine(at, match[2], match[3]))
    return lines


def _log_events(log: list[_LogLine], *, through: Optional[int]) -> Iterator[Event]:
    """Reward-model epochs and fit, and warnings: before the first policy step in stage SETUP, in log order; after
    step k, right after step k's event (up to ``through``)."""
    fit: Optional[str] = None
    setup, step, after_step = 0, None, 0
    for line in log:
        if (match := _STEP.match(line.message)) is not None:
            step, after_step = int(match[1]), 0
            continue
        event = _log_event(line, fit)
        if (match := _FIT.match(line.message)) is not None:
            fit = match["fit"]
        if event is None:
            continue
        if step is None:
            setup += 1
            yield Event(SETUP * STAGE + setup, *event)
        elif (through is None or step <= through) and after_step < 9:
            after_step += 1
            yield Event(POLICY * STAGE + 10 * step + after_step, *event)


def _log_event(line: _LogLine, fit: Optional[str]) -> Optional[tuple]:
    """(created_at, level, type, message, data) of a line that is an event; None for the others."""
    if line.level in ("WARNING", "ERROR", "CRITICAL"):
        if line.message.startswith(_ENDING):
            return None
        return line.at, "warning" if line.level == "WARNING" else "error", "warning", line.message, {}
    if (match := _EPOCH.match(line.message)) is not None:
        epoch, epochs, train_loss, val_mse = int(match[1]), int(match[2]), _number(match[3]), _number(match[4])
        where = f" ({fit})" if fit else ""
        return line.at, "info", "reward_model.epoch", (
            f"Reward model{where} epoch {epoch}/{epochs}: train loss {match[3]}, validation MSE {match[4]}"
        ), {"fit": fit, "epoch": epoch, "epochs": epochs, "train_loss": train_loss, "val_mse": val_mse}
    if (match := _FITTED.match(line.message)) is not None:
        return line.at, "info", "reward_model.fitted", (
            f"Reward model fitted ({match['validation']}): validation MSE {match['val_mse']} "
            f"(predicting the mean: {match['baseline']}), Pearson r {match['pearson']}, best epoch {match['best']} "
            f"of {match['epochs']}"
        ), {"validation": match["validation"], "val_mse": _number(match["val_mse"]),
            "val_mse_baseline": _number(match["baseline"]), "pearson": _number(match["pearson"]),
            "spearman": _number(match["spearman"]), "best_epoch": int(match["best"]), "epochs": int(match["epochs"])}
    return None


def _number(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:  # "n/a", "None"
        return None


# --- the database ------------------------------------------------------------------------------------------------
def _step_events(version: PolicyVersion, log: list[_LogLine], *, through: Optional[int]) -> Iterator[Event]:
    """Every step_stride-th TrainingStep row, its first and its last (one query), timed by its log line."""
    stride = step_stride(version.max_steps)
    rows = TrainingStep.objects.filter(version=version)
    if stride > 1:
        rows = rows.annotate(_stride=Mod(F("step"), stride)).filter(
            Q(_stride=0) | Q(step=1) | Q(step=version.max_steps))
    if through is not None:
        rows = rows.filter(step__lte=through)
    times = {int(match[1]): line.at for line in log if (match := _STEP.match(line.message)) is not None}
    algorithm = str((version.config or {}).get("algorithm") or "policy").upper()
    for number, figures in rows.order_by("step").values_list("step", "metrics"):
        data = {"step": number, "max_steps": version.max_steps,
                **{name: figures.get(key) for key, name in _STEP_FIGURES.items()}}
        yield Event(POLICY * STAGE + 10 * number, times.get(number), "info", "policy.step",
                    f"{algorithm} step {number}/{version.max_steps}: reward {_fmt(data['reward_mean'])}, "
                    f"KL {_fmt(data['kl'])}, loss {_fmt(data['loss'])}", data)


# A step's figures in an event: the spec's four under their API names (snake_case here; the API camel-cases them).
_STEP_FIGURES = {key: {"rewardMean": "reward_mean", "rewardStd": "reward_std"}.get(name, name)
                 for key, name in SPEC_NAMES.items()}


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"


def _outcome_events(version: PolicyVersion, log: list[_LogLine]) -> Iterator[Event]:
    """Evaluation (its verdict), promotion decision and end of a version that has ended."""
    ended = version.finished_at
    evaluation = version.evaluation
    if evaluation is not None:
        at = next((line.at for line in reversed(log) if line.message.startswith("verdict: ")), ended)
        if "skipped" in evaluation:
            yield Event(EVALUATION * STAGE, at, "info", "evaluation", f"Evaluation skipped: {evaluation['skipped']}",
                        {"skipped": evaluation["skipped"]})
        else:
            better = evaluation.get("better")
            data = {key: evaluation.get(key) for key in (
                "better", "verdict", "win_rate", "win_rate_ci", "kl", "baseline", "kept_start", "advice")}
            verdict = evaluation.get("verdict") or f"better than its start: {'yes' if better else 'no'}"
            yield Event(EVALUATION * STAGE, at, "info" if better else "warning", "evaluation",
                        f"Evaluation: {verdict}", data)
    if note := version.promotion_note:  # "promoted: ..." or "not promoted: ..." (training.jobs.run.promotion)
        yield Event(PROMOTION * STAGE, ended, "info", "promotion", note[:1].upper() + note[1:],
                    {"promoted": note.startswith("promoted"), "note": note})
    level = {Status.TRAINED: "info", Status.CANCELLED: "warning"}.get(version.status, "error")
    words = {Status.TRAINED: f"Trained: {version.step} steps"}.get(
        version.status, f"{version.get_status_display()}: {version.error or 'no reason recorded'}")
    duration = (ended - version.started_at).total_seconds() if ended and version.started_at else None
    yield Event(END * STAGE, ended, level, "end", words, {
        "status": version.status, "step": version.step, "error": version.error or None,
        "duration_seconds": round(duration, 1) if duration is not None else None,
    })
