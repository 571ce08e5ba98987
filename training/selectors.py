"""Reads for training jobs: the feedback a version trains on, in the training core's record format."""
from __future__ import annotations

from django.db.models import QuerySet

from feedback.models import Feedback
from policies.models import Agent, PolicyVersion

# The fields of a feedback record as the training core reads them (training.rlhf.data).
RECORD_FIELDS = ("prompt", "response", "score", "run_id", "notes")


def scored_feedback(*, agent: Agent) -> QuerySet[Feedback]:
    """The agent's feedback that a reviewer or the agent has scored (unscored rows await review), oldest first."""
    return Feedback.objects.filter(agent=agent, score__isnull=False).order_by("id")


def feedback_records(queryset: QuerySet[Feedback]) -> list[dict]:
    """Plain dicts for ``RLHFTrainer.train``/``estimate``."""
    return list(queryset.values(*RECORD_FIELDS))


def snapshot_records(*, version: PolicyVersion) -> list[dict]:
    """The records ``version`` was queued with (its feedback_snapshot ids).

    Rows deleted since then are gone; a score edited since then counts with its new value (and a score cleared
    since then drops the row: the training core skips unscored records).
    """
    return feedback_records(Feedback.objects.filter(pk__in=version.feedback_snapshot).order_by("id"))
