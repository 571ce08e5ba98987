"""What a valid feedback record is: the one validator of the API, file import, review queue, admin and training core.

A record is a dict in Python names (prompt, response, score, run_id, notes, policy_version); ``JSON_NAMES`` maps them
to the names on the wire and in files (``runId``, ``policyVersion``); files also carry the facts stored with a record
(``STORED_JSON_NAMES``). ``record_problems`` returns (field, message) pairs, the message without the
field's name, so that each caller names the field as its user wrote it (``describe`` joins the two for a sentence).
Torch-free and Django-free.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Optional

# Python name -> JSON name: the one map between the two spellings of a feedback record.
JSON_NAMES = {
    "prompt": "prompt", "response": "response", "score": "score", "run_id": "runId", "notes": "notes",
    "policy_version": "policyVersion",
}
PYTHON_NAMES = {json_name: name for name, json_name in JSON_NAMES.items()}
FIELDS = tuple(JSON_NAMES)
# What is stored with a record besides what its agent sends: exported to files and imported back from them (the API
# answers reviewedAt and source but does not take them). ``reviews``: the item's reviews, a list of objects with
# REVIEW_FIELDS, kept in the file's spelling (a nested object has no Python spelling of its own).
STORED_JSON_NAMES = {"reviewer": "reviewer", "reviewed_at": "reviewedAt", "source": "source", "reviews": "reviews"}
REVIEW_FIELDS = ("reviewer", "score", "notes", "reviewedAt")
FILE_JSON_NAMES = {**JSON_NAMES, **STORED_JSON_NAMES}
FILE_PYTHON_NAMES = {json_name: name for name, json_name in FILE_JSON_NAMES.items()}
# A later change to a stored record (PATCH): an end user's score arriving after the response, a note.
UPDATABLE = ("score", "notes")
RUN_ID_MAX_LENGTH = 200  # feedback.models.Feedback.run_id's max_length (a test keeps them equal)
SOURCES = ("api", "admin", "import")  # feedback.models.Feedback.Source (a test keeps them equal)
REVIEWER_MAX_LENGTH = 150  # a Django username's max_length
# A version as the API writes it: "v3" (never "v03"); the service looks it up among the agent's versions.
VERSION_PATTERN = r"^v[1-9][0-9]{0,8}\Z"  # \Z: "$" matches before a final newline too
_VERSION = re.compile(VERSION_PATTERN)

Problem = tuple[str, str]  # (field, message)

REQUIRED_TEXT = "is required and must be non-empty text"
INVISIBLE_TEXT = "must contain visible text, not only whitespace or invisible characters (such as U+200B)"
SCORE_RANGE = "must be a number between 0 and 1 (or null: awaiting review)"
VERSION_TEXT = 'must be a version of the agent such as "v3" (or null: not known)'
TIMESTAMP_TEXT = "must be a date and time in ISO 8601 such as 2026-12-01T07:30:00+00:00 (or empty)"
REVIEWS_TEXT = ('must be a list of reviews such as [{"reviewer": "rita", "score": 0.8, "notes": "", '
                '"reviewedAt": "2026-12-01T07:30:00+00:00"}] (or empty)')
REVIEWER_TEXT = f"must be a username of at most {REVIEWER_MAX_LENGTH} characters"
# PostgreSQL cannot store NUL in text (SQLite can): refused everywhere, so a file that imports here imports there.
NUL_TEXT = "must not contain NUL (\\u0000): Null characters cannot be stored"
SURROGATE_TEXT = "must not contain lone surrogates (\\ud800-\\udfff): they are not Unicode text"

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

# Characters a reader does not see: whitespace, controls (Cc), format characters (Cf: U+200B, U+FEFF, bidi marks),
# fillers that render blank (Hangul, Braille) and invisible marks (variation selectors, U+034F).
# Unicode 14 (Python 3.11); tests/library/test_records.py recomputes it from unicodedata, so an upgrade cannot leave it
# stale.
INVISIBLE_RANGES = (
    (0x0000, 0x0020), (0x007F, 0x00A0), (0x00AD, 0x00AD), (0x034F, 0x034F), (0x0600, 0x0605), (0x061C, 0x061C),
    (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2), (0x115F, 0x1160), (0x1680, 0x1680),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x2000, 0x200F), (0x2028, 0x202F), (0x205F, 0x2064), (0x2066, 0x206F),
    (0x2800, 0x2800), (0x3000, 0x3000), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x13430, 0x13438),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001), (0xE0020, 0xE007F), (0xE0100, 0xE01EF),
)


def _char(code: int) -> str:
    # Escapes: the pattern reads the same in Python and in the schema (drf-spectacular escapes non-ASCII anyway).
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


_INVISIBLE_CLASS = "".join(_char(a) if a == b else f"{_char(a)}-{_char(b)}" for a, b in INVISIBLE_RANGES)
_VISIBLE = re.compile(f"[^{_INVISIBLE_CLASS}]")
# The same rules as regular expressions, for the API schema: text with a visible character, and text without NUL
# (run_id, notes). Lone surrogates are refused too, but a schema's pattern cannot name them (not Unicode scalars).
STORABLE_TEXT_PATTERN = r"^[^\x00]*$"
VISIBLE_TEXT_PATTERN = rf"^[^\x00]*[^{_INVISIBLE_CLASS}][^\x00]*$"


def has_visible_text(text: str) -> bool:
    """Whether ``text`` has a character a reader sees (anything outside INVISIBLE_RANGES)."""
    return _VISIBLE.search(text) is not None


def in_score_range(score: float) -> bool:
    """The score rule: finite, 0 <= score <= 1."""
    return math.isfinite(score) and 0.0 <= score <= 1.0


def score_problem(score: Any) -> Optional[str]:
    """What is wrong with a record's score (a number; None: awaiting review), or None."""
    if score is None:
        return None
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        return f"{SCORE_RANGE}, got {score!r}"
    # An int compares exactly (a 400-digit one would overflow float()).
    if (0 <= score <= 1) if isinstance(score, int) else in_score_range(score):
        return None
    return f"{SCORE_RANGE}, got {score!r}"


def clean_score(score: Optional[float]) -> Optional[float]:
    """A valid score as stored and answered: a float, and 0.0 for -0.0."""
    return None if score is None else float(score) + 0.0


def check_score(value: Any) -> float:
    """A score a reviewer entered (a number, or the text of a form field) as a float in [0, 1].

    Raises ValueError with a message for the reviewer. None is refused: clearing a score is its own action.
    """
    try:
        score = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"Score must be a number between 0 and 1, got {value!r}") from None
    if isinstance(value, bool) or not in_score_range(score):
        raise ValueError(f"Score must be between 0 and 1, got {value!r}")
    return score + 0.0


def record_problems(record: Any, *, stored: bool = False) -> list[Problem]:
    """What is wrong with one record in Python names, as (field, message); empty when it can be stored.

    ``stored``: the record may also carry STORED_JSON_NAMES' facts (a file's reviewer, reviewed_at, source,
    reviews).
    """
    if not isinstance(record, Mapping):
        return [("", "must be an object with prompt, response and score")]
    known = FILE_JSON_NAMES if stored else JSON_NAMES
    problems = [(str(key), "is not a field of a feedback record") for key in record if key not in known]
    for name in ("prompt", "response"):
        value = record.get(name)
        if not isinstance(value, str) or not value:
            problems.append((name, REQUIRED_TEXT))
        elif not has_visible_text(value):
            problems.append((name, INVISIBLE_TEXT))
    problems += _value_problems(record)
    if stored:
        problems += _stored_problems(record)
    return problems


def update_problems(changes: Any) -> list[Problem]:
    """What is wrong with a change to a stored record (UPDATABLE: score and/or notes), as record_problems says it."""
    if not isinstance(changes, Mapping):
        return [("", "must be an object with score and/or notes")]
    problems = [
        (str(key), "cannot be changed: only score and notes can" if key in JSON_NAMES else
         "is not a field of a feedback record")
        for key in changes if key not in UPDATABLE
    ]
    if not problems and not any(key in changes for key in UPDATABLE):
        problems.append(("", "must set score and/or notes"))
    return problems + [(field, message) for field, message in _value_problems(changes) if field in changes]


def _value_problems(record: Mapping[str, Any]) -> list[Problem]:
    """The rules of the optional fields and of storable text, for the fields ``record`` has."""
    problems = []
    message = score_problem(record.get("score"))
    if message:
        problems.append(("score", message))
    run_id = record.get("run_id", "")
    if not isinstance(run_id, str) or len(run_id) > RUN_ID_MAX_LENGTH:
        problems.append(("run_id", f"must be text of at most {RUN_ID_MAX_LENGTH} characters"))
    if not isinstance(record.get("notes", ""), str):
        problems.append(("notes", "must be text"))
    version = record.get("policy_version")
    if version is not None and not (isinstance(version, str) and _VERSION.fullmatch(version)):
        problems.append(("policy_version", f"{VERSION_TEXT}, got {version!r}"))
    for name in ("prompt", "response", "run_id", "notes"):
        value = record.get(name)
        found = _UNSTORABLE.search(value) if isinstance(value, str) else None
        if found:
            problems.append((name, NUL_TEXT if found.group() == "\x00" else SURROGATE_TEXT))
    return problems


def _stored_problems(record: Mapping[str, Any]) -> list[Problem]:
    problems = []
    source = record.get("source")
    if source is not None and source not in SOURCES:
        problems.append(("source", f"must be one of {', '.join(SOURCES)} (or empty: import), got {source!r}"))
    if not _is_username(record.get("reviewer")):
        problems.append(("reviewer", REVIEWER_TEXT))
    reviewed_at = record.get("reviewed_at")
    if reviewed_at is not None and parse_timestamp(reviewed_at) is None:
        problems.append(("reviewed_at", f"{TIMESTAMP_TEXT}, got {reviewed_at!r}"))
    return problems + reviews_problems(record.get("reviews"))


def reviews_problems(reviews: Any) -> list[Problem]:
    """What is wrong with a record's ``reviews`` (None or a list of objects with REVIEW_FIELDS: reviewer a username
    or null, score 0..1, notes text, reviewedAt ISO 8601 or null), each field named as ``reviews[0].score``."""
    if reviews is None:
        return []
    if not isinstance(reviews, list):
        return [("reviews", f"{REVIEWS_TEXT}, got {_shortened(reviews)}")]
    problems, seen = [], set()
    for index, review in enumerate(reviews):
        at = f"reviews[{index}]"
        if not isinstance(review, Mapping):
            problems.append((at, f"must be an object with {', '.join(REVIEW_FIELDS)}, got {_shortened(review)}"))
            continue
        problems += [(f"{at}.{key}", f"is not a field of a review ({', '.join(REVIEW_FIELDS)})")
                     for key in review if key not in REVIEW_FIELDS]
        score = review.get("score")
        if score is None or score_problem(score):
            problems.append((f"{at}.score", f"must be a number between 0 and 1, got {score!r}"))
        reviewer = review.get("reviewer")
        if not _is_username(reviewer):
            problems.append((f"{at}.reviewer", f"{REVIEWER_TEXT} (or null: a deleted user)"))
        elif reviewer is not None and reviewer in seen:  # feedback.models.Review: one per reviewer and item
            problems.append((f"{at}.reviewer", f"repeats {reviewer!r}: an item has one review per reviewer"))
        seen.add(reviewer)
        notes = review.get("notes", "")
        if not isinstance(notes, str):
            problems.append((f"{at}.notes", "must be text"))
        elif _UNSTORABLE.search(notes):
            problems.append((f"{at}.notes", NUL_TEXT if "\x00" in notes else SURROGATE_TEXT))
        reviewed_at = review.get("reviewedAt")
        if reviewed_at is not None and parse_timestamp(reviewed_at) is None:
            problems.append((f"{at}.reviewedAt", f"{TIMESTAMP_TEXT}, got {reviewed_at!r}"))
    return problems


def _is_username(value: Any) -> bool:
    """None (no reviewer) or text that can be a username."""
    return value is None or (isinstance(value, str) and len(value) <= REVIEWER_MAX_LENGTH
                             and not _UNSTORABLE.search(value))


def _shortened(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def parse_timestamp(value: Any) -> Optional[datetime]:
    """An ISO 8601 date and time as an aware datetime (without an offset: UTC), or None when it is not one."""
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            return None
    if parsed is None:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def describe(problem: Problem, names: Optional[Mapping[str, str]] = None) -> str:
    """A problem as a sentence, the field spelt as in ``names`` (e.g. JSON_NAMES) when given."""
    field, message = problem
    if names:
        field = names.get(field, field)
    return f"{field} {message}" if field else message


def content(record: Mapping[str, Any]) -> tuple:
    """What makes two records with the same run_id the same record: prompt, response, score, notes and the policy
    version (its name)."""
    return (record["prompt"], record["response"], clean_score(record.get("score")), record.get("notes") or "",
            record.get("policy_version") or None)


def run_id_repeats(records: Iterable[Mapping[str, Any]]) -> list[tuple[int, int, str]]:
    """(index, index of the first record with its run_id, run_id) for each later record whose run_id an earlier
    one in ``records`` has with different content. The same record twice is a retry, not a repeat."""
    first: dict[str, tuple[int, tuple]] = {}
    repeats = []
    for index, record in enumerate(records):
        run_id = record.get("run_id") or ""
        if not run_id:
            continue
        if run_id not in first:
            first[run_id] = (index, content(record))
        elif first[run_id][1] != content(record):
            repeats.append((index, first[run_id][0], run_id))
    return repeats
