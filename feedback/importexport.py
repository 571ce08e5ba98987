"""Feedback files: JSONL and CSV in the API's field names (prompt, response, score, runId, notes, policyVersion)
and what is stored with a record (reviewer, reviewedAt, source).

Export writes every stored field; import reads what export writes (a round trip gives the same records). A file's
policyVersion must be a version of the agent imported into; its source is kept (none: "import"); its reviewer is
kept when a user of that name exists here, else left empty (the summary names them), with its reviewedAt. A file
without reviewer/reviewedAt (written by hand) has the importing user as the reviewer of its scored rows.
An item's reviews travel as ``reviews`` (JSONL: a list of {reviewer, score, notes, reviewedAt}; CSV: that list as
JSON in one cell, empty when none); import makes them the item's reviews (those by a user missing here are left
out, the summary names them), its score kept as the file says. Without them, an item's scored reviewer is its one
review, as before.
Re-importing an export is a no-op. A row with a runId is the agent's record with that runId (the API's idempotency
key); a row without one (exported as ``"runId": ""``) is identified by its content: its prompt, response and
policyVersion. A file's runId-less rows that a stored runId-less record of the agent already has are left out (as
many as are stored: two identical rows stored twice stay two), and counted as already there.
CSV cells may be as long as a request body (``N3_MAX_BODY_BYTES``), not the csv module's 131,072 characters.
Import is all or nothing: every line is parsed and checked first (by the REST API's rules,
``n3_server.rlhf.records``), each problem is reported with its line number, and only a file without problems
is stored, in one transaction, through ``import_feedback_batch``.
Export streams rows from the database in chunks, so a large agent never sits in memory.
"""
from __future__ import annotations

import csv
import io
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import PurePath
from typing import IO, Any, Optional

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet

from n3_server.rlhf.records import (
    FILE_JSON_NAMES,
    FILE_PYTHON_NAMES,
    JSON_NAMES,
    REVIEW_FIELDS,
    STORED_JSON_NAMES,
    describe,
    record_problems,
    run_id_repeats,
)
from n3site.exceptions import ServiceError

from . import services
from .models import Feedback, Review

# The API's field names, then the stored facts: a file's columns, in order.
FIELDS = tuple(JSON_NAMES.values())
COLUMNS = tuple(FILE_JSON_NAMES.values())
# Cells that an empty CSV cell leaves unset (None), as an export writes a missing value.
_NULLABLE = ("policyVersion", *STORED_JSON_NAMES.values())
REQUIRED = ("prompt", "response")
FORMATS = ("jsonl", "csv")
CONTENT_TYPES = {"jsonl": "application/x-ndjson; charset=utf-8", "csv": "text/csv; charset=utf-8"}
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}
# Stop collecting problems after this many: a wrong file usually fails on every line.
MAX_ERRORS = 1000
# Records per import_feedback_batch call (all inside one transaction).
BATCH_SIZE = 2000
# Items per query for their reviews on export (SQLite allows 999 parameters in old builds).
_REVIEWS_CHUNK = 500


class ImportFailed(ServiceError):
    """The file has problems; nothing was stored. ``errors`` lists (line number, message)."""

    def __init__(self, errors: list[tuple[int, str]]):
        self.errors = errors
        shown = "; ".join(f"line {line}: {message}" for line, message in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"Nothing imported: {len(errors)} problem(s): {shown}{more}")


@dataclass
class ImportResult:
    agent_name: str
    created: int
    existing: int  # rows the agent already stores (same runId; without one, same content): left as they are
    unknown_reviewers: tuple[str, ...] = ()  # reviewers of the file with no user here: stored without a reviewer
    skipped_reviewers: tuple[str, ...] = ()  # reviewers in ``reviews`` with no user here: their reviews left out

    def summary(self) -> str:
        text = f"Imported {self.created} feedback for {self.agent_name}"
        if self.existing:
            text += (f"; {self.existing} were already there (same runId, or without one the same prompt, response "
                     "and policyVersion) and were left as they were")
        if self.unknown_reviewers:
            text += f"; reviewers without a user here were left empty ({_names(self.unknown_reviewers)})"
        if self.skipped_reviewers:
            text += f"; reviews by reviewers without a user here were left out ({_names(self.skipped_reviewers)})"
        return text + "."


def _names(names: tuple[str, ...]) -> str:
    return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")


def format_for(filename: str) -> str:
    fmt = _EXTENSIONS.get(PurePath(filename).suffix.lower())
    if fmt is None:
        raise ServiceError(f"Cannot tell the format of {filename!r} from its name: choose jsonl or csv")
    return fmt


# --- import ----------------------------------------------------------------------------------


def import_feedback(
    *, agent_name: str, stream: IO, fmt: str, user: Optional[AbstractBaseUser] = None
) -> ImportResult:
    """Check a whole file, then store it in one transaction; raises ImportFailed listing bad lines.

    Content rules (required text, score range, ...) are the API's (``n3_server.rlhf.records``), checked on every
    row first, so one upload reports all bad lines at once; so is a runId repeated with other content.
    """
    if fmt not in FORMATS:
        raise ServiceError(f"Unknown format {fmt!r}: choose jsonl or csv")
    lines, records, errors = [], [], []
    for line, record, error in (_parse_jsonl if fmt == "jsonl" else _parse_csv)(_text(stream)):
        problems = [error] if error else [
            describe(p, FILE_JSON_NAMES) for p in record_problems(record, stored=True)
        ]
        errors += [(line, problem) for problem in problems]
        if len(errors) >= MAX_ERRORS:
            break
        lines.append(line)
        records.append(record)
    if not errors:
        errors = [
            (lines[index], f"runId '{run_id}' is repeated with different content (lines {lines[first]} and "
                           f"{lines[index]})")
            for index, first, run_id in run_id_repeats(records)
        ]
    if errors:
        raise ImportFailed(errors)
    if not records:
        raise ImportFailed([(1, "the file has no feedback rows")])
    total = len(records)
    records, lines = _without_stored_copies(agent_name, records, lines)
    created, unknown_reviewers, review_names = 0, set(), set()
    try:
        with transaction.atomic():
            for start in range(0, len(records), BATCH_SIZE):
                batch = records[start:start + BATCH_SIZE]
                results = services.import_feedback_batch(agent_name=agent_name, records=batch, user=user)
                created += sum(1 for _, was_created in results if was_created)
                unknown_reviewers.update(
                    record["reviewer"] for record, (feedback, was_created) in zip(batch, results)
                    if was_created and record.get("reviewer") and feedback.reviewer_id is None
                )
                review_names.update(
                    review["reviewer"] for record, (_, was_created) in zip(batch, results) if was_created
                    for review in record.get("reviews") or () if review.get("reviewer")
                )
    except services.BatchValidationError as exc:
        # E.g. a runId already stored with other content: translate the batch's indexes to file lines.
        raise ImportFailed([(lines[start + index], message) for index, message in exc.errors]) from None
    except ValidationError as exc:  # the agent name
        raise ServiceError(" ".join(exc.messages)) from None
    skipped = review_names - set(services.users_named(review_names))
    return ImportResult(agent_name=agent_name, created=created, existing=total - created,
                        unknown_reviewers=tuple(sorted(unknown_reviewers)), skipped_reviewers=tuple(sorted(skipped)))


def _content_key(prompt: str, response: str, version: Any) -> tuple[str, str, str]:
    """What identifies a record without a runId: its prompt, response and policyVersion ("v3", or "")."""
    if isinstance(version, int):
        version = f"v{version}"
    return prompt, response, version or ""


def _without_stored_copies(agent_name: str, records: list[dict], lines: list[int]) -> tuple[list[dict], list[int]]:
    """``records`` (and their line numbers) less the runId-less rows that the agent already stores: as many of each
    content (``_content_key``) as stored runId-less records have it. Reads only the stored records whose prompt
    is one of the file's, in chunks."""
    unkeyed = [i for i, record in enumerate(records) if not record.get("run_id")]
    if not unkeyed:
        return records, lines
    prompts = sorted({records[i]["prompt"] for i in unkeyed})
    stored: Counter = Counter()
    for start in range(0, len(prompts), _REVIEWS_CHUNK):
        stored.update(
            _content_key(*row) for row in Feedback.objects.filter(
                agent__name=agent_name, run_id="", prompt__in=prompts[start:start + _REVIEWS_CHUNK],
            ).values_list("prompt", "response", "policy_version__number")
        )
    if not stored:
        return records, lines
    dropped = set()
    for i in unkeyed:
        key = _content_key(records[i]["prompt"], records[i]["response"], records[i].get("policy_version"))
        if stored[key] > 0:
            stored[key] -= 1
            dropped.add(i)
    kept = [i for i in range(len(records)) if i not in dropped]
    return [records[i] for i in kept], [lines[i] for i in kept]


def _text(stream: IO) -> io.TextIOBase:
    """Uploaded files and files opened in binary mode are read as UTF-8 (a BOM from Excel is dropped)."""
    if isinstance(stream, io.TextIOBase):
        return stream
    return io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")


Parsed = Iterator[tuple[int, dict, str]]  # (line number, record in model field names, error or "")


def _parse_jsonl(text: Iterable[str]) -> Parsed:
    number = 0
    try:
        for number, line in enumerate(text, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                yield number, {}, f"not valid JSON ({exc.msg} at column {exc.colno})"
                continue
            if not isinstance(row, dict):
                yield number, {}, 'each line must be a JSON object like {"prompt": ..., "response": ..., "score": ...}'
                continue
            yield _record(number, row)
    except UnicodeDecodeError:
        yield number + 1, {}, "the file is not UTF-8 text"


def _parse_csv(text: Iterable[str]) -> Parsed:
    # A cell may hold any text a request could (export writes what the API stored): the csv module's default
    # limit, 131,072 characters, made such an export impossible to import.
    csv.field_size_limit(max(csv.field_size_limit(), settings.DATA_UPLOAD_MAX_MEMORY_SIZE))
    reader = csv.reader(text)
    try:
        header = next(reader, None)
        if header is None:
            return
        header = [name.strip() for name in header]
        unknown = [name for name in header if name not in COLUMNS]
        missing = [name for name in REQUIRED if name not in header]
        if unknown or missing:
            problems = [f"unknown column(s) {', '.join(map(repr, unknown))}" if unknown else "",
                        f"missing column(s) {', '.join(missing)}" if missing else ""]
            yield 1, {}, f"{'; '.join(p for p in problems if p)} (columns are {', '.join(COLUMNS)})"
            return
        start = reader.line_num + 1  # a quoted field may span lines: report where the row starts
        for values in reader:
            if not any(v.strip() for v in values):
                start = reader.line_num + 1
                continue
            if len(values) != len(header):
                yield start, {}, f"expected {len(header)} values, found {len(values)}"
            else:
                row: dict[str, Any] = dict(zip(header, values))
                if "score" in row:
                    row["score"] = _csv_score(row["score"])
                for name in _NULLABLE:
                    if name in row and not row[name].strip():
                        row[name] = None
                if row.get("reviews") is not None:
                    row["reviews"] = _csv_json(row["reviews"])
                yield _record(start, row)
            start = reader.line_num + 1
    except UnicodeDecodeError:
        yield reader.line_num + 1, {}, "the file is not UTF-8 text"
    except csv.Error as exc:
        yield reader.line_num, {}, f"cannot read CSV ({exc})"


def _csv_score(text: str):
    """CSV cells are text: an empty score means "awaiting review", a number becomes a float, and
    anything else is passed on as text for the service to refuse with its usual message."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _csv_json(text: str):
    """A cell holding JSON (``reviews``) as its value; text that is not JSON is passed on for the rules to refuse."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _record(number: int, row: dict) -> tuple[int, dict, str]:
    """One row in the API's names -> a record in model names (the rules check the content)."""
    unknown = [key for key in row if key not in FILE_PYTHON_NAMES]
    if unknown:
        return number, {}, "; ".join(_unknown(str(key)) for key in unknown)
    return number, {FILE_PYTHON_NAMES[key]: value for key, value in row.items()}, ""


def _unknown(key: str) -> str:
    hint = FILE_JSON_NAMES.get(key)
    return f"unknown field '{key}'" + (f" (did you mean '{hint}'?)" if hint and hint != key else "")


# --- export ----------------------------------------------------------------------------------


# What export reads of a row, in COLUMNS' order but reviews (read per chunk of rows): the related rows' names
# instead of their ids.
_READ = tuple(name for name in FILE_JSON_NAMES if name != "reviews")
_EXPORTED = tuple({"policy_version": "policy_version__number", "reviewer": "reviewer__username"}.get(name, name)
                  for name in _READ)
_READ_COLUMNS = tuple(FILE_JSON_NAMES[name] for name in _READ)


def export_lines(*, queryset: QuerySet[Feedback], fmt: str, chunk_rows: int = 1000) -> Iterator[str]:
    """The rows of ``queryset``, oldest first, as JSONL or CSV text in chunks (for streaming)."""
    if fmt not in FORMATS:
        raise ServiceError(f"Unknown format {fmt!r}: choose jsonl or csv")
    rows = queryset.order_by("created_at", "id").values_list("id", *_EXPORTED).iterator(chunk_size=chunk_rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if fmt == "csv":
        writer.writerow(COLUMNS)
    while chunk := list(islice(rows, chunk_rows)):
        reviews = _reviews_of([row[0] for row in chunk])
        for feedback_id, *row in chunk:
            values = dict(zip(_READ_COLUMNS, row))
            if values["policyVersion"] is not None:
                values["policyVersion"] = f"v{values['policyVersion']}"
            if values["reviewedAt"] is not None:
                values["reviewedAt"] = values["reviewedAt"].isoformat()
            values["reviews"] = reviews.get(feedback_id, [])
            values = {column: values[column] for column in COLUMNS}
            if fmt == "jsonl":
                buffer.write(json.dumps(values, ensure_ascii=False))
                buffer.write("\n")
            else:
                values["reviews"] = json.dumps(values["reviews"], ensure_ascii=False) if values["reviews"] else None
                writer.writerow(["" if value is None else value for value in values.values()])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():  # the CSV header of an empty export
        yield buffer.getvalue()


def _reviews_of(feedback_ids: list[int]) -> dict[int, list[dict]]:
    """The items' reviews as export writes them, in the order they were given; reviewedAt is when a review was
    last changed (an item's own reviewedAt is its latest review's)."""
    reviews: dict[int, list[dict]] = defaultdict(list)
    for start in range(0, len(feedback_ids), _REVIEWS_CHUNK):
        found = (Review.objects.filter(feedback_id__in=feedback_ids[start:start + _REVIEWS_CHUNK]).order_by("id")
                 .values_list("feedback_id", "reviewer__username", "score", "notes", "updated_at"))
        for feedback_id, reviewer, score, notes, updated_at in found:
            reviews[feedback_id].append(dict(zip(REVIEW_FIELDS, (reviewer, score, notes,
                                                                        updated_at.isoformat()))))
    return reviews


def export_feedback(*, agent_name: str, fmt: str, out: IO[str], scored_only: bool = False) -> int:
    """Write one agent's feedback to ``out``; returns the number of rows."""
    queryset = Feedback.objects.filter(agent__name=agent_name)
    if scored_only:
        queryset = queryset.filter(score__isnull=False)
    for chunk in export_lines(queryset=queryset, fmt=fmt):
        out.write(chunk)
    return queryset.count()
