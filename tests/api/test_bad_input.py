"""Bad input the API must refuse with a 4xx and a readable {"detail": "..."}, never a 500 or a traceback.

What tests/api/test_rlhf_api.py already covers is not repeated here (form-encoded bodies, malformed JSON, a
100,000-deep array on feedback, a 413 on feedback, NaN/Infinity literals, string/bool/out-of-range scores, bad
agent names on the feedback URL, baseModel paths outside the allowed directories, a lone surrogate).
"""
import json
import math

import pytest
from django.db import connection
from django.test import override_settings

from feedback import services as feedback_services
from feedback.models import Feedback
from policies.models import Agent, PolicyVersion
from tests.sites import feedback_records

pytestmark = pytest.mark.django_db

FEEDBACK = "/api/policies/feedback/bot"
TRAIN = "/api/policies/train_policy/bot"


def post_raw(client, path: str, body, content_type: str = "application/json"):
    data = body if isinstance(body, bytes) else body.encode("utf-8")
    return client.generic("POST", path, data, content_type=content_type)


def assert_error(response, *statuses: int) -> str:
    """A 4xx from the list, answered as JSON whose "detail" is a non-empty string; returns the detail."""
    assert response.status_code in statuses, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail.strip()
    assert "Traceback" not in detail
    return detail


@pytest.fixture
def trainable(settings):
    """Agent "bot" with enough scored feedback that a training request gets past the feedback check."""
    settings.N3_DEFAULT_BASE_MODEL = "n3-tiny-random"
    feedback_services.record_feedback_batch(agent_name="bot", records=feedback_records(12))


# --- content types and body size -------------------------------------------------------------------------------


@pytest.mark.parametrize("body, content_type", [
    ('{"prompt": "p", "response": "r"}', "text/plain"),
    ("prompt: p", "text/plain; charset=utf-8"),
    ('--x\r\nContent-Disposition: form-data; name="prompt"\r\n\r\np\r\n--x--\r\n', "multipart/form-data; boundary=x"),
    ('{"prompt": "p", "response": "r"}', "application/xml"),
    ('{"prompt": "p", "response": "r"}', ""),
])
def test_bodies_that_are_not_json_are_415(api, body, content_type):
    for path in (FEEDBACK, TRAIN):
        detail = assert_error(post_raw(api, path, body, content_type), 415)
        assert "Unsupported media type" in detail
    assert not Feedback.objects.exists() and not PolicyVersion.objects.exists()


@pytest.mark.parametrize("path, body", [
    (TRAIN, {"dryRun": True, "baseModel": "x" * 5000}),
    (FEEDBACK, [{"prompt": "p" * 300, "response": "r", "runId": f"r{i}"} for i in range(10)]),
], ids=["train", "feedback-list"])
def test_bodies_over_the_limit_are_413_and_store_nothing(api, trainable, path, body):
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=2000):
        detail = assert_error(api.post(path, body), 413)
    assert "too large" in detail and "2000 bytes" in detail
    assert Feedback.objects.count() == 12 and not PolicyVersion.objects.exists()


@pytest.mark.parametrize("path", [FEEDBACK, TRAIN])
@pytest.mark.parametrize("raw", [
    "{" * 100_000 + "}" * 100_000,  # not even valid JSON, deeper than the parser's recursion
    '{"a":' * 50_000 + "1" + "}" * 50_000,
], ids=["braces", "objects"])
def test_deeply_nested_bodies_are_400(api, path, raw):
    detail = assert_error(post_raw(api, path, raw), 400)
    assert "JSON parse error" in detail


@pytest.mark.parametrize("body", [
    {"rewardModelConfig": {"numEpochs": json.loads("[" * 500 + "]" * 500)}},
    {"loraTargetModules": json.loads("[" * 500 + "]" * 500)},
    {"rewardModelConfig": json.loads('{"x":' * 500 + "1" + "}" * 500)},
], ids=["number-field", "list-field", "object-field"])
def test_nesting_inside_valid_json_is_refused_by_field(api, trainable, body):
    """Nesting the parser accepts (500 levels) in a field that wants a number, a list of names, an object."""
    assert_error(api.post(TRAIN, body), 400)
    assert not PolicyVersion.objects.exists()


# --- text: unicode and NUL -------------------------------------------------------------------------------------

UNICODE = {
    "prompt": "Wie heißt die Hauptstadt? 首都は？ \u202eRTL\u202c e\u0301 \U0001F600 \U00010348",
    "response": "\tParis \u2014 \u00a0non-breaking, zero\u200bwidth, \ufeffBOM, \U0001F1EB\U0001F1F7\n",
    "notes": "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0000".replace("\u0000", "") + "\x7f\x1b[31m",
    "runId": "run-\u00e9\U0001F600",
}


def test_unicode_text_is_stored_and_returned_exactly(api):
    response = api.post(FEEDBACK, {**UNICODE, "score": 0.5})

    assert response.status_code == 201, response.content
    body = response.json()
    assert {key: body[key] for key in UNICODE} == UNICODE
    stored = Feedback.objects.get()
    assert (stored.prompt, stored.response, stored.notes, stored.run_id) == (
        UNICODE["prompt"], UNICODE["response"], UNICODE["notes"], UNICODE["runId"])
    # The same record again (a retry) is recognised as the same, not a conflict.
    assert api.post(FEEDBACK, {**UNICODE, "score": 0.5}).status_code == 200


@pytest.mark.parametrize("field", ["prompt", "response", "notes", "runId"])
def test_nul_characters_are_400_naming_the_field(api, field):
    """PostgreSQL cannot store NUL in text: refusing it is the answer that works on every database."""
    record = {"prompt": "p", "response": "r", "notes": "n", "runId": "run-1", field: "before\u0000after"}
    for body in (record, [record]):
        detail = assert_error(api.post(FEEDBACK, body), 400)
        assert field in detail and "Null characters" in detail
    assert not Feedback.objects.exists()


@pytest.mark.parametrize("field", ["prompt", "response", "notes", "run_id"])
def test_nul_characters_are_refused_by_the_service_that_imports_files(field):
    """The reviewer's file import and the admin store through feedback.services, not the API's serializer."""
    record = {"prompt": "p", "response": "r", "score": 0.5, "notes": "", "run_id": "", field: "a\u0000b"}

    with pytest.raises(feedback_services.BatchValidationError, match=f"{field} must not contain NUL"):
        feedback_services.record_feedback_batch(agent_name="bot", records=[record])
    with pytest.raises(Exception, match=f"{field} must not contain NUL"):
        feedback_services.record_feedback(agent_name="bot", **record)
    assert not Feedback.objects.exists()


@pytest.mark.parametrize("text", ["\u200b", "\u200b\u200d\ufeff", "\u2060 \u00a0", "\u3164", "\u202e\u202c"],
                         ids=["zwsp", "joiners-bom", "word-joiner-nbsp", "hangul-filler", "bidi-marks"])
@pytest.mark.parametrize("field", ["prompt", "response"])
def test_invisible_only_prompt_or_response_is_400(api, field, text):
    record = {"prompt": "p", "response": "r", "score": 0.5, field: text}
    for body in (record, [record]):
        detail = assert_error(api.post(FEEDBACK, body), 400)
        assert field in detail and "visible text" in detail
    assert not Feedback.objects.exists()


@pytest.mark.parametrize("body, field", [
    ({"baseModel": "n3-tiny\u0000../../etc"}, "baseModel"),
    ({"loraTargetModules": ["c_attn\u0000"]}, "loraTargetModules[0]"),
    ({"device": "cpu\u0000"}, "device"),
    ({"rewardModelConfig": {"baseModel": "\u0000"}}, "rewardModelConfig.baseModel"),
])
def test_nul_characters_in_training_fields_are_400(api, trainable, body, field):
    detail = assert_error(api.post(TRAIN, {"dryRun": False, **body}), 400)
    assert field in detail
    assert not PolicyVersion.objects.exists()


# --- numbers ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw_score", ["1e309", "-1e309", "-1", "-0.5", "1.0000001", '"0.5"', '"NaN"', "true", "false",
                                       "{}", "[]"])
def test_scores_that_are_not_a_number_between_0_and_1_are_400(api, raw_score):
    """1e309 is a JSON number that overflows to infinity when parsed: refused like the literal Infinity."""
    detail = assert_error(post_raw(api, FEEDBACK, f'{{"prompt": "p", "response": "r", "score": {raw_score}}}'), 400)
    assert "score" in detail
    assert not Feedback.objects.exists()


def test_minus_zero_as_a_score_is_stored_and_answered_as_zero(api):
    single = post_raw(api, FEEDBACK, '{"prompt": "p", "response": "r", "score": -0.0}')
    listed = post_raw(api, FEEDBACK, '[{"prompt": "q", "response": "r", "score": -0.0}]')

    assert (single.status_code, listed.status_code) == (201, 201)
    assert b"-0.0" not in single.content + listed.content
    assert [math.copysign(1, score) for score in Feedback.objects.values_list("score", flat=True)] == [1, 1]


@pytest.mark.parametrize("raw", [
    '{"learningRate": 1e309}', '{"learningRate": -1e309}', '{"learningRate": NaN}', '{"learningRate": -1}',
    '{"learningRate": 0}', '{"maxSteps": 1e308}', '{"maxSteps": -5}', '{"maxSteps": 0}', '{"batchSize": -1}',
    '{"rewardModelConfig": {"numEpochs": "2"}}', '{"rewardModelConfig": {"loraDropout": -0.1}}', '{"dryRun": null}',
    '{"dryRun": 1}',
])
def test_training_numbers_out_of_range_are_400(api, trainable, raw):
    assert_error(post_raw(api, TRAIN, raw), 400)
    assert not PolicyVersion.objects.exists()


# --- names and paths -------------------------------------------------------------------------------------------

SQL_NAMES = ["x'; DROP TABLE feedback_feedback;--", 'x" OR "1"="1', "1; DELETE FROM policies_agent", "x' OR 1=1 --"]
TRAVERSAL_NAMES = ["..", ".", "%2e%2e", "%2E%2E%2F%2E%2E%2Fetc", "..%2f..%2fetc%2fpasswd", "a%2fb", "a%5cb", "..%5c..",
                   "%00", "bot%00", "~root", "%252e%252e"]


ENDPOINTS = [  # (method, URL template, body)
    ("post", "/api/policies/feedback/{}", {"prompt": "p", "response": "r", "score": 0.5}),
    ("post", "/api/policies/train_policy/{}", {"dryRun": False}),
    ("post", "/api/policies/train_policy/{}", {"dryRun": True}),
    ("get", "/api/policies/{}", None),
    ("get", "/api/policies/{}/v1", None),
    ("post", "/api/policies/{}/v1/cancel", None),
]


@pytest.mark.parametrize("name", SQL_NAMES + TRAVERSAL_NAMES)
def test_agent_names_that_are_sql_or_paths_are_refused_and_touch_nothing(api, trainable, settings, name):
    from urllib.parse import quote

    models_before = sorted(settings.MODELS_DIR.iterdir())
    for method, template, body in ENDPOINTS:
        path = template.format(quote(name, safe="%"))
        response = getattr(api, method)(path, body) if body is not None else getattr(api, method)(path)
        assert_error(response, 400, 404, 405)  # 405: feedback/a/b is agent a's record "b" (PATCH only)

    assert list(Agent.objects.values_list("name", flat=True)) == ["bot"]
    assert Feedback.objects.count() == 12 and not PolicyVersion.objects.exists()
    with connection.cursor() as cursor:  # the tables are all still there
        tables = set(connection.introspection.table_names(cursor))
    assert {"feedback_feedback", "policies_agent", "policies_policyversion"} <= tables
    assert sorted(settings.MODELS_DIR.iterdir()) == models_before  # no directory made for any of these names


@pytest.mark.parametrize("name", ["a/b", "../bot", "bot/..", "./bot"])
def test_agent_names_with_a_slash_are_refused(api, trainable, name):
    for path in (f"/api/policies/feedback/{name}", f"/api/policies/train_policy/{name}"):
        # feedback/a/b is the URL of agent a's record "b", which takes PATCH only (405).
        assert_error(api.post(path, {"prompt": "p", "response": "r"}), 400, 404, 405)
    assert list(Agent.objects.values_list("name", flat=True)) == ["bot"]


@pytest.mark.parametrize("base_model", ["../../etc", "/etc", "/", "/tmp", "..", "models/../../../etc/passwd",
                                        "n3-tiny/../../../etc", "%2e%2e/%2e%2e/etc"])
def test_base_models_outside_models_dir_are_refused_for_policy_and_reward_model(api, trainable, base_model):
    for body in ({"baseModel": base_model}, {"rewardModelConfig": {"baseModel": base_model}}):
        for dry_run in (True, False):
            detail = assert_error(api.post(TRAIN, {"dryRun": dry_run, **body}), 400)
            assert "not allowed" in detail, body
    assert not PolicyVersion.objects.exists()


def test_a_directory_outside_models_dir_is_allowed_only_when_listed(api, trainable, tmp_path):
    outside = tmp_path / "my-model"
    outside.mkdir()

    assert "not allowed" in assert_error(api.post(TRAIN, {"dryRun": False, "baseModel": str(outside)}), 400)
    with override_settings(N3_ALLOWED_MODEL_DIRS=[tmp_path]):
        assert api.post(TRAIN, {"dryRun": False, "baseModel": str(outside)}).status_code == 202
        # A listed directory is not a way out of it.
        escape = {"dryRun": False, "baseModel": str(outside / ".." / "..")}
        assert "not allowed" in assert_error(api.post(TRAIN, escape), 400)
