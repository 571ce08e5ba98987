"""The dry run's timings without torch: a calibration looked up by its timing key (plain JSON reads), or a rough
answer and the measurement queued in the worker, once per key.

    web:     estimate() -> hit: "measured" at once | miss: "rough" at once + queue_measurement()
    worker:  tasks.calibrate_timing(digest) -> child `manage.py calibrate_timing <digest>` (measures, stores)
    next:    estimate() -> hit

A measurement never delays a training (the issue of a version that sat queued behind one): it is queued by dry
runs only (a training request measures itself: record_run_timings() files a trained version's own timings under its
key), it returns without work when its key was measured meanwhile or a training is queued (why_not_measure), and the
worker stops it as soon as a training is queued while it runs (training_waiting).

A measurement that fails (the config cannot train on this model: a LoRA target it lacks, say) is stored under
its key too, and dry runs with that key answer 400 with the reason for timing.FAILURE_TTL_S.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any, Optional

from django.conf import settings
from django_q.tasks import async_task

from n3_server.rlhf import TrainingConfig, TrainingEstimate, timing
from n3_server.rlhf.data import FeedbackRecord, prepare_feedback
from n3_server.rlhf.layout import RESULTS_FILE
from n3_server.rlhf.results import TrainingResult
from n3site.exceptions import ServiceError
from policies.models import PolicyVersion

from . import selectors
from .files import version_dir

logger = logging.getLogger(__name__)

ROUGH_WARNING = (
    "estimatedTimeMinutes is rough (estimateSource \"rough\"): this configuration has not been measured on the "
    "workers' machine yet; the figure comes from the model's size, the lengths and {basis}. {next}"
)
MEASUREMENT_QUEUED = (
    "A measurement is queued (it runs when no training waits); a dry run after it answers with measured timings."
)
MEASURED_BY_RUN = "The training measures it: dry runs after it answer with its measured timings."


def estimate(
    *, config: TrainingConfig, records: list[dict], measure_here: bool = False, total_records: Optional[int] = None,
    queue: bool = True,
) -> TrainingEstimate:
    """The dry run's answer for `records` (the agent's scored feedback, or a sample of its `total_records`). Raises
    ServiceError when this key's measurement failed. `measure_here`: measure a missing calibration in this process
    (imports torch). `queue=False` (a training request: the run records its own timings) queues no measurement."""
    data = prepare_feedback(records)
    models_dir = settings.MODELS_DIR
    key = timing.timing_key(config, data.records, models_dir=models_dir)
    failure = timing.load_failure(models_dir, key)
    if failure is not None:
        raise ServiceError(f"Training with this configuration fails: {failure}")
    measured = timing.load_calibration(models_dir, key)
    if measured is not None:
        return timing.make_estimate(config, data, measured, source="measured", total_records=total_records)
    if measure_here:
        # Function-local: only the CLI's dry run (a torch process anyway) measures in its own process.
        from n3_server.rlhf import RLHFTrainer  # noqa: PLC0415

        return RLHFTrainer(config, models_dir=models_dir).estimate(records)
    if queue:
        queue_measurement(config=config, records=data.records, key=key)
    rough = timing.rough_calibration(key, models_dir=models_dir)
    warning = ROUGH_WARNING.format(basis=rough.basis, next=MEASUREMENT_QUEUED if queue else MEASURED_BY_RUN)
    return timing.make_estimate(
        config, data, rough.calibration, source="rough", warnings=[warning], total_records=total_records,
    )


def queue_measurement(*, config: TrainingConfig, records: list[FeedbackRecord], key: dict[str, Any]) -> bool:
    """Queue the worker's measurement of `key` unless one is queued already; True when this call queued it.

    The request file carries the config and the records the miniature run trains on (a small seeded sample), so
    the measuring process needs no database. A broker that refuses is logged, not raised: the dry run still
    answers (from the default).
    """
    sample = [asdict(r) for r in timing.calibration_records(records, config)]
    digest = timing.claim_pending(settings.MODELS_DIR, key, {"config": config.to_dict(), "records": sample})
    if digest is None:
        return False
    try:
        async_task(
            "training.tasks.calibrate_timing", digest, task_name=f"calibrate {config.base_model} {digest}",
            group="calibration",
        )
    except Exception:
        logger.exception("Could not queue the timing measurement %s", digest)
        timing.release_pending(settings.MODELS_DIR, digest)
        return False
    return True


# --- a measurement yields to trainings ---------------------------------------------------------------------------
def training_waiting() -> Optional[str]:
    """Why a measurement must not run now: a training is queued (it would wait behind the measurement); None if
    none is. Trainings running on other workers do not stop it."""
    waiting = PolicyVersion.objects.filter(status=PolicyVersion.Status.QUEUED).select_related("agent").order_by(
        "queued_at", "pk").first()
    return f"{waiting.agent.name} {waiting.version} is queued, and a training never waits behind a measurement" \
        if waiting else None


def why_not_measure(digest: str) -> Optional[str]:
    """Why the queued measurement `digest` should return without work (its request is gone, its key was measured
    meanwhile, by a training of that configuration say, or a training is queued); None: measure it."""
    request = timing.read_pending(settings.MODELS_DIR, digest)
    if request is None:
        return "its request is gone"
    if timing.load_calibration(settings.MODELS_DIR, request["key"]) is not None:
        return "its configuration has been measured meanwhile"
    return training_waiting()


def record_run_timings(*, version: PolicyVersion) -> Optional[str]:
    """File a trained version's own timings (its training_results.json) as the calibration of its timing key, unless
    that key is measured already: a dry run of the same configuration afterwards answers "measured", and no separate
    measurement is needed for it. Returns the key's digest when it filed one. The key is computed as the dry run
    computes it (the same even sample of the feedback, here the version's snapshot)."""
    path = version_dir(version.agent.name, version.number) / RESULTS_FILE
    if not path.is_file():
        return None
    config = TrainingConfig.from_dict(version.config)
    feedback = selectors.snapshot_feedback(version=version)
    sample = selectors.spread_sample(feedback, count=feedback.count(), limit=settings.N3_ESTIMATE_SAMPLE)
    records = prepare_feedback(selectors.feedback_records(sample)).records
    key = timing.timing_key(config, records, models_dir=settings.MODELS_DIR)
    if timing.load_calibration(settings.MODELS_DIR, key) is not None:
        return None
    timing.store_calibration(settings.MODELS_DIR, key, timing.calibration_from_result(TrainingResult.load(path)))
    return timing.key_digest(key)
