"""A training's progress: written to the database as it goes (JobProgress), drawn as bars by the CLI
(ProgressBars), and a finished run's figures as n3 stores them (result_metrics).

Everything is stored under the training core's names (n3_server.rlhf.metrics: TRL's step metrics, the core's
snake_case reward-model and evaluation keys); the API renames them to the spec's camelCase at its edge.
"""
from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Optional

from django.db import DatabaseError, transaction
from django.utils import timezone
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers.utils import logging as transformers_logging

from n3_server.rlhf import Progress
from n3_server.rlhf.metrics import SPEC_NAMES
from policies.models import PolicyVersion, TrainingStep
from training.jobs.transitions import reconnecting

logger = logging.getLogger(__name__)

Status = PolicyVersion.Status

# A version's evaluation keeps this many of the core's samples (its own page and API body show them).
MAX_EVALUATION_SAMPLES = 8

# The pace of a phase (its page's ETA) is the mean over this many recent steps: smooth, yet it follows a change.
PACE_WINDOW = 10
# Wall time (not monotonic): the web process counts the ETA down from a step's time. A module attribute, for tests.
wall_clock = time.time


def mean_pace(times: Sequence[tuple[int, float]]) -> Optional[float]:
    """Mean seconds per step over ``times``, (step, wall time) of consecutive reports, oldest first: the time
    between the first and the last over the steps between them; None with fewer than two reports."""
    if len(times) < 2 or times[-1][0] <= times[0][0]:
        return None
    return (times[-1][1] - times[0][1]) / (times[-1][0] - times[0][0])


class JobProgress:
    """The ``callback(Progress)`` given to the trainer: keeps the latest step's figures and writes them back.

    Each write inserts the steps logged since the last one as TrainingStep rows and updates the version's small
    ``metrics`` (latest figures only), step and heartbeat, in one short transaction; earlier steps are never
    rewritten. Used as a context manager around the training: leaving it stores the steps not yet written
    (whatever the version's status) and closes the progress bars, if any.

    Returns True (stop) when the database says the version should not go on: cancel requested, or no longer
    running (the sweep declared it dead, an operator failed it). That check rides on the write itself:
    ``UPDATE ... WHERE status = 'running' AND NOT cancel_requested`` updating no row means stop.
    """

    def __init__(self, version_id: int, *, interval: float, display: Optional[ProgressBars] = None):
        self.version_id = version_id
        self.interval = interval
        self.display = display
        self.phase = ""
        self.step = 0
        self.latest: dict[str, Any] = {}
        self.pending: list[tuple[int, dict[str, Any]]] = []  # (step, figures) logged since the last write
        self.stored: set[int] = set()  # steps this run has stored
        self.reward_model_loss: Optional[float] = None
        # The current phase's latest reports, (step, wall time), for its pace; and where the phase stands.
        self.times: deque[tuple[int, float]] = deque(maxlen=PACE_WINDOW + 1)
        self.phase_progress: dict[str, Any] = {}
        self._last_write = -math.inf

    def __enter__(self) -> JobProgress:
        if self.display is not None:
            self.display.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self.store_steps()
        finally:
            if self.display is not None:
                self.display.__exit__(*exc_info)

    def __call__(self, progress: Progress) -> bool:
        if progress.phase != self.phase:
            self.times.clear()
        self.phase = progress.phase
        self._time(progress)
        if progress.phase == "policy":
            self.step = progress.step
            self.latest = step_figures(progress.metrics)
            self.pending.append((step_number(progress.metrics, default=progress.step), self.latest))
        elif progress.phase == "reward_model":
            self.reward_model_loss = _finite(progress.metrics.get("loss"))
        if self.display is not None:
            self.display(progress)
        if time.monotonic() - self._last_write < self.interval:
            return False
        return self.write()

    def _time(self, progress: Progress) -> None:
        """Where the phase stands, in a few numbers (the page's counter and ETA: training.jobs.status): step, total,
        ``pace`` (mean seconds per step over the last PACE_WINDOW steps, wall time, so the web process can count
        down from ``at``), ``timed`` (steps that pace is measured on), and the reward model's epoch."""
        now = wall_clock()
        if not self.times or progress.step > self.times[-1][0]:
            self.times.append((progress.step, now))
        pace = mean_pace(self.times)
        self.phase_progress = {
            "step": progress.step, "total": progress.total, "at": round(now, 2),
            "pace": float(f"{pace:.3g}") if pace is not None else None,
            "timed": self.times[-1][0] - self.times[0][0],
        }
        epoch = progress.metrics.get("epoch") if isinstance(progress.metrics, dict) else None
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            self.phase_progress["epoch"] = epoch

    def write(self) -> bool:
        """Step, latest metrics and heartbeat in one short UPDATE and, if it updated the version, the steps logged
        since the last write as rows, committed together; True when the version must stop."""
        self._last_write = time.monotonic()

        def write_once() -> int:
            with transaction.atomic():
                updated = PolicyVersion.objects.filter(
                    pk=self.version_id, status=Status.RUNNING, cancel_requested=False,
                ).update(
                    step=self.step, metrics=self.metrics(), heartbeat_at=timezone.now(), progress_at=timezone.now(),
                )
                if updated:
                    self._insert(self.pending)
            return updated

        try:
            updated = reconnecting(write_once)  # a database restart since the last write: on a new connection
        except DatabaseError as exc:  # SQLite busy past its timeout, the database away: a training is not lost for that
            logger.warning("Progress of version %s not written (next step will retry): %s", self.version_id, exc)
            return False
        if updated:
            self._stored_pending()
        return not updated

    def store_steps(self, history: Iterable[dict[str, Any]] = ()) -> None:
        """Store the steps not yet stored: those logged since the last write, and any of ``history`` (a finished
        run's TrainingResult.history). Idempotent; a database error is logged, not raised (the run's outcome
        matters more than its curves)."""
        steps = dict(self.pending)
        for index, stats in enumerate(history):
            number = step_number(stats, default=index + 1)
            if number not in self.stored:
                steps.setdefault(number, step_figures(stats))
        if not steps:
            return
        try:
            reconnecting(lambda: self._insert(list(steps.items())))
        except DatabaseError as exc:
            logger.warning("Steps of version %s not stored: %s", self.version_id, exc)
            return
        self.pending = []
        self.stored.update(steps)

    def _insert(self, steps: list[tuple[int, dict[str, Any]]]) -> None:
        # ignore_conflicts: a write retried after an error it did not see (or a second store) skips stored steps.
        TrainingStep.objects.bulk_create(
            [TrainingStep(version_id=self.version_id, step=number, metrics=figures) for number, figures in steps],
            ignore_conflicts=True,
        )

    def _stored_pending(self) -> None:
        self.stored.update(number for number, _ in self.pending)
        self.pending = []

    def metrics(self) -> dict[str, Any]:
        """The version's metrics while it trains: the latest step's summary figures (None until the first step),
        its phase and where the phase stands (phase_progress), and the reward model's latest loss."""
        metrics: dict[str, Any] = {name: self.latest.get(name) for name in SPEC_NAMES}
        if self.phase:
            metrics["phase"] = self.phase
            metrics["phase_progress"] = self.phase_progress
        if self.reward_model_loss is not None:
            metrics["reward_model_loss"] = self.reward_model_loss
        return metrics


def step_number(stats: dict[str, Any], *, default: int) -> int:
    number = stats.get("step")
    return number if isinstance(number, int) and not isinstance(number, bool) else default


def step_figures(stats: dict[str, Any]) -> dict[str, Any]:
    """One step's figures as a TrainingStep stores them: the core's names, JSON-safe, without the step number
    (the row's own column)."""
    return {key: _finite(value) for key, value in stats.items() if key != "step"}


def result_metrics(result: Any) -> dict[str, Any]:
    """A finished run's metrics (``result`` is a TrainingResult): its final figures, the reward model's fit,
    duration, warnings and evaluation. Its steps are TrainingStep rows (JobProgress.store_steps)."""
    metrics = {
        "objective/scores": _finite(result.final_reward_mean),
        "objective/scores_std": _finite(result.final_reward_std),
        "objective/kl": _finite(result.final_kl),
        "loss/total": _finite(result.final_loss),
        "reward_model": {
            # its plain figures; the per-epoch history stays in training_results.json
            key: _finite(value) for key, value in result.reward_model_metrics.items()
            if value is None or isinstance(value, (int, float, str))
        },
        "duration_seconds": round(result.duration_seconds, 1),
        "warnings": list(result.warnings),
    }
    evaluation = evaluation_metrics(result.evaluation)
    if evaluation is not None:
        metrics["evaluation"] = evaluation
    return metrics


def evaluation_metrics(evaluation: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """TrainingResult.evaluation as stored in metrics: the core's figures, JSON-safe, its held-out prompts as their
    count and at most MAX_EVALUATION_SAMPLES samples; {"skipped": reason}; None for none (a run from before
    versions were evaluated)."""
    if not isinstance(evaluation, dict):
        return None
    if "skipped" in evaluation:
        return {"skipped": str(evaluation["skipped"])}
    block = {key: _finite_json(value) for key, value in evaluation.items() if key not in ("heldout_prompts", "samples")}
    heldout = evaluation.get("heldout_prompts")
    block["heldout_prompts"] = len(heldout) if isinstance(heldout, (list, tuple)) else _finite(heldout)
    block["samples"] = [
        {key: _finite_json(value) for key, value in sample.items()}
        for sample in (evaluation.get("samples") or [])[:MAX_EVALUATION_SAMPLES] if isinstance(sample, dict)
    ]
    return block


def _finite(value: Any) -> Any:
    """JSON-safe numbers: NaN and infinities become None (the JSON column stores strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _finite_json(value: Any) -> Any:
    """_finite, also inside lists (an interval's bounds)."""
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return _finite(value)


class ProgressBars:
    """The CLI's view of the same callbacks: one tqdm bar per phase (base model build, reward model, PPO).

    Used as a context manager: while it is open, log lines (the trainer's per-step lines) are printed above the
    bars instead of through them.
    """

    LABELS = {"base_model": "base model", "reward_model": "reward model", "policy": "PPO", "saving": "saving"}

    def __init__(self) -> None:
        self.bar = None
        self.phase = ""
        self._redirect = None

    def __enter__(self) -> ProgressBars:
        transformers_logging.disable_progress_bar()  # its "Loading weights" bars would break ours
        self._redirect = logging_redirect_tqdm()
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._close()
        self._redirect.__exit__(*exc_info)

    def __call__(self, progress: Progress) -> None:
        if progress.phase != self.phase:
            self._close()
            self.phase = progress.phase
            self.bar = tqdm(total=progress.total, desc=self.LABELS.get(progress.phase, progress.phase), unit="step",
                            dynamic_ncols=True)
        self.bar.total = progress.total
        self.bar.n = progress.step
        m = progress.metrics
        if progress.phase == "policy":
            self.bar.set_postfix_str(
                f"reward {_fmt(m.get('objective/scores'))} ± {_fmt(m.get('objective/scores_std'))}, "
                f"KL {_fmt(m.get('objective/kl'))}, loss {_fmt(m.get('loss/total'))}", refresh=False,
            )
        elif progress.phase == "reward_model":
            self.bar.set_postfix_str(f"epoch {m.get('epoch', '?')}, loss {_fmt(m.get('loss'))}", refresh=False)
        elif progress.message:
            self.bar.set_postfix_str(progress.message, refresh=False)
        self.bar.refresh()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"
