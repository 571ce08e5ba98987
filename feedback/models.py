from django.conf import settings
from django.db import models
from django.db.models import Q

from policies.models import Agent, PolicyVersion


class Feedback(models.Model):
    class Source(models.TextChoices):
        API = "api"
        ADMIN = "admin"
        IMPORT = "import"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="feedback")
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
        indexes = [models.Index(fields=["agent", "created_at"], name="feedback_agent_created")]
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
