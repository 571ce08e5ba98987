"""django-q2 tasks: a version's training job, the sweep that fails jobs whose process died, and the worker's
part in a cluster's shutdown.

The job never trains inside the django-q2 worker. The worker is a fork of the cluster process: CUDA must not be
initialised after a fork, an out-of-memory kill should take only the training with it, and a cancel must be
able to stop the training without stopping the worker. So the job starts a child process
(``manage.py train_policy --version-id N``, through N3_TRAINING_LAUNCHER so ``accelerate launch`` can replace
the plain launch), watches it, and records what happened if the child could not (killed, crashed).

A stopping cluster starts no training: a job that a stopping worker receives (django-q2 hands a worker the tasks
its pusher fetched before the stop) enqueues its version again for the next cluster and returns. A worker that
gets SIGTERM itself (systemd's KillMode=control-group signals every process of the service) stops its training
process, which records the version failed "Interrupted by shutdown", and then exits as SIGTERM would make it.

Nothing here imports the training core (torch): the worker stays small.
"""
from __future__ import annotations

import collections
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Optional

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from policies.models import PolicyVersion
from training.rlhf import estimate as timing

from . import samples, services
from .files import deleted_during_training, remove_unfinished_outputs, remove_version_files, version_dir
from .jobs import INTERRUPTED_BY_SHUTDOWN, claim_version, end_version, heartbeat
from .sweep import sweep_stale_versions as sweep

logger = logging.getLogger(__name__)

Status = PolicyVersion.Status
POLL_SECONDS = 1.0
# After SIGTERM, how long the child gets to clean up (remove partial outputs, record its state) before SIGKILL.
KILL_AFTER_SECONDS = 15.0
# Lines of the child's output kept for the error message of a child that died.
TAIL_LINES = 20
TAIL_CHARS = 3000


def run_policy_version(version_id: int) -> str:
    """Claim the version, train it in a child process, and make sure it ends trained, failed or cancelled.

    A version that is not queued any more (claimed by another delivery of this task, cancelled) is left alone:
    a training never runs twice. In a stopping cluster the version stays queued, its job enqueued again for the
    next cluster. Returns a one-line outcome (django-q2 stores it as the task's result).
    """
    _worker.busy = True
    try:
        outcome = _run(version_id)
    finally:
        _worker.busy = False
    if _worker.sigterm:
        _die_of_sigterm()
    return outcome


def _run(version_id: int) -> str:
    if worker_is_stopping():
        return enqueue_again(version_id)
    if not claim_version(version_id=version_id):
        status = PolicyVersion.objects.filter(pk=version_id).values_list("status", flat=True).first()
        logger.info("Version %s not trained by this task: it is %s, not queued", version_id, status or "deleted")
        return f"not run: version {version_id} is {status or 'deleted'}"

    version = PolicyVersion.objects.select_related("agent").filter(pk=version_id).first()
    if version is None:
        return f"not run: version {version_id} was deleted"
    if _worker.sigterm:  # between the check above and the claim
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
            _signal_group(child, signal.SIGKILL)
            output.join(timeout=5)
    return _record_outcome(version, child, stopped_because, output)


def _record_outcome(version: PolicyVersion, child: subprocess.Popen, stopped_because: Optional[str],
                    output: OutputTail) -> str:
    version_id = version.pk
    try:
        version.refresh_from_db()
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
    logger.info("Training %s ended %s (exit code %s)", version, version.status, child.returncode)
    return f"{version.agent.name} {version.version}: {version.status}"


def sweep_stale_versions() -> int:
    """The sweep as a task: what the django-q2 Schedule of earlier releases runs (the workers sweep in a thread
    now, training.sweep.SweepThread; migrate deletes that Schedule)."""
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


# --- the worker: a stopping cluster --------------------------------------------------------------------------
class _WorkerState:
    stop_event = None  # the cluster's stop event (a multiprocessing.Event shared with the sentinel), if found
    busy = False  # running run_policy_version
    sigterm = False  # this worker got SIGTERM: stop the training, then exit


_worker = _WorkerState()


def worker_started() -> None:
    """At a django-q2 worker's start (post_spawn): find the cluster's stop event and handle SIGTERM ourselves."""
    _worker.stop_event = _find_stop_event()
    if _worker.stop_event is None:
        logger.warning("The django-q2 cluster's stop event was not found: a stopping cluster is seen at SIGTERM only")
    signal.signal(signal.SIGTERM, _on_sigterm)


def worker_is_stopping() -> bool:
    """True in a worker of a cluster that is stopping (or that got SIGTERM itself); False outside a cluster."""
    if _worker.sigterm:
        return True
    try:
        return bool(_worker.stop_event is not None and _worker.stop_event.is_set())
    except (OSError, ValueError):  # the event's semaphore is gone with the sentinel
        return True


def _find_stop_event():
    """The sentinel's stop event. A worker is a fork of the sentinel made inside one of its methods, so the
    sentinel object sits in a frame of this process's own stack (django-q2 gives the worker no other handle)."""
    frame = sys._getframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if type(candidate).__name__ == "Sentinel" and hasattr(candidate, "stop_event"):
            return candidate.stop_event
        frame = frame.f_back
    return None


def _on_sigterm(signum, frame) -> None:
    """Idle (or another task): exit at once, as before. In a training job: supervise() stops the training (which
    records itself interrupted by shutdown), and run_policy_version exits the worker afterwards."""
    _worker.sigterm = True
    if not _worker.busy:
        _die_of_sigterm()


def _die_of_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)  # the signal is delivered while we wait


# --- the child process ------------------------------------------------------------------------------------------
def training_command(version_id: int) -> list[str]:
    """The command that trains one version: N3_TRAINING_LAUNCHER (default: this Python) + manage.py train_policy.

    A launcher is anything that runs a Python script with its arguments, e.g.
    ``N3_TRAINING_LAUNCHER="accelerate launch --num_processes 2"`` for several GPUs.
    """
    launcher = shlex.split(settings.N3_TRAINING_LAUNCHER) or [sys.executable]
    return [*launcher, str(Path(settings.BASE_DIR) / "manage.py"), "train_policy", "--version-id", str(version_id)]


def child_environment() -> dict[str, str]:
    """This process's environment, plus what the child must agree on with us (settings module, MODELS_DIR)."""
    env = dict(os.environ)
    # (SETTINGS_MODULE is None while a test overrides settings; the environment has it then.)
    env["DJANGO_SETTINGS_MODULE"] = settings.SETTINGS_MODULE or env["DJANGO_SETTINGS_MODULE"]
    env["MODELS_DIR"] = str(settings.MODELS_DIR)
    env["PYTHONUNBUFFERED"] = "1"  # its log lines reach the worker's log as they happen
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no download/loading bars in a log file
    return env


def supervise(version_id: int, child: subprocess.Popen) -> Optional[str]:
    """Wait for the child; meanwhile beat the heartbeat and stop the child when it must stop.

    Returns why we stopped it, or None when it exited by itself: "cancel"; "gone" (no longer running: decided by
    the child, the sweep or an operator, or deleted); "timeout" (N3_TRAINING_TIMEOUT); "stalled" (no progress for
    N3_STALL_TIMEOUT s: a hung process); "directory" (its version directory was deleted); "shutdown" (this
    worker got SIGTERM). A cancel is first left to the child (its progress callback sees the flag between steps
    and records the version cancelled); only a child still running N3_CANCEL_GRACE seconds later is terminated.
    A terminated child that has not exited KILL_AFTER_SECONDS later is killed.
    """
    started = time.monotonic()
    beat_every = max(1.0, settings.N3_HEARTBEAT_TIMEOUT / 4)
    next_beat = started
    asked_to_stop: Optional[float] = None  # when we first saw that the child should stop by itself
    stopped_because: Optional[str] = None
    terminated: Optional[float] = None
    directory = None  # the version's directory, once the training has made it
    while child.poll() is None:
        now = time.monotonic()
        state = _read_state(version_id) if stopped_because is None else None
        if _worker.sigterm and stopped_because is None:
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
            elif (silent := _seconds_since(progress_at)) >= settings.N3_STALL_TIMEOUT:
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
                _signal_group(child, signal.SIGTERM)
                _signal_group(child, signal.SIGCONT)  # a stopped (hung) process must run to handle it
                terminated = now
            elif now - terminated >= KILL_AFTER_SECONDS:
                _signal_group(child, signal.SIGKILL)
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
    the database did not answer (SQLite busy past its timeout, say): a training is not stopped for that, the next
    poll looks again."""
    try:
        state = PolicyVersion.objects.filter(pk=version_id).values_list(
            "status", "cancel_requested", "progress_at", "number", "agent__name",
        ).first()
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


def stop(child: subprocess.Popen) -> None:
    _signal_group(child, signal.SIGTERM)
    try:
        child.wait(KILL_AFTER_SECONDS)
    except subprocess.TimeoutExpired:
        _signal_group(child, signal.SIGKILL)
        child.wait()


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    """Signal the child's process group (its id is the child's pid: start_new_session)."""
    try:
        os.killpg(child.pid, signum)
    except ProcessLookupError:
        pass  # already gone


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (the out-of-memory killer sends this)" if -returncode == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    if returncode == 0:
        return "exited without recording a result"
    return f"exited with code {returncode}"


class OutputTail:
    """Copies the child's output to this process's stderr (the worker's log) and keeps its last lines.

    A thread reads the pipe so the child never blocks on a full pipe buffer.
    """

    def __init__(self, stream: IO[str], *, prefix: str = ""):
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._thread = threading.Thread(target=self._read, args=(stream, prefix), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str], prefix: str) -> None:
        with stream:
            for line in stream:
                self.lines.append(line.rstrip("\n"))
                sys.stderr.write(prefix + line)

    def join(self, timeout: float) -> bool:
        """Wait for the end of the output; False if it is still open after ``timeout`` seconds."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def text(self) -> str:
        return "\n".join(self.lines)[-TAIL_CHARS:]


# --- other model work queued by the web: each in a child process too ----------------------------------------------
# A timing measurement trains 5 steps; greedy samples load one policy. Far more than either takes on a model a
# worker can train; a child still running after this is stopped.
MODEL_WORK_TIMEOUT = 1800.0


def calibrate_timing(digest: str) -> str:
    """Measure a dry run's timing key (queued once per key by training.calibration) in a child process."""
    returncode = run_manage_child(["calibrate_timing", digest], label=f"calibrate {digest}")
    # A child that was killed could not release the key itself: the next dry run may queue it again.
    timing.release_pending(settings.MODELS_DIR, digest)
    return f"calibrate {digest}: exit code {returncode}"


def generate_version_samples(version_id: int) -> str:
    """Greedy samples of a version for the compare page (queued by training.samples) in a child process."""
    directory = samples.version_directory(version_id)
    if directory is None:
        return f"samples of version {version_id}: the version is gone"
    returncode = run_manage_child(["generate_samples", str(directory)], label=f"samples of version {version_id}")
    samples.end_request(directory, returncode=returncode)
    return f"samples of version {version_id}: exit code {returncode}"


def run_manage_child(args: list[str], *, label: str, timeout: float = MODEL_WORK_TIMEOUT) -> int:
    """``python manage.py <args>`` in its own process group; its output goes to the worker's log. Its exit code."""
    command = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), *args]
    child = subprocess.Popen(
        command, cwd=settings.BASE_DIR, env=child_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1, start_new_session=True,
    )
    output = OutputTail(child.stdout, prefix=f"[{label}] ")
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        logger.warning("%s ran longer than %s s; stopping it", label, timeout)
        stop(child)
    except BaseException:
        stop(child)
        raise
    finally:
        output.join(timeout=5)
    return child.returncode
