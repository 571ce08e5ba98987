"""Training requests: the run's configuration, the dry run, queueing and cancelling a version.

A version's life (each step in its own module)::

    queue_training()              queued     the scored-feedback snapshot, number max+1, django-q2 task enqueued
    tasks.run_policy_version()    running    claimed by a conditional UPDATE, trained in a child process
    run.run_version() (child)     trained    or failed / cancelled, each with its reason in ``error``
    sweep.sweep_stale_versions()  failed     a running version whose heartbeat stopped (its process died)

Every status change is a conditional UPDATE (``filter(pk=..., status=...).update(...)``), so two processes never
both decide a version's fate, and a finished version never changes again (jobs.end_version).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Optional

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Avg, Count, Max, StdDev
from django_q.tasks import async_task

from feedback.models import Feedback
from n3_server.rlhf import (
    MIN_FEEDBACK,
    PRESETS,
    ConfigError,
    InsufficientFeedbackError,
    TrainingConfig,
    TrainingEstimate,
)
from n3_server.rlhf.config import check_fields_used
from n3_server.rlhf.context import check_fits_context, with_learning_rate
from n3_server.rlhf.data import awaiting_review_warning, prepare_feedback
from n3_server.rlhf.layout import BUILTIN_MODELS
from n3_server.rlhf.preference_data import PREFERENCE_ALGORITHMS, PreferenceCounts, check_preference_data
from n3site.exceptions import Conflict, ServiceError, Unavailable
from policies.models import Agent, PolicyVersion
from policies.selectors import get_agent

from . import calibration, selectors
from .jobs.transitions import end_version

logger = logging.getLogger(__name__)

Status = PolicyVersion.Status
# A Hugging Face hub id: "name" or "org/name".
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


# --- configuration and the dry run ------------------------------------------------------------------------------
def resolve_training_config(
    *, agent: Agent, overrides: Optional[dict[str, Any]] = None, preset: Optional[str] = None,
) -> TrainingConfig:
    """The run's full TrainingConfig. Later layers win, field by field (reward_model_config merges too):

    TrainingConfig defaults with base_model=N3_DEFAULT_BASE_MODEL < agent.default_training_config < preset
    < overrides (snake_case TrainingConfig fields). A preset's base model (the spec's hub models) is not applied:
    the run uses the base model the overrides name, else the agent's default, else the operator's
    N3_DEFAULT_BASE_MODEL. A field the agent's defaults or the overrides set that the run's algorithm does not read
    is refused (config.FIELD_ALGORITHMS). Raises ConfigError naming a bad field or preset.
    """
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    agent_defaults = agent.default_training_config or {}
    agent_layer = f"agent {agent.name}'s default training config"
    layers = [
        ("defaults", {"base_model": settings.N3_DEFAULT_BASE_MODEL}),
        (agent_layer, agent_defaults),
        (f"preset {preset}", preset_values(preset)),
        ("overrides", overrides or {}),
    ]
    values: dict[str, Any] = {}
    for name, layer in layers:
        if not isinstance(layer, dict):
            raise ConfigError(f"{name} must be an object of TrainingConfig fields, got {type(layer).__name__}")
        values = _merge(values, layer)
    config = TrainingConfig.from_dict(values)
    # Only what someone set on purpose: the preset's values and the defaults are never refused for it.
    explicit = {**dict.fromkeys(agent_defaults, agent_layer), **dict.fromkeys(overrides or {}, "")}
    check_fields_used(config.algorithm, explicit)
    return resolve_init_from(agent=agent, config=config, base_model_set="base_model" in explicit)


def resolve_init_from(*, agent: Agent, config: TrainingConfig, base_model_set: bool = False) -> TrainingConfig:
    """The run's starting point made definite: init_from "active" becomes the agent's active version ("v3"), and a
    version must be one of the agent's trained versions. The run keeps that version's model family (its
    base_model); run.py loads the version's policy/ in its place. Raises ConfigError naming init_from, or base_model
    when one set on purpose is not the version's."""
    if config.init_from == "base":
        return config
    if config.init_from == "active":
        active = Agent.objects.filter(pk=agent.pk).values_list("active_version", flat=True).get()
        start = PolicyVersion.objects.filter(pk=active).first() if active else None
        if start is None:
            raise ConfigError.field(
                "init_from", f"is 'active', but agent {agent.name} has no active version (promote one first)"
            )
    else:
        start = PolicyVersion.objects.filter(agent=agent, number=int(config.init_from[1:])).first()
        if start is None:
            raise ConfigError.field("init_from", f"names {config.init_from}, which agent {agent.name} does not have")
    if start.status != Status.TRAINED:
        raise ConfigError.field(
            "init_from", f"names {start.version}, which is {start.status}: only a trained version can be a start"
        )
    family = (start.config or {}).get("base_model") or config.base_model
    if base_model_set and config.base_model != family:
        raise ConfigError.field(
            "base_model", f"is {config.base_model!r}, but init_from {start.version} descends from {family!r}: "
            "leave base_model out"
        )
    return config.replace(init_from=start.version, base_model=family)


def preset_values(preset: Optional[str]) -> dict[str, Any]:
    """The fields a preset sets in a service's config: all of PRESETS[preset] but its base model."""
    return {key: value for key, value in PRESETS[preset].items() if key != "base_model"} if preset else {}


def _merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merge(merged[key], value)
        merged[key] = value
    return merged


def estimate_training(
    *, agent: Agent, config: TrainingConfig, measure_here: bool = False, queue_measurement: bool = True,
) -> TrainingEstimate:
    """The dry run on the agent's scored feedback. Raises InsufficientFeedbackError below the minimum, ConfigError
    when KTO/DPO cannot train on it (as queue_training), ServiceError when this configuration's measurement failed.

    Never waits on training: the time comes from the timings measured for this configuration's timing key, or, with
    none yet, from a rough figure (``estimate_source`` "rough") while the worker measures it (training.calibration).
    ``measure_here`` (manage.py train_policy --dry-run) measures a missing key in this process instead;
    ``queue_measurement=False`` (a training request, which measures itself) queues no measurement.
    """
    scored = selectors.scored_feedback(agent=agent)
    stats = scored.aggregate(count=Count("id"), mean=Avg("score"), std=StdDev("score"))
    if stats["count"] < MIN_FEEDBACK:
        raise InsufficientFeedbackError(stats["count"])
    # A bounded read, whatever the agent's size: lengths, warnings and the held-out share from an even sample; the
    # count and the score statistics are exact (the database computes them).
    sampled = stats["count"] > settings.N3_ESTIMATE_SAMPLE
    records = selectors.feedback_records(
        selectors.spread_sample(scored, count=stats["count"], limit=settings.N3_ESTIMATE_SAMPLE)
    )
    preference = None
    if not sampled:  # KTO/DPO's classes and pairs need every record; queue_training checks them on all of them
        preference = check_preference_feedback(records=records, config=config)
    config = with_learning_rate(config)  # the dry run shows the rate the run would train at
    estimate = calibration.estimate(
        config=config, records=records, measure_here=measure_here, total_records=stats["count"] if sampled else None,
        queue=queue_measurement,
    )
    estimate.preference = preference  # KTO/DPO: the examples or pairs it trains on (the admin's preview shows them)
    if sampled:
        estimate.score_mean, estimate.score_std = stats["mean"], stats["std"]
    awaiting = Feedback.objects.filter(agent=agent, score__isnull=True).count()  # trains on scored feedback only
    if awaiting:
        estimate.warnings.append(awaiting_review_warning(awaiting))
    return estimate


def check_preference_feedback(*, records: list[dict], config: TrainingConfig) -> Optional[PreferenceCounts]:
    """KTO/DPO: raise ConfigError when the feedback yields one class only or too few pairs (the message says how
    many it found), so that the request is refused instead of a job failing later; else how many examples or pairs
    it yields. Other algorithms: None."""
    if config.algorithm in PREFERENCE_ALGORITHMS:
        return check_preference_data(prepare_feedback(records).records, config)
    return None


# --- queueing ---------------------------------------------------------------------------------------------------
def queue_training(
    *, agent: Agent, config: TrainingConfig, user: Optional[AbstractBaseUser] = None, enqueue: bool = True,
) -> PolicyVersion:
    """Create the agent's next version (queued) on its scored feedback and enqueue its training job.

    Raises InsufficientFeedbackError below the minimum, ConfigError when KTO/DPO cannot train on this feedback (one
    class only, too few pairs). ``enqueue=False`` is for callers that train the version themselves (``manage.py
    train_policy`` in-process: claim_version, then run_version).
    """
    with transaction.atomic():
        # Two concurrent starts for one agent must not both take the next number. On PostgreSQL the agent's row
        # lock serialises them; on SQLite every write transaction is already serial (transaction_mode IMMEDIATE),
        # and Django skips select_for_update there.
        Agent.objects.select_for_update().filter(pk=agent.pk).exists()
        snapshot = selectors.scored_feedback(agent=agent).aggregate(count=Count("id"), through=Max("id"))
        if snapshot["count"] < MIN_FEEDBACK:
            raise InsufficientFeedbackError(snapshot["count"])
        if config.algorithm in PREFERENCE_ALGORITHMS:  # read the rows only for them
            records = selectors.feedback_records(selectors.scored_feedback(agent=agent))  # the rows counted above
            check_preference_feedback(records=records, config=config)
        # Past the agent's counter as well as its versions: a deleted version's number is never given again.
        counter = Agent.objects.filter(pk=agent.pk).values_list("version_counter", flat=True).get()
        number = max(counter, PolicyVersion.objects.filter(agent=agent).aggregate(n=Max("number"))["n"] or 0) + 1
        Agent.objects.filter(pk=agent.pk).update(version_counter=number)
        version = PolicyVersion.objects.create(
            # the version records the rate it trains at, automatic or not
            agent=agent, number=number, status=Status.QUEUED, config=with_learning_rate(config).to_dict(),
            feedback_count=snapshot["count"], feedback_through_id=snapshot["through"], max_steps=config.max_steps,
            created_by=user if user is not None and user.is_authenticated else None,
        )
        if enqueue:
            if broker_is_this_database():
                # The task row commits with the version or not at all: no queued version without its job.
                _enqueue(version)
            else:
                # Redis (or sync mode): a worker must not pick the job up before the version is committed.
                transaction.on_commit(lambda: _enqueue(version))
    return version


def broker_is_this_database() -> bool:
    q_cluster = settings.Q_CLUSTER
    return bool(q_cluster.get("orm")) and not q_cluster.get("sync")


def _enqueue(version: PolicyVersion) -> None:
    try:
        task_id = async_task(
            "training.tasks.run_policy_version", version.pk,
            task_name=f"train {version.agent.name} {version.version} ({version.policy_id})", group="training",
        )
    except Exception as exc:
        logger.exception("Could not enqueue the training job of %s", version)
        if broker_is_this_database():
            raise  # in the version's transaction: no version without its job (a database error answers 503)
        # Redis away: the version was committed already; not left queued forever, the reason is on it.
        end_version(
            version.pk, Status.FAILED, from_status=Status.QUEUED, error=f"Could not enqueue the training job: {exc}"
        )
        raise Unavailable(
            f"Could not queue the training job ({type(exc).__name__}: {exc}): the job queue is unavailable right now. "
            f"{version.agent.name} {version.version} was marked failed; send the request again in a moment."
        ) from exc
    PolicyVersion.objects.filter(pk=version.pk).update(task_id=task_id)
    version.task_id = task_id


def cancel_training(*, version: PolicyVersion) -> PolicyVersion:
    """Queued: cancelled at once (its job, when a worker gets to it, finds nothing to do). Running: the flag
    ``cancel_requested`` is set; the training stops at its next step (the job stops the process if it does not
    within N3_CANCEL_GRACE seconds). Finished: raises Conflict."""
    pk = version.pk
    cancelled = end_version(pk, Status.CANCELLED, from_status=Status.QUEUED, error="Cancelled before it started.")
    if not cancelled:
        requested = PolicyVersion.objects.filter(pk=pk, status=Status.RUNNING).update(cancel_requested=True)
        if not requested:
            version.refresh_from_db()
            raise Conflict(
                f"{version.agent.name} {version.version} is already {version.status}; "
                "only queued or running versions can be cancelled."
            )
    version.refresh_from_db()
    return version


# --- a client's request (the API and the admin) -------------------------------------------------------------------
# The functions above take a resolved TrainingConfig (the CLI, the tests); the ones below take what a client sent (the
# agent's name, a preset, overrides) and refuse what a web client must not ask for: a base model outside the allowed
# ones, sequences longer than the model's positions, a run beyond the training time limit.
def check_base_model(name: str) -> None:
    """Refuse a base model that a web client should not be able to load.

    Allowed: a built-in model, a hub id ("gpt2", "org/name"), or a directory under MODELS_DIR or
    one of settings.N3_ALLOWED_MODEL_DIRS. Anything else (``../../etc``, ``/home/x``) raises ServiceError.
    """
    if name in BUILTIN_MODELS:
        return
    try:
        # A hub id that is also a directory here would be loaded from the directory: check it as a path.
        if _HUB_ID.fullmatch(name) and ".." not in name and not Path(name).exists():  # fullmatch: no "gpt2\n"
            return
        path = Path(name).expanduser().resolve()
        allowed = [Path(settings.MODELS_DIR), *settings.N3_ALLOWED_MODEL_DIRS]
        if any(path.is_relative_to(Path(root).resolve()) for root in allowed):
            return
    except (OSError, ValueError, RuntimeError):  # a name too long for a path, a NUL byte, a "~user" that does not exist
        pass
    raise ServiceError(
        f"Base model {name!r} is not allowed: use a built-in model ({', '.join(BUILTIN_MODELS)}), "
        "a Hugging Face hub id such as 'org/name', or a directory under MODELS_DIR or N3_ALLOWED_MODEL_DIRS."
    )


def _training_config(*, agent: Agent, overrides: dict[str, Any], preset: Optional[str]) -> TrainingConfig:
    config = resolve_training_config(agent=agent, overrides=overrides, preset=preset)
    check_base_model(config.base_model)
    if config.reward_model_config.base_model:
        check_base_model(config.reward_model_config.base_model)
    check_fits_context(config)  # after check_base_model: only allowed directories' config.json is read
    return config


# A rough estimate (estimate_source "rough", "default" before: nothing measured yet) can be this many times too long
# on the workers' GPUs: it refuses a run only beyond this multiple of the limit, and the dry run warns below it.
ROUGH_ESTIMATE_MARGIN = 100


def time_limit_problem(estimate: TrainingEstimate, *, margin: float = 1) -> Optional[str]:
    """Why a run of this estimate cannot finish within `margin` x N3_TRAINING_TIMEOUT (where a job is stopped);
    None if it can."""
    limit = settings.N3_TRAINING_TIMEOUT
    seconds = estimate.estimated_time_minutes * 60
    if seconds <= limit * margin:
        return None
    rough = " (rough: nothing measured for this configuration yet)" if estimate.estimate_source != "measured" else ""
    return (
        f"the estimate is {_duration(seconds)}{rough} for {estimate.estimated_steps} steps, over the training time "
        f"limit of {_duration(limit)} (N3_TRAINING_TIMEOUT, where the job is stopped): lower max_steps, or ask the "
        "operator to raise the limit"
    )


def check_time_limit(estimate: TrainingEstimate) -> None:
    """Refuse (ConfigError naming max_steps) a run estimated longer than N3_TRAINING_TIMEOUT: measured, or
    ROUGH_ESTIMATE_MARGIN times longer by the rough default."""
    margin = ROUGH_ESTIMATE_MARGIN if estimate.estimate_source != "measured" else 1
    if problem := time_limit_problem(estimate, margin=margin):
        raise ConfigError(f"max_steps: {problem}", errors={"max_steps": [problem]})


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:,.0f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


def estimate_training_request(
    *, agent_name: str, overrides: dict[str, Any], preset: Optional[str] = None
) -> TrainingEstimate:
    """The dry run a client asks for: estimate_training on the config that the preset and ``overrides``
    (TrainingConfig fields, snake_case) make over the agent's defaults, checked as queue_training_request checks it,
    with a warning where the run would exceed the training time limit.

    Raises NotFound, ConfigError, InsufficientFeedbackError or ServiceError (base model not allowed, or this
    configuration's measurement failed).
    """
    agent = get_agent(name=agent_name)
    config = _training_config(agent=agent, overrides=overrides, preset=preset)
    estimate = estimate_training(agent=agent, config=config)
    if problem := time_limit_problem(estimate):  # queue_training_request refuses it (check_time_limit)
        estimate.warnings.append(f"{problem[0].upper()}{problem[1:]}.")
    return estimate


def queue_training_request(
    *, agent_name: str, overrides: dict[str, Any], preset: Optional[str] = None,
    user: Optional[AbstractBaseUser] = None,
) -> PolicyVersion:
    """The training a client asks for: queue_training on the config made and checked as for the dry run; same
    errors, and a ConfigError naming max_steps when the run's estimate exceeds N3_TRAINING_TIMEOUT
    (check_time_limit)."""
    agent = get_agent(name=agent_name)
    config = _training_config(agent=agent, overrides=overrides, preset=preset)
    # No measurement queued: it would run ahead of this training, which records its own timings under the key.
    check_time_limit(estimate_training(agent=agent, config=config, queue_measurement=False))
    return queue_training(agent=agent, config=config, user=user)
