"""The dead-worker sweep: fail the versions whose training can no longer finish.

Each django-q2 worker sweeps when it starts and then every N3_SWEEP_INTERVAL seconds in a thread of its own
(SweepThread), also while it supervises a training: no sweep task waits in the queue behind a long job, and none
piles up there. (Earlier releases ran it from a django-q2 Schedule; migrate deletes that row.)
"""
from __future__ import annotations

import logging
import math
import pickle
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Optional

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.db.models import Q
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.models import OrmQ, Schedule, Task
from django_q.signing import BadSignature, SignedPackage
from redis import RedisError

from policies.models import PolicyVersion

from .. import services
from ..files import remove_unfinished_outputs
from ..services import broker_is_this_database
from .transitions import end_version

logger = logging.getLogger(__name__)

Status = PolicyVersion.Status
# What the django-q2 Schedule of earlier releases ran every minute.
OLD_SWEEP_TASK = "training.tasks.sweep_stale_versions"
TRAINING_TASK = "training.tasks.run_policy_version"


def sweep_stale_versions(*, heartbeats: bool = True) -> int:
    """Fail the versions whose training can no longer finish; returns how many.

    - running, heartbeat older than N3_HEARTBEAT_TIMEOUT: the process training it died (a hard-killed worker
      leaves no django-q2 Failure, and the Redis broker never re-delivers: this is the safety net); not judged
      with ``heartbeats=False`` (SweepThread, just after the database was away: no process could beat);
    - queued, but its django-q2 task already has a result: the job ended without starting the training;
    - queued with the ORM broker, but its task is neither waiting in the queue nor finished: deleted;
    - queued without a task id for longer than the heartbeat timeout: never handed to a worker (the process
      that queued it stopped between the commit and the enqueue).

    With the Redis broker it also enqueues again the jobs that Redis lost (enqueue_lost_redis_jobs); with the ORM
    broker it releases the jobs that a killed cluster had fetched (release_held_jobs).
    """
    now = timezone.now()
    limit = settings.N3_HEARTBEAT_TIMEOUT
    cutoff = now - timedelta(seconds=limit)
    swept = 0
    stale = PolicyVersion.objects.select_related("agent").filter(status=Status.RUNNING).filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
    ) if heartbeats else []
    for version in stale:
        last = version.heartbeat_at or version.started_at
        error = (
            f"The training process stopped without a word: no heartbeat for {int((now - last).total_seconds())} s "
            f"(limit N3_HEARTBEAT_TIMEOUT={limit} s). Its worker was probably killed (out of memory, a restart), "
            "or could not reach the database for that long."
        )
        # Conditional on the heartbeat seen: a process that beats again in between keeps its version.
        failed = PolicyVersion.objects.filter(
            pk=version.pk, status=Status.RUNNING, heartbeat_at=version.heartbeat_at,
        ).update(status=Status.FAILED, error=error, finished_at=now)
        if failed:
            remove_unfinished_outputs(agent_name=version.agent.name, number=version.number)
        swept += failed
    for version, error in _lost_queued_versions(cutoff):
        swept += end_version(version.pk, Status.FAILED, from_status=Status.QUEUED, error=error)
    if swept:
        logger.warning("Marked %d training job(s) failed: their process or task is gone", swept)
    enqueue_lost_redis_jobs(cutoff)
    release_held_jobs(cutoff)
    return swept


def _lost_queued_versions(cutoff) -> Iterator[tuple[PolicyVersion, str]]:
    queued = list(PolicyVersion.objects.filter(status=Status.QUEUED).select_related("agent"))
    if not queued:
        return
    results = dict(Task.objects.filter(id__in=[v.task_id for v in queued if v.task_id]).values_list("id", "result"))
    waiting: Optional[set[str]] = None
    if broker_is_this_database():
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


def enqueue_lost_redis_jobs(cutoff: datetime) -> int:
    """Redis broker: enqueue again the job of each version queued before ``cutoff`` whose task is neither waiting in
    Redis nor finished; returns how many.

    Redis keeps the queue in memory: one restarted without persistence (or flushed, or failed over) has lost the
    jobs waiting in it, and django-q2's Redis broker never delivers a job again; so has a cluster killed while its
    pusher held jobs it had taken out of Redis ahead of its busy worker (tests/system/test_scale_out.py). Such a version
    would stay queued for ever. Enqueued again, it trains once: a job claims its version with a conditional UPDATE
    (training.jobs.transitions), so a second delivery of the same version (the lost job was in fact held by a cluster
    whose only worker is busy: its pusher takes one or two jobs out of Redis ahead) finds it claimed and returns "not
    run". That can happen at most as often as busy clusters hold jobs outside Redis, not at every sweep: a job enqueued
    again waits in Redis where the next sweep sees it. (The ORM broker's queue is in the database and loses nothing:
    nothing is enqueued again there; release_held_jobs unlocks the rows a killed cluster held, and
    _lost_queued_versions fails a version whose job row was deleted.)
    """
    if settings.Q_CLUSTER.get("sync") or not settings.Q_CLUSTER.get("redis"):
        return 0
    lost = list(
        PolicyVersion.objects.filter(status=Status.QUEUED, queued_at__lt=cutoff).exclude(task_id="")
        .select_related("agent")
    )
    if not lost:
        return 0
    try:
        waiting = _tasks_waiting_in_redis()
    except RedisError as exc:  # Redis is away now: the next sweep looks again
        logger.warning("Could not read the Redis queue to find lost training jobs: %s", exc)
        return 0
    if waiting is None:
        return 0
    finished = set(Task.objects.filter(id__in=[v.task_id for v in lost]).values_list("id", flat=True))
    enqueued = 0
    for version in lost:
        if version.task_id in waiting or version.task_id in finished:
            continue
        lost_task = version.task_id
        # Raises only if Redis went away since we read it; the version is then failed with that reason.
        services._enqueue(version)  # (the one place that names and enqueues a version's job)
        logger.warning("%s was queued, but its job %s is no longer in Redis (restarted?): queued again as task %s",
                       version, lost_task, version.task_id)
        enqueued += 1
    return enqueued


def _tasks_waiting_in_redis() -> Optional[set[str]]:
    """The ids of the tasks waiting in the Redis broker's list; None when a payload cannot be read (signed with
    another SECRET_KEY): which tasks wait cannot be told then."""
    broker = get_broker()
    try:
        ids = set()
        for payload in broker.connection.lrange(broker.list_key, 0, -1):
            try:
                ids.add(SignedPackage.loads(payload)["id"])
            except (BadSignature, TypeError, KeyError, pickle.UnpicklingError):
                return None
        return ids
    finally:
        broker.connection.close()


def release_held_jobs(cutoff: datetime) -> int:
    """ORM broker: hand back the fetched, unstarted training jobs of versions queued before ``cutoff`` that no live
    cluster holds; returns how many.

    A busy cluster's pusher fetches one or two jobs ahead of its worker, and django-q2 locks each fetched row for
    `retry` (hours). A cluster killed outright (SIGKILL, a machine lost) takes them with it: their versions would wait
    those hours (tests/system/test_scale_out.py). Released, the next free worker anywhere fetches them.

    A job that merely waits behind a live training is left alone (no false alarm, no second delivery): django-q2
    fetches rows one at a time in queue order, so a held row fetched no earlier than the row of a training still
    running (its heartbeat fresh: the stale ones were failed just before) may be that cluster's next job. A row held
    by a killed cluster is released once no live training was fetched before it. (A job that a live cluster still
    holds may then be delivered twice: the later delivery finds its version claimed and returns "not run", as with
    enqueue_lost_redis_jobs.) A released row waits unlocked until a pusher fetches it: the next sweep leaves it be.
    """
    if not broker_is_this_database():
        return 0
    waiting = set(
        PolicyVersion.objects.filter(status=Status.QUEUED, queued_at__lt=cutoff).exclude(task_id="")
        .values_list("task_id", flat=True)
    )
    if not waiting:
        return 0
    now = timezone.now()
    held = list(OrmQ.objects.filter(lock__gt=now))
    running = set(PolicyVersion.objects.filter(status=Status.RUNNING).exclude(task_id="").values_list(
        "task_id", flat=True))
    # The earliest fetch among the rows of trainings running now: the rows fetched after it may be waiting behind it.
    live_since = min((row.lock for row in held if row.task_id() in running), default=None)
    released = 0
    for row in held:
        if row.task_id() in waiting and (live_since is None or row.lock < live_since):
            released += OrmQ.objects.filter(pk=row.pk, lock=row.lock).update(lock=now)
    if released:
        logger.warning("Released %d training job(s) that a cluster fetched but has not started while their versions "
                       "wait, and no running training was fetched before them (was that cluster killed?)", released)
    return released


def release_stranded_jobs(*, locked_before: datetime) -> int:
    """ORM broker: hand back the training jobs that a cluster fetched before ``locked_before`` (this worker's
    start) and never ran; returns how many. A cluster stopped by SIGTERM to all its processes dies holding the job
    its pusher fetched ahead: the row stays locked for django-q2's `retry` (hours) and its version would wait that
    long. Released, the next delivery runs it (a job whose version is no longer queued returns at once). A job that
    a live cluster holds (another cluster on this database, or this one's when a worker is replaced) is delivered
    twice then: the second delivery finds its version claimed and returns."""
    if not broker_is_this_database():
        return 0
    # django-q2 locks a fetched row until fetch time + retry: a row fetched by this cluster is locked past that.
    horizon = locked_before + timedelta(seconds=settings.Q_CLUSTER["retry"])
    released = 0
    for row in OrmQ.objects.filter(lock__gt=timezone.now(), lock__lt=horizon):
        if row.task.get("func") == TRAINING_TASK:  # (a payload we cannot read has none)
            released += OrmQ.objects.filter(pk=row.pk, lock=row.lock).update(lock=timezone.now())
    if released:
        logger.warning("Released %d training job(s) fetched by a cluster that stopped before running them", released)
    return released


def delete_old_sweep_schedule(*, using: str = "default") -> int:
    """Delete the Schedule that ran the sweep as a task every minute (before SweepThread); returns how many."""
    deleted, _ = Schedule.objects.using(using).filter(func=OLD_SWEEP_TASK).delete()
    return deleted


class SweepThread(threading.Thread):
    """Sweeps every ``every`` seconds (default N3_SWEEP_INTERVAL) until ``stop()``; an error is logged, not raised.

    After a sweep that could not reach the database, heartbeats are not judged for N3_HEARTBEAT_TIMEOUT seconds:
    no training could beat while the database was away, and each gets a whole heartbeat window to reconnect and
    beat again before its silence means that its process died. (With N3_SWEEP_INTERVAL <= N3_HEARTBEAT_TIMEOUT, as
    by default, every worker's sweep sees an outage long enough to matter.)
    """

    def __init__(self, every: Optional[float] = None):
        super().__init__(name="n3-sweep", daemon=True)
        self.every = every if every is not None else settings.N3_SWEEP_INTERVAL
        self._stop_event = threading.Event()
        self.database_away_at = -math.inf  # time.monotonic() of the last sweep that could not reach the database

    def run(self) -> None:
        try:
            while not self._stop_event.wait(self.every):
                close_old_connections()
                try:
                    sweep_stale_versions(
                        heartbeats=time.monotonic() - self.database_away_at >= settings.N3_HEARTBEAT_TIMEOUT,
                    )
                except DatabaseError as exc:  # a database that is away now (restarting) may be back next time
                    self.database_away_at = time.monotonic()
                    logger.warning("Sweeping stale training jobs failed (will retry): %s", str(exc).strip())
                except Exception:
                    logger.exception("Sweeping stale training jobs failed")
        finally:
            connection.close()  # this thread's own connection

    def stop(self) -> None:
        self._stop_event.set()
