"""Feedback JSON: the spec's field names (prompt, response, score, runId, notes), policyVersion, plus stored facts.

What a valid record is, is n3_server.rlhf.records' one validator (file import, the service and the training core use
it too); its JSON_NAMES map the names here to the service's. Feedback is the API's hot path (agents post it in loops,
a list body carries thousands of records), so the view calls ``validated_feedback`` directly, without DRF's per-field
machinery, and FeedbackSerializer builds its dict directly (checked against DRF's generic result in
tests/feedback/test_feedback_hot_path.py).
"""
import re
from typing import Any

from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.settings import api_settings

from feedback.models import Feedback
from n3_server.rlhf.records import (
    JSON_NAMES,
    PYTHON_NAMES,
    RUN_ID_MAX_LENGTH,
    STORABLE_TEXT_PATTERN,
    UPDATABLE,
    VERSION_PATTERN,
    VISIBLE_TEXT_PATTERN,
    clean_score,
    record_problems,
    update_problems,
)

from .query import QuerySerializer
from .serializers import StrictFloatField, StrictSerializer, StrictSerializerExtension
from .serializers import _unknown_message as unknown_field_message  # the wording of every API body's unknown keys


class FeedbackInputSerializer(StrictSerializer):
    """One feedback record as an agent posts it."""

    # The fields document the schema (their patterns are the records module's rules); validation is
    # ``validated_feedback``'s, so this serializer and the view cannot disagree.
    prompt = serializers.CharField(
        trim_whitespace=False, validators=[RegexValidator(VISIBLE_TEXT_PATTERN)],
        help_text="What the agent was asked: text with a visible character (not only whitespace or invisible "
        "characters such as U+200B), no NUL",
    )
    response = serializers.CharField(
        trim_whitespace=False, validators=[RegexValidator(VISIBLE_TEXT_PATTERN)],
        help_text="What the agent answered, kept exactly (whitespace included); text with a visible character, no NUL",
    )
    score = StrictFloatField(
        required=False, allow_null=True, default=None, min_value=0.0, max_value=1.0,
        help_text="0..1 (0.9-1.0 excellent ... 0.0-0.3 very poor); null or absent: awaiting a reviewer's score",
    )
    runId = serializers.CharField(
        source="run_id", required=False, allow_blank=True, default="", max_length=RUN_ID_MAX_LENGTH,
        trim_whitespace=False, validators=[RegexValidator(STORABLE_TEXT_PATTERN)],
        help_text="The agent's run id. Posting the same runId again returns the stored record (200) "
        "instead of storing a duplicate; with different content it is refused (409).",
    )
    notes = serializers.CharField(
        required=False, allow_blank=True, default="", trim_whitespace=False,
        validators=[RegexValidator(STORABLE_TEXT_PATTERN)],
    )
    policyVersion = serializers.CharField(
        source="policy_version", required=False, allow_null=True, validators=[RegexValidator(VERSION_PATTERN)],
        help_text='The agent\'s version that produced the response ("v3"); 400 if the agent has no such version. '
        "Null or absent: not known.",
    )

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        record, errors = _record(data)
        if errors:
            raise serializers.ValidationError(errors)
        return record


def validated_feedback(data: Any) -> Any:
    """The body of a feedback POST (one record, or a non-empty list of them) as records in the service's names.

    Raises ValidationError keyed by the field as the client wrote it ("score", "[3].score"): DRF's error shape,
    which the exception handler turns into {"detail", "errors"}.
    """
    if not isinstance(data, list):
        record, errors = _record(data)
        if errors:
            raise serializers.ValidationError(errors)
        return record
    if not data:
        raise serializers.ValidationError({api_settings.NON_FIELD_ERRORS_KEY: ["Send at least one record."]})
    records, errors = [], {}
    for index, item in enumerate(data):
        record, problems = _record(item)
        records.append(record)
        for field, messages in problems.items():
            errors[f"[{index}].{field}" if field else f"[{index}]"] = messages
    if errors:
        raise serializers.ValidationError(errors)
    return records


def _record(data: Any) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """(record in Python names, {JSON field or "": messages})."""
    if not isinstance(data, dict):
        name = type(data).__name__ if data is not None else "null"
        return {}, {"": [f"Each record must be an object with prompt, response and score, got {name}"]}
    unknown = [key for key in data if key not in PYTHON_NAMES]
    if unknown:
        return {}, {key: [unknown_field_message(str(key), set(PYTHON_NAMES))] for key in unknown}
    record: dict[str, Any] = {"score": None, "run_id": "", "notes": ""}
    for key, value in data.items():
        record[PYTHON_NAMES[key]] = value
    errors: dict[str, list[str]] = {}
    for field, message in record_problems(record):
        errors.setdefault(JSON_NAMES.get(field, field), []).append(message)
    if not errors:
        record["score"] = clean_score(record["score"])
    return record, errors


class FeedbackUpdateSerializer(StrictSerializer):
    """A later change to a stored record: score and/or notes (PATCH)."""

    # The fields document the schema; validation is ``validated_update``'s (the records module's rules).
    score = StrictFloatField(
        required=False, allow_null=True, min_value=0.0, max_value=1.0,
        help_text="0..1, recorded with the request's user as reviewer and the time; null: back to awaiting review",
    )
    notes = serializers.CharField(
        required=False, allow_blank=True, trim_whitespace=False, validators=[RegexValidator(STORABLE_TEXT_PATTERN)],
    )

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        return validated_update(data)


class FeedbackUpdateSerializerExtension(StrictSerializerExtension):
    """At least one of the fields (``minProperties: 1``): an empty change is refused."""

    target_class = FeedbackUpdateSerializer
    match_subclasses = False
    priority = 1

    def map_serializer(self, auto_schema, direction):
        return {**super().map_serializer(auto_schema, direction), "minProperties": 1}


def validated_update(data: Any) -> dict[str, Any]:
    """The body of a feedback PATCH as changes in the service's names; ValidationError keyed as for a POST."""
    if not isinstance(data, dict):
        name = type(data).__name__ if data is not None else "null"
        raise serializers.ValidationError(
            {api_settings.NON_FIELD_ERRORS_KEY: [f"Send an object with score and/or notes, got {name}"]})
    errors: dict[str, list[str]] = {
        str(key): ["Cannot be changed: only score and notes can (another response is another record)."]
        if key in PYTHON_NAMES else [unknown_field_message(str(key), set(UPDATABLE))]
        for key in data if key not in UPDATABLE
    }
    if not errors:
        for field, message in update_problems(data):
            key = JSON_NAMES.get(field, field) or api_settings.NON_FIELD_ERRORS_KEY
            errors.setdefault(key, []).append(message if field else message[:1].upper() + message[1:])
    if errors:
        raise serializers.ValidationError(errors)
    return {key: clean_score(value) if key == "score" else value for key, value in data.items()}


@extend_schema_field({"type": "string", "nullable": True, "pattern": VERSION_PATTERN, "readOnly": True})
class VersionNameField(serializers.Field):
    """A PolicyVersion as its name, "v3"."""

    def to_representation(self, value) -> str:
        return value.version


class FeedbackSerializer(serializers.Serializer):
    """A stored feedback record."""

    id = serializers.IntegerField(read_only=True)
    agent = serializers.CharField(source="agent.name", read_only=True)
    prompt = serializers.CharField(read_only=True)
    response = serializers.CharField(read_only=True)
    score = serializers.FloatField(read_only=True, allow_null=True)
    runId = serializers.CharField(source="run_id", read_only=True)
    notes = serializers.CharField(read_only=True)
    policyVersion = VersionNameField(source="policy_version", read_only=True)
    source = serializers.ChoiceField(choices=Feedback.Source.choices, read_only=True)
    reviewedAt = serializers.DateTimeField(source="reviewed_at", read_only=True, allow_null=True)
    createdAt = serializers.DateTimeField(source="created_at", read_only=True)
    updatedAt = serializers.DateTimeField(source="updated_at", read_only=True)

    def to_representation(self, instance: Feedback) -> dict[str, Any]:
        return feedback_data(instance)


def feedback_data(instance: Feedback) -> dict[str, Any]:
    """FeedbackSerializer's representation (what the generic ``Serializer.to_representation`` gives with its declared
    fields), built directly: a list answer has one per record, and DRF's field-by-field dispatch cost more than
    storing them. The feedback POST calls it without a serializer instance (DRF's ``.data`` wrapping is a tenth of
    what this costs); a new record's updatedAt, equal to its createdAt, is formatted once."""
    created = _DATETIME.to_representation(instance.created_at) if instance.created_at else None
    if instance.updated_at == instance.created_at:
        updated = created
    else:
        updated = _DATETIME.to_representation(instance.updated_at) if instance.updated_at else None
    return {
        "id": instance.pk,
        "agent": instance.agent.name,
        "prompt": instance.prompt,
        "response": instance.response,
        "score": None if instance.score is None else float(instance.score),
        "runId": instance.run_id,
        "notes": instance.notes,
        "policyVersion": instance.policy_version.version if instance.policy_version_id else None,
        "source": None if instance.source is None else str(instance.source),
        "reviewedAt": _DATETIME.to_representation(instance.reviewed_at) if instance.reviewed_at else None,
        "createdAt": created,
        "updatedAt": updated,
    }


_DATETIME = serializers.DateTimeField()


# --- reads -------------------------------------------------------------------------------------------------------


class ReviewSerializer(serializers.Serializer):
    """One reviewer's score of a record, as export writes it (reviewedAt: when the review was last changed)."""

    reviewer = serializers.CharField(read_only=True, allow_null=True, help_text="Username; null: a deleted user")
    score = serializers.FloatField(read_only=True)
    notes = serializers.CharField(read_only=True)
    reviewedAt = serializers.DateTimeField(read_only=True)


class StoredFeedbackSerializer(FeedbackSerializer):
    """A stored record as the reads answer it: what a POST answers, plus its reviewer and its reviews."""

    reviewer = serializers.CharField(
        read_only=True, allow_null=True,
        help_text="Username of whoever gave the score (the latest review's reviewer); null: none, or an agent's "
        "score",
    )
    reviews = ReviewSerializer(many=True, read_only=True, help_text="Every reviewer's score, oldest first")

    def to_representation(self, instance: Feedback) -> dict[str, Any]:
        return stored_feedback_data(instance)


def stored_feedback_data(instance: Feedback) -> dict[str, Any]:
    """StoredFeedbackSerializer's representation; the reviews as ``feedback.selectors.with_details`` reads them."""
    return {
        **feedback_data(instance),
        "reviewer": instance.reviewer.get_username() if instance.reviewer_id else None,
        "reviews": [
            {"reviewer": review.reviewer.get_username() if review.reviewer_id else None, "score": review.score,
             "notes": review.notes, "reviewedAt": _DATETIME.to_representation(review.updated_at)}
            for review in instance.reviews.all()
        ],
    }


class FeedbackPageSerializer(serializers.Serializer):
    """One page of a list: follow ``next`` until it is null (each link keeps the request's filters)."""

    next = serializers.URLField(read_only=True, allow_null=True, help_text="The next page; null on the last")
    previous = serializers.URLField(read_only=True, allow_null=True, help_text="The page before; null on the first")
    results = StoredFeedbackSerializer(many=True, read_only=True)


# An export's formats, which the list answers for ?format= (importexport.FORMATS: what import reads back).
EXPORT_FORMATS = ("jsonl", "csv")
MAX_PAGE_SIZE = 1000


class SinceField(serializers.DateTimeField):
    """An ISO 8601 time. A "+02:00" offset sent unencoded in a query string arrives as " 02:00" (a "+" is a space
    there): read as the "+" it was."""

    def to_internal_value(self, value):
        if isinstance(value, str):
            value = re.sub(r"(\d) (\d\d(?::?\d\d)?)$", r"\1+\2", value.strip())
        return super().to_internal_value(value)


class FeedbackQuerySerializer(QuerySerializer):
    """The query parameters of GET /api/policies/feedback/<agent>: filters, paging, format. A parameter it does not
    know is refused (a misspelt filter must not silently list everything)."""

    scored = serializers.ChoiceField(
        choices=["true", "false"], required=False, help_text="true: records with a score; false: awaiting review",
    )
    reviewer = serializers.CharField(
        required=False, max_length=150, help_text="A username: the records this user reviewed (one of their reviews "
        "is theirs); 400 when no user has this name",
    )
    policyVersion = serializers.CharField(
        source="policy_version", required=False,
        validators=[RegexValidator(VERSION_PATTERN, message='Write a version as "v3".')],
        help_text='The agent\'s version that produced the responses ("v3"); 400 when the agent has no such version',
    )
    source = serializers.ChoiceField(choices=Feedback.Source.choices, required=False, help_text="How records came in")
    since = SinceField(
        required=False, help_text="ISO 8601: records created at or after this time (no offset: TIME_ZONE, UTC unless "
        "set). Encode a '+' offset as %2B, or write Z",
    )
    cursor = serializers.CharField(
        required=False, help_text="Where a page starts: the opaque value in the `next` and `previous` links",
    )
    pageSize = serializers.IntegerField(
        source="page_size", required=False, min_value=1, max_value=MAX_PAGE_SIZE,
        help_text="Records per page (default 100)",
    )
    format = serializers.ChoiceField(
        choices=["json", *EXPORT_FORMATS], required=False,
        help_text="json (default): one page. jsonl or csv: every record of the filter, streamed as a file in the "
        "export's format (manage.py import_feedback and the admin import read it back); cursor and pageSize do not "
        "apply",
    )

    def to_internal_value(self, data):
        """``data``: the request's QueryDict. An empty value is refused as any bad one (not read as "no filter")."""
        values = super().to_internal_value(data)
        if "scored" in values:
            values["scored"] = values["scored"] == "true"
        return values
