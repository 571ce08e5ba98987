import secrets
from typing import Optional

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

# Agent names appear in URLs and in MODELS_DIR paths: a slug keeps both safe. \Z, not $: "$" also matches before
# a final newline, and "alpha\n" was a second agent beside "alpha".
agent_name_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}\Z",
    "Agent names are 1-100 letters, digits, '_' or '-', starting with a letter or digit.",
)


def new_policy_id() -> str:
    return secrets.token_hex(6)


class Agent(models.Model):
    name = models.CharField(max_length=100, unique=True, validators=[agent_name_validator])
    description = models.TextField(blank=True)
    # TrainingConfig fields (snake_case) applied before a request's own overrides.
    default_training_config = models.JSONField(default=dict, blank=True)
    # The highest version number ever given to this agent: a deleted version's number is never given again.
    version_counter = models.PositiveIntegerField(default=0, editable=False)
    # Deployment: the version the inference process serves for "model": "<agent>", and an optional split of its
    # traffic among trained versions ({"v3": 0.9, "v4": 0.1}: shares summing to 1; empty: all to active_version).
    active_version = models.ForeignKey(
        "PolicyVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    traffic = models.JSONField(default=dict, blank=True)
    # Store each response the inference process serves as unscored feedback tied to its version (review queue).
    record_served = models.BooleanField(default=False)
    # How many reviewers score each item in the review queue; an item's training score is the mean of their scores.
    review_overlap = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(10)],
        help_text="Reviewers who score each item (1-10). The item's training score is the mean of their scores.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class PolicyVersion(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        TRAINED = "trained"
        FAILED = "failed"
        CANCELLED = "cancelled"

    ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    policy_id = models.CharField(max_length=32, unique=True, default=new_policy_id, editable=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    # The full resolved TrainingConfig (snake_case, TrainingConfig.to_dict()).
    config = models.JSONField(default=dict)
    # Scored feedback counted when queued; once its job starts, the number it actually trains on.
    feedback_count = models.PositiveIntegerField(default=0)
    # The snapshot: the agent's feedback with an id up to this one (the newest when it was queued), as scored when
    # the job starts. A bound, not a list of ids: it stays one value for millions of rows.
    feedback_through_id = models.BigIntegerField(null=True, blank=True)
    # Latest figures under the training core's names (objective/scores, objective/kl, loss/total, ...), the reward
    # model's fit, warnings, evaluation (training.jobs.progress writes it); the per-step figures are TrainingStep rows.
    metrics = models.JSONField(default=dict, blank=True)
    step = models.PositiveIntegerField(default=0)
    max_steps = models.PositiveIntegerField(default=0)
    model_path = models.CharField(max_length=500, blank=True)
    reward_model_path = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True)
    # Why a version was or was not promoted after training (promote: "if_better"), in words.
    promotion_note = models.TextField(blank=True)
    task_id = models.CharField(max_length=64, blank=True)
    cancel_requested = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    queued_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Written by the supervising job while the training process lives.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Written by the training process whenever it reports progress (a step, a reward-model epoch, loading).
    progress_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["agent", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "number"], name="unique_version_number_per_agent"),
        ]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="version_status_heartbeat")]

    def __str__(self) -> str:
        return f"{self.agent.name} {self.version}"

    @property
    def version(self) -> str:
        return f"v{self.number}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def reward_mean(self) -> Optional[float]:
        """The latest mean reward (objective/scores): the spec's rewardMean."""
        return (self.metrics or {}).get("objective/scores")

    @property
    def reward_std(self) -> Optional[float]:
        return (self.metrics or {}).get("objective/scores_std")

    @property
    def kl(self) -> Optional[float]:
        """The latest KL from the reference model (objective/kl)."""
        return (self.metrics or {}).get("objective/kl")

    @property
    def loss(self) -> Optional[float]:
        return (self.metrics or {}).get("loss/total")

    @property
    def warnings(self) -> list[str]:
        """What its training warned about (metrics.warnings), e.g. a reward model no better than the mean score."""
        warnings = (self.metrics or {}).get("warnings")
        return [str(w) for w in warnings] if isinstance(warnings, list) else []

    @property
    def evaluation(self) -> Optional[dict]:
        """metrics.evaluation: the version against the model it started from (the core's keys: better, win_rate,
        win_rate_ci, ...), {"skipped": reason}, or None."""
        evaluation = (self.metrics or {}).get("evaluation")
        return evaluation if isinstance(evaluation, dict) else None


class TrainingStep(models.Model):
    """One logged step of a version's training: its figures under the training core's (TRL's) names
    (n3_server.rlhf.metrics.STEP_METRICS), e.g. {"objective/scores": 0.71, "objective/kl": 0.4, "loss/total": 0.2}."""

    version = models.ForeignKey(PolicyVersion, on_delete=models.CASCADE, related_name="steps")
    step = models.PositiveIntegerField()
    metrics = models.JSONField(default=dict)

    class Meta:
        ordering = ["version", "step"]
        constraints = [models.UniqueConstraint(fields=["version", "step"], name="unique_step_per_version")]

    def __str__(self) -> str:
        return f"{self.version} step {self.step}"
