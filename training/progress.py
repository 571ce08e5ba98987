"""A training's progress: written to the database as it goes (JobProgress), drawn as bars by the CLI
(ProgressBars), and a finished run's figures as the API shows them (result_metrics)."""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Optional

from django.db import DatabaseError
from django.utils import timezone
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers.utils import logging as transformers_logging

from policies.models import PolicyVersion
from training.rlhf import Progress

logger = logging.getLogger(__name__)

Status = PolicyVersion.Status


# History keys: the spec's names first (what the API, the admin's charts and `jq` read), then the core's own.
SPEC_KEYS = {"rewardMean": "objective/scores", "rewardStd": "objective/scores_std", "kl": "objective/kl", "loss": "loss/total"}
REWARD_MODEL_KEYS = {
    "val_mse": "valMse", "val_mse_baseline": "valMseBaseline", "val_pearson": "pearson", "val_spearman": "spearman",
    "train_loss": "trainLoss", "train_size": "trainSize", "val_size": "valSize", "epochs": "epochs",
    "fit_seconds": "fitSeconds", "validation": "validation", "best_epoch": "bestEpoch",
}
# TrainingResult.evaluation's figures as the API names them (training.rlhf.results). All are written, None when the
# core left one out, so the block has one shape. heldout_prompts is stored as its count; the samples (at most 8) are
# stored for the version's own page and API body, which the list API leaves out to stay light.
EVALUATION_KEYS = {
    "better": "better", "baseline": "baseline", "scored_by": "scoredBy", "n": "n", "win_rate": "winRate",
    "win_rate_ci": "winRateCi", "reward_mean": "rewardMean", "baseline_reward_mean": "baselineRewardMean",
    "reward_diff": "rewardDiff", "reward_diff_ci": "rewardDiffCi", "kl": "kl", "response_length": "responseLength",
    "baseline_response_length": "baselineResponseLength", "split_seed": "splitSeed",
}
EVALUATION_SAMPLE_KEYS = {
    "prompt": "prompt", "response": "response", "baseline_response": "baselineResponse", "score": "score",
    "baseline_score": "baselineScore",
}
MAX_EVALUATION_SAMPLES = 8


class JobProgress:
    """The ``callback(Progress)`` given to the trainer: keeps every PPO step's figures and writes them back.

    Returns True (stop) when the database says the version should not go on: cancel requested, or no longer
    running (the sweep declared it dead, an operator failed it). That check rides on the write itself:
    ``UPDATE ... WHERE status = 'running' AND NOT cancel_requested`` updating no row means stop.
    """

    def __init__(self, version_id: int, *, interval: float, display: Optional["ProgressBars"] = None):
        self.version_id = version_id
        self.interval = interval
        self.display = display
        self.phase = ""
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.reward_model_loss: Optional[float] = None
        self._last_write = -math.inf

    def __call__(self, progress: Progress) -> bool:
        self.phase = progress.phase
        if progress.phase == "policy":
            self.step = progress.step
            self.history.append(history_entry(progress.metrics))
        elif progress.phase == "reward_model":
            self.reward_model_loss = _finite(progress.metrics.get("loss"))
        if self.display is not None:
            self.display(progress)
        if time.monotonic() - self._last_write < self.interval:
            return False
        return self.write()

    def write(self) -> bool:
        """Step, metrics and heartbeat in one short UPDATE; True when the version must stop."""
        self._last_write = time.monotonic()
        try:
            updated = PolicyVersion.objects.filter(
                pk=self.version_id, status=Status.RUNNING, cancel_requested=False,
            ).update(step=self.step, metrics=self.metrics(), heartbeat_at=timezone.now())
        except DatabaseError as exc:  # e.g. SQLite busy past its timeout: a training is not lost for that
            logger.warning("Progress of version %s not written (next step will retry): %s", self.version_id, exc)
            return False
        return not updated

    def metrics(self) -> dict[str, Any]:
        latest = self.history[-1] if self.history else {}
        metrics = {key: latest.get(key) for key in SPEC_KEYS}
        if self.phase:
            metrics["phase"] = self.phase
        if self.reward_model_loss is not None:
            metrics["rewardModelLoss"] = self.reward_model_loss
        metrics["history"] = self.history
        return metrics


def history_entry(stats: dict[str, Any]) -> dict[str, Any]:
    """One PPO step: step, rewardMean, rewardStd, kl, loss, then the core's TRL-style keys (objective/kl, ...)."""
    entry: dict[str, Any] = {"step": stats.get("step")}
    entry.update({key: _finite(stats.get(core_key)) for key, core_key in SPEC_KEYS.items()})
    entry.update({key: _finite(value) for key, value in stats.items() if key not in entry})
    return entry


def result_metrics(result: Any) -> dict[str, Any]:
    """A finished run's figures as the API shows them (``result`` is a TrainingResult)."""
    reward_model = {
        name: _finite(result.reward_model_metrics.get(key))
        for key, name in REWARD_MODEL_KEYS.items() if key in result.reward_model_metrics
    }
    metrics = {
        "rewardMean": _finite(result.final_reward_mean),
        "rewardStd": _finite(result.final_reward_std),
        "kl": _finite(result.final_kl),
        "loss": _finite(result.final_loss),
        "rewardModel": reward_model,
        "durationSeconds": round(result.duration_seconds, 1),
        "warnings": list(result.warnings),
        "history": [history_entry(step) for step in result.history],
    }
    evaluation = evaluation_metrics(result.evaluation)
    if evaluation is not None:
        metrics["evaluation"] = evaluation
    return metrics


def evaluation_metrics(evaluation: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """TrainingResult.evaluation as stored in metrics: camelCase figures, or {"skipped": reason}; None for none
    (a run from before versions were evaluated)."""
    if not isinstance(evaluation, dict):
        return None
    if "skipped" in evaluation:
        return {"skipped": str(evaluation["skipped"])}
    block = {name: _finite_json(evaluation.get(key)) for key, name in EVALUATION_KEYS.items()}
    heldout = evaluation.get("heldout_prompts")
    block["heldoutPrompts"] = len(heldout) if isinstance(heldout, (list, tuple)) else _finite(heldout)
    block["samples"] = [
        {name: _finite_json(sample.get(key)) for key, name in EVALUATION_SAMPLE_KEYS.items()}
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

    def __enter__(self) -> "ProgressBars":
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
