"""Child processes of the worker: the command that trains a version, the environment it runs in, stopping a
process group, reading a child's output, and running other model work (``manage.py <command>``) the same way.

Model work never runs inside a django-q2 worker: the worker is a fork of the cluster process, CUDA must not be
initialised after a fork, and an out-of-memory kill should take only the child with it.
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
from collections.abc import Callable
from pathlib import Path
from typing import IO, Optional

from django.conf import settings
from django.db import DatabaseError

logger = logging.getLogger(__name__)

# After SIGTERM, how long the child gets to clean up (remove partial outputs, record its state) before SIGKILL.
KILL_AFTER_SECONDS = 15.0
# Lines of the child's output kept for the error message of a child that died.
TAIL_LINES = 20
TAIL_CHARS = 3000
# How often run_manage_child asks its stop_when whether to stop the child.
STOP_POLL_SECONDS = 1.0


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


def _asks_to_stop(stop_when: Callable[[], bool], label: str) -> bool:
    try:
        return stop_when()
    except DatabaseError as exc:  # the database is away: let the child go on, ask again next time
        logger.warning("Could not decide whether to stop %s (will ask again): %s", label, exc)
        return False


def stop(child: subprocess.Popen) -> None:
    signal_group(child, signal.SIGTERM)
    try:
        child.wait(KILL_AFTER_SECONDS)
    except subprocess.TimeoutExpired:
        signal_group(child, signal.SIGKILL)
        child.wait()


def signal_group(child: subprocess.Popen, signum: int) -> None:
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


def run_manage_child(
    args: list[str], *, label: str, timeout: float, stop_when: Optional[Callable[[], bool]] = None,
) -> int:
    """``python manage.py <args>`` in its own process group; its output goes to the worker's log. Its exit code.
    ``stop_when``, asked every STOP_POLL_SECONDS, stops the child when it answers True (a database error in it is
    logged and taken for False)."""
    command = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), *args]
    child = subprocess.Popen(
        command, cwd=settings.BASE_DIR, env=child_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1, start_new_session=True,
    )
    output = OutputTail(child.stdout, prefix=f"[{label}] ")
    deadline = time.monotonic() + timeout
    try:
        while child.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                logger.warning("%s ran longer than %s s; stopping it", label, timeout)
                stop(child)
            elif stop_when is not None and _asks_to_stop(stop_when, label):
                logger.info("Stopping %s", label)
                stop(child)
            else:
                try:
                    child.wait(min(STOP_POLL_SECONDS, left) if stop_when is not None else left)
                except subprocess.TimeoutExpired:
                    pass
    except BaseException:
        stop(child)
        raise
    finally:
        output.join(timeout=5)
    return child.returncode
