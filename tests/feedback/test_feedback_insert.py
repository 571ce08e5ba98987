"""The feedback POST's short ways (issue 14 item 4) store and answer what the long ways do.

feedback/inserts.py runs a prepared INSERT instead of ``Model.save()``; api/negotiation.py answers the common Accept
headers without DRF's parsing; the agent cache keeps (id, name) only.
"""
import pytest
from django.db import connection, transaction
from django.db.models.signals import post_save
from django.test.utils import CaptureQueriesContext

from feedback import inserts
from feedback.models import Feedback
from feedback.services import record_feedback
from policies.models import Agent

FIELDS = [f.attname for f in Feedback._meta.concrete_fields if f.attname not in ("id", "run_id")]


@pytest.mark.django_db(transaction=True)
def test_a_prepared_insert_stores_the_row_save_stores():
    agent = Agent.objects.create(name="bot")
    by_save = Feedback(agent=agent, prompt="p", response=" r ", score=0.25, run_id="a", notes="n", source="api")
    by_save.save(force_insert=True)
    by_insert = Feedback(agent=agent, prompt="p", response=" r ", score=0.25, run_id="b", notes="n", source="api")
    inserts.insert(by_insert)

    assert by_insert.pk and not by_insert._state.adding
    saved, inserted = (Feedback.objects.get(pk=pk) for pk in (by_save.pk, by_insert.pk))
    differ = {name for name in FIELDS if getattr(saved, name) != getattr(inserted, name)}
    assert differ <= {"created_at", "updated_at"}, differ
    assert inserted.created_at == inserted.updated_at == by_insert.created_at  # one clock reading, as answered
    for name in FIELDS:  # the instance the API answers from is what was stored
        assert getattr(by_insert, name) == getattr(inserted, name), name


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_the_insert_is_one_statement():
    record_feedback(agent_name="bot", prompt="p", response="r", run_id="a")  # the agent is cached
    with CaptureQueriesContext(connection) as queries:
        record_feedback(agent_name="bot", prompt="p", response="r", run_id="b")
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["INSERT"]


@pytest.mark.django_db(transaction=True)
def test_a_repeated_run_id_inside_a_transaction_leaves_it_usable():
    record_feedback(agent_name="bot", prompt="p", response="r", run_id="a")
    with transaction.atomic():
        again, created = record_feedback(agent_name="bot", prompt="p", response="r", run_id="a")
        assert not created
        record_feedback(agent_name="bot", prompt="p2", response="r2", run_id="b")  # the transaction goes on
    assert sorted(Feedback.objects.values_list("run_id", flat=True)) == ["a", "b"]


@pytest.mark.django_db(transaction=True)
def test_a_post_save_receiver_for_feedback_sends_the_insert_through_save():
    seen = []

    def receiver(sender, instance, created, **kwargs):
        seen.append((instance.run_id, created))

    post_save.connect(receiver, sender=Feedback)
    try:
        record_feedback(agent_name="bot", prompt="p", response="r", run_id="a")
    finally:
        post_save.disconnect(receiver, sender=Feedback)
    assert seen == [("a", True)]


@pytest.mark.django_db(transaction=True)
def test_a_cached_agent_reads_its_other_fields_when_asked():
    first, _ = record_feedback(agent_name="bot", prompt="p", response="r", run_id="a")
    Agent.objects.filter(name="bot").update(description="changed")
    second, _ = record_feedback(agent_name="bot", prompt="p", response="r", run_id="b")
    assert second.agent.name == "bot" and second.agent.pk == first.agent.pk
    assert second.agent.description == "changed"  # deferred: read from the database, not a stale default


@pytest.mark.django_db
@pytest.mark.parametrize("accept, status", [
    (None, 201), ("*/*", 201), ("application/json", 201), ("application/json; indent=2", 201),
    ("text/html", 406), ("text/html, */*;q=0.1", 201),
])
def test_content_negotiation_answers_as_drfs(api, accept, status):
    headers = {"HTTP_ACCEPT": accept} if accept else {}
    response = api.post("/api/policies/feedback/bot", {"prompt": "p", "response": "r"}, format="json", **headers)
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    if accept and "indent" in accept:
        assert b"\n  " in response.content  # DRF's own way honoured the indent
