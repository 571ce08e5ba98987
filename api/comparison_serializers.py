"""Comparisons' JSON: two versions side by side (GET .../compare?a=&b=, the admin's compare page as data) and blind
comparisons (create, list, one with its result), camelCase on the wire."""
from __future__ import annotations

from typing import Any, Optional

from django.core.validators import RegexValidator
from django.urls import reverse as url_path
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.reverse import reverse

from feedback.models import Comparison
from feedback.selectors import ComparisonResult
from n3_server.rlhf.records import VERSION_PATTERN
from training.comparisons import DEFAULT_PROMPTS, MAX_PROMPTS
from training.selectors import VersionComparison

from .query import QuerySerializer
from .serializers import (
    _INTERVAL,
    _NUMBER_OR_NULL,
    PolicyVersionSummarySerializer,
    StrictIntegerField,
    StrictSerializer,
)

MAX_COMPARISONS = 100  # a list page's most comparisons (each one's tally is a query)
_VERSION_SCHEMA = {"type": "string", "pattern": "^v[1-9][0-9]{0,8}$", "description": '"v1", "v2", ...'}


def _display(value: Optional[float]) -> Optional[float]:
    """A figure for display, to 6 decimals (as the dry run's): 0.6667, not 0.6666666666666666."""
    return None if value is None else round(float(value), 6) + 0.0


def _display_interval(bounds: Optional[tuple[float, float]]) -> Optional[list[float]]:
    return None if bounds is None else [_display(bounds[0]), _display(bounds[1])]


@extend_schema_field(_VERSION_SCHEMA)
class VersionNameField(serializers.CharField):
    """A version as the API writes it, "v3" (the agent may still not have it: 404)."""

    def __init__(self, **kwargs):
        super().__init__(max_length=10, validators=[RegexValidator(VERSION_PATTERN, 'Write a version as "v3".')],
                         **kwargs)


# --- two versions compared ----------------------------------------------------------------------------------------


class CompareQuerySerializer(QuerySerializer):
    """The query of GET /api/policies/<agent>/compare: the two versions, both required."""

    a = VersionNameField(help_text='One version ("v1")')
    b = VersionNameField(help_text='The other version ("v2"); humanScoreDifference is b\'s mean minus a\'s')


_SCORE_DIFFERENCE = {
    "type": "object",
    "description": "b's mean human score minus a's, with its 95 % Welch interval: the compare page's \"Difference\" "
                   "row (the admin's compare page of b with a shows the same)",
    "properties": {
        "difference": {**_NUMBER_OR_NULL, "description": "Null until each version has scored feedback tied to it"},
        "ci": {**_INTERVAL, "description": "95 % Welch interval [low, high]; null below 2 scored records each"},
        "preferred": {"type": "string", "nullable": True,
                      "description": "The version with the higher mean once the interval excludes 0; null before"},
    },
    "required": ["difference", "ci", "preferred"],
}


class BlindResultSerializer(serializers.Serializer):
    """A blind comparison's votes so far and the win rate of B over A (ties count half)."""

    pairs = serializers.IntegerField(source="tally.total", help_text="Pairs to judge: those whose two responses "
                                     "differ (while generating: every prompt drawn)")
    judged = serializers.IntegerField(source="tally.n", help_text="Pairs voted on")
    wins = serializers.IntegerField(source="tally.wins", help_text="Votes for B")
    losses = serializers.IntegerField(source="tally.losses", help_text="Votes for A")
    ties = serializers.IntegerField(source="tally.ties", help_text="Votes for neither")
    remaining = serializers.IntegerField(source="tally.remaining", help_text="Pairs not voted on yet")
    identical = serializers.IntegerField(
        source="tally.identical", help_text="Pairs whose two responses are the same text: ties recorded without a "
        "vote, never shown to reviewers, and left out of winRate and ci",
    )
    winRate = serializers.SerializerMethodField()
    ci = serializers.SerializerMethodField()
    preferred = serializers.SerializerMethodField()

    @extend_schema_field({**_NUMBER_OR_NULL, "description": "B's win rate over A on the judged pairs, voted ties "
                          "half; null before a vote"})
    def get_winRate(self, result: ComparisonResult) -> Optional[float]:
        return _display(result.tally.win_rate)

    @extend_schema_field({**_INTERVAL, "description": "95 % Wilson interval of winRate; null before a vote"})
    def get_ci(self, result: ComparisonResult) -> Optional[list[float]]:
        return _display_interval(result.tally.ci)

    @extend_schema_field({"type": "string", "nullable": True, "description": "The version reviewers prefer once "
                          "the interval excludes 0.5; null while there is no evidence either way"})
    def get_preferred(self, result: ComparisonResult) -> Optional[str]:
        preferred = result.preferred
        return preferred.version if preferred else None


class ComparisonSerializer(serializers.Serializer):
    """A blind comparison: two versions' responses to prompts neither trained on, shown to reviewers as left and
    right (which is which never leaves the server), one vote per pair."""

    id = serializers.IntegerField(source="comparison.pk")
    agent = serializers.CharField(source="comparison.agent.name")
    a = serializers.CharField(source="comparison.version_a.version", help_text="The older version")
    b = serializers.CharField(source="comparison.version_b.version", help_text="The newer version")
    status = serializers.ChoiceField(
        source="comparison.status", choices=Comparison.Status.choices,
        help_text="generating: a worker writes both versions' responses; ready: reviewers vote; failed: see error",
    )
    error = serializers.SerializerMethodField()
    requested = serializers.IntegerField(
        source="comparison.requested", allow_null=True, help_text="Pairs whose responses differ asked for (the "
        "request's count); null for a comparison made before identical pairs were set apart",
    )
    prompts = serializers.IntegerField(
        source="tally.drawn", help_text="Prompts drawn: while generating, up to 4 per pair requested (identical "
        "pairs are made up for); once ready, those answered and kept (result.pairs + result.identical)",
    )
    promptSource = serializers.CharField(source="comparison.prompt_source", help_text="How the prompts were chosen")
    maxNewTokens = serializers.IntegerField(source="comparison.max_new_tokens")
    createdAt = serializers.DateTimeField(source="comparison.created_at")
    readyAt = serializers.DateTimeField(source="comparison.ready_at", allow_null=True)
    result = BlindResultSerializer(source="*")
    url = serializers.SerializerMethodField()
    reviewUrl = serializers.SerializerMethodField()

    @extend_schema_field({"type": "string", "nullable": True, "description": "Why it failed; null otherwise"})
    def get_error(self, result: ComparisonResult) -> Optional[str]:
        return result.comparison.error or None

    @extend_schema_field({"type": "string", "format": "uri"})
    def get_url(self, result: ComparisonResult) -> str:
        comparison = result.comparison
        return reverse("policies:comparison-detail", kwargs={"agent": comparison.agent.name,
                                                             "comparison": comparison.pk},
                       request=self.context.get("request"))

    @extend_schema_field({"type": "string", "format": "uri", "description": "Where reviewers vote (the blind "
                          "queue in the browser)"})
    def get_reviewUrl(self, result: ComparisonResult) -> str:
        path = url_path("review:compare", args=[result.comparison.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path


class VersionComparisonSerializer(serializers.Serializer):
    """Two versions as the admin's compare page shows them: each one's figures with its evaluation and human score,
    the difference of the human scores, and the pair's latest blind comparison."""

    agent = serializers.CharField(source="a.agent.name")
    a = serializers.SerializerMethodField()
    b = serializers.SerializerMethodField()
    humanScoreDifference = serializers.SerializerMethodField()
    blindComparison = serializers.SerializerMethodField()

    def _version(self, compared: VersionComparison, version) -> dict[str, Any]:
        context = {**self.context, "human_scores": {compared.a.pk: compared.score_a, compared.b.pk: compared.score_b}}
        return PolicyVersionSummarySerializer(version, context=context).data

    @extend_schema_field(PolicyVersionSummarySerializer)
    def get_a(self, compared: VersionComparison) -> dict[str, Any]:
        return self._version(compared, compared.a)

    @extend_schema_field(PolicyVersionSummarySerializer)
    def get_b(self, compared: VersionComparison) -> dict[str, Any]:
        return self._version(compared, compared.b)

    @extend_schema_field(_SCORE_DIFFERENCE)
    def get_humanScoreDifference(self, compared: VersionComparison) -> dict[str, Any]:
        diff = compared.difference
        preferred = None
        if diff.ci is not None:
            preferred = compared.b.version if diff.ci[0] > 0 else compared.a.version if diff.ci[1] < 0 else None
        return {"difference": _display(diff.difference), "ci": _display_interval(diff.ci), "preferred": preferred}

    @extend_schema_field(ComparisonSerializer(allow_null=True, help_text="The pair's latest blind comparison "
                                              "(either order); null when there is none"))
    def get_blindComparison(self, compared: VersionComparison) -> Optional[dict[str, Any]]:
        latest = self.context.get("blind_comparison")
        return ComparisonSerializer(latest, context=self.context).data if latest else None


# --- blind comparisons --------------------------------------------------------------------------------------------


class ComparisonRequestSerializer(StrictSerializer):
    """POST /api/policies/<agent>/comparisons: which versions, on how many prompts."""

    a = VersionNameField(help_text="One trained version")
    b = VersionNameField(help_text="Another trained version (the older of the two is stored as A)")
    count = StrictIntegerField(
        required=False, default=DEFAULT_PROMPTS, min_value=1, max_value=MAX_PROMPTS,
        help_text=f"Pairs whose responses differ to ask reviewers about (default {DEFAULT_PROMPTS}): up to 4 "
                  "prompts per pair are drawn, as identical pairs are ties without a vote; fewer when the prompts "
                  "neither version trained on run out",
    )


class ComparisonQuerySerializer(QuerySerializer):
    """The query of GET /api/policies/<agent>/comparisons."""

    before = serializers.IntegerField(
        required=False, min_value=1, max_value=2**53, help_text="List the comparisons with ids below this one "
        "(the `next` link sets it)",
    )
    limit = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_COMPARISONS, default=20,
        help_text="Comparisons per page (default 20)",
    )


class ComparisonPageSerializer(serializers.Serializer):
    """A page of the agent's blind comparisons, newest first."""

    next = serializers.URLField(allow_null=True, help_text="The next (older) page; null on the last")
    results = ComparisonSerializer(many=True)
