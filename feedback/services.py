"""Recording feedback: one record (the API's hot path) or a batch (the API's list body; a file import's, with what
an export writes besides the records, through its own ``import_feedback_batch``), a later change to a stored one
(an end user's score arriving after the response), and a lead settling a disagreement.

Records are dicts in model field names: prompt, response, score (0..1 or None: awaiting review),
run_id, notes, policy_version ("v3": the agent's version that produced the response, or None); what a valid one
is, is n3_server.rlhf.records' (the API, import and training core use it too).
With its agent, a non-empty run_id is an idempotency key: storing the same record again returns the stored one
(created=False); the same run_id with different content is a Conflict.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Optional

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from n3_server.rlhf.records import (
    JSON_NAMES,
    clean_score,
    content,
    describe,
    parse_timestamp,
    record_problems,
    run_id_repeats,
    update_problems,
)
from n3site.exceptions import Conflict, NotFound, ServiceError
from policies.models import Agent, PolicyVersion, agent_name_validator
from policies.selectors import get_agent
from policies.services import get_or_create_agent

from . import inserts, review
from .models import Feedback, Review
from .selectors import SETTLED_PREFIX

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


def batch_problems(records: list[Any], *, stored: bool = False) -> list[tuple[int, str]]:
    """(index, message) for each bad record of a batch, and for each run_id repeated in it with other content."""
    problems = [(index, describe(problem)) for index, record in enumerate(records)
                for problem in record_problems(record, stored=stored)]
    if not problems:
        problems = [
            (index, f"runId '{run_id}' is repeated in this request with different content (records {first} and "
                    f"{index})")
            for index, first, run_id in run_id_repeats(records)
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
    policy_version: Optional[PolicyVersion | str] = None,
) -> tuple[Feedback, bool]:
    """Store one record; returns (feedback, created). The agent is created on its first feedback.

    ``policy_version``: the agent's version that produced the response, by name ("v3") or row.
    Raises ValidationError (bad record, agent name or unknown version) or Conflict (run_id stored with other
    content). Two or three queries: the agent (none while it is cached; the version's row brings its agent), the
    INSERT, and only on a repeated run_id the stored row.
    """
    label = policy_version.version if isinstance(policy_version, PolicyVersion) else policy_version
    record = {"prompt": prompt, "response": response, "score": score, "run_id": run_id, "notes": notes,
              "policy_version": label}
    problems = record_problems(record)
    if problems:
        raise ValidationError([describe(problem) for problem in problems])
    if isinstance(policy_version, PolicyVersion):
        if policy_version.agent.name != agent_name:
            raise ValidationError({"policyVersion": [_unknown_version(agent_name, label)]})
        return _store_one(policy_version.agent, record, source=source, user=user, policy_version=policy_version)
    if label is not None:
        version = _versions_of(agent_name, [label]).get(label)
        if version is None:
            raise ValidationError({"policyVersion": [_unknown_version(agent_name, label)]})
        return _store_one(version.agent, record, source=source, user=user, policy_version=version)
    agent, from_cache = _agent_for(agent_name)
    try:
        return _store_one(agent, record, source=source, user=user, policy_version=None)
    except IntegrityError:
        if not from_cache:
            raise
    # The cached agent was deleted since (the INSERT's foreign key failed): look it up (or create it) again, once.
    _forget_agent(agent_name)
    agent = get_or_create_agent(name=agent_name)
    return _store_one(agent, record, source=source, user=user, policy_version=None)


def _store_one(agent: Agent, record: dict[str, Any], *, source: str, user, policy_version) -> tuple[Feedback, bool]:
    """record_feedback's INSERT; IntegrityError when it fails for another reason than a repeated run_id."""
    feedback = _new_feedback(agent, record, source=source, user=user, policy_version=policy_version)
    try:
        if feedback.reviewer_id is None:
            inserts.insert(feedback)  # save(force_insert=True), cheaper; its own savepoint inside a transaction
        else:
            with transaction.atomic():  # the row and its reviewer's review, together
                inserts.insert(feedback)
                _keep_reviews([feedback])
        return feedback, True
    except IntegrityError:
        # Insert first, look second: a retry is rare, so the usual path is a single INSERT.
        stored = _stored(agent).filter(run_id=record["run_id"]).first() if record["run_id"] else None
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

    A record with a score stored by ``user`` other than through the API has ``user`` as its reviewer, now (as
    ``record_feedback``). Raises BatchValidationError listing (index, message) for every bad record (or run_id
    repeated with other content, or version the agent does not have), BatchConflict for run_ids stored with other
    content, ValidationError for a bad agent name.
    """
    versions = _checked_batch(agent_name, records, stored=False)

    def build(agent: Agent, record: dict[str, Any]) -> Feedback:
        return _new_feedback(agent, record, source=source, user=user,
                             policy_version=versions.get(record.get("policy_version") or ""))

    def keep(new: list[Feedback], new_records: list[dict[str, Any]]) -> None:
        _keep_reviews(new)

    return _store_batch(agent_name, records, build=build, keep=keep)


def import_feedback_batch(
    *,
    agent_name: str,
    records: list[dict[str, Any]],
    source: str = Feedback.Source.IMPORT,
    user: Optional[AbstractBaseUser] = None,
) -> list[tuple[Feedback, bool]]:
    """A file import's records (feedback/importexport.py), stored as ``record_feedback_batch`` stores them, with
    what an export writes besides the record: ``source`` (kept; default ``source``), ``reviewer`` (a username: kept
    when that user exists here, else left empty) and ``reviewed_at`` (ISO 8601). A record with either of the last
    two keys is stored as they say; one without them and with a score has ``user`` as its reviewer, now (as any
    record from a person: not through the API). A non-empty ``reviews`` list (an export's) becomes the item's reviews
    instead of that reviewer's single one (``_keep_imported_reviews``); its score is stored as the record says (not
    recomputed from them). Raises as ``record_feedback_batch``.
    """
    versions = _checked_batch(agent_name, records, stored=True)
    reviewers = users_named(reviewer_names(records))

    def build(agent: Agent, record: dict[str, Any]) -> Feedback:
        return _imported_feedback(agent, record, source=source, user=user, reviewers=reviewers,
                                  policy_version=versions.get(record.get("policy_version") or ""))

    def keep(new: list[Feedback], new_records: list[dict[str, Any]]) -> None:
        _keep_imported_reviews(new, listed=[record.get("reviews") for record in new_records], reviewers=reviewers)

    return _store_batch(agent_name, records, build=build, keep=keep)


def _checked_batch(agent_name: str, records: list[Any], *, stored: bool) -> dict[str, PolicyVersion]:
    """The versions the batch names, by name; BatchValidationError for bad records or versions the agent lacks."""
    problems = batch_problems(records, stored=stored)
    if problems:
        raise BatchValidationError(problems)
    labels = [record.get("policy_version") for record in records]
    versions = _versions_of(agent_name, [label for label in labels if label]) if any(labels) else {}
    unknown = [(index, f"policyVersion {_unknown_version(agent_name, label)}")
               for index, label in enumerate(labels) if label and label not in versions]
    if unknown:
        raise BatchValidationError(unknown)
    return versions


def _store_batch(
    agent_name: str, records: list[dict[str, Any]], *, build: Callable[[Agent, dict[str, Any]], Feedback],
    keep: Callable[[list[Feedback], list[dict[str, Any]]], None],
) -> list[tuple[Feedback, bool]]:
    """The batch in one transaction: ``build`` makes a new record's row, ``keep`` stores the reviews of the new
    rows (given with their records)."""
    if not records:
        return []
    try:
        with transaction.atomic():
            return _store_batch_once(agent_name, records, build=build, keep=keep)
    except IntegrityError:
        # Another request stored one of these run_ids between our lookup and our insert (possible
        # on PostgreSQL; SQLite's IMMEDIATE transactions serialise writers), or the cached agent
        # was deleted since: look again, once.
        _forget_agent(agent_name)
        with transaction.atomic():
            return _store_batch_once(agent_name, records, build=build, keep=keep, cached_agent=False)


def _store_batch_once(
    agent_name: str, records: list[dict[str, Any]], *, build: Callable[[Agent, dict[str, Any]], Feedback],
    keep: Callable[[list[Feedback], list[dict[str, Any]]], None], cached_agent: bool = True,
) -> list[tuple[Feedback, bool]]:
    agent = _agent_for(agent_name)[0] if cached_agent else get_or_create_agent(name=agent_name)
    run_ids = sorted({record["run_id"] for record in records if record.get("run_id")})
    known: dict[str, Feedback] = {}
    for start in range(0, len(run_ids), _LOOKUP_CHUNK):
        for stored in _stored(agent).filter(run_id__in=run_ids[start:start + _LOOKUP_CHUNK]):
            stored.agent = agent
            known[stored.run_id] = stored
    results, new, new_records, conflicts = [], [], [], []
    for index, record in enumerate(records):
        run_id = record.get("run_id") or ""
        if run_id in known:  # stored before, or earlier in this batch (the same record: batch_problems checked)
            stored = known[run_id]
            if not _same_content(stored, record):
                conflicts.append((index, _conflict_message(agent, stored)))
            results.append((stored, False))
            continue
        feedback = build(agent, record)
        new.append(feedback)
        new_records.append(record)
        results.append((feedback, True))
        if run_id:
            known[run_id] = feedback
    if conflicts:
        raise BatchConflict(conflicts)
    Feedback.objects.bulk_create(new)
    keep(new, new_records)
    return results


def _reviewer_review(feedback: Feedback) -> Optional[Review]:
    """The review a score stored with its reviewer is (none without a reviewer or a score)."""
    if feedback.reviewer_id is None or feedback.score is None:
        return None
    return Review(feedback=feedback, reviewer_id=feedback.reviewer_id, score=feedback.score, notes=feedback.notes)


def _keep_reviews(new: list[Feedback]) -> None:
    """A score stored with its reviewer (entered in the admin, imported from a file) is that reviewer's review, as
    the queue's are: agreement, "my recent reviews" and the item's mean see it (migration feedback/0002 did the same
    for scores given before reviews were kept). An agent's API posts have no reviewer: nothing to do."""
    reviews = [review for review in map(_reviewer_review, new) if review is not None]
    if reviews:
        Review.objects.bulk_create(reviews)


def _keep_imported_reviews(
    new: list[Feedback], *, listed: list[Optional[list[dict]]], reviewers: dict[str, AbstractBaseUser]
) -> None:
    """``_keep_reviews`` for a file import, whose items may list their reviews (``listed``, one entry per item of
    ``new``): an item's non-empty ``reviews`` list replaces its reviewer's single review: one Review per entry whose
    reviewer is a user here (``reviewers``; an unknown one is skipped) or null (a deleted user's review: kept
    without a reviewer, as agreement counts it), given and last changed at its reviewedAt (else now). The times are
    set by a second UPDATE: bulk_create always writes now into auto_now fields, bulk_update writes what the rows
    say."""
    reviews, timed = [], []
    for feedback, entries in zip(new, listed):
        if not entries:
            single = _reviewer_review(feedback)
            if single is not None:
                reviews.append(single)
            continue
        for entry in entries:
            name = entry.get("reviewer")
            reviewer = reviewers.get(name) if name else None
            if name and reviewer is None:
                continue
            review = Review(feedback=feedback, reviewer=reviewer, score=clean_score(entry["score"]),
                            notes=entry.get("notes") or "")
            reviews.append(review)
            reviewed_at = parse_timestamp(entry["reviewedAt"]) if entry.get("reviewedAt") else None
            if reviewed_at is not None:
                timed.append((review, reviewed_at))
    if reviews:
        Review.objects.bulk_create(reviews)
    for review, reviewed_at in timed:
        review.created_at = review.updated_at = reviewed_at
    if timed:
        Review.objects.bulk_update([review for review, _ in timed], ["created_at", "updated_at"])


def update_feedback(
    *, agent_name: str, run_id: str, changes: Mapping[str, Any], user: Optional[AbstractBaseUser] = None
) -> Feedback:
    """Set ``score`` and/or ``notes`` (``changes``, in Python names) of the agent's record with ``run_id``.

    A score is a lead's decision (``decide_score``). Raises ValidationError (bad change) or NotFound (agent, run_id).
    """
    problems = update_problems(changes)
    if problems:
        raise ValidationError([describe(problem, JSON_NAMES) for problem in problems])
    agent = get_agent(name=agent_name)
    feedback = _stored(agent).filter(run_id=run_id).first() if run_id else None
    if feedback is None:
        raise NotFound(f"No feedback with runId '{run_id}' for agent '{agent_name}'")
    with transaction.atomic():
        if "notes" in changes:
            feedback.notes = changes["notes"]
            feedback.save(update_fields=["notes", "updated_at"])
        if "score" in changes:
            decide_score(feedback_id=feedback.pk, score=clean_score(changes["score"]), user=user)
            feedback.refresh_from_db(fields=["score", "reviewer", "reviewed_at", "claimed_by", "claimed_until",
                                             "updated_at"])
    feedback.agent = agent
    return feedback


def decide_score(*, feedback_id: int, score: Optional[float], user: Optional[AbstractBaseUser]) -> None:
    """A lead's decision on one record (the admin's form and list, the API's PATCH): a score is set whatever its
    reviews say, with ``user`` as its reviewer, now, as ``user``'s review, and frees the record's review-queue claim
    (``review.set_scores``); None puts the record back in the review queue without its reviews
    (``review.clear_scores``)."""
    one = Feedback.objects.filter(pk=feedback_id)
    if score is None:
        review.clear_scores(queryset=one)
    else:
        review.set_scores(queryset=one, score=score, user=user)


def settle(*, feedback_id: int, user: AbstractBaseUser, score, notes: str = "") -> Feedback:
    """A lead's final score for an item its reviewers disagree on: ``Feedback.score`` (what training reads)
    becomes ``score`` and the item leaves the queue; reviewer = the lead; its notes say it was settled, from which
    reviews, with the lead's ``notes``. The reviews stay (alpha is about them). Needs two or more reviews."""
    score = review.validate_score(score)
    with transaction.atomic():
        item = Feedback.objects.select_for_update(of=("self",)).filter(pk=feedback_id).first()
        if item is None:
            raise NotFound(f"Feedback {feedback_id} does not exist")
        reviews = list(Review.objects.filter(feedback=item).select_related("reviewer").order_by("score", "id"))
        if len(reviews) < 2:
            raise Conflict(
                f"Feedback {feedback_id} has {len(reviews)} review(s): settling decides between two or more"
            )
        who = ", ".join(f"{r.reviewer.get_username() if r.reviewer else 'deleted user'} {r.score:g}" for r in reviews)
        note = f"{SETTLED_PREFIX}{user.get_username()} at {score:g} (reviews: {who})."
        item.notes = f"{note} {notes.strip()}" if notes and notes.strip() else note
        item.score, item.reviewer, item.reviewed_at = score, user, timezone.now()
        item.claimed_by, item.claimed_until = None, None
        item.save(update_fields=["score", "notes", "reviewer", "reviewed_at", "claimed_by", "claimed_until",
                                 "updated_at"])
    return item


def _stored(agent: Agent):
    """The agent's stored feedback, with what comparing and answering a record reads."""
    return Feedback.objects.filter(agent=agent).select_related("policy_version")


def _versions_of(agent_name: str, labels: list[str]) -> dict[str, PolicyVersion]:
    """The agent's versions among ``labels`` ("v3"), by name, in one query; their rows bring the agent."""
    numbers = sorted({int(label[1:]) for label in labels})
    found = PolicyVersion.objects.filter(agent__name=agent_name, number__in=numbers).select_related("agent")
    return {version.version: version for version in found}


def _unknown_version(agent_name: str, label: str) -> str:
    return f"'{label}' is not a version of agent '{agent_name}'"


def reviewer_names(records: list[Mapping[str, Any]]) -> set[str]:
    """The usernames stored records name: their reviewers and their reviews' (a file's ``reviews``)."""
    names = {record["reviewer"] for record in records if record.get("reviewer")}
    return names | {review["reviewer"] for record in records for review in record.get("reviews") or ()
                    if review.get("reviewer")}


def users_named(names: set[str]) -> dict[str, AbstractBaseUser]:
    """The users among ``names`` (usernames), by name, in one query."""
    if not names:
        return {}
    model = get_user_model()
    return {getattr(user, model.USERNAME_FIELD): user
            for user in model.objects.filter(**{f"{model.USERNAME_FIELD}__in": sorted(names)})}


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
    cached = cache.get(key)
    if cached is not None:
        # Only (id, name) is kept: unpickling a whole model instance from the cache cost as much as the rest of the
        # lookup. The other fields are deferred: read from the database if anything asks for them.
        return Agent.from_db("default", ["id", "name"], cached), True
    agent = get_or_create_agent(name=name)
    cache.set(key, (agent.pk, agent.name), timeout)
    return agent, False


def _forget_agent(name: str) -> None:
    if settings.N3_AGENT_CACHE_SECONDS and agent_name_validator.regex.fullmatch(name):
        cache.delete(_agent_key(name))


def _agent_key(name: str) -> str:
    return f"n3:agent:{name}"


def _new_feedback(
    agent: Agent, record: Mapping[str, Any], *, source: str, user, policy_version: Optional[PolicyVersion] = None,
) -> Feedback:
    score = record.get("score")
    # A person entering a score by hand or by import is its reviewer; an agent posting through the API is not.
    reviewer = user if user is not None and score is not None and source != Feedback.Source.API else None
    return Feedback(
        agent=agent,
        prompt=record["prompt"],
        response=record["response"],
        score=clean_score(score),
        run_id=record.get("run_id") or "",
        notes=record.get("notes") or "",
        source=source,
        policy_version=policy_version,
        reviewer=reviewer,
        reviewed_at=timezone.now() if reviewer else None,
    )


def _imported_feedback(
    agent: Agent, record: Mapping[str, Any], *, source: str, user, policy_version: Optional[PolicyVersion],
    reviewers: dict[str, AbstractBaseUser],
) -> Feedback:
    """``_new_feedback`` with what a file's record says besides: its source, and its own review facts."""
    feedback = _new_feedback(agent, record, source=source, user=user, policy_version=policy_version)
    feedback.source = record.get("source") or source
    if "reviewer" in record or "reviewed_at" in record:
        feedback.reviewer = reviewers.get(record.get("reviewer") or "")
        feedback.reviewed_at = parse_timestamp(record["reviewed_at"]) if record.get("reviewed_at") else None
    return feedback


def _same_content(stored: Feedback, record: Mapping[str, Any]) -> bool:
    as_stored = {"prompt": stored.prompt, "response": stored.response, "score": stored.score, "notes": stored.notes,
                 "policy_version": stored.policy_version.version if stored.policy_version_id else None}
    return content(as_stored) == content(record)


def _conflict_message(agent: Agent, stored: Feedback) -> str:
    return (
        f"runId '{stored.run_id}' is already stored for agent '{agent.name}' (feedback {stored.pk}) "
        "with different content; a retry must send the same record, a new record needs a new runId"
    )
