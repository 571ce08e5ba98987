"""A version's state changes, each one conditional UPDATE: claimed, alive, ended. Torch-free (the worker's
supervisor, the sweep and the web use it); the training itself runs in training.jobs.run.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional, TypeVar

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection
from django.utils import timezone

from policies.models import PolicyVersion

logger = logging.getLogger(__name__)

Status = PolicyVersion.Status
T = TypeVar("T")
# How a version interrupted by a shutdown (SIGTERM to its training process, nobody cancelled it) is failed.
INTERRUPTED_BY_SHUTDOWN = "Interrupted by shutdown"


def claim_version(*, version_id: int) -> bool:
    """queued -> running, atomically: True for exactly one caller, False if the version is not queued. Its
    progress clock (progress_at, which N3_STALL_TIMEOUT measures) starts now."""
    now = timezone.now()
    return bool(
        PolicyVersion.objects.filter(pk=version_id, status=Status.QUEUED)
        .update(status=Status.RUNNING, started_at=now, heartbeat_at=now, progress_at=now)
    )


def end_version(version_id: int, status: str, *, from_status: str = Status.RUNNING, **fields: Any) -> bool:
    """from_status -> status (a final one), only if the version is still in from_status. Written on a new
    connection if the database dropped this process's one (``reconnecting``)."""
    if "error" in fields:
        # Errors quote exceptions and a dead process's output, which may hold NUL: PostgreSQL refuses it in text
        # (the UPDATE would raise and leave the version running until the sweep), so it is written escaped.
        fields["error"] = str(fields["error"]).replace("\x00", "\\x00")
    return bool(reconnecting(
        lambda: PolicyVersion.objects.filter(pk=version_id, status=from_status)
        .update(status=status, finished_at=timezone.now(), **fields)
    ))


def heartbeat(*, version_id: int) -> bool:
    """Mark a running version alive now; False when it is no longer running."""
    return bool(reconnecting(
        lambda: PolicyVersion.objects.filter(pk=version_id, status=Status.RUNNING).update(heartbeat_at=timezone.now())
    ))


def reconnecting(query: Callable[[], T]) -> T:
    """``query()``, run once more on a new connection if the first try failed because the database connection broke.

    Django reconnects at each request, never inside a long-lived process: after a database restart (PostgreSQL
    restarted or failed over) the job that supervises a training and the training process would otherwise fail
    every later query on the dead connection ("the connection is closed"; the sweep thread closes it itself). Any
    other error is raised: one on a connection that still works (SQLite busy past its timeout, a statement timeout),
    one inside a transaction (the transaction is lost; its owner decides), and a second failure (the database is
    still away). For idempotent statements only (a conditional UPDATE, a read): a first try that committed but whose
    answer was lost must be harmless to repeat.
    """
    had_connection = connection.connection is not None  # (without one, the first try was already a new one)
    try:
        return query()
    except (OperationalError, InterfaceError) as exc:
        if connection.in_atomic_block or not had_connection or connection.is_usable():
            raise
        logger.warning("Database connection lost (%s); trying once more on a new one", str(exc).strip())
        connection.close()
        return query()


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
