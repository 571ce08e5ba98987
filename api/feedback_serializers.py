"""Feedback JSON: the spec's field names (prompt, response, score, runId, notes) plus stored facts.

Feedback is the API's hot path (agents post it in loops, a list body carries thousands of records), so both
directions have a short way for the plain case, checked against DRF's own results in tests/test_feedback_hot_path.py:
``quick_validated`` accepts a plainly valid record without DRF's per-field machinery (anything else goes through
FeedbackInputSerializer, which words the errors), and FeedbackSerializer builds its dict directly.
"""
import re
from typing import Any, Optional

from rest_framework import serializers

from feedback.models import Feedback
from feedback.services import RUN_ID_MAX_LENGTH, record_problems

from .serializers import StrictCharField, StrictFloatField, StrictSerializer


class FeedbackInputSerializer(StrictSerializer):
    """One feedback record as an agent posts it."""

    prompt = StrictCharField(help_text="What the agent was asked")
    response = StrictCharField(help_text="What the agent answered (kept exactly, whitespace included)")
    score = StrictFloatField(
        required=False, allow_null=True, default=None, min_value=0.0, max_value=1.0,
        help_text="0..1 (0.9-1.0 excellent ... 0.0-0.3 very poor); null or absent: awaiting a reviewer's score",
    )
    runId = StrictCharField(
        source="run_id", required=False, allow_blank=True, default="", max_length=RUN_ID_MAX_LENGTH,
        help_text="The agent's run id. Posting the same runId again returns the stored record (200) "
        "instead of storing a duplicate; with different content it is refused (409).",
    )
    notes = StrictCharField(required=False, allow_blank=True, default="")


# JSON name -> validated_data name, as FeedbackInputSerializer maps them.
_INPUT_NAMES = {"prompt": "prompt", "response": "response", "score": "score", "runId": "run_id", "notes": "notes"}
# DRF's CharField refuses NUL and lone surrogates in every string.
_PROHIBITED_CHARACTERS = re.compile("[\x00\ud800-\udfff]")


def quick_validated(data: Any) -> Optional[dict[str, Any]]:
    """``FeedbackInputSerializer(data=data).validated_data`` when ``data`` is a plainly valid record, else None.

    None means only "not vouched for here": the caller then runs the serializer, which validates every case and
    words the errors. The checks are the service's own (``record_problems``) plus DRF's refusal of NUL and
    surrogate characters, so whatever passes here the serializer would accept with the same result.
    """
    if type(data) is not dict:
        return None
    record: dict[str, Any] = {"score": None, "run_id": "", "notes": ""}
    for key, value in data.items():
        name = _INPUT_NAMES.get(key)
        if name is None or (isinstance(value, str) and _PROHIBITED_CHARACTERS.search(value)):
            return None
        record[name] = value
    try:
        if record_problems(record):
            return None
    except (OverflowError, TypeError, ValueError):  # e.g. a 400-digit integer score: the serializer decides
        return None
    if record["score"] is not None:
        record["score"] = float(record["score"])
    return record


class FeedbackSerializer(serializers.Serializer):
    """A stored feedback record."""

    id = serializers.IntegerField(read_only=True)
    agent = serializers.CharField(source="agent.name", read_only=True)
    prompt = serializers.CharField(read_only=True)
    response = serializers.CharField(read_only=True)
    score = serializers.FloatField(read_only=True, allow_null=True)
    runId = serializers.CharField(source="run_id", read_only=True)
    notes = serializers.CharField(read_only=True)
    source = serializers.ChoiceField(choices=Feedback.Source.choices, read_only=True)
    createdAt = serializers.DateTimeField(source="created_at", read_only=True)
    updatedAt = serializers.DateTimeField(source="updated_at", read_only=True)

    def to_representation(self, instance: Feedback) -> dict[str, Any]:
        """What the declared fields give (the generic ``Serializer.to_representation``), built directly: a list
        answer has one per record, and DRF's field-by-field dispatch cost more than storing them."""
        return {
            "id": instance.pk,
            "agent": instance.agent.name,
            "prompt": instance.prompt,
            "response": instance.response,
            "score": None if instance.score is None else float(instance.score),
            "runId": instance.run_id,
            "notes": instance.notes,
            "source": None if instance.source is None else str(instance.source),
            "createdAt": _DATETIME.to_representation(instance.created_at) if instance.created_at else None,
            "updatedAt": _DATETIME.to_representation(instance.updated_at) if instance.updated_at else None,
        }


_DATETIME = serializers.DateTimeField()
