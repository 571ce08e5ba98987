"""Deployment: which trained version of an agent answers (its active version, an optional traffic split, sticky per
end user), and the A/B result from human scores (the feedback tied to each version). Torch-free: the web process
writes the state, the inference process reads it through ``version_for``.

Assignment: a user's point is the first 8 bytes of SHA-256("<agent>\\0<user>") read as a fraction in [0, 1); the
split's versions, in version order, cover [0, 1) with their shares, and the version whose cumulative share covers the
point answers. The same user always lands on the same version while the split stays the same; without a user, a
random point. Changing the shares moves only the users whose points change side.
"""
from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from django.db import transaction
from django.db.models import Count, F, Sum

from feedback.models import Feedback
from n3site.exceptions import Conflict, ServiceError
from policies.models import Agent, PolicyVersion
from policies.selectors import get_agent, get_policy_version

SHARE_TOLERANCE = 1e-6  # shares must sum to 1 within this
_VERSION = re.compile(r"^v([1-9]\d{0,8})$")


@dataclass(frozen=True)
class DeploymentState:
    agent: str
    active_version: Optional[str]
    traffic: dict[str, float]
    record_served: bool


def deployment_state(agent: Agent) -> DeploymentState:
    active = agent.active_version
    return DeploymentState(
        agent=agent.name, active_version=active.version if active else None, traffic=dict(agent.traffic or {}),
        record_served=agent.record_served,
    )


def promotion_warning(version: PolicyVersion) -> Optional[str]:
    """Why promoting ``version`` by hand needs a second thought, in one sentence; None when its evaluation says it is
    better than its start. (A version trained with promote "if_better" is promoted only when it is.)"""
    evaluation = version.evaluation
    if evaluation and evaluation.get("better"):
        return None
    if not evaluation:
        why = "it was not evaluated against its start"
    elif "skipped" in evaluation:
        why = f"it was not evaluated against its start ({evaluation['skipped']})"
    else:
        why = evaluation.get("verdict") or "its evaluation does not find it better than its start"
    return f"{version.version} is not known to be better than the model it started from: {why}"


# --- writes -----------------------------------------------------------------------------------------------------------


def promote_version(*, agent_name: str, version: str, note: str = "") -> Agent:
    """Make a trained version the agent's active one; it takes all traffic (a split is cleared). ``note`` (why, in
    words) is stored as the version's promotion_note when given. Conflict (409) for a version not trained."""
    with transaction.atomic():
        found = get_policy_version(agent_name=agent_name, version=version)
        agent = Agent.objects.select_for_update().get(pk=found.agent_id)
        found = PolicyVersion.objects.get(pk=found.pk)  # its status as of the lock
        if found.status != PolicyVersion.Status.TRAINED:
            raise Conflict(
                f"Version {found.version} of agent '{agent.name}' is {found.status}: only a trained version can be "
                "promoted"
            )
        agent.active_version = found
        agent.traffic = {}
        agent.save(update_fields=["active_version", "traffic"])
        if note:
            PolicyVersion.objects.filter(pk=found.pk).update(promotion_note=note)
            found.promotion_note = note
    # The state this promotion wrote, not a re-read: a traffic split PUT just after the commit is not ours to show.
    return agent


def set_traffic(
    *, agent_name: str, shares: Optional[Mapping[str, Any]], record_served: Optional[bool] = None
) -> Agent:
    """Set the agent's traffic split ({"v3": 0.9, "v4": 0.1}; {} clears it) and/or its record-served switch, in one
    write; None leaves either as it is. Shares are finite numbers in (0, 1] summing to 1 (within 1e-6) over the
    agent's existing versions (400 otherwise); each version must be trained (409)."""
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(pk=get_agent(name=agent_name).pk)
        fields = []
        if shares is not None:
            agent.traffic = _checked_split(agent, shares)
            fields.append("traffic")
        if record_served is not None:
            agent.record_served = bool(record_served)
            fields.append("record_served")
        if fields:
            agent.save(update_fields=fields)
    return Agent.objects.select_related("active_version").get(pk=agent.pk)


def _checked_split(agent: Agent, traffic: Mapping[str, Any]) -> dict[str, float]:
    if not isinstance(traffic, Mapping):
        raise ServiceError('The traffic split is a JSON object of version shares, e.g. {"v3": 0.9, "v4": 0.1}')
    errors = {}
    numbers = {}
    for name, share in traffic.items():
        match = _VERSION.fullmatch(str(name))
        if not match:
            errors[name] = "Not a version name (v1, v2, ...)"
        elif isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share) \
                or not 0 < share <= 1:
            errors[name] = "A share is a number above 0 and at most 1"
        else:
            numbers[int(match.group(1))] = float(share)
    if errors:
        raise _SplitError("Invalid traffic split", errors)
    if not numbers:
        return {}
    total = sum(numbers.values())
    if abs(total - 1) > SHARE_TOLERANCE:
        raise ServiceError(f"The traffic shares sum to {total:.6g}; they must sum to 1")
    found = dict(PolicyVersion.objects.filter(agent=agent, number__in=numbers).values_list("number", "status"))
    missing = [f"v{n}" for n in sorted(numbers) if n not in found]
    if missing:
        raise _SplitError(f"Agent '{agent.name}' has no version {', '.join(missing)}",
                          {name: "No such version" for name in missing})
    untrained = [f"v{n} is {found[n]}" for n in sorted(numbers) if found[n] != PolicyVersion.Status.TRAINED]
    if untrained:
        raise Conflict(f"Only trained versions can take traffic: {', '.join(untrained)}")
    return {f"v{n}": numbers[n] for n in sorted(numbers)}


class _SplitError(ServiceError):
    def __init__(self, message: str, errors: Mapping[str, str]):
        super().__init__(f"{message}: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = {str(k): [v] for k, v in errors.items()}

    def error_fields(self) -> dict[str, list[str]]:
        return self.errors


# --- reads: which version answers -------------------------------------------------------------------------------------


def assignment_point(agent_name: str, user: Optional[str]) -> float:
    """Where ``user`` falls in [0, 1) for this agent (see the module docstring); no user: a random point."""
    if not user:
        return random.random()
    digest = hashlib.sha256(f"{agent_name}\0{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_choice(traffic: Mapping[str, float], point: float) -> Optional[str]:
    """The version ("v3") whose cumulative share, in version order, covers ``point``; None for an empty split."""
    names = sorted(traffic, key=lambda name: int(name[1:]))
    cumulative = 0.0
    for name in names:
        cumulative += traffic[name]
        if point < cumulative:
            return name
    return names[-1] if names else None  # a sum a rounding error below 1


def version_for(agent: Agent, user: Optional[str] = None) -> Optional[PolicyVersion]:
    """The trained version that answers ``user`` (the OpenAI ``user`` field): by the traffic split when one is set,
    else the active version; None when the agent is not deployed. A split's version deleted since falls back to the
    active version."""
    chosen = split_choice(agent.traffic or {}, assignment_point(agent.name, user)) if agent.traffic else None
    if chosen is not None:
        version = PolicyVersion.objects.filter(
            agent=agent, number=int(chosen[1:]), status=PolicyVersion.Status.TRAINED
        ).select_related("agent").first()
        if version is not None:
            return version
    active = agent.active_version
    return active if active is not None and active.status == PolicyVersion.Status.TRAINED else None


# --- reads: the A/B result from human scores --------------------------------------------------------------------------

# Student's t, 97.5 % quantile, by degrees of freedom (1-30); beyond, 1.96 + 2.4 / df is within 0.001 of it.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: float) -> float:
    if df <= len(_T975):
        return _T975[max(1, math.floor(df + 1e-9)) - 1]  # a fractional (Welch) df rounded down: the wider interval
    return 1.96 + 2.4 / df


@dataclass(frozen=True)
class HumanScore:
    """Feedback tied to one version: ``n`` records, ``n_scored`` of them scored, their mean score and its 95 %
    t-interval (None below 2 scored records), and the scores' sample variance."""

    n: int = 0
    n_scored: int = 0
    mean: Optional[float] = None
    ci: Optional[tuple[float, float]] = None
    variance: Optional[float] = None

    @classmethod
    def from_sums(cls, *, n: int, n_scored: int, total: Optional[float], squares: Optional[float]) -> HumanScore:
        if not n_scored:
            return cls(n=n)
        mean = total / n_scored
        if n_scored < 2:
            return cls(n=n, n_scored=n_scored, mean=mean)
        variance = max(0.0, (squares - n_scored * mean * mean) / (n_scored - 1))
        half = t975(n_scored - 1) * math.sqrt(variance / n_scored)
        # The interval is only shown (nothing computes from it): to 6 decimals, as the dry run's figures are
        # (api.serializers.RoundedFloatField), so the API says [0.3147, 1.0], not [0.31469999999999265, 1.0].
        ci = (round(max(0.0, mean - half), 6) + 0.0, round(min(1.0, mean + half), 6) + 0.0)
        return cls(n=n, n_scored=n_scored, mean=mean, ci=ci, variance=variance)


def human_scores(versions: Iterable[PolicyVersion]) -> dict[int, HumanScore]:
    """Each version's HumanScore by its pk, from one grouped query (sums in the database, no rows loaded)."""
    ids = [v.pk for v in versions]
    rows = (
        Feedback.objects.filter(policy_version__in=ids).values("policy_version")
        .annotate(n=Count("id"), n_scored=Count("score"), total=Sum("score"), squares=Sum(F("score") * F("score")))
    )
    scores = {pk: HumanScore() for pk in ids}
    for row in rows:
        pk = row.pop("policy_version")
        scores[pk] = HumanScore.from_sums(**row)
    return scores


@dataclass(frozen=True)
class ScoreDifference:
    """Mean human score of one version minus another's, with its 95 % Welch interval (None below 2 scored each)."""

    difference: Optional[float]
    ci: Optional[tuple[float, float]]


def score_difference(a: HumanScore, b: HumanScore) -> ScoreDifference:
    if a.mean is None or b.mean is None:
        return ScoreDifference(None, None)
    difference = a.mean - b.mean
    if a.variance is None or b.variance is None:
        return ScoreDifference(difference, None)
    va, vb = a.variance / a.n_scored, b.variance / b.n_scored
    if va + vb == 0:
        return ScoreDifference(difference, (difference, difference))
    # Welch-Satterthwaite degrees of freedom
    df = (va + vb) ** 2 / (va**2 / (a.n_scored - 1) + vb**2 / (b.n_scored - 1))
    half = t975(df) * math.sqrt(va + vb)
    return ScoreDifference(difference, (difference - half, difference + half))
