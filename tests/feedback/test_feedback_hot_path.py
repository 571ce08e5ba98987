"""The feedback API's short ways give exactly what the long ways give.

The view validates with ``validated_feedback`` (api/feedback_serializers.py) instead of DRF's serializer machinery:
both must accept the same records with the same data and name the same fields; ``FeedbackSerializer.to_representation``
must equal the generic field-by-field ``Serializer.to_representation``; the services' agent cache
(N3_AGENT_CACHE_SECONDS) must never store feedback for an agent that no longer exists.
"""
import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from rest_framework import serializers

from api.feedback_serializers import FeedbackInputSerializer, FeedbackSerializer, validated_feedback
from feedback.models import Feedback
from feedback.services import record_feedback, record_feedback_batch
from policies.models import Agent

VALID = {"prompt": "What is 2+2?", "response": "  4 ", "score": 0.9, "runId": "run_1", "notes": "fine"}
CASES = [
    VALID,
    {"prompt": "p", "response": "r"},
    {"prompt": "p", "response": "r", "score": None},
    {"prompt": "p", "response": "r", "score": 1},
    {"prompt": "p", "response": "r", "score": 0},
    {"prompt": "p", "response": "r", "score": True},
    {"prompt": "p", "response": "r", "score": "0.5"},
    {"prompt": "p", "response": "r", "score": 1.5},
    {"prompt": "p", "response": "r", "score": -0.1},
    {"prompt": "p", "response": "r", "score": float("nan")},
    {"prompt": "p", "response": "r", "score": float("inf")},
    {"prompt": "p", "response": "r", "score": 10**400},
    {"prompt": "", "response": "r"},
    {"prompt": " \t\n", "response": "r"},
    {"prompt": "\u00a0\u2003", "response": "r"},
    {"prompt": "\u200b", "response": "r"},
    {"prompt": "p", "response": "r", "score": -0.0},
    {"prompt": None, "response": "r"},
    {"prompt": 5, "response": "r"},
    {"prompt": ["p"], "response": "r"},
    {"response": "r"},
    {"prompt": "p"},
    {"prompt": "p", "response": "r", "runId": ""},
    {"prompt": "p", "response": "r", "runId": None},
    {"prompt": "p", "response": "r", "runId": 7},
    {"prompt": "p", "response": "r", "runId": "x" * 200},
    {"prompt": "p", "response": "r", "runId": "x" * 201},
    {"prompt": "p", "response": "r", "notes": ""},
    {"prompt": "p", "response": "r", "notes": None},
    {"prompt": "p", "response": "r", "notes": 3},
    {"prompt": "p\x00", "response": "r"},
    {"prompt": "p", "response": "r", "notes": "a\x00b"},
    {"prompt": "p", "response": "r", "runId": "\x00"},
    {"prompt": "p\ud800", "response": "r"},
    {"prompt": "p", "response": "r\udfff"},
    {"prompt": "p", "response": "r", "run_id": "snake"},
    {"prompt": "p", "response": "r", "extra": 1},
    {"prompt": "日本語", "response": "émoji 🎉", "score": 0.25},
    "not an object",
    ["p", "r"],
    None,
    42,
]


@pytest.mark.parametrize("data", CASES, ids=[repr(case)[:60] for case in CASES])
def test_the_views_validation_accepts_what_the_serializer_accepts_with_the_same_data(data):
    serializer = FeedbackInputSerializer(data=data)
    valid = serializer.is_valid()
    try:
        quick, errors = validated_feedback(data), None
    except serializers.ValidationError as exc:
        quick, errors = None, exc.detail
    assert valid is (errors is None), (serializer.errors, errors)
    if valid:
        assert quick == dict(serializer.validated_data)
        assert [type(quick[k]) for k in sorted(quick)] == [type(serializer.validated_data[k]) for k in sorted(quick)]
    elif isinstance(data, dict):
        assert set(errors) == set(serializer.errors)


def test_plain_records_are_validated_into_the_services_names():
    assert validated_feedback(VALID) == {"prompt": "What is 2+2?", "response": "  4 ", "score": 0.9, "run_id": "run_1",
                                         "notes": "fine"}
    assert validated_feedback([{"prompt": "p", "response": "r", "score": 1}]) == [
        {"prompt": "p", "response": "r", "score": 1.0, "run_id": "", "notes": ""}]


@pytest.mark.django_db
def test_the_direct_representation_equals_drfs_generic_one():
    created, _ = record_feedback(agent_name="bot", prompt="p", response=" r ", score=1, run_id="a", notes="n")
    awaiting, _ = record_feedback(agent_name="bot", prompt="p2", response="r2")
    batch = [feedback for feedback, _ in record_feedback_batch(
        agent_name="bot", records=[{"prompt": "p3", "response": "r3", "score": 0.5, "run_id": "b"}])]
    stored = list(Feedback.objects.select_related("agent"))
    for instance in [created, awaiting, *batch, *stored]:
        serializer = FeedbackSerializer(instance)
        generic = serializers.Serializer.to_representation(serializer, instance)
        direct = serializer.to_representation(instance)
        assert direct == dict(generic)
        assert list(direct) == list(generic)
        assert [type(v) for v in direct.values()] == [type(v) for v in generic.values()]


# Real commits (transaction=True): SQLite and PostgreSQL check the feedback's foreign key at COMMIT, which a test
# inside a rolled-back transaction never reaches.
@pytest.mark.django_db(transaction=True)
def test_feedback_for_a_cached_agent_that_was_deleted_creates_the_agent_again():
    first, _ = record_feedback(agent_name="bot", prompt="p", response="r", run_id="a")
    Agent.objects.filter(name="bot").delete()  # the admin deletes the agent (and its feedback) meanwhile

    again, created = record_feedback(agent_name="bot", prompt="p", response="r", run_id="a")
    batch = record_feedback_batch(agent_name="bot", records=[{"prompt": "p", "response": "r", "run_id": "b"}])

    agent = Agent.objects.get(name="bot")
    assert created and again.agent_id == agent.pk != first.agent_id
    assert batch[0][1] and batch[0][0].agent_id == agent.pk
    assert sorted(Feedback.objects.filter(agent=agent).values_list("run_id", flat=True)) == ["a", "b"]


@pytest.mark.django_db(transaction=True)
def test_a_batch_for_a_cached_agent_that_was_deleted_creates_the_agent_again():
    record_feedback(agent_name="bot", prompt="p", response="r", run_id="a")
    Agent.objects.filter(name="bot").delete()

    batch = record_feedback_batch(agent_name="bot", records=[{"prompt": "p", "response": "r", "run_id": "a"}])

    assert batch[0][1] and batch[0][0].agent_id == Agent.objects.get(name="bot").pk
    assert Feedback.objects.count() == 1


@pytest.mark.django_db
def test_the_agent_cache_saves_the_agent_lookup():
    def agent_queries(**record) -> list[str]:
        with CaptureQueriesContext(connection) as queries:
            record_feedback(agent_name="bot", **record)
        return [q["sql"] for q in queries.captured_queries if "policies_agent" in q["sql"]]

    assert agent_queries(prompt="p", response="r")  # the first: looked up (created)
    assert agent_queries(prompt="p2", response="r2") == []
    with override_settings(N3_AGENT_CACHE_SECONDS=0):
        assert agent_queries(prompt="p3", response="r3")
