"""What a version's live status box shows: its status, the current phase's progress (reward-model batches or policy
steps), elapsed time, a smoothed ETA, latest figures, log tail. The page renders it once and version.js updates it
from progress.json (the same dict), so both say the same words."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from django.utils import timezone

from n3_server.rlhf.layout import LOG_FILE
from policies.models import PolicyVersion

from .. import files, selectors

LOG_TAIL_LINES = 80

# The ETA is shown once the training process has timed this many steps of the phase (the first steps include
# warm-up), or fewer steps spanning this many seconds (slow steps); "estimating…" until then.
ETA_MIN_STEPS = 3
ETA_MIN_SECONDS = 30.0
ESTIMATING = "estimating…"

# What each of the core's phases (n3_server.rlhf.progress.PHASES) is called on the page, and what it counts.
PHASE_WORDS = {
    "base_model": ("building the base model", "steps"),
    "reward_model": ("reward model", "reward-model batches"),
    "policy": ("policy", "steps"),
    "evaluation": ("evaluation", "evaluations"),
    "saving": ("saving", "saves"),
}


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


def eta_seconds(phase_progress: Optional[Mapping[str, Any]], *, now: float) -> Optional[float]:
    """Seconds left in the current phase, from the training process's ``phase_progress`` (training.jobs.progress:
    step, total, ``pace`` = mean seconds per step over its window of recent steps, ``timed`` = steps in that window,
    ``at`` = wall time of the latest step).

    The remaining whole steps at that pace, plus what is left of the step in progress (the pace less the time since
    the latest step, never below 0): the estimate counts down between steps instead of jumping at each one. None
    ("estimating…") until ETA_MIN_STEPS steps were timed, or ETA_MIN_SECONDS seconds of fewer steps.
    """
    if not isinstance(phase_progress, Mapping):
        return None
    step, total, pace = phase_progress.get("step"), phase_progress.get("total"), phase_progress.get("pace")
    timed, at = phase_progress.get("timed") or 0, phase_progress.get("at")
    if not all(isinstance(x, (int, float)) for x in (step, total, pace, at)) or pace < 0:
        return None
    if timed < ETA_MIN_STEPS and not (timed >= 1 and pace * timed >= ETA_MIN_SECONDS):
        return None
    remaining = total - step
    if remaining <= 0:
        return 0.0
    in_progress_left = max(pace - max(now - at, 0.0), 0.0)
    return pace * (remaining - 1) + in_progress_left


@dataclass(frozen=True)
class Timing:
    """Where a version's training stands in time: what the admin's status box and the API's body both show.

    ``elapsed``: seconds since it started running (its duration once ended; None while queued). ``eta``: seconds
    left in the current ``phase`` (the admin's "remaining" figure; None when there is no estimate yet or the version
    has ended). ``done``/``total``/``unit``: the current phase's counter (reward-model batches, evaluation, saving),
    or the version's own policy steps in the policy phase, before any phase and once it ended."""

    phase: str  # the core's phase name ("reward_model", "policy", ...); "" before the first report
    phase_name: str  # in words, for the page
    done: int
    total: int
    unit: str
    detail: str
    elapsed: Optional[float]
    eta: Optional[float]


def timing(version: PolicyVersion, *, now: datetime) -> Timing:
    """The version's phase, counter, elapsed time and ETA at ``now``, from its own fields (no query)."""
    end = version.finished_at or now
    elapsed = (end - version.started_at).total_seconds() if version.started_at else None
    metrics = version.metrics or {}
    phase = metrics.get("phase", "") if version.started_at else ""
    phase_progress = metrics.get("phase_progress")
    phase_progress = phase_progress if isinstance(phase_progress, Mapping) else None
    phase_name, unit = PHASE_WORDS.get(phase, (phase.replace("_", " "), "steps"))
    if phase == "policy":  # PPO, RLOO, GRPO, ...
        phase_name = str((version.config or {}).get("algorithm") or phase_name).upper()
    if phase and phase != "policy" and phase_progress and version.is_active:
        done, total = phase_progress.get("step") or 0, phase_progress.get("total") or 0
        epoch = phase_progress.get("epoch")
        detail = f"epoch {epoch}" if epoch else phase_name
    else:  # the policy phase, before any, or over: the version's own steps
        done, total, unit = version.step, version.max_steps, "steps"
        detail = f"{phase_name} phase" if phase else ""
    eta = None
    if version.is_active and phase_progress is not None:
        eta = eta_seconds(phase_progress, now=now.timestamp())
    elif version.is_active and version.step >= ETA_MIN_STEPS and elapsed and version.max_steps > version.step:
        eta = elapsed / version.step * (version.max_steps - version.step)  # a run that records no pace: the mean
    return Timing(phase=phase, phase_name=phase_name, done=done, total=total, unit=unit, detail=detail,
                  elapsed=elapsed, eta=eta)


def progress(version: PolicyVersion) -> dict:
    """What the live status box shows (the page's first render and progress.json): status and its label, the
    current phase's counter (done/total/unit, percent), elapsed, ETA of the phase, latest figures, log tail."""
    t = timing(version, now=timezone.now())
    if not version.is_active:
        eta_text = ""
    elif t.eta is None:
        eta_text = ESTIMATING if version.status == PolicyVersion.Status.RUNNING else ""
    else:
        eta_text = duration(t.eta)
    return {
        "status": version.status,
        "statusLabel": version.get_status_display(),
        "step": version.step,
        "maxSteps": version.max_steps,
        "done": t.done,
        "total": t.total,
        "unit": t.unit,
        "percent": round(100 * t.done / t.total, 1) if t.total else 0,
        "phase": t.phase,
        "phaseDetail": t.detail,
        "elapsedSeconds": round(t.elapsed) if t.elapsed is not None else None,
        "etaSeconds": round(t.eta) if t.eta is not None else None,
        "elapsed": duration(t.elapsed),
        "eta": eta_text,
        "etaLabel": f"remaining ({t.phase_name}, estimate)" if t.phase and version.is_active
        else "remaining (estimate)",
        "rewardMean": version.reward_mean,
        "kl": version.kl,
        "loss": version.loss,
        "historyLength": version.steps.count(),  # the page redraws its charts when this changes
        "heartbeatAt": version.heartbeat_at.isoformat() if version.heartbeat_at else None,
        "cancelRequested": version.cancel_requested,
        "error": version.error,
        "logTail": log_tail(version),
        "active": version.is_active,
        "waitingFor": state.waiting_for if (state := selectors.queue_state(version=version)) else "",
    }


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"
