"""The dry run's timings without torch: a calibration looked up by its timing key (plain JSON reads), or a rough
default answer and the measurement queued in the worker, once per key.

    web:     estimate() -> hit: "measured" at once | miss: "default" at once + queue_measurement()
    worker:  tasks.calibrate_timing(digest) -> child `manage.py calibrate_timing <digest>` (measures, stores)
    next:    estimate() -> hit

A measurement that fails (the config cannot train on this model: a LoRA target it lacks, say) is stored under
its key too, and dry runs with that key answer 400 with the reason for estimate.FAILURE_TTL_S.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any, Optional

from django.conf import settings
from django_q.tasks import async_task

from n3site.exceptions import ServiceError
from training.rlhf import TrainingConfig, TrainingEstimate
from training.rlhf import estimate as timing
from training.rlhf.data import FeedbackRecord, prepare_feedback

logger = logging.getLogger(__name__)

DEFAULT_WARNING = (
    "estimatedTimeMinutes is a rough default (estimateSource \"default\"): this configuration has not been measured "
    "on the workers' machine yet. A measurement is queued; a dry run after it (usually a minute) answers with "
    "measured timings."
)


def estimate(
    *, config: TrainingConfig, records: list[dict], measure_here: bool = False, total_records: Optional[int] = None,
) -> TrainingEstimate:
    """The dry run's answer for `records` (the agent's scored feedback, or a sample of its `total_records`). Raises
    ServiceError when this key's measurement failed. `measure_here`: measure a missing calibration in this process
    (imports torch)."""
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
        from training.rlhf import RLHFTrainer  # noqa: PLC0415

        return RLHFTrainer(config, models_dir=models_dir).estimate(records)
    queue_measurement(config=config, records=data.records, key=key)
    default = timing.default_calibration(config, key, models_dir=models_dir)
    return timing.make_estimate(
        config, data, default, source="default", warnings=[DEFAULT_WARNING], total_records=total_records,
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
