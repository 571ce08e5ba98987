"""The training process: train one queued version and record how it ended.

Imports the training core (torch): only the child process a job starts (``manage.py train_policy --version-id N``)
and the CLI's in-process mode import this module; the worker that supervises the child never does.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from django.conf import settings
from django.db import transaction

from n3_server.rlhf import Progress, RLHFError, RLHFTrainer, TrainingCancelled, TrainingConfig, distributed
from n3site.exceptions import Conflict, NotFound
from policies.models import PolicyVersion

from .. import selectors
from ..deployment import promote_version
from ..files import (
    absolute_path,
    deleted_during_training,
    remove_version_files,
    set_aside_leftover,
    stored_path,
    version_dir,
)
from .progress import JobProgress, ProgressBars, result_metrics
from .transitions import INTERRUPTED_BY_SHUTDOWN, claim_version, end_version

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

    When it starts, ``feedback_count`` becomes the number of records it trains on (rows deleted or unscored since
    it was queued are not in it). TrainingCancelled ends the version cancelled; SIGTERM (which the command turns
    into KeyboardInterrupt) cancelled if a cancel was requested, otherwise failed "Interrupted by shutdown"; Ctrl-C
    in the CLI's in-process mode (``progress=True``) is its user's cancel. Any other exception fails it with its
    message (the traceback goes to the log); a deleted version directory fails it at the next progress report.
    KeyboardInterrupt is re-raised after it is recorded. A version deleted while it trains takes the files it
    wrote since with it.

    Under a launcher (N3_TRAINING_LAUNCHER="accelerate launch ...": one process per GPU, n3_server.rlhf.distributed)
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

    directory = version_dir(version.agent.name, version.number)
    job = JobProgress(version_id, interval=settings.N3_METRICS_INTERVAL, display=ProgressBars() if progress else None)
    try:
        with job:  # leaving it stores the steps not yet written, however the run ends
            config = starting_point(version)
            records = selectors.snapshot_records(version=version)
            PolicyVersion.objects.filter(pk=version_id).update(feedback_count=len(records))
            set_aside_leftover(agent_name=version.agent.name, number=version.number)
            result = RLHFTrainer(config, models_dir=settings.MODELS_DIR).train(
                records, directory, watching(version_id, directory, job),
            )
    except TrainingCancelled as exc:
        end_version(version_id, Status.CANCELLED, error=str(exc), step=job.step, metrics=job.metrics())
    except KeyboardInterrupt:
        cancelled = PolicyVersion.objects.filter(pk=version_id, cancel_requested=True).exists()
        where = f"at PPO step {job.step} of {version.max_steps}"
        if cancelled or (progress and not distributed.is_distributed()):  # a cancel, or Ctrl-C at the terminal
            end_version(version_id, Status.CANCELLED, step=job.step, metrics=job.metrics(),
                        error=f"Interrupted (Ctrl-C or SIGTERM) {where}; partial outputs were removed.")
        elif distributed.is_distributed():
            # Not a cancel: the launcher stops every process when one of them fails (torch elastic sends SIGTERM).
            end_version(
                version_id, Status.FAILED, step=job.step, metrics=job.metrics(),
                error=f"Stopped {where} by SIGTERM or Ctrl-C, usually the launcher stopping every training process "
                      "because another one failed (its traceback is in the job's log).",
            )
        else:
            end_version(version_id, Status.FAILED, step=job.step, metrics=job.metrics(),
                        error=f"{INTERRUPTED_BY_SHUTDOWN} (SIGTERM) {where}; partial outputs were removed.")
        _forget_if_deleted(version)
        raise
    except Exception as exc:
        logger.exception("Training %s failed", version)
        error = str(exc) if isinstance(exc, RLHFError) else f"{type(exc).__name__}: {exc}"
        end_version(version_id, Status.FAILED, error=error, step=job.step, metrics=job.metrics())
    else:
        job.store_steps(result.history)
        # "trained" and the promotion decision commit together: a process killed in between (waiting for SQLite's
        # write lock inside the promotion) leaves the version running, for the sweep to fail with its reason, never
        # trained with its requested promotion silently lost
        with transaction.atomic():
            if end_version(
                version_id, Status.TRAINED, error="", step=result.training_steps,
                model_path=stored_path(result.model_path), reward_model_path=stored_path(result.reward_model_path),
                metrics=result_metrics(result),
            ):
                promote_if_asked(version_id=version_id, config=config, evaluation=result.evaluation)
    _forget_if_deleted(version)
    return version


def starting_point(version: PolicyVersion) -> TrainingConfig:
    """The version's TrainingConfig as the trainer takes it: with init_from "vN", base_model is vN's policy/ (so the
    policy starts from vN's weights and vN is its KL reference and evaluation baseline), and the reward model keeps
    the family's base model (a fresh fit on all scored feedback). Raises StartingPointGone when vN is no longer a
    trained version."""
    config = TrainingConfig.from_dict(version.config)
    if config.init_from == "base":
        return config
    start = PolicyVersion.objects.filter(
        agent_id=version.agent_id, number=int(config.init_from[1:]), status=Status.TRAINED
    ).exclude(model_path="").first()
    if start is None:
        raise StartingPointGone(f"{config.init_from}, which {version.version} starts from, is no longer a trained "
                                "version (deleted?)")
    reward_model = dataclasses.asdict(config.reward_model_config)
    reward_model["base_model"] = reward_model["base_model"] or config.base_model
    return config.replace(base_model=str(absolute_path(start.model_path)), reward_model_config=reward_model)


class StartingPointGone(RLHFError):
    """The version a run starts from was deleted or is no longer trained."""


def promotion(config: TrainingConfig, evaluation: Optional[dict[str, Any]]) -> tuple[bool, str]:
    """Whether a trained version with this evaluation block is promoted under config.promote, and the note why."""
    if config.promote == "never":
        return False, ""
    if config.promote == "always":
        return True, "promoted: promote 'always'"
    if not evaluation or "skipped" in evaluation:
        reason = (evaluation or {}).get("skipped", "eval_fraction is 0")
        return False, f"not promoted: no evaluation ({reason})"
    low, high = evaluation["win_rate_ci"]
    rate = f"win rate {evaluation['win_rate']:.2f} [{low:.2f}, {high:.2f}]"
    if not evaluation["better"]:
        # The trainer's verdict says why in words (older versions have none: the interval alone decided then)
        verdict = evaluation.get("verdict") or f"{rate} does not beat {evaluation['baseline']} (its interval is not " \
                                                "above 0.5)"
        return False, f"not promoted: {verdict}"
    if evaluation["kl"] > config.promote_max_kl:
        return False, f"not promoted: KL {evaluation['kl']:.2f} above the budget {config.promote_max_kl:g}"
    return True, (f"promoted: {rate} beats {evaluation['baseline']}, "
                  f"KL {evaluation['kl']:.2f} within the budget {config.promote_max_kl:g}")


def promote_if_asked(*, version_id: int, config: TrainingConfig, evaluation: Optional[dict[str, Any]]) -> None:
    """Apply config.promote to a version that just trained: promoted, it becomes its agent's active version and takes
    all of its traffic; either way the reason is its promotion_note. "if_better" replaces only the version it was
    compared with (init_from), or no active version at all."""
    promote, note = promotion(config, evaluation)
    if not note:
        return
    version = PolicyVersion.objects.select_related("agent__active_version").filter(pk=version_id).first()
    if version is None:  # deleted since it ended
        return
    active = version.agent.active_version
    if promote and config.promote == "if_better" and active is not None and active.version != config.init_from:
        # Better than what it was compared with, which is not what answers now: no evidence it beats that.
        compared = config.init_from if config.init_from != "base" else "its base model"
        promote, note = False, f"not promoted: it was compared with {compared}, but {active.version} is active now"
    if promote:
        try:
            promote_version(agent_name=version.agent.name, version=version.version, note=note)
        except (Conflict, NotFound) as exc:  # deleted or no longer trained since it ended
            logger.info("%s was not promoted: %s", version, exc)
            return
    else:
        PolicyVersion.objects.filter(pk=version_id).update(promotion_note=note)
    logger.info("%s: %s", version, note)


def watching(version_id: int, directory: Path, callback: Callable[[Progress], bool]) -> Callable[[Progress], bool]:
    """``callback``, after a check that the version's directory (made before the first report) still exists: a
    run whose directory was deleted fails at its next report, not when it saves after its last step. (Deleted
    with its version or agent, the directory is gone because the run is: it stops as a cancelled one does.)"""

    def report(progress: Progress) -> bool:
        if not directory.is_dir():
            if not PolicyVersion.objects.filter(pk=version_id, status=Status.RUNNING).exists():
                return True
            raise VersionDirectoryDeleted(deleted_during_training(directory))
        return callback(progress)

    return report


class VersionDirectoryDeleted(RLHFError):
    """The version's directory vanished while it trained."""


def _forget_if_deleted(version: PolicyVersion) -> None:
    """Reload ``version``; if it was deleted while it trained, remove what the training wrote since."""
    try:
        version.refresh_from_db()
    except PolicyVersion.DoesNotExist:
        logger.info("%s was deleted while it trained; its files are removed", version)
        remove_version_files(agent_name=version.agent.name, number=version.number)


def train_replica(version: PolicyVersion) -> PolicyVersion:
    """A launcher's rank > 0: train the version alongside rank 0, which alone records progress and the outcome.

    Reads the version and its feedback snapshot, writes nothing (no row, no file). A cancel reaches it through
    rank 0 (the trainer broadcasts rank 0's decision at every step) and ends it quietly; any failure propagates,
    so this process exits non-zero and the launcher stops the others.
    """
    if version.status not in (Status.QUEUED, Status.RUNNING):  # rank 0 finds nothing to train either
        return version
    try:
        RLHFTrainer(starting_point(version), models_dir=settings.MODELS_DIR).train(
            selectors.snapshot_records(version=version), version_dir(version.agent.name, version.number),
        )
    except TrainingCancelled:
        pass
    return version
