"""A django-q2 worker's part in its cluster's shutdown: a stopping cluster starts no training.

django-q2 hands a worker the tasks its pusher fetched before a stop; the training task asks ``is_stopping()`` and, if
so, enqueues its version again for the next cluster instead of training. A worker that gets SIGTERM itself
(systemd's KillMode=control-group signals every process of the service) lets the running job stop its training
process (which records the version failed "Interrupted by shutdown"), then exits as SIGTERM would make it.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time

logger = logging.getLogger(__name__)


class WorkerState:
    stop_event = None  # the cluster's stop event (a multiprocessing.Event shared with the sentinel), if found
    busy = False  # running run_policy_version
    sigterm = False  # this worker got SIGTERM: stop the training, then exit


state = WorkerState()


def started() -> None:
    """At a django-q2 worker's start (post_spawn): find the cluster's stop event and handle SIGTERM ourselves."""
    state.stop_event = _find_stop_event()
    if state.stop_event is None:
        logger.warning("The django-q2 cluster's stop event was not found: a stopping cluster is seen at SIGTERM only")
    signal.signal(signal.SIGTERM, _on_sigterm)


def is_stopping() -> bool:
    """True in a worker of a cluster that is stopping (or that got SIGTERM itself); False outside a cluster."""
    if state.sigterm:
        return True
    try:
        return bool(state.stop_event is not None and state.stop_event.is_set())
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
    state.sigterm = True
    if not state.busy:
        die_of_sigterm()


def die_of_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)  # the signal is delivered while we wait
