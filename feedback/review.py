"""Reviewing feedback (the writes): the review queue's claim/lease, reviews (several per item), going back, and a
lead's decisions. The reads (the queue, a reviewer's reviews, score summaries) are feedback/selectors.py's.

Two reviewers working the same queue must never be shown the same response at the same moment.
A reviewer *claims* an item with a short lease (``claimed_by`` + ``claimed_until``); the claim is one
conditional UPDATE, so of two reviewers racing for the same row exactly one UPDATE matches and the
other moves on to the next candidate. A lease that runs out (closed tab, lunch) makes the item free
again without any clean-up job.

Each reviewer's score of an item is a ``Review`` (one per reviewer and item). An item stays in the queue, its
``Feedback.score`` null, until it has its agent's ``review_overlap`` reviews; then its score (what training reads)
is their mean. A reviewer never sees an item they reviewed. Every change of an item's reviews locks the item's row
and ends in ``_settle``, the one place its score is computed, so reviewers racing for its last slot give exactly
``review_overlap`` reviews.
"""
from __future__ import annotations

from collections.abc import Iterable
from statistics import fmean
from typing import Optional

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from n3_server.rlhf.records import check_score
from n3site.exceptions import Conflict, NotFound, ServiceError

from .models import LEASE, Feedback, Review, free_for
from .selectors import identical_items, not_reviewed_by, reviewable_by

# Who may see which version wrote a response: leads, those who may change versions (promote one, set the traffic
# split). Reviewers score blind: under a split, knowing the arm they score biases humanScore, the A/B result.
VERSION_PERMISSION = "policies.change_policyversion"
# Candidates looked at per claim attempt; others may win some of them, so take a few at once.
_CLAIM_BATCH = 10


def sees_versions(user: AbstractBaseUser) -> bool:
    """Whether ``user`` may see the policy version of a feedback item (leads) or scores blind (reviewers)."""
    return user.has_perm(VERSION_PERMISSION)


def validate_score(value) -> float:
    """A score as a float in [0, 1] (the records module's rule); raises ServiceError with a message a reviewer
    understands."""
    try:
        return check_score(value)
    except ValueError as exc:
        raise ServiceError(str(exc)) from None


# --- queue -----------------------------------------------------------------------------------


def claim_next(
    *, user: AbstractBaseUser, agent_name: str = "", exclude_ids: Iterable[int] = ()
) -> Optional[Feedback]:
    """Claim the oldest unscored item that nobody else holds and ``user`` has not reviewed, for ``LEASE``; None
    when there is none.

    An item the reviewer already holds comes first (a reloaded page shows the same item again).
    ``exclude_ids`` are items this reviewer skipped: they stay in the queue for others.
    """
    now = timezone.now()
    queue = reviewable_by(user=user, agent_name=agent_name).exclude(id__in=list(exclude_ids))
    held = queue.filter(claimed_by=user, claimed_until__gt=now).select_related("agent", "policy_version").first()
    if held is not None:
        Feedback.objects.filter(pk=held.pk, claimed_by=user).update(claimed_until=now + LEASE)
        held.claimed_until = now + LEASE
        return held
    while True:
        candidates = list(queue.filter(free_for(user, now)).values_list("id", flat=True)[:_CLAIM_BATCH])
        if not candidates:
            return None
        for pk in candidates:
            if try_claim(feedback_id=pk, user=user, now=now):
                # A reviewer works one item at a time: whatever else they held goes back to the queue.
                Feedback.objects.filter(claimed_by=user).exclude(pk=pk).update(claimed_by=None, claimed_until=None)
                return Feedback.objects.select_related("agent", "policy_version").get(pk=pk)
        # Every candidate went to someone else in the meantime: look again (the queue moved on).
        queue = queue.exclude(id__in=candidates)


def try_claim(*, feedback_id: int, user: AbstractBaseUser, now=None) -> bool:
    """Lease one unscored item to ``user`` if nobody else holds it and ``user`` has not reviewed it; True when the
    claim is theirs.

    One conditional UPDATE: of two reviewers who both saw the item free, only the first UPDATE
    matches the row; the second finds the new lease in its WHERE clause and changes nothing.
    """
    now = now or timezone.now()
    return bool(
        Feedback.objects.filter(pk=feedback_id, score__isnull=True)
        .filter(free_for(user, now), not_reviewed_by(user))
        .update(claimed_by=user, claimed_until=now + LEASE)
    )


def release_claim(*, feedback_id: int, user: AbstractBaseUser) -> None:
    """Give an item back to the queue (skip). Only the holder's own claim is released."""
    Feedback.objects.filter(pk=feedback_id, claimed_by=user).update(claimed_by=None, claimed_until=None)


def _locked(feedback_id: int) -> Feedback:
    """The item, its row locked until the transaction ends (PostgreSQL; SQLite's IMMEDIATE transactions already
    run one writer at a time): every change of an item's reviews goes through here, so they never interleave."""
    item = Feedback.objects.select_for_update(of=("self",)).select_related("agent").filter(pk=feedback_id).first()
    if item is None:
        raise NotFound(f"Feedback {feedback_id} does not exist")
    return item


def _settle(item: Feedback, *, complete: bool) -> Feedback:
    """The one place an item's score follows its reviews; call it with the item's row locked (``_locked``).

    ``complete``: the item leaves the queue, its score the mean of its reviews; otherwise the score is null (it
    waits for more reviews). ``reviewer``, ``reviewed_at`` and ``notes`` are the latest review's (the export and
    the admin list show them); with no review left, reviewer and time are cleared and the notes stay.
    """
    reviews = list(Review.objects.filter(feedback=item).order_by("-updated_at", "-id"))
    item.score = round(fmean(r.score for r in reviews), 6) if complete and reviews else None
    if reviews:
        latest = reviews[0]
        item.reviewer_id, item.reviewed_at, item.notes = latest.reviewer_id, latest.updated_at, latest.notes
    else:
        item.reviewer_id, item.reviewed_at = None, None
    item.save(update_fields=["score", "reviewer", "reviewed_at", "notes", "claimed_by", "claimed_until",
                             "updated_at"])
    return item


def score_feedback(
    *, feedback_id: int, user: AbstractBaseUser, score, notes: Optional[str] = None, identical: bool = False
) -> Feedback:
    """Record ``user``'s review (score and notes) of a queue item and release its claim; returns the item, its
    ``saved_review`` the new review and ``identical_reviews`` the reviews given with it to identical items.

    The item leaves the queue once it has its agent's ``review_overlap`` reviews; its score is then their mean.
    ``notes`` None keeps the item's notes. Refused with Conflict when another reviewer holds a live lease on it,
    when it already has its reviews, or when ``user`` reviewed it already (edit that review instead).
    ``identical``: the same review is given to each of ``identical_items`` (the same prompt and response, which the
    queue shows once with their count), each settled as if scored on its own.
    """
    score = validate_score(score)
    with transaction.atomic():
        item = _locked(feedback_id)
        now = timezone.now()
        if item.score is not None:
            if item.agent.review_overlap > 1:
                raise Conflict(f"Feedback {feedback_id} already has its {item.agent.review_overlap} reviews "
                               f"(score {item.score:g})")
            who = item.reviewer.get_username() if item.reviewer else "someone"
            raise Conflict(f"Feedback {feedback_id} was already scored ({item.score:g}) by {who}")
        if Review.objects.filter(feedback=item, reviewer=user).exists():
            raise Conflict(f"You already reviewed feedback {feedback_id}: change your review instead")
        if item.claimed_by_id not in (None, user.pk) and item.claimed_until and item.claimed_until > now:
            who = item.claimed_by.get_username() if item.claimed_by else "another reviewer"
            raise Conflict(f"Feedback {feedback_id} is being reviewed by {who}")
        # The identical items' reviews first: the item's own is then the reviewer's latest ("previous" reopens it).
        others = []
        if identical:
            for other in identical_items(item=item, user=user, now=now).select_for_update(skip_locked=True):
                other.agent = item.agent
                others.append(_add_review(other, user=user, score=score, notes=notes))
        review = _add_review(item, user=user, score=score, notes=notes)
    review.feedback = item
    item.saved_review = review
    item.identical_reviews = others
    return item


def _add_review(item: Feedback, *, user: AbstractBaseUser, score: float, notes: Optional[str]) -> Review:
    """``user``'s review of ``item`` (row locked, checked free), its claim ended and its score settled."""
    review = Review.objects.create(feedback=item, reviewer=user, score=score,
                                   notes=item.notes if notes is None else notes)
    item.claimed_by, item.claimed_until = None, None
    count = Review.objects.filter(feedback=item).count()
    _settle(item, complete=count >= item.agent.review_overlap)
    return review


# --- going back --------------------------------------------------------------------------------


def _own_review(item: Feedback, review_id: int, user: AbstractBaseUser) -> Review:
    review = Review.objects.filter(pk=review_id, feedback=item, reviewer=user).first()
    if review is None:
        raise NotFound(f"You have no review {review_id}")
    return review


def _item_of_review(review_id: int) -> int:
    feedback_id = Review.objects.filter(pk=review_id).values_list("feedback_id", flat=True).first()
    if feedback_id is None:
        raise NotFound(f"You have no review {review_id}")
    return feedback_id


def edit_review(*, review_id: int, user: AbstractBaseUser, score, notes: Optional[str] = None) -> Review:
    """Change ``user``'s own review; a completed item's score becomes the new mean (it stays out of the queue)."""
    score = validate_score(score)
    with transaction.atomic():
        item = _locked(_item_of_review(review_id))
        review = _own_review(item, review_id, user)
        review.score = score
        if notes is not None:
            review.notes = notes
        review.save(update_fields=["score", "notes", "updated_at"])
        _settle(item, complete=item.score is not None)
    review.feedback = item
    return review


def undo_review(*, review_id: int, user: AbstractBaseUser) -> Feedback:
    """Remove ``user``'s review; an item that had all its reviews goes back to the queue (score null) until it has
    them again. Returns the item."""
    with transaction.atomic():
        item = _locked(_item_of_review(review_id))
        _own_review(item, review_id, user).delete()
        count = Review.objects.filter(feedback=item).count()
        _settle(item, complete=item.score is not None and count >= item.agent.review_overlap)
    return item


# --- a lead's decision (admin list and actions, the API's PATCH) -----------------------------


def set_scores(*, queryset: QuerySet[Feedback], score, user: Optional[AbstractBaseUser]) -> int:
    """A lead's decision: each item's score becomes ``score`` (whatever its reviews say) and it leaves the queue;
    ``user``'s review of it is created or changed to ``score`` (no review without a user). A later edit of any of
    its reviews makes the score their mean again."""
    score = validate_score(score)
    now = timezone.now()
    user = user if user is not None and user.is_authenticated else None
    with transaction.atomic():
        ids = list(queryset.order_by().values_list("id", flat=True))
        if user is not None:
            Review.objects.bulk_create(
                [Review(feedback_id=pk, reviewer=user, score=score) for pk in ids],
                update_conflicts=True, unique_fields=["feedback", "reviewer"], update_fields=["score", "updated_at"],
                batch_size=500,
            )
        return Feedback.objects.filter(id__in=ids).update(
            score=score, reviewer=user, reviewed_at=now, updated_at=now, claimed_by=None, claimed_until=None
        )


def clear_scores(*, queryset: QuerySet[Feedback]) -> int:
    """Put responses back into the review queue: their scores and all their reviews go."""
    with transaction.atomic():
        ids = list(queryset.order_by().values_list("id", flat=True))
        Review.objects.filter(feedback_id__in=ids).delete()
        return Feedback.objects.filter(id__in=ids).update(
            score=None, reviewer=None, reviewed_at=None, updated_at=timezone.now()
        )
