"""Reads for training jobs: the feedback a version trains on, in the training core's record format, where a
queued version stands in the job queue, and two versions compared (the compare page and the API's compare)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Mod
from django_q.models import OrmQ

from feedback.models import Feedback
from policies.models import Agent, PolicyVersion
from policies.selectors import get_agent, get_policy_version

from .deployment import HumanScore, ScoreDifference, human_scores, score_difference

# The fields of a feedback record as the training core reads them (n3_server.rlhf.data).
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


# --- the job queue -------------------------------------------------------------------------------------------------
# Other model work a training may wait behind (a worker runs one job at a time); timing measurements are not listed:
# they yield to a queued training (training.calibration).
OTHER_JOBS = {
    "training.tasks.generate_version_samples": "a version's samples",
    "training.tasks.generate_comparison": "a blind comparison's responses",
}
NAMED_AHEAD = 5  # trainings named in waiting_for; the rest are counted


@dataclass(frozen=True)
class QueueState:
    """Where a queued version stands: ``position`` 1 is the next training to start (of the queued ones, every
    agent's: the workers share one queue); ``waiting_for`` says in one sentence what it waits for."""

    position: int
    ahead: list[str]  # what runs or waits before it, "bot v1 (running, step 3 of 30)"
    waiting_for: str


def queue_state(*, version: PolicyVersion) -> Optional[QueueState]:
    """Why a queued version has not started: the trainings running and queued before it, and (ORM broker) other
    model jobs ahead of its job in the queue. None unless it is queued."""
    if version.status != PolicyVersion.Status.QUEUED:
        return None
    Status = PolicyVersion.Status
    running = list(PolicyVersion.objects.filter(status=Status.RUNNING).select_related("agent").order_by("started_at"))
    before = PolicyVersion.objects.filter(status=Status.QUEUED).filter(
        Q(queued_at__lt=version.queued_at) | Q(queued_at=version.queued_at, pk__lt=version.pk)
    )
    queued_ahead = before.count()
    named = list(before.select_related("agent").order_by("queued_at", "pk")[:NAMED_AHEAD])
    ahead = [f"{v.agent.name} {v.version} (running, step {v.step} of {v.max_steps})" for v in running]
    ahead += [f"{v.agent.name} {v.version} (queued)" for v in named]
    if queued_ahead > len(named):
        ahead.append(f"{queued_ahead - len(named)} more queued")
    ahead += _other_jobs_ahead(version)
    if ahead:
        waiting_for = (f"A free worker (N3_Q_WORKERS={settings.Q_CLUSTER['workers']} per cluster); ahead of it: "
                       + ", ".join(ahead) + ".")
    else:
        waiting_for = ("A worker to pick it up: nothing runs or waits ahead of it (is a worker running? "
                       "`manage.py qcluster`).")
    return QueueState(position=queued_ahead + 1, ahead=ahead, waiting_for=waiting_for)


def _other_jobs_ahead(version: PolicyVersion) -> list[str]:
    """ORM broker: the non-training model jobs queued before this version's job (Redis: not read, none listed)."""
    q_cluster = settings.Q_CLUSTER
    if not q_cluster.get("orm") or q_cluster.get("sync") or not version.task_id:
        return []
    rows = list(OrmQ.objects.order_by("pk"))
    mine = next((row.pk for row in rows if row.task_id() == version.task_id), None)
    if mine is None:
        return []
    return [OTHER_JOBS[row.func()] for row in rows if row.pk < mine and row.func() in OTHER_JOBS]


# --- two versions compared -----------------------------------------------------------------------------------------


def version_pair(*, agent_name: str, a: str, b: str) -> tuple[PolicyVersion, PolicyVersion]:
    """The agent's versions ``a`` and ``b`` ("v1", "v2"): NotFound for an unknown agent or version, ValidationError
    keyed "b" when both name the same version (a version is not compared with itself)."""
    get_agent(name=agent_name)  # an unknown agent first: 404 whatever the versions say
    if a == b:
        raise ValidationError({"b": [f"Name a version other than a ('{a}'): a version is not compared with itself."]})
    return get_policy_version(agent_name=agent_name, version=a), get_policy_version(agent_name=agent_name, version=b)


@dataclass(frozen=True)
class VersionComparison:
    """What the compare page and GET .../compare?a=&b= show of two versions besides their own figures: each one's
    human score (feedback tied to it) and the difference of the means, b's minus a's, with its 95 % Welch
    interval."""

    a: PolicyVersion
    b: PolicyVersion
    score_a: HumanScore
    score_b: HumanScore
    difference: ScoreDifference


def version_comparison(*, a: PolicyVersion, b: PolicyVersion) -> VersionComparison:
    """Human scores of ``a`` and ``b`` (one grouped query) and b's mean minus a's."""
    scores = human_scores([a, b])
    return VersionComparison(a=a, b=b, score_a=scores[a.pk], score_b=scores[b.pk],
                             difference=score_difference(scores[b.pk], scores[a.pk]))
