"""What a version's live status box shows: step of max steps, elapsed time, ETA, latest figures, log tail."""
from __future__ import annotations

from typing import Optional

from django.utils import timezone

from policies.models import PolicyVersion
from training.rlhf.layout import LOG_FILE

from . import files

LOG_TAIL_LINES = 80


def log_tail(version: PolicyVersion, lines: int = LOG_TAIL_LINES) -> Optional[str]:
    """The last ``lines`` lines of the version's training.log, or None when there is none yet."""
    path = files.version_dir(version.agent.name, version.number) / LOG_FILE
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))  # the tail is in the last 64 KiB
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    return "\n".join(text.splitlines()[-lines:])


def progress(version: PolicyVersion) -> dict:
    """What the live status box shows: step of max steps, elapsed, ETA, latest figures, log tail."""
    now = timezone.now()
    end = version.finished_at or now
    elapsed = (end - version.started_at).total_seconds() if version.started_at else None
    eta = None
    if version.is_active and elapsed and version.step and version.max_steps > version.step:
        eta = elapsed / version.step * (version.max_steps - version.step)
    metrics = version.metrics or {}
    return {
        "status": version.status,
        "step": version.step,
        "maxSteps": version.max_steps,
        "percent": round(100 * version.step / version.max_steps, 1) if version.max_steps else 0,
        "phase": metrics.get("phase", ""),
        "elapsedSeconds": round(elapsed) if elapsed is not None else None,
        "etaSeconds": round(eta) if eta is not None else None,
        "elapsed": duration(elapsed),
        "eta": duration(eta),
        "rewardMean": version.reward_mean,
        "kl": version.kl,
        "loss": version.loss,
        "historyLength": version.steps.count(),  # the page redraws its charts when this changes
        "heartbeatAt": version.heartbeat_at.isoformat() if version.heartbeat_at else None,
        "cancelRequested": version.cancel_requested,
        "error": version.error,
        "logTail": log_tail(version),
        "active": version.is_active,
    }


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


