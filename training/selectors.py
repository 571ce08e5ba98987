"""Reads for training jobs: the feedback a version trains on, in the training core's record format."""
from __future__ import annotations

from django.db.models import F, QuerySet
from django.db.models.functions import Mod

from feedback.models import Feedback
from policies.models import Agent, PolicyVersion

# The fields of a feedback record as the training core reads them (training.rlhf.data).
RECORD_FIELDS = ("prompt", "response", "score", "run_id", "notes")


def scored_feedback(*, agent: Agent) -> QuerySet[Feedback]:
    """The agent's feedback that a reviewer or the agent has scored (unscored rows await review), oldest first."""
    return Feedback.objects.filter(agent=agent, score__isnull=False).order_by("id")


def spread_sample(queryset: QuerySet[Feedback], *, count: int, limit: int) -> QuerySet[Feedback]:
    """About ``limit`` of the ``count`` rows of ``queryset``, spread evenly over their ids (every k-th id), the same
    ones every time; all of them when ``count <= limit``. The dry run reads this instead of every row."""
    step = -(-count // limit)  # ceil
    return queryset if step <= 1 else queryset.annotate(_id_mod=Mod(F("id"), step)).filter(_id_mod=0)


def feedback_records(queryset: QuerySet[Feedback]) -> list[dict]:
    """Plain dicts for ``RLHFTrainer.train``/``estimate``."""
    return list(queryset.values(*RECORD_FIELDS))


def snapshot_feedback(*, version: PolicyVersion) -> QuerySet[Feedback]:
    """The feedback ``version`` trains on: its agent's rows up to its snapshot bound (the newest row when it was
    queued) that are scored now. A row deleted since is gone, a score edited since counts with its new value, a
    score cleared since drops the row, and a row scored since it was queued (it awaited review then) joins."""
    return scored_feedback(agent=version.agent).filter(id__lte=version.feedback_through_id or 0)


def snapshot_records(*, version: PolicyVersion) -> list[dict]:
    """snapshot_feedback as records; read in chunks, so millions of rows need no more than one query's memory."""
    return list(snapshot_feedback(version=version).values(*RECORD_FIELDS).iterator(chunk_size=10_000))
