"""django-q2 tasks: a version's training job (started, supervised and recorded here), and the other model work the
web queues (a dry run's timing measurement, a version's samples, a blind comparison's responses), each in a child
process (training.jobs.processes).

The job starts ``manage.py train_policy --version-id N`` (through N3_TRAINING_LAUNCHER so ``accelerate launch`` can
replace the plain launch), watches it (heartbeat, cancel, timeout, progress, its directory), and records what
happened if the child could not (killed, crashed). A stopping cluster starts no training (training.jobs.worker).

Nothing here imports the training core (torch): the worker stays small.
"""
from __future__ import annotations

import logging
import math
import shlex
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from n3_server.rlhf import timing
from policies.models import PolicyVersion

from . import calibration, comparisons, samples, services
from .files import deleted_during_training, remove_unfinished_outputs, remove_version_files, version_dir
from .jobs import worker
from .jobs.processes import (
    KILL_AFTER_SECONDS,
    OutputTail,
    child_environment,
    describe_exit,
    run_manage_child,
    signal_group,
    stop,
    training_command,
)
from .jobs.sweep import sweep_stale_versions as sweep
from .jobs.transitions import INTERRUPTED_BY_SHUTDOWN, claim_version, end_version, heartbeat, reconnecting

logger = logging.getLogger(__name__)

Status = PolicyVersion.Status
POLL_SECONDS = 1.0


def run_policy_version(version_id: int) -> str:
    """Claim the version, train it in a child process, and make sure it ends trained, failed or cancelled.

    A version that is not queued any more (claimed by another delivery of this task, cancelled) is left alone:
    a training never runs twice. In a stopping cluster the version stays queued, its job enqueued again for the
    next cluster. Returns a one-line outcome (django-q2 stores it as the task's result).
    """
    worker.state.busy = True
    try:
        outcome = _run(version_id)
    finally:
        worker.state.busy = False
    if worker.state.sigterm:
        worker.die_of_sigterm()
    return outcome


def _run(version_id: int) -> str:
    if worker.is_stopping():
        return enqueue_again(version_id)
    if not claim_version(version_id=version_id):
        status = PolicyVersion.objects.filter(pk=version_id).values_list("status", flat=True).first()
        logger.info("Version %s not trained by this task: it is %s, not queued", version_id, status or "deleted")
        return f"not run: version {version_id} is {status or 'deleted'}"

    version = PolicyVersion.objects.select_related("agent").filter(pk=version_id).first()
    if version is None:
        return f"not run: version {version_id} was deleted"
    if worker.state.sigterm:  # between the check above and the claim
        end_version(version_id, Status.FAILED, error=f"{INTERRUPTED_BY_SHUTDOWN}: the worker got SIGTERM.")
        return f"{version.agent.name} {version.version}: failed"
    command = training_command(version_id)
    logger.info("Training %s: %s", version, shlex.join(command))
    try:
        # Its own process group: stopping it stops what it started too (a launcher's per-GPU processes).
        child = subprocess.Popen(
            command, cwd=settings.BASE_DIR, env=child_environment(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
            start_new_session=True,
        )
    except OSError as exc:  # a launcher that does not exist, no memory to fork
        end_version(
            version_id, Status.FAILED, error=f"Could not start the training process ({shlex.join(command)}): {exc}",
        )
        return f"{version.agent.name} {version.version}: failed"
    output = OutputTail(child.stdout, prefix=f"[{version.agent.name} {version.version}] ")
    try:
        stopped_because = supervise(version_id, child)
    except BaseException:
        # The supervisor itself failed (e.g. the database went away): do not leave an unsupervised child.
        logger.exception("Supervising %s failed; stopping its training process", version)
        stop(child)
        end_version(version_id, Status.FAILED, error="The job supervising the training failed; see the worker log.")
        raise
    finally:
        if not output.join(timeout=5):
            # The child is gone but something it started still holds its output open: stop its process group
            # (which still exists while such a member lives, so its id cannot name anyone else).
            logger.warning("Stopping processes left behind by the training process of %s", version)
            signal_group(child, signal.SIGKILL)
            output.join(timeout=5)
    return _record_outcome(version, child, stopped_because, output)


def _record_outcome(version: PolicyVersion, child: subprocess.Popen, stopped_because: Optional[str],
                    output: OutputTail) -> str:
    version_id = version.pk
    try:
        reconnecting(version.refresh_from_db)
    except PolicyVersion.DoesNotExist:
        # Deleted while it trained: its files go too (what the child wrote after the delete removed them).
        remove_version_files(agent_name=version.agent.name, number=version.number)
        logger.info("Training %s stopped: the version was deleted", version)
        return f"{version.agent.name} {version.version}: deleted"
    if version.status == Status.RUNNING:  # the child could not record an outcome itself
        if stopped_because == "shutdown":
            end_version(version_id, Status.FAILED, error=f"{INTERRUPTED_BY_SHUTDOWN}: the worker got SIGTERM.")
        elif stopped_because == "cancel":
            end_version(
                version_id, Status.CANCELLED,
                error=f"Cancelled: the training process did not stop within N3_CANCEL_GRACE={settings.N3_CANCEL_GRACE} "
                      "s and was stopped.",
            )
        else:
            tail = output.text()
            end_version(
                version_id, Status.FAILED,
                error=f"The training process {describe_exit(child.returncode)}."
                      + (f"\nLast output:\n{tail}" if tail else ""),
            )
        version.refresh_from_db()
    if version.status != Status.TRAINED:
        # A killed child leaves its half-written model directories behind (one that exited cleanly removed them).
        remove_unfinished_outputs(agent_name=version.agent.name, number=version.number)
    else:
        _record_timings(version)
    logger.info("Training %s ended %s (exit code %s)", version, version.status, child.returncode)
    return f"{version.agent.name} {version.version}: {version.status}"


def _record_timings(version: PolicyVersion) -> None:
    """A trained version's timings become its configuration's calibration (training.calibration): the dry runs of
    that configuration answer "measured" without a measurement of their own. Never fails the job."""
    try:
        if digest := calibration.record_run_timings(version=version):
            logger.info("Timings of %s filed as the calibration %s", version, digest)
    except Exception:
        logger.exception("Could not file the timings of %s as a calibration", version)


def sweep_stale_versions() -> int:
    """The sweep as a task: what the django-q2 Schedule of earlier releases runs (the workers sweep in a thread
    now, training.jobs.sweep.SweepThread; migrate deletes that Schedule)."""
    return sweep()


def enqueue_again(version_id: int) -> str:
    """A stopping worker's answer to a job: the version, if still queued, gets a new job for the next cluster
    (this one's result is stored and its queue row acknowledged as this task returns)."""
    version = PolicyVersion.objects.select_related("agent").filter(pk=version_id, status=Status.QUEUED).first()
    if version is None:
        return f"not run: the cluster is stopping, and version {version_id} is not queued"
    services._enqueue(version)  # (the one place that names and enqueues a version's job)
    logger.info("%s not started: this cluster is stopping; queued again as task %s", version, version.task_id)
    return f"not run: the cluster is stopping; {version.agent.name} {version.version} queued again ({version.task_id})"


# --- the child process ------------------------------------------------------------------------------------------
def supervise(version_id: int, child: subprocess.Popen) -> Optional[str]:
    """Wait for the child; meanwhile beat the heartbeat and stop the child when it must stop.

    Returns why we stopped it, or None when it exited by itself: "cancel"; "gone" (no longer running: decided by
    the child, the sweep or an operator, or deleted); "timeout" (N3_TRAINING_TIMEOUT); "stalled" (no progress for
    N3_STALL_TIMEOUT s: a hung process); "directory" (its version directory was deleted); "shutdown" (this
    worker got SIGTERM). A cancel is first left to the child (its progress callback sees the flag between steps
    and records the version cancelled); only a child still running N3_CANCEL_GRACE seconds later is terminated.
    A terminated child that has not exited KILL_AFTER_SECONDS later is killed. While the database does not answer,
    the child's progress cannot be written either: its silence is counted from the database's return.
    """
    started = time.monotonic()
    beat_every = max(1.0, settings.N3_HEARTBEAT_TIMEOUT / 4)
    next_beat = started
    asked_to_stop: Optional[float] = None  # when we first saw that the child should stop by itself
    stopped_because: Optional[str] = None
    terminated: Optional[float] = None
    directory = None  # the version's directory, once the training has made it
    database_away_at = -math.inf  # when a read of the version last failed
    while child.poll() is None:
        now = time.monotonic()
        state = _read_state(version_id) if stopped_because is None else None
        if state is None and stopped_because is None:
            database_away_at = now
        if worker.state.sigterm and stopped_because is None:
            # The child records "interrupted by shutdown" (it may have had the same SIGTERM already).
            stopped_because = "shutdown"
        elif state is not None:
            status, cancel_requested, progress_at, number, agent_name = state
            if directory is None and agent_name and version_dir(agent_name, number).is_dir():
                directory = version_dir(agent_name, number)
            if status != Status.RUNNING or cancel_requested:
                # Cancel requested, or the version is decided: recorded by the child, which is now exiting, or
                # failed by the sweep or an operator, or deleted (the child's next progress report stops it).
                asked_to_stop = asked_to_stop or now
                if now - asked_to_stop >= settings.N3_CANCEL_GRACE:
                    stopped_because = "cancel" if status == Status.RUNNING else "gone"
            elif now - started >= settings.N3_TRAINING_TIMEOUT:
                # Recorded before the child hears of it: it would otherwise record itself as interrupted.
                stopped_because = _fail_running(
                    version_id, "timeout",
                    f"Training ran longer than N3_TRAINING_TIMEOUT={settings.N3_TRAINING_TIMEOUT} s and was stopped.",
                )
            elif (silent := min(_seconds_since(progress_at), now - database_away_at)) >= settings.N3_STALL_TIMEOUT:
                stopped_because = _fail_running(
                    version_id, "stalled",
                    f"The training process made no progress for {int(silent)} s (limit N3_STALL_TIMEOUT="
                    f"{settings.N3_STALL_TIMEOUT} s) and was stopped: it hung (a stopped process, a deadlock, a stuck "
                    "device or file system).",
                )
            elif directory is not None and not directory.is_dir():
                stopped_because = _fail_running(version_id, "directory", deleted_during_training(directory))
            elif now >= next_beat and _beat(version_id):
                next_beat = now + beat_every
        if stopped_because is not None:
            if terminated is None:
                logger.warning("Stopping the training process of version %s (%s)", version_id, stopped_because)
                # The child turns SIGTERM into KeyboardInterrupt: it removes partial outputs and records itself.
                signal_group(child, signal.SIGTERM)
                signal_group(child, signal.SIGCONT)  # a stopped (hung) process must run to handle it
                terminated = now
            elif now - terminated >= KILL_AFTER_SECONDS:
                signal_group(child, signal.SIGKILL)
        time.sleep(POLL_SECONDS)
    return stopped_because


def _seconds_since(moment) -> float:
    return (timezone.now() - moment).total_seconds() if moment is not None else 0.0


def _fail_running(version_id: int, because: str, error: str) -> str:
    """Fail the running version before its child hears of it (the child would record itself interrupted)."""
    end_version(version_id, Status.FAILED, error=error)
    return because


def _read_state(version_id: int) -> Optional[tuple]:
    """(status, cancel_requested, progress_at, number, agent name); status "deleted" if the row is gone; None if
    the database did not answer (SQLite busy past its timeout, PostgreSQL restarting): a training is not stopped for
    that, the next poll looks again (on a new connection if the old one broke)."""
    try:
        state = reconnecting(lambda: PolicyVersion.objects.filter(pk=version_id).values_list(
            "status", "cancel_requested", "progress_at", "number", "agent__name",
        ).first())
    except DatabaseError as exc:
        logger.warning("Could not read version %s (will retry): %s", version_id, exc)
        return None
    return state or ("deleted", False, None, 0, "")


def _beat(version_id: int) -> bool:
    try:
        heartbeat(version_id=version_id)
        return True
    except DatabaseError as exc:
        logger.warning("Heartbeat of version %s not written (will retry): %s", version_id, exc)
        return False


# --- other model work queued by the web: each in a child process too ----------------------------------------------
# A timing measurement trains 5 steps; greedy samples load one policy. Far more than either takes on a model a
# worker can train; a child still running after this is stopped.
MODEL_WORK_TIMEOUT = 1800.0


def calibrate_timing(digest: str) -> str:
    """Measure a dry run's timing key (queued once per key by training.calibration) in a child process.

    It yields to trainings: it returns without work when a training is queued (or its key was measured meanwhile),
    and its child is stopped as soon as a training is queued while it measures (the worker then starts that
    training). The key is released either way: the next dry run queues it again."""
    try:
        if reason := calibration.why_not_measure(digest):
            logger.info("Timing measurement %s not run: %s", digest, reason)
            return f"calibrate {digest}: not run: {reason}"
        stopped: list[str] = []

        def yield_to_training() -> bool:
            reason = calibration.training_waiting()
            if reason:
                stopped.append(reason)
            return bool(reason)

        returncode = run_manage_child(
            ["calibrate_timing", digest], label=f"calibrate {digest}", timeout=MODEL_WORK_TIMEOUT,
            stop_when=yield_to_training,
        )
    finally:
        # A child that was killed could not release the key itself: the next dry run may queue it again.
        timing.release_pending(settings.MODELS_DIR, digest)
    if stopped:
        logger.info("Timing measurement %s stopped: %s", digest, stopped[0])
        return f"calibrate {digest}: stopped: {stopped[0]}"
    return f"calibrate {digest}: exit code {returncode}"


def generate_version_samples(version_id: int) -> str:
    """Greedy samples of a version for the compare page (queued by training.samples) in a child process."""
    directory = samples.version_directory(version_id)
    if directory is None:
        return f"samples of version {version_id}: the version is gone"
    returncode = run_manage_child(
        ["generate_samples", str(directory)], label=f"samples of version {version_id}", timeout=MODEL_WORK_TIMEOUT,
    )
    samples.end_request(directory, returncode=returncode)
    return f"samples of version {version_id}: exit code {returncode}"


def generate_comparison(comparison_id: int) -> str:
    """Both versions' responses for a blind comparison (queued by training.comparisons) in a child process, which
    reads a request file and writes the responses to a file (no database); stored here. A child that ended without
    them (killed, crashed, a policy that would not load) leaves the comparison failed, saying why."""
    with tempfile.TemporaryDirectory(prefix="n3-comparison-") as directory:
        if not comparisons.write_request(comparison_id=comparison_id, directory=Path(directory)):
            return f"comparison {comparison_id}: not generating any more"
        returncode = run_manage_child(
            ["generate_comparison", directory], label=f"comparison {comparison_id}", timeout=MODEL_WORK_TIMEOUT,
        )
        comparisons.store_responses(comparison_id=comparison_id, directory=Path(directory), returncode=returncode)
    return f"comparison {comparison_id}: exit code {returncode}"
