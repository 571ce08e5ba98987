"""Recording feedback: one record (the API's hot path) or a batch (the API's list body, file imports).

Records are dicts in model field names: prompt, response, score (0..1 or None: awaiting review),
run_id, notes; what a valid one is, is training.rlhf.records' (the API, import and training core use it too).
With its agent, a non-empty run_id is an idempotency key: storing the same record again returns the stored one
(created=False); the same run_id with different content is a Conflict.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from n3site.exceptions import Conflict, ServiceError
from policies.models import Agent, PolicyVersion, agent_name_validator
from policies.services import get_or_create_agent
from training.rlhf import records as rules

from .models import Feedback

# Rows per SELECT when looking up a batch's run ids (SQLite allows 999 parameters in old builds).
_LOOKUP_CHUNK = 500


class BatchValidationError(ServiceError):
    """Some records of a batch are invalid; nothing was stored. ``errors``: (index, message) pairs."""

    def __init__(self, errors: list[tuple[int, str]]):
        self.errors = errors
        shown = "; ".join(f"record {index}: {message}" for index, message in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"Nothing stored: {shown}{more}")

    def error_fields(self) -> dict[str, list[str]]:
        fields: dict[str, list[str]] = {}
        for index, message in self.errors:
            fields.setdefault(f"[{index}]", []).append(message)
        return fields


class BatchConflict(BatchValidationError):
    """Records whose run_id is already stored with different content."""

    status_code = 409


def batch_problems(records: list[Any]) -> list[tuple[int, str]]:
    """(index, message) for each bad record of a batch, and for each run_id repeated in it with other content."""
    problems = [(index, rules.describe(problem)) for index, record in enumerate(records)
                for problem in rules.record_problems(record)]
    if not problems:
        problems = [
            (index, f"runId '{run_id}' is repeated in this request with different content (records {first} and "
                    f"{index})")
            for index, first, run_id in rules.run_id_repeats(records)
        ]
    return problems


def record_feedback(
    *,
    agent_name: str,
    prompt: str,
    response: str,
    score: Optional[float] = None,
    run_id: str = "",
    notes: str = "",
    source: str = Feedback.Source.API,
    user: Optional[AbstractBaseUser] = None,
    policy_version: Optional[PolicyVersion] = None,
) -> tuple[Feedback, bool]:
    """Store one record; returns (feedback, created). The agent is created on its first feedback.

    Raises ValidationError (bad record or agent name) or Conflict (run_id stored with other content).
    Two or three queries: the agent (none while it is cached), the INSERT, and only on a repeated run_id the
    stored row.
    """
    record = {"prompt": prompt, "response": response, "score": score, "run_id": run_id, "notes": notes}
    problems = rules.record_problems(record)
    if problems:
        raise ValidationError([rules.describe(problem) for problem in problems])
    agent, from_cache = _agent_for(agent_name)
    try:
        return _store_one(agent, record, source=source, user=user, policy_version=policy_version)
    except IntegrityError:
        if not from_cache:
            raise
    # The cached agent was deleted since (the INSERT's foreign key failed): look it up (or create it) again, once.
    _forget_agent(agent_name)
    agent = get_or_create_agent(name=agent_name)
    return _store_one(agent, record, source=source, user=user, policy_version=policy_version)


def _store_one(agent: Agent, record: dict[str, Any], *, source: str, user, policy_version) -> tuple[Feedback, bool]:
    """record_feedback's INSERT; IntegrityError when it fails for another reason than a repeated run_id."""
    feedback = _new_feedback(agent, record, source=source, user=user, policy_version=policy_version)
    try:
        with transaction.atomic():  # a savepoint, so a duplicate run_id leaves an outer transaction usable
            feedback.save(force_insert=True)
        return feedback, True
    except IntegrityError:
        # Insert first, look second: a retry is rare, so the usual path is a single INSERT.
        stored = Feedback.objects.filter(agent=agent, run_id=record["run_id"]).first() if record["run_id"] else None
        if stored is None:
            raise
    stored.agent = agent
    if not _same_content(stored, record):
        raise Conflict(_conflict_message(agent, stored))
    return stored, False


def record_feedback_batch(
    *,
    agent_name: str,
    records: list[dict[str, Any]],
    source: str = Feedback.Source.API,
    user: Optional[AbstractBaseUser] = None,
) -> list[tuple[Feedback, bool]]:
    """Store many records in one transaction, all or nothing; returns (feedback, created) per record, in order.

    Raises BatchValidationError listing (index, message) for every bad record (or run_id repeated with other
    content), BatchConflict for run_ids stored with other content, ValidationError for a bad agent name.
    """
    problems = batch_problems(records)
    if problems:
        raise BatchValidationError(problems)
    if not records:
        return []
    try:
        with transaction.atomic():
            return _store_batch(agent_name, records, source=source, user=user)
    except IntegrityError:
        # Another request stored one of these run_ids between our lookup and our insert (possible
        # on PostgreSQL; SQLite's IMMEDIATE transactions serialise writers), or the cached agent
        # was deleted since: look again, once.
        _forget_agent(agent_name)
        with transaction.atomic():
            return _store_batch(agent_name, records, source=source, user=user, cached_agent=False)


def _store_batch(
    agent_name: str, records: list[dict[str, Any]], *, source: str, user, cached_agent: bool = True
) -> list[tuple[Feedback, bool]]:
    agent = _agent_for(agent_name)[0] if cached_agent else get_or_create_agent(name=agent_name)
    run_ids = sorted({record["run_id"] for record in records if record.get("run_id")})
    known: dict[str, Feedback] = {}
    for start in range(0, len(run_ids), _LOOKUP_CHUNK):
        for stored in Feedback.objects.filter(agent=agent, run_id__in=run_ids[start:start + _LOOKUP_CHUNK]):
            stored.agent = agent
            known[stored.run_id] = stored
    results, new, conflicts = [], [], []
    for index, record in enumerate(records):
        run_id = record.get("run_id") or ""
        if run_id in known:  # stored before, or earlier in this batch (the same record: batch_problems checked)
            stored = known[run_id]
            if not _same_content(stored, record):
                conflicts.append((index, _conflict_message(agent, stored)))
            results.append((stored, False))
            continue
        feedback = _new_feedback(agent, record, source=source, user=user)
        new.append(feedback)
        results.append((feedback, True))
        if run_id:
            known[run_id] = feedback
    if conflicts:
        raise BatchConflict(conflicts)
    Feedback.objects.bulk_create(new)
    return results


def _agent_for(name: str) -> tuple[Agent, bool]:
    """``get_or_create_agent(name=name)``, reused for N3_AGENT_CACHE_SECONDS; returns (agent, came from the cache).

    The agent lookup was a fifth of a feedback POST's CPU, for a row that hardly ever changes. A cached agent that
    was deleted meanwhile makes the INSERT fail (foreign key): the callers then forget it and look again. A rename
    in the admin reaches this process within the cache time. Only valid names are cached (others go on to the
    lookup, which refuses a new invalid one).
    """
    timeout = settings.N3_AGENT_CACHE_SECONDS
    if not timeout or not agent_name_validator.regex.fullmatch(name):
        return get_or_create_agent(name=name), False
    key = _agent_key(name)
    agent = cache.get(key)
    if agent is not None:
        return agent, True
    agent = get_or_create_agent(name=name)
    cache.set(key, agent, timeout)
    return agent, False


def _forget_agent(name: str) -> None:
    if settings.N3_AGENT_CACHE_SECONDS and agent_name_validator.regex.fullmatch(name):
        cache.delete(_agent_key(name))


def _agent_key(name: str) -> str:
    return f"n3:agent:{name}"


def _new_feedback(agent: Agent, record: Mapping[str, Any], *, source: str, user, policy_version=None) -> Feedback:
    score = record.get("score")
    # A person entering a score by hand or by import is its reviewer; an agent posting through the API is not.
    reviewer = user if user is not None and score is not None and source != Feedback.Source.API else None
    return Feedback(
        agent=agent,
        prompt=record["prompt"],
        response=record["response"],
        score=rules.clean_score(score),
        run_id=record.get("run_id") or "",
        notes=record.get("notes") or "",
        source=source,
        policy_version=policy_version,
        reviewer=reviewer,
        reviewed_at=timezone.now() if reviewer else None,
    )


def _same_content(stored: Feedback, record: Mapping[str, Any]) -> bool:
    as_stored = {"prompt": stored.prompt, "response": stored.response, "score": stored.score, "notes": stored.notes}
    return rules.content(as_stored) == rules.content(record)


def _conflict_message(agent: Agent, stored: Feedback) -> str:
    return (
        f"runId '{stored.run_id}' is already stored for agent '{agent.name}' (feedback {stored.pk}) "
        "with different content; a retry must send the same record, a new record needs a new runId"
    )
