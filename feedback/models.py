from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Optional

from django.conf import settings
from django.db import models
from django.db.models import Q

from policies.models import Agent, PolicyVersion

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

# A claim's lease (claimed_by, claimed_until: the review queue's items, the blind comparison's pairs): a reviewer
# holds a row this long; one that runs out (closed tab, lunch) frees the row without any clean-up job.
LEASE = timedelta(minutes=5)


def free_for(user: AbstractBaseUser, now) -> Q:
    """Rows ``user`` may claim: unclaimed, lease run out, or already theirs (any model with claimed_by and
    claimed_until: the review queue's items, the blind comparison's pairs)."""
    return Q(claimed_until__isnull=True) | Q(claimed_until__lte=now) | Q(claimed_by=user)


@dataclass(frozen=True)
class ScoreBand:
    """A row of the spec's "Feedback Scoring Guidelines" table, plus the value its key enters."""

    key: str  # keyboard key in the review queue
    value: float  # the score that key records
    low: float
    high: float
    quality: str
    example: str

    @property
    def range_label(self) -> str:
        return f"{self.low:.1f}-{self.high:.1f}"


# Best first, as in the spec's table. Each band is [low, high) except the top one, which includes 1.0.
SCORE_BANDS: tuple[ScoreBand, ...] = (
    ScoreBand("5", 0.95, 0.9, 1.0, "Excellent", "Perfect answer, comprehensive, accurate"),
    ScoreBand("4", 0.8, 0.7, 0.9, "Good", "Correct, clear, minor improvements possible"),
    ScoreBand("3", 0.6, 0.5, 0.7, "Mediocre", "Acceptable but vague or incomplete"),
    ScoreBand("2", 0.4, 0.3, 0.5, "Poor", "Partially incorrect or very incomplete"),
    ScoreBand("1", 0.1, 0.0, 0.3, "Very Poor", "Wrong, misleading, or unhelpful"),
)


def band_q(band: ScoreBand) -> Q:
    """A filter for the scores inside ``band``."""
    if band.high >= 1.0:
        return Q(score__gte=band.low, score__lte=1.0)
    return Q(score__gte=band.low, score__lt=band.high)


def band_for(score: Optional[float]) -> Optional[ScoreBand]:
    if score is None:
        return None
    for band in SCORE_BANDS:
        if band.low <= score < band.high or (band.high >= 1.0 and band.low <= score <= 1.0):
            return band
    return None


class Feedback(models.Model):
    class Source(models.TextChoices):
        API = "api", "API"
        ADMIN = "admin"
        IMPORT = "import"

    # Indexed by feedback_agent_id (agent, id) below, not on its own: the API's list pages by id within an agent.
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="feedback", db_index=False)
    prompt = models.TextField()
    response = models.TextField()
    # 0..1; null means the response awaits a reviewer's score.
    score = models.FloatField(null=True, blank=True)
    # The agent's run id; with the agent it is an idempotency key (a retried POST is not stored twice).
    run_id = models.CharField(max_length=200, blank=True, default="")
    notes = models.TextField(blank=True)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="reviews"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.API)
    # The policy version that produced this response, when the agent reports it.
    policy_version = models.ForeignKey(
        PolicyVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="feedback"
    )
    # Review-queue lease: one reviewer holds an item until claimed_until.
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    claimed_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "feedback"
        indexes = [
            models.Index(fields=["agent", "created_at"], name="feedback_agent_created"),
            models.Index(fields=["agent", "id"], name="feedback_agent_id"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(score__isnull=True) | (Q(score__gte=0.0) & Q(score__lte=1.0)),
                name="feedback_score_between_0_and_1",
            ),
            models.UniqueConstraint(
                fields=["agent", "run_id"], condition=~Q(run_id=""), name="unique_run_id_per_agent"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.agent.name}: {self.prompt[:60]}"


class Review(models.Model):
    """One reviewer's score of one feedback item. With an agent's ``review_overlap`` above 1, an item collects that
    many reviews before it leaves the queue; ``Feedback.score`` (what training reads) is then their mean."""

    feedback = models.ForeignKey(Feedback, on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="feedback_reviews"
    )
    score = models.FloatField()
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [models.Index(fields=["reviewer", "updated_at"], name="review_reviewer_updated")]
        constraints = [
            models.CheckConstraint(
                condition=Q(score__gte=0.0) & Q(score__lte=1.0), name="review_score_between_0_and_1"
            ),
            models.UniqueConstraint(fields=["feedback", "reviewer"], name="one_review_per_reviewer"),
        ]

    def __str__(self) -> str:
        return f"{self.reviewer}: {self.score:g} on feedback {self.feedback_id}"


class Comparison(models.Model):
    """A blind side-by-side comparison of two versions of one agent: the human check before a promotion.

    ``version_a`` is the older version and ``version_b`` the newer (whichever compare page started it), and the
    result is the win rate of B over A (feedback.comparisons.tally). Its items' responses come from the versions
    themselves, generated by a worker (training.comparisons); until then the comparison is ``generating``.
    """

    class Status(models.TextChoices):
        GENERATING = "generating"
        READY = "ready"
        FAILED = "failed"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="comparisons")
    version_a = models.ForeignKey(PolicyVersion, on_delete=models.CASCADE, related_name="+")
    version_b = models.ForeignKey(PolicyVersion, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.GENERATING)
    error = models.TextField(blank=True)
    # How the prompts were chosen, in words (held out of both versions' training, or the latest not trained on).
    prompt_source = models.TextField(blank=True)
    max_new_tokens = models.PositiveIntegerField(default=64)
    # Pairs whose responses differ that were asked for: more prompts are drawn than this, and the worker stops once
    # it has this many (feedback.comparisons.set_responses). Null (comparisons made before): every item counts.
    requested = models.PositiveIntegerField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Comparison {self.pk}: {self.agent.name} {self.version_b.version} vs {self.version_a.version}"


class ComparisonItem(models.Model):
    """One held-out prompt of a comparison, both versions' responses, which one is shown on the left (random, fixed
    when the item is made), and the one vote it gets: ``a``, ``b`` or ``tie`` (blank: awaiting; ``tie`` without a
    vote when the two responses are identical). Reviewers claim
    an item with a lease, as in the review queue, so two reviewers never get the same item at once."""

    class Choice(models.TextChoices):
        A = "a"
        B = "b"
        TIE = "tie"

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="items")
    position = models.PositiveIntegerField()
    prompt = models.TextField()
    response_a = models.TextField(blank=True)
    response_b = models.TextField(blank=True)
    a_on_left = models.BooleanField()
    choice = models.CharField(max_length=8, choices=Choice.choices, blank=True)
    # Both responses byte-identical: a tie recorded without asking anyone (no reviewer), left out of the win rate.
    identical = models.BooleanField(default=False)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    claimed_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["comparison", "position"]
        constraints = [
            models.UniqueConstraint(fields=["comparison", "position"], name="unique_comparison_position"),
        ]

    def __str__(self) -> str:
        return f"Comparison {self.comparison_id} item {self.position}"
