"""Feedback JSON: the spec's field names (prompt, response, score, runId, notes) plus stored facts."""
from rest_framework import serializers

from policies.serializers import StrictCharField, StrictFloatField, StrictSerializer

from .models import Feedback
from .services import RUN_ID_MAX_LENGTH


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
