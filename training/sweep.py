"""The dead-worker sweep: fail the versions whose training can no longer finish."""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Iterator, Optional

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from django_q.models import OrmQ, Schedule, Task

from policies.models import PolicyVersion

from .files import remove_unfinished_outputs
from .jobs import end_version
from .services import broker_is_this_database

logger = logging.getLogger(__name__)

Status = PolicyVersion.Status
SWEEP_SCHEDULE_NAME = "n3: fail training jobs whose process died"


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
        swept += end_version(version.pk, Status.FAILED, from_status=Status.QUEUED, error=error)
    if swept:
        logger.warning("Marked %d training job(s) failed: their process or task is gone", swept)
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


def ensure_sweep_schedule(*, using: str = "default") -> None:
    """The django-q2 Schedule that runs the sweep every minute (idempotent: one row, found by name)."""
    Schedule.objects.using(using).update_or_create(
        name=SWEEP_SCHEDULE_NAME,
        defaults={
            "func": "training.tasks.sweep_stale_versions", "schedule_type": Schedule.MINUTES, "minutes": 1,
            "repeats": -1,
        },
    )
