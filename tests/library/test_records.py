"""One validator for a feedback record (n3_server/rlhf/records.py): the API, file import, service, review queue,
admin and training core refuse the same records, with the same messages, and spell fields through one map."""
import io
import json
import math
import re
import sys
import unicodedata

import pytest

from api.feedback_serializers import FeedbackInputSerializer, FeedbackSerializer
from feedback import importexport
from feedback import services as feedback_services
from feedback.models import Feedback
from n3_server.rlhf import FeedbackFormatError
from n3_server.rlhf.data import normalize_record
from n3_server.rlhf.records import (
    INVISIBLE_RANGES,
    JSON_NAMES,
    PYTHON_NAMES,
    RUN_ID_MAX_LENGTH,
    STORABLE_TEXT_PATTERN,
    VISIBLE_TEXT_PATTERN,
    check_score,
    clean_score,
    has_visible_text,
    record_problems,
    run_id_repeats,
)

INVISIBLE = ["\u200b", "\u200b\u200c\u200d", "\ufeff", " \u2060 ", "\u202e\u202c", "\u3164", "\u2800", "\u034f\ufe0f",
             "\x1b\x7f", "\u00a0\u2003\n\t"]
VISIBLE = ["a", " 4 ", "\u0301", "\u200bx", "e\u0301", "\U0001F600", "\u6771\u4eac", "?", "0", "\u0627"]


@pytest.mark.parametrize("text", INVISIBLE, ids=[repr(t) for t in INVISIBLE])
def test_invisible_only_text_is_blank(text):
    assert not has_visible_text(text)
    for field in ("prompt", "response"):
        record = {"prompt": "p", "response": "r", field: text}
        assert [f for f, _ in record_problems(record)] == [field]


@pytest.mark.parametrize("text", VISIBLE, ids=[repr(t) for t in VISIBLE])
def test_visible_text_passes(text):
    assert has_visible_text(text)
    assert record_problems({"prompt": text, "response": text}) == []


def test_the_invisible_characters_are_this_pythons_unicode_whitespace_controls_and_format_characters():
    blank = set("\u115f\u1160\u3164\uffa0\u2800\u034f\u17b4\u17b5\u180b\u180c\u180d\u180f")
    blank |= {chr(c) for c in [*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)]}  # variation selectors
    invisible = [c for c in range(sys.maxunicode + 1) if chr(c).isspace() or chr(c) in blank
                 or unicodedata.category(chr(c)) in ("Cc", "Cf", "Zs", "Zl", "Zp")]
    assert invisible == [c for low, high in INVISIBLE_RANGES for c in range(low, high + 1)]


@pytest.mark.parametrize("text", [*INVISIBLE, *VISIBLE, "a\x00", "\x00", "", "\U000e0020", "\u2028x"])
def test_the_schemas_patterns_say_what_the_validator_does(text):
    assert bool(re.search(VISIBLE_TEXT_PATTERN, text)) is (has_visible_text(text) and "\x00" not in text)
    assert bool(re.search(STORABLE_TEXT_PATTERN, text)) is ("\x00" not in text)


def test_the_map_is_the_serializers_and_the_files():
    declared = {field.source: name for name, field in FeedbackInputSerializer().fields.items()}
    assert declared == JSON_NAMES
    answered = {field.source: name for name, field in FeedbackSerializer().fields.items() if field.source in JSON_NAMES}
    assert answered == JSON_NAMES
    assert importexport.FIELDS == tuple(JSON_NAMES.values())
    assert RUN_ID_MAX_LENGTH == Feedback._meta.get_field("run_id").max_length


def test_minus_zero_is_zero():
    assert math.copysign(1, clean_score(-0.0)) == 1 and clean_score(None) is None
    assert math.copysign(1, check_score("-0")) == 1


@pytest.mark.parametrize("value, message", [
    (-0.2, "Score must be between 0 and 1, got -0.2"), ("1.5", "Score must be between 0 and 1, got '1.5'"),
    ("nan", "Score must be between 0 and 1, got 'nan'"), (True, "Score must be between 0 and 1, got True"),
    ("x", "Score must be a number between 0 and 1, got 'x'"), (None, "Score must be a number between 0 and 1"),
])
def test_a_reviewers_score_is_checked_by_the_same_rule(value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check_score(value)


def test_a_run_id_repeated_with_other_content_is_found_with_both_indexes():
    records = [{"prompt": "p", "response": "r", "run_id": "a"}, {"prompt": "p", "response": "r", "run_id": "a"},
               {"prompt": "p", "response": "other", "run_id": "a"}, {"prompt": "q", "response": "r", "run_id": ""},
               {"prompt": "z", "response": "r", "run_id": ""}, {"prompt": "p", "response": "r", "score": -0.0,
                                                                "run_id": "b"}, {"prompt": "p", "response": "r",
                                                                                 "score": 0, "run_id": "b"}]
    assert run_id_repeats(records) == [(2, 0, "a")]


# --- every entry point refuses what the API refuses ---------------------------------------------------------------

# Records in JSON names, each with a score so that the training core does not skip it; all refused by the API.
REFUSED = [
    {"prompt": "p", "response": ""},
    {"prompt": "p", "response": "   "},
    {"prompt": "p", "response": "\u200b"},
    {"prompt": "\u200b\u200d", "response": "r"},
    {"prompt": "p", "response": "r\x00"},
    {"prompt": "p", "response": "r", "notes": "\x00"},
    {"prompt": "p", "response": "r", "runId": "x" * (RUN_ID_MAX_LENGTH + 1)},
    {"prompt": "p\ud800", "response": "r"},
    {"prompt": "p", "response": "r", "score": 1.5},
    {"prompt": "p", "response": "r", "score": 10**400},
    {"prompt": "p", "response": "r", "score": "0.5"},
]
REFUSED_FIELDS = ["response", "response", "response", "prompt", "response", "notes", "runId", "prompt", "score",
                  "score", "score"]


def post_json(api, body):
    """JSON as an agent sends it, \\u escapes included (a lone surrogate cannot be UTF-8)."""
    return api.generic("POST", "/api/policies/feedback/bot", json.dumps(body), content_type="application/json")


@pytest.mark.django_db
@pytest.mark.parametrize("record, field", zip(REFUSED, REFUSED_FIELDS), ids=[repr(r)[:50] for r in REFUSED])
def test_api_import_service_and_training_core_refuse_the_same_records(api, record, field):
    record = {"score": 0.5, **record}
    python_record = {PYTHON_NAMES[key]: value for key, value in record.items()}

    response = post_json(api, record)
    assert response.status_code == 400 and field in response.json()["errors"], response.content
    listed = post_json(api, [{"prompt": "ok", "response": "ok"}, record])
    assert listed.status_code == 400 and f"[1].{field}" in listed.json()["errors"], listed.content

    with pytest.raises(importexport.ImportFailed) as failed:  # a JSONL file (a lone surrogate as its \\u escape)
        importexport.import_feedback(agent_name="bot", stream=io.StringIO(json.dumps(record) + "\n"), fmt="jsonl")
    assert [line for line, _ in failed.value.errors] == [1]

    with pytest.raises(feedback_services.BatchValidationError):
        feedback_services.record_feedback_batch(agent_name="bot", records=[python_record])

    core_field = "run_id" if field == "runId" else field
    with pytest.raises(FeedbackFormatError, match=f"^Feedback record 4: field '{core_field}' "):
        normalize_record(python_record, 4)
    assert not Feedback.objects.exists()


def test_the_training_core_takes_both_spellings_and_ignores_other_keys():
    record = normalize_record({"prompt": "p", "response": "r", "score": -0.0, "runId": "a", "id": 3, "notes": None}, 0)
    assert (record.run_id, record.notes, math.copysign(1, record.score)) == ("a", None, 1)
