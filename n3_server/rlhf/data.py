"""Feedback records for training: checked (by records.py, the API's rules), the text format both models read,
the train/validation split, statistics.

A feedback record is a plain dict as the spec's Python API shows::

    {"prompt": "Question 1", "response": "Answer 1", "score": 0.9, "run_id": "run_1", "notes": "..."}

``runId`` is accepted for ``run_id`` (the REST API's spelling). Unknown keys (an id, timestamps) are ignored.
A record whose score is None is awaiting a reviewer and is skipped, not rejected.
"""
from __future__ import annotations

import math
import random
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from .errors import MIN_FEEDBACK, FeedbackFormatError, InsufficientFeedbackError
from .records import JSON_NAMES, PYTHON_NAMES, clean_score, record_problems

if TYPE_CHECKING:  # config imports nothing from here, but the annotation is all this module needs of it
    from .config import TrainingConfig

# Below this many scored samples the reward model is likely to overfit
# (the spec: "Use more feedback data (> 50 samples)").
RECOMMENDED_FEEDBACK = 50


@dataclass(frozen=True)
class FeedbackRecord:
    prompt: str
    response: str
    score: float
    run_id: Optional[str] = None
    notes: Optional[str] = None


def format_query(prompt: str) -> str:
    """What the policy is asked, and what the reward model reads before the response."""
    return prompt + "\n"


def format_text(prompt: str, response: str) -> str:
    """Prompt and response as one text: the reward model scores exactly what the policy was given and wrote."""
    return format_query(prompt) + response


@dataclass
class FeedbackData:
    """Validated, scored feedback plus what the dry run reports about it."""

    records: list[FeedbackRecord]
    skipped_unscored: int
    warnings: list[str]

    @property
    def scores(self) -> list[float]:
        return [r.score for r in self.records]

    @property
    def score_mean(self) -> float:
        return sum(self.scores) / len(self.scores)

    @property
    def score_std(self) -> float:
        """Population standard deviation of the scores."""
        mean = self.score_mean
        return math.sqrt(sum((s - mean) ** 2 for s in self.scores) / len(self.scores))


def prepare_feedback(feedbacks: Iterable[Mapping[str, Any]], *, minimum: int = MIN_FEEDBACK) -> FeedbackData:
    """Validate every record, drop the unscored ones, and require ``minimum`` scored samples.

    Raises FeedbackFormatError (naming the record's index and field) or InsufficientFeedbackError.
    """
    if isinstance(feedbacks, (str, bytes, Mapping)) or not isinstance(feedbacks, Iterable):
        raise FeedbackFormatError("feedbacks must be a list of records (dicts with prompt, response, score)")
    records: list[FeedbackRecord] = []
    skipped = 0
    for index, raw in enumerate(feedbacks):
        record = normalize_record(raw, index)
        if record is None:
            skipped += 1
        else:
            records.append(record)
    if len(records) < minimum:
        raise InsufficientFeedbackError(len(records), minimum)
    return FeedbackData(records=records, skipped_unscored=skipped, warnings=feedback_warnings(records, skipped))


def normalize_record(raw: Any, index: int) -> Optional[FeedbackRecord]:
    """One record as a FeedbackRecord, or None when its score is None (awaiting review).

    The API's rules (records.record_problems), on the spec's Python shape: ``score`` must be present (None: awaiting
    review), ``run_id`` and ``notes`` may be None, ``runId`` is accepted for ``run_id``, other keys are ignored.
    """
    where = f"Feedback record {index}"
    if not isinstance(raw, Mapping):
        raise FeedbackFormatError(
            f"{where} must be an object with prompt, response and score, got {type(raw).__name__}"
        )
    if "score" not in raw:
        raise FeedbackFormatError(f"{where}: missing field 'score'")
    record = {}
    for key, value in raw.items():
        name = key if key in JSON_NAMES else PYTHON_NAMES.get(key)
        if name is not None and not (name in ("run_id", "notes") and value is None):
            record[name] = value
    problems = record_problems(record)
    if problems:
        raise FeedbackFormatError("; ".join(f"{where}: field '{field}' {message}" for field, message in problems))
    score = clean_score(record["score"])
    if score is None:
        return None
    return FeedbackRecord(prompt=record["prompt"], response=record["response"], score=score,
                          run_id=record.get("run_id") or None, notes=record.get("notes"))


def feedback_warnings(records: list[FeedbackRecord], skipped_unscored: int = 0) -> list[str]:
    """Things worth telling the person who starts a run; none of them stops it."""
    warnings = []
    scores = [r.score for r in records]
    if len(set(scores)) == 1:
        warnings.append(
            f"All feedback scores are equal ({scores[0]:g}): the reward model cannot learn a preference. "
            "Ensure scores vary."
        )
    if len(records) < RECOMMENDED_FEEDBACK:
        warnings.append(
            f"Only {len(records)} scored feedback samples: the reward model may overfit. "
            f"More than {RECOMMENDED_FEEDBACK} are recommended."
        )
    if skipped_unscored:
        warnings.append(awaiting_review_warning(skipped_unscored))
    return warnings


def awaiting_review_warning(count: int) -> str:
    """The warning for ``count`` (> 0) feedback records that training skips because they have no score yet."""
    return f"{count} feedback {'record' if count == 1 else 'records'} awaiting review (no score) skipped."


def train_val_split(
    records: list[FeedbackRecord], validation_split: float, seed: int
) -> tuple[list[FeedbackRecord], list[FeedbackRecord]]:
    """Hold out a `validation_split` share of the records, stratified by score; deterministic for a seed.

    The records are ordered by score (ties broken at random), cut into as many equal strata as there are
    validation records, and one record is drawn from each: the held-out set spans the score range, so its
    MSE and correlations mean something even with 10 samples (a plain random cut of 2 may hold two 0.9s).
    With a non-zero split at least 2 records are held out and at least 2 kept for training.
    """
    n = len(records)
    n_val = min(max(2, round(n * validation_split)), n - 2) if validation_split > 0 else 0
    rng = random.Random(seed)
    by_score = sorted(range(n), key=lambda i: (records[i].score, rng.random()))
    held_out = {by_score[int((k + rng.random()) * n / n_val)] for k in range(n_val)}
    train = [r for i, r in enumerate(records) if i not in held_out]
    val = [r for i, r in enumerate(records) if i in held_out]
    return train, val


MIN_TRAIN_PROMPTS = 3


def heldout_split(prompts: Sequence[str], config: TrainingConfig) -> tuple[set[str], Optional[str]]:
    """The distinct prompts held out of training: (held-out set, None), or (empty set, why none are held out).

    A fixed, seeded split: the distinct prompts are ranked by a hash of (seed, prompt) and the first ones held out,
    so the same feedback and seed always hold out the same prompts, whatever the records' order.
    Holds out `eval_fraction` of the distinct prompts (at least 2, at most `eval_max_prompts`), but never so many
    that fewer than `MIN_TRAIN_PROMPTS` distinct prompts, or fewer than MIN_FEEDBACK records, are left to train on.
    Torch-free: the dry run and the web process count what will train with it.
    """
    distinct = sorted(set(prompts))
    if config.eval_fraction == 0:
        return set(), "evaluation is off (eval_fraction 0)"
    count = min(max(2, round(config.eval_fraction * len(distinct))), config.eval_max_prompts)
    if len(distinct) - count < MIN_TRAIN_PROMPTS:
        return set(), (
            f"only {len(distinct)} distinct prompts: at least {MIN_TRAIN_PROMPTS + 2} are needed to hold some out "
            "for the evaluation"
        )
    ranked = sorted(distinct, key=lambda p: zlib.crc32(f"{config.seed}\0{p}".encode()))
    heldout = set(ranked[:count])
    left = sum(p not in heldout for p in prompts)
    if left < MIN_FEEDBACK:
        return set(), (
            f"holding out {count} prompts would leave {left} records to train on (minimum {MIN_FEEDBACK}): "
            "more feedback is needed for an evaluation"
        )
    return heldout, None

