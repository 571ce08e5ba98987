"""Training jobs: the glue between the Django service and the Django-free training core (training.rlhf).

A version's life::

    start_training()            queued     the scored-feedback snapshot, number max+1, django-q2 task enqueued
    tasks.run_policy_version()  running    claimed by a conditional UPDATE, trained in a child process
    run_version() (the child)   trained    or failed / cancelled, each with its reason in ``error``
    sweep_stale_versions()      failed     a running version whose heartbeat stopped (its process died)

Every status change is a conditional UPDATE (``filter(pk=..., status=...).update(...)``), so two processes never
both decide a version's fate, and a finished version never changes again.

The training core (which imports torch) is imported inside the functions that train or estimate: the django-q2
worker that supervises a job, the sweep and the cancel endpoint never need it.

Model paths are stored as the spec's responses show them: relative to the project directory
(``models/my_agent/v15/policy``) when MODELS_DIR lies inside it, absolute otherwise. ``absolute_path`` reads
them back (a relative one resolves against settings.BASE_DIR, whatever the current directory).
"""
from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, connection, transaction
from django.db.models import Max, Q
from django.utils import timezone

from n3site.exceptions import Conflict
from policies.models import Agent, PolicyVersion

from . import selectors

if TYPE_CHECKING:
    from training.rlhf import Progress, TrainingConfig, TrainingEstimate

logger = logging.getLogger(__name__)

Status = PolicyVersion.Status
SWEEP_SCHEDULE_NAME = "n3: fail training jobs whose process died"


# --- configuration and the dry run ------------------------------------------------------------------------------
def resolve_training_config(
    *, agent: Agent, overrides: Optional[dict[str, Any]] = None, preset: Optional[str] = None,
) -> "TrainingConfig":
    """The run's full TrainingConfig. Later layers win, field by field (reward_model_config merges too):

    TrainingConfig defaults with base_model=N3_DEFAULT_BASE_MODEL < agent.default_training_config < preset
    < overrides (snake_case TrainingConfig fields). Raises ConfigError naming a bad field or preset.
    """
    from training.rlhf import PRESETS, ConfigError, TrainingConfig  # noqa: PLC0415  (loads torch)

    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    layers = [
        ("defaults", {"base_model": settings.N3_DEFAULT_BASE_MODEL}),
        (f"agent {agent.name}'s default_training_config", agent.default_training_config or {}),
        (f"preset {preset}", PRESETS[preset] if preset else {}),
        ("overrides", overrides or {}),
    ]
    values: dict[str, Any] = {}
    for name, layer in layers:
        if not isinstance(layer, dict):
            raise ConfigError(f"{name} must be an object of TrainingConfig fields, got {type(layer).__name__}")
        values = _merge(values, layer)
    return TrainingConfig.from_dict(values)


def _merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merge(merged[key], value)
        merged[key] = value
    return merged


def estimate_training(*, agent: Agent, config: "TrainingConfig") -> "TrainingEstimate":
    """The dry run on the agent's scored feedback. Raises InsufficientFeedbackError below the minimum, ConfigError
    when KTO/DPO cannot train on it (as start_training).

    The first estimate for a model/device/batch combination measures a miniature run (seconds on the tiny
    models) and caches the timings under MODELS_DIR; see training.rlhf.estimate.
    """
    from training.rlhf import MIN_FEEDBACK, InsufficientFeedbackError, RLHFTrainer  # noqa: PLC0415

    records = selectors.feedback_records(selectors.scored_feedback(agent=agent))
    if len(records) < MIN_FEEDBACK:  # before loading any model
        raise InsufficientFeedbackError(len(records))
    check_preference_feedback(records=records, config=config)
    return RLHFTrainer(config, models_dir=settings.MODELS_DIR).estimate(records)


def check_preference_feedback(*, records: list[dict], config: "TrainingConfig") -> None:
    """KTO/DPO: raise ConfigError when the feedback yields one class only or too few pairs (the message says how
    many it found), so that the request is refused instead of a job failing later. Other algorithms: nothing."""
    from training.rlhf.data import prepare_feedback  # noqa: PLC0415
    from training.rlhf.preference_data import PREFERENCE_ALGORITHMS, check_preference_data  # noqa: PLC0415

    if config.algorithm in PREFERENCE_ALGORITHMS:
        check_preference_data(prepare_feedback(records).records, config)


# --- queueing ---------------------------------------------------------------------------------------------------
def start_training(
    *, agent: Agent, config: "TrainingConfig", user: Optional[AbstractBaseUser] = None, enqueue: bool = True,
) -> PolicyVersion:
    """Create the agent's next version (queued) on its scored feedback and enqueue its training job.

    Raises InsufficientFeedbackError below the minimum, ConfigError when KTO/DPO cannot train on this feedback (one
    class only, too few pairs). ``enqueue=False`` is for callers that train the version themselves (``manage.py
    train_policy`` in-process: claim_version, then run_version).
    """
    from training.rlhf import MIN_FEEDBACK, InsufficientFeedbackError  # noqa: PLC0415
    from training.rlhf.preference_data import PREFERENCE_ALGORITHMS  # noqa: PLC0415

    with transaction.atomic():
        # Two concurrent starts for one agent must not both take number max+1. On PostgreSQL the agent's row
        # lock serialises them; on SQLite every write transaction is already serial (transaction_mode IMMEDIATE),
        # and Django skips select_for_update there.
        Agent.objects.select_for_update().filter(pk=agent.pk).exists()
        feedback_ids = list(selectors.scored_feedback(agent=agent).values_list("id", flat=True))
        if len(feedback_ids) < MIN_FEEDBACK:
            raise InsufficientFeedbackError(len(feedback_ids))
        if config.algorithm in PREFERENCE_ALGORITHMS:  # read the rows only for them
            records = selectors.feedback_records(selectors.scored_feedback(agent=agent))  # the rows counted above
            check_preference_feedback(records=records, config=config)
        number = (PolicyVersion.objects.filter(agent=agent).aggregate(n=Max("number"))["n"] or 0) + 1
        version = PolicyVersion.objects.create(
            agent=agent, number=number, status=Status.QUEUED, config=config.to_dict(),
            feedback_count=len(feedback_ids), feedback_snapshot=feedback_ids, max_steps=config.max_steps,
            created_by=user if user is not None and user.is_authenticated else None,
        )
        if enqueue:
            if _broker_is_this_database():
                # The task row commits with the version or not at all: no queued version without its job.
                _enqueue(version)
            else:
                # Redis (or sync mode): a worker must not pick the job up before the version is committed.
                transaction.on_commit(lambda: _enqueue(version))
    return version


def _broker_is_this_database() -> bool:
    q_cluster = settings.Q_CLUSTER
    return bool(q_cluster.get("orm")) and not q_cluster.get("sync")


def _enqueue(version: PolicyVersion) -> None:
    from django_q.tasks import async_task  # noqa: PLC0415

    try:
        task_id = async_task(
            "training.tasks.run_policy_version", version.pk,
            task_name=f"train {version.agent.name} {version.version} ({version.policy_id})", group="training",
        )
    except Exception as exc:
        # Not left queued forever: the reason is on the version, the traceback in the log.
        logger.exception("Could not enqueue the training job of %s", version)
        _finish(version.pk, Status.FAILED, from_status=Status.QUEUED, error=f"Could not enqueue the training job: {exc}")
        raise
    PolicyVersion.objects.filter(pk=version.pk).update(task_id=task_id)
    version.task_id = task_id


def cancel_training(*, version: PolicyVersion) -> PolicyVersion:
    """Queued: cancelled at once (its job, when a worker gets to it, finds nothing to do). Running: the flag
    ``cancel_requested`` is set; the training stops at its next step (the job stops the process if it does not
    within N3_CANCEL_GRACE seconds). Finished: raises Conflict."""
    pk = version.pk
    cancelled = _finish(pk, Status.CANCELLED, from_status=Status.QUEUED, error="Cancelled before it started.")
    if not cancelled:
        requested = PolicyVersion.objects.filter(pk=pk, status=Status.RUNNING).update(cancel_requested=True)
        if not requested:
            version.refresh_from_db()
            raise Conflict(
                f"{version.agent.name} {version.version} is already {version.status}; "
                "only queued or running versions can be cancelled."
            )
    version.refresh_from_db()
    return version


# --- paths ------------------------------------------------------------------------------------------------------
def version_dir(agent_name: str, number: int) -> Path:
    """MODELS_DIR/<agent>/v<N>/: the one place that lays out where a version's files live."""
    return Path(settings.MODELS_DIR) / agent_name / f"v{number}"


# What a training writes besides training.log (training.rlhf.trainer's POLICY_DIR, REWARD_MODEL_DIR and their
# temporary names, RESULTS_FILE; tests/test_faults.py checks they agree). Spelt out here so that the worker and the
# sweep, which never import the training core (torch), can clean up after a training that died.
UNFINISHED_OUTPUTS = ("policy", "reward_model", ".policy.tmp", ".reward_model.tmp")
RESULTS_FILE = "training_results.json"


def remove_unfinished_outputs(*, agent_name: str, number: int) -> list[str]:
    """Remove the model directories a training left when its process died (SIGKILL, OOM, power loss): a killed
    process cannot remove them itself, and no later run trains into this version's directory. Keeps training.log;
    never touches a directory that training_results.json marks finished. Returns the names removed."""
    directory = version_dir(agent_name, number)
    if (directory / RESULTS_FILE).exists():
        return []
    removed = []
    for name in UNFINISHED_OUTPUTS:
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    if removed:
        logger.info("Removed the unfinished outputs of %s v%s: %s", agent_name, number, ", ".join(removed))
    return removed


def stored_path(path: Path | str) -> str:
    """How a model path is stored and shown (see the module docstring)."""
    path = Path(path).resolve()
    base = Path(settings.BASE_DIR).resolve()
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def absolute_path(stored: str) -> Path:
    """A stored model path as an absolute path (relative ones are relative to the project directory)."""
    path = Path(stored)
    return path if path.is_absolute() else Path(settings.BASE_DIR) / path


# --- running ----------------------------------------------------------------------------------------------------
def claim_version(*, version_id: int) -> bool:
    """queued -> running, atomically: True for exactly one caller, False if the version is not queued."""
    now = timezone.now()
    return bool(
        PolicyVersion.objects.filter(pk=version_id, status=Status.QUEUED)
        .update(status=Status.RUNNING, started_at=now, heartbeat_at=now)
    )


def run_version(*, version_id: int, progress: bool = False) -> PolicyVersion:
    """Train ``version_id`` in this process and record the outcome; returns the version as it ended.

    Used by the child process the job starts (``manage.py train_policy --version-id N``) and by the CLI's
    in-process mode (``progress=True`` draws progress bars). A queued version is claimed first; a running one is
    assumed to be this process's to train (the job claimed it). Step, metrics and heartbeat are written in short
    autocommit UPDATEs at most every N3_METRICS_INTERVAL seconds (SQLite has one writer at a time: never hold a
    transaction open across steps), and the training stops at its next step once the version is no longer
    running or has ``cancel_requested``.

    TrainingCancelled, Ctrl-C and SIGTERM (which the command turns into KeyboardInterrupt) end the version as
    cancelled; any other exception as failed with its message (the traceback goes to the log). KeyboardInterrupt
    is re-raised after it is recorded.

    Under a launcher (N3_TRAINING_LAUNCHER="accelerate launch ...": one process per GPU, training.rlhf.distributed)
    only rank 0 does all of the above; the other ranks train alongside it and write nothing (train_replica).
    """
    from training.rlhf import RLHFError, RLHFTrainer, TrainingCancelled, TrainingConfig, distributed  # noqa: PLC0415

    version = PolicyVersion.objects.select_related("agent").get(pk=version_id)
    if not distributed.setup(version.config.get("device", "auto")).is_main_process:
        return train_replica(version)
    if version.status == Status.QUEUED and claim_version(version_id=version_id):
        version.refresh_from_db()
    elif version.status == Status.QUEUED:  # claimed by someone else a moment ago
        raise Conflict(f"{version.agent.name} {version.version} was just claimed by another process.")
    if version.status != Status.RUNNING:
        raise Conflict(f"{version.agent.name} {version.version} is {version.status}; there is nothing to train.")

    job = JobProgress(version_id, interval=settings.N3_METRICS_INTERVAL, display=ProgressBars() if progress else None)
    try:
        with job.display or nullcontext():
            config = TrainingConfig.from_dict(version.config)
            result = RLHFTrainer(config, models_dir=settings.MODELS_DIR).train(
                selectors.snapshot_records(version=version), version_dir(version.agent.name, version.number), job,
            )
    except TrainingCancelled as exc:
        _finish(version_id, Status.CANCELLED, error=str(exc), step=job.step, metrics=job.metrics())
    except KeyboardInterrupt:
        if distributed.is_distributed() and not PolicyVersion.objects.filter(pk=version_id, cancel_requested=True).exists():
            # Not a cancel: the launcher stops every process when one of them fails (torch elastic sends SIGTERM).
            _finish(
                version_id, Status.FAILED, step=job.step, metrics=job.metrics(),
                error=f"Stopped at PPO step {job.step} of {version.max_steps} by SIGTERM or Ctrl-C, usually the launcher "
                      "stopping every training process because another one failed (its traceback is in the job's log).",
            )
            raise
        _finish(
            version_id, Status.CANCELLED, step=job.step, metrics=job.metrics(),
            error=f"Interrupted (Ctrl-C or SIGTERM) at PPO step {job.step} of {version.max_steps}; partial outputs were removed.",
        )
        raise
    except Exception as exc:
        logger.exception("Training %s failed", version)
        error = str(exc) if isinstance(exc, RLHFError) else f"{type(exc).__name__}: {exc}"
        _finish(version_id, Status.FAILED, error=error, step=job.step, metrics=job.metrics())
    else:
        _finish(
            version_id, Status.TRAINED, error="", step=result.training_steps,
            model_path=stored_path(result.model_path), reward_model_path=stored_path(result.reward_model_path),
            metrics=result_metrics(result),
        )
    version.refresh_from_db()
    return version


def train_replica(version: PolicyVersion) -> PolicyVersion:
    """A launcher's rank > 0: train the version alongside rank 0, which alone records progress and the outcome.

    Reads the version and its feedback snapshot, writes nothing (no row, no file). A cancel reaches it through
    rank 0 (the trainer broadcasts rank 0's decision at every step) and ends it quietly; any failure propagates,
    so this process exits non-zero and the launcher stops the others.
    """
    from training.rlhf import RLHFTrainer, TrainingCancelled, TrainingConfig  # noqa: PLC0415

    if version.status not in (Status.QUEUED, Status.RUNNING):  # rank 0 finds nothing to train either
        return version
    try:
        RLHFTrainer(TrainingConfig.from_dict(version.config), models_dir=settings.MODELS_DIR).train(
            selectors.snapshot_records(version=version), version_dir(version.agent.name, version.number),
        )
    except TrainingCancelled:
        pass
    return version


def _finish(version_id: int, status: str, *, from_status: str = Status.RUNNING, **fields: Any) -> bool:
    """from_status -> status (a final one), only if the version is still in from_status."""
    if "error" in fields:
        # Errors quote exceptions and a dead process's output, which may hold NUL: PostgreSQL refuses it in text
        # (the UPDATE would raise and leave the version running until the sweep), so it is written escaped.
        fields["error"] = str(fields["error"]).replace("\x00", "\\x00")
    return bool(
        PolicyVersion.objects.filter(pk=version_id, status=from_status)
        .update(status=status, finished_at=timezone.now(), **fields)
    )


def fail_running_version(*, version_id: int, error: str, status: str = Status.FAILED) -> bool:
    """What the job records when its child process ended without recording an outcome itself."""
    return _finish(version_id, status, error=error)


def heartbeat(*, version_id: int) -> bool:
    """Mark a running version alive now; False when it is no longer running."""
    return bool(PolicyVersion.objects.filter(pk=version_id, status=Status.RUNNING).update(heartbeat_at=timezone.now()))


@contextmanager
def keep_alive(*, version_id: int, every: Optional[float] = None) -> Iterator[None]:
    """Beat the version's heartbeat from a background thread while the block runs.

    For the CLI's in-process training, which has no supervising job: without it a long stretch without progress
    callbacks (loading a large model, saving it) would look like a dead process to the sweep.
    """
    every = every or max(1.0, settings.N3_HEARTBEAT_TIMEOUT / 4)
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(every):
                try:
                    heartbeat(version_id=version_id)
                except DatabaseError as exc:  # a busy database: the next beat will do
                    logger.warning("Heartbeat of version %s not written: %s", version_id, exc)
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name=f"n3-heartbeat-{version_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --- progress: the training core's callback --------------------------------------------------------------------
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

    def __call__(self, progress: "Progress") -> bool:
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
        from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: PLC0415
        from transformers.utils import logging as transformers_logging  # noqa: PLC0415

        transformers_logging.disable_progress_bar()  # its "Loading weights" bars would break ours
        self._redirect = logging_redirect_tqdm()
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._close()
        self._redirect.__exit__(*exc_info)

    def __call__(self, progress: "Progress") -> None:
        from tqdm import tqdm  # noqa: PLC0415

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


# --- the dead-worker sweep --------------------------------------------------------------------------------------
def sweep_stale_versions() -> int:
    """Fail the versions whose training can no longer finish; returns how many.

    - running, heartbeat older than N3_HEARTBEAT_TIMEOUT: the process training it died (a hard-killed worker
      leaves no django-q2 Failure, and the Redis broker never re-delivers: this is the safety net);
    - queued, but its django-q2 task already has a result: the job ended without starting the training;
    - queued with the ORM broker, but its task is neither waiting in the queue nor finished: deleted;
    - queued without a task id for longer than the heartbeat timeout: never handed to a worker (the process
      that queued it stopped between the commit and the enqueue).
    """
    now = timezone.now()
    limit = settings.N3_HEARTBEAT_TIMEOUT
    cutoff = now - timedelta(seconds=limit)
    swept = 0
    stale = PolicyVersion.objects.select_related("agent").filter(status=Status.RUNNING).filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
    )
    for version in stale:
        last = version.heartbeat_at or version.started_at
        error = (
            f"The training process stopped without a word: no heartbeat for {int((now - last).total_seconds())} s "
            f"(limit N3_HEARTBEAT_TIMEOUT={limit} s). Its worker was probably killed (out of memory, a restart)."
        )
        # Conditional on the heartbeat seen: a process that beats again in between keeps its version.
        failed = PolicyVersion.objects.filter(
            pk=version.pk, status=Status.RUNNING, heartbeat_at=version.heartbeat_at,
        ).update(status=Status.FAILED, error=error, finished_at=now)
        if failed:
            remove_unfinished_outputs(agent_name=version.agent.name, number=version.number)
        swept += failed
    for version, error in _lost_queued_versions(cutoff):
        swept += _finish(version.pk, Status.FAILED, from_status=Status.QUEUED, error=error)
    if swept:
        logger.warning("Marked %d training job(s) failed: their process or task is gone", swept)
    return swept


def _lost_queued_versions(cutoff) -> Iterator[tuple[PolicyVersion, str]]:
    from django_q.models import OrmQ, Task  # noqa: PLC0415

    queued = list(PolicyVersion.objects.filter(status=Status.QUEUED).select_related("agent"))
    if not queued:
        return
    results = dict(Task.objects.filter(id__in=[v.task_id for v in queued if v.task_id]).values_list("id", "result"))
    waiting: Optional[set[str]] = None
    if _broker_is_this_database():
        waiting = {q.task_id() for q in OrmQ.objects.all()}
        if any(str(task_id).startswith("*") for task_id in waiting):
            waiting = None  # a payload we cannot read (another SECRET_KEY): cannot tell which tasks wait
    for version in queued:
        if version.task_id in results:
            first_line = str(results[version.task_id] or "").strip().splitlines()[:1]
            yield version, "Its job ended without starting the training" + (f": {first_line[0]}" if first_line else ".")
        elif version.task_id and waiting is not None and version.task_id not in waiting:
            yield version, "Its job is no longer in the queue (deleted?), so it will never run."
        elif not version.task_id and version.queued_at < cutoff:
            yield version, "It was never handed to a worker (the process that queued it stopped first)."


def ensure_sweep_schedule(*, using: str = "default") -> None:
    """The django-q2 Schedule that runs the sweep every minute (idempotent: one row, found by name)."""
    from django_q.models import Schedule  # noqa: PLC0415

    Schedule.objects.using(using).update_or_create(
        name=SWEEP_SCHEDULE_NAME,
        defaults={
            "func": "training.tasks.sweep_stale_versions", "schedule_type": Schedule.MINUTES, "minutes": 1,
            "repeats": -1,
        },
    )
