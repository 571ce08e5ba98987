"""The training process: train one queued version and record how it ended.

Imports the training core (torch): only the child process a job starts (``manage.py train_policy --version-id N``)
and the CLI's in-process mode import this module; the worker that supervises the child never does.
"""
from __future__ import annotations

import logging

from django.conf import settings

from n3site.exceptions import Conflict
from policies.models import PolicyVersion
from training.rlhf import RLHFError, RLHFTrainer, TrainingCancelled, TrainingConfig, distributed

from . import selectors
from .files import stored_path, version_dir
from .jobs import claim_version, end_version
from .progress import JobProgress, ProgressBars, result_metrics

logger = logging.getLogger(__name__)

Status = PolicyVersion.Status


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
        with job:  # leaving it stores the steps not yet written, however the run ends
            config = TrainingConfig.from_dict(version.config)
            result = RLHFTrainer(config, models_dir=settings.MODELS_DIR).train(
                selectors.snapshot_records(version=version), version_dir(version.agent.name, version.number), job,
            )
    except TrainingCancelled as exc:
        end_version(version_id, Status.CANCELLED, error=str(exc), step=job.step, metrics=job.metrics())
    except KeyboardInterrupt:
        if distributed.is_distributed() and not PolicyVersion.objects.filter(pk=version_id, cancel_requested=True).exists():
            # Not a cancel: the launcher stops every process when one of them fails (torch elastic sends SIGTERM).
            end_version(
                version_id, Status.FAILED, step=job.step, metrics=job.metrics(),
                error=f"Stopped at PPO step {job.step} of {version.max_steps} by SIGTERM or Ctrl-C, usually the launcher "
                      "stopping every training process because another one failed (its traceback is in the job's log).",
            )
            raise
        end_version(
            version_id, Status.CANCELLED, step=job.step, metrics=job.metrics(),
            error=f"Interrupted (Ctrl-C or SIGTERM) at PPO step {job.step} of {version.max_steps}; partial outputs were removed.",
        )
        raise
    except Exception as exc:
        logger.exception("Training %s failed", version)
        error = str(exc) if isinstance(exc, RLHFError) else f"{type(exc).__name__}: {exc}"
        end_version(version_id, Status.FAILED, error=error, step=job.step, metrics=job.metrics())
    else:
        job.store_steps(result.history)
        end_version(
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
    if version.status not in (Status.QUEUED, Status.RUNNING):  # rank 0 finds nothing to train either
        return version
    try:
        RLHFTrainer(TrainingConfig.from_dict(version.config), models_dir=settings.MODELS_DIR).train(
            selectors.snapshot_records(version=version), version_dir(version.agent.name, version.number),
        )
    except TrainingCancelled:
        pass
    return version
