"""Reading data back through the REST API: the agents, an agent's feedback (filtered, a cursor page at a time, or
as the export's file) and one record by runId, on the real database with token-authenticated clients."""
import io
import json
from base64 import b64encode
from datetime import timedelta
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from django.db import connection
from django.http import StreamingHttpResponse
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.renderers import JSONRenderer

from api.feedback_serializers import feedback_data
from feedback import importexport, review
from feedback import selectors as feedback_selectors
from feedback import services as feedback_services
from feedback.models import Feedback
from policies.models import Agent, PolicyVersion
from tests.errors import assert_error

pytestmark = pytest.mark.django_db

READS = ("feedback.view_feedback", "policies.view_policyversion")


def feedback_url(agent: str, **params) -> str:
    query = "&".join(f"{key}={quote(str(value), safe='')}" for key, value in params.items())
    return f"/api/policies/feedback/{agent}" + (f"?{query}" if query else "")


def record_url(agent: str, run_id: str) -> str:
    return f"/api/policies/feedback/{agent}/{quote(run_id, safe='')}"



def store(agent: str, n: int, *, prefix: str = "r", **fields) -> list[Feedback]:
    records = [{"prompt": f"Question {prefix}{i}?", "response": f"Answer {prefix}{i}.", "run_id": f"{prefix}{i}",
                **fields} for i in range(n)]
    return [feedback for feedback, _ in feedback_services.record_feedback_batch(agent_name=agent, records=records)]


def all_pages(client, url: str) -> list[dict]:
    """Every record, following ``next`` (its absolute URL, as a client would)."""
    records, pages = [], 0
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        records += body["results"]
        url = body["next"]
        pages += 1
        assert pages < 100
    return records


@pytest.fixture
def reader(make_user):
    return make_user("reader", *READS)


@pytest.fixture
def api(reader, client_for):
    return client_for(reader)


@pytest.fixture
def alice(make_user):
    return make_user("alice")


@pytest.fixture
def bob(make_user):
    return make_user("bob")


# --- GET /api/policies/ ----------------------------------------------------------------------------------------------


def test_the_agents_list_names_each_agent_with_its_counts_and_deployment(api):
    store("beta", 3, score=0.5)
    store("beta", 2, prefix="u")
    store("alpha", 1)
    beta = Agent.objects.get(name="beta")
    v1 = PolicyVersion.objects.create(agent=beta, number=1, status="trained")
    PolicyVersion.objects.create(agent=beta, number=2, status="trained")
    PolicyVersion.objects.create(agent=beta, number=3, status="failed")
    beta.active_version, beta.traffic = v1, {"v1": 0.9, "v2": 0.1}
    beta.save()
    Agent.objects.create(name="gamma")

    response = api.get("/api/policies/")

    assert response.status_code == 200
    assert response.json() == [
        {"agent": "alpha", "activeVersion": None, "traffic": {}, "recordServed": False,
         "feedbackCount": 1, "scoredCount": 0, "versionCount": 0},
        {"agent": "beta", "activeVersion": "v1", "traffic": {"v1": 0.9, "v2": 0.1}, "recordServed": False,
         "feedbackCount": 5, "scoredCount": 3, "versionCount": 3},
        {"agent": "gamma", "activeVersion": None, "traffic": {}, "recordServed": False,
         "feedbackCount": 0, "scoredCount": 0, "versionCount": 0},
    ]
    # Each item holds what the traffic endpoint answers for its agent.
    traffic = api.get("/api/policies/beta/traffic").json()
    assert {key: response.json()[1][key] for key in traffic} == traffic


def test_the_agents_list_takes_the_same_queries_for_one_agent_or_many(api):
    store("one", 2, score=0.5)
    api.get("/api/policies/")  # the token and permissions are cached from here on
    with CaptureQueriesContext(connection) as few:
        assert len(api.get("/api/policies/").json()) == 1
    for i in range(5):
        store(f"more-{i}", 2)
        PolicyVersion.objects.create(agent=Agent.objects.get(name=f"more-{i}"), number=1, status="trained")
    with CaptureQueriesContext(connection) as many:
        assert len(api.get("/api/policies/").json()) == 6
    assert len(many.captured_queries) == len(few.captured_queries)


def test_the_agents_list_is_empty_before_any_feedback(api):
    response = api.get("/api/policies/")
    assert response.status_code == 200 and response.json() == []


# --- GET /api/policies/feedback/<agent> ----------------------------------------------------------------------------


def test_the_feedback_list_answers_records_oldest_first_as_a_post_answers_them_plus_reviews(
    api, alice, make_user, client_for,
):
    poster = client_for(make_user("poster", "feedback.add_feedback"))
    posted = poster.post(feedback_url("bot"), {"prompt": "Hi?", "response": "Hello.", "runId": "a"}).json()
    store("bot", 2)
    feedback_services.update_feedback(agent_name="bot", run_id="a", changes={"score": 0.8}, user=alice)

    response = api.get(feedback_url("bot"))

    assert response.status_code == 200
    body = response.json()
    assert body["next"] is None and body["previous"] is None
    assert [record["runId"] for record in body["results"]] == ["a", "r0", "r1"]
    first = body["results"][0]
    assert set(first) == set(posted) | {"reviewer", "reviews"}
    assert (first["id"], first["prompt"], first["score"], first["reviewer"]) == (posted["id"], "Hi?", 0.8, "alice")
    assert first["reviews"] == [{"reviewer": "alice", "score": 0.8, "notes": "", "reviewedAt": first["reviews"][0][
        "reviewedAt"]}]
    assert first["reviewedAt"] and body["results"][1]["reviews"] == [] and body["results"][1]["reviewer"] is None


def test_pages_follow_one_another_without_duplicates_or_gaps(api):
    ids = [feedback.pk for feedback in store("bot", 23)]
    store("other", 5)  # another agent's records never show

    records = all_pages(api, feedback_url("bot", pageSize=5))

    assert [record["id"] for record in records] == ids


def test_records_stored_while_a_client_pages_are_neither_skipped_nor_repeated(api):
    store("bot", 6)
    first = api.get(feedback_url("bot", pageSize=4)).json()
    store("bot", 3, prefix="late")  # after the first page was read
    rest = all_pages(api, first["next"])
    run_ids = [record["runId"] for record in first["results"] + rest]
    assert run_ids == [f"r{i}" for i in range(6)] + ["late0", "late1", "late2"]


def test_the_previous_link_walks_back_to_the_first_page(api):
    store("bot", 10)
    pages = [api.get(feedback_url("bot", pageSize=3)).json()]
    while pages[-1]["next"]:
        pages.append(api.get(pages[-1]["next"]).json())
    assert [len(page["results"]) for page in pages] == [3, 3, 3, 1]
    back = api.get(pages[2]["previous"]).json()
    assert back["results"] == pages[1]["results"]
    assert api.get(back["previous"]).json()["results"] == pages[0]["results"]


def test_the_page_size_defaults_to_100(api):
    store("bot", 101)
    body = api.get(feedback_url("bot")).json()
    assert len(body["results"]) == 100 and body["next"]
    assert parse_qs(urlsplit(body["next"]).query).keys() == {"cursor"}


def test_a_page_costs_the_same_queries_however_deep_and_counts_nothing(api, alice):
    store("bot", 30, score=0.5)
    feedback_services.update_feedback(agent_name="bot", run_id="r29", changes={"score": 0.9}, user=alice)
    api.get(feedback_url("bot", pageSize=1))  # the token and permissions are cached from here on
    with CaptureQueriesContext(connection) as first:
        page = api.get(feedback_url("bot", pageSize=10)).json()
    page = api.get(page["next"]).json()
    with CaptureQueriesContext(connection) as last:
        api.get(page["next"])
    assert len(last.captured_queries) == len(first.captured_queries)
    assert not any("COUNT(" in query["sql"].upper() for query in first.captured_queries + last.captured_queries)


@pytest.fixture
def mixed(alice, bob):
    """An agent with records of every kind the filters tell apart."""
    agent_name = "bot"
    store(agent_name, 3, prefix="api-scored-", score=0.7)
    store(agent_name, 2, prefix="api-pending-")
    feedback_services.import_feedback_batch(agent_name=agent_name, records=[
        {"prompt": "Imported?", "response": "Yes.", "score": 0.4, "run_id": "imported", "source": "import",
         "reviewer": "bob"},
    ])
    feedback_services.record_feedback(agent_name=agent_name, prompt="Typed?", response="In the admin.", score=0.9,
                                      run_id="admin", source=Feedback.Source.ADMIN, user=alice)
    agent = Agent.objects.get(name=agent_name)
    agent.review_overlap = 2
    agent.save()
    versions = {n: PolicyVersion.objects.create(agent=agent, number=n, status="trained") for n in (1, 2)}
    for run_id, prompt in (("v1-a", "From v1?"), ("v1-b", "Also v1?"), ("v2-a", "From v2?")):
        feedback_services.record_feedback(agent_name=agent_name, prompt=prompt, response="Yes.", run_id=run_id,
                                          policy_version=f"v{run_id[1]}")
    both = Feedback.objects.get(run_id="api-pending-0")  # reviewed by alice and bob: scored with their mean
    review.score_feedback(feedback_id=both.pk, user=alice, score=0.2)
    review.score_feedback(feedback_id=both.pk, user=bob, score=0.4)
    return versions


def run_ids(client, **params) -> list[str]:
    return [record["runId"] for record in all_pages(client, feedback_url("bot", pageSize=2, **params))]


def test_scored_filters_scored_records_and_those_awaiting_review(api, mixed):
    assert run_ids(api, scored="true") == [
        "api-scored-0", "api-scored-1", "api-scored-2", "api-pending-0", "imported", "admin"]
    assert run_ids(api, scored="false") == ["api-pending-1", "v1-a", "v1-b", "v2-a"]


def test_reviewer_filters_the_records_a_user_reviewed(api, mixed):
    assert run_ids(api, reviewer="alice") == ["api-pending-0", "admin"]
    assert run_ids(api, reviewer="bob") == ["api-pending-0", "imported"]
    both = api.get(record_url("bot", "api-pending-0")).json()
    assert [(r["reviewer"], r["score"]) for r in both["reviews"]] == [("alice", 0.2), ("bob", 0.4)]
    assert (both["score"], both["reviewer"]) == (pytest.approx(0.3), "bob")


def test_a_reviewer_with_many_reviews_is_filtered_the_same_way(api, mixed, monkeypatch):
    monkeypatch.setattr(feedback_selectors, "_FEW_REVIEWS", 0)  # every reviewer counts as one with many
    assert run_ids(api, reviewer="alice") == ["api-pending-0", "admin"]
    assert run_ids(api, reviewer="bob", scored="true") == ["api-pending-0", "imported"]


def test_policy_version_filters_the_records_a_version_produced(api, mixed):
    assert run_ids(api, policyVersion="v1") == ["v1-a", "v1-b"]
    assert run_ids(api, policyVersion="v2") == ["v2-a"]


def test_source_filters_how_records_came_in(api, mixed):
    assert run_ids(api, source="import") == ["imported"]
    assert run_ids(api, source="admin") == ["admin"]
    assert len(run_ids(api, source="api")) == 8


def test_since_filters_records_created_from_that_time_with_any_offset_spelling(api):
    store("bot", 2, prefix="old")
    Feedback.objects.update(created_at=timezone.now() - timedelta(days=2))
    cut = timezone.now() - timedelta(days=1)
    store("bot", 2, prefix="new")

    assert run_ids(api, since=cut.isoformat()) == ["new0", "new1"]  # +00:00, percent-encoded
    assert run_ids(api, since=cut.strftime("%Y-%m-%dT%H:%M:%SZ")) == ["new0", "new1"]
    plus_two = cut.astimezone(timezone.get_fixed_timezone(120)).strftime("%Y-%m-%dT%H:%M:%S+02:00")
    unencoded = api.get(f"/api/policies/feedback/bot?since={plus_two}")  # "+" arrives as a space
    assert [r["runId"] for r in unencoded.json()["results"]] == ["new0", "new1"]
    assert run_ids(api, since=(cut - timedelta(days=2)).date().isoformat()) == ["old0", "old1", "new0", "new1"]


def test_filters_combine(api, mixed):
    assert run_ids(api, scored="true", source="api", reviewer="alice") == ["api-pending-0"]
    assert run_ids(api, scored="true", policyVersion="v1") == []


@pytest.mark.parametrize(("params", "name", "fragment"), [
    ({"scored": "yes"}, "scored", "not a valid choice"),
    ({"scored": ""}, "scored", "not a valid choice"),
    ({"reviewer": "nobody-here"}, "reviewer", "No user is named 'nobody-here'"),
    ({"reviewer": ""}, "reviewer", "blank"),
    ({"policyVersion": "v01"}, "policyVersion", 'Write a version as "v3"'),
    ({"policyVersion": "3"}, "policyVersion", 'Write a version as "v3"'),
    ({"policyVersion": "v9"}, "policyVersion", "'v9' is not a version of agent 'bot'"),
    ({"source": "web"}, "source", "not a valid choice"),
    ({"since": "yesterday"}, "since", "Datetime has wrong format"),
    ({"since": "2025-13-01T00:00:00Z"}, "since", "Datetime has wrong format"),
    ({"pageSize": "0"}, "pageSize", "greater than or equal to 1"),
    ({"pageSize": "1001"}, "pageSize", "less than or equal to 1000"),
    ({"pageSize": "ten"}, "pageSize", "valid integer"),
    ({"cursor": "not-a-cursor"}, "cursor", "Not a cursor of this list"),
    ({"cursor": b64encode(b"o=0&r=0&p=abc").decode()}, "cursor", "Not a cursor of this list"),
    ({"cursor": b64encode(b"o=0&r=0&p=" + b"9" * 30).decode()}, "cursor", "Not a cursor of this list"),
    ({"reviwer": "alice"}, "reviwer", "Unknown query parameter"),
    ({"page_size": "10"}, "page_size", "Unknown query parameter"),
    ({"format": "xml"}, "format", "Choose one of: json, jsonl, csv"),
])
def test_a_bad_filter_is_a_400_naming_the_parameter(api, params, name, fragment):
    store("bot", 3)
    body = assert_error(api.get(feedback_url("bot", **params)), 400, name, fragment)
    assert list(body["errors"]) == [name]


def test_a_parameter_given_twice_is_a_400(api):
    store("bot", 1)
    assert_error(api.get("/api/policies/feedback/bot?source=api&source=admin"), 400, "source", "Give it once")


def test_a_bad_filter_with_an_export_format_is_answered_in_json(api):
    store("bot", 1)
    assert_error(api.get(feedback_url("bot", format="jsonl", scored="maybe")), 400, "scored")
    assert_error(api.get(feedback_url("nobody", format="csv")), 404, "Agent 'nobody' not found")


def test_an_unknown_agent_is_a_404_like_the_other_agent_routes(api):
    assert_error(api.get(feedback_url("nobody")), 404, "Agent 'nobody' not found")
    assert_error(api.get(feedback_url("nobody", scored="true")), 404, "Agent 'nobody' not found")
    assert_error(api.get(record_url("nobody", "r0")), 404, "Agent 'nobody' not found")
    assert api.get("/api/policies/nobody/traffic").json() == api.get(feedback_url("nobody")).json()


# --- GET /api/policies/feedback/<agent>/<runId> ----------------------------------------------------------------------


def test_one_record_is_read_by_its_run_id_with_its_reviews(api, alice):
    store("bot", 2, score=0.5)
    feedback_services.update_feedback(agent_name="bot", run_id="r1", changes={"score": 1.0, "notes": "good"},
                                      user=alice)
    response = api.get(record_url("bot", "r1"))
    assert response.status_code == 200
    body = response.json()
    listed = api.get(feedback_url("bot")).json()["results"][1]
    assert body == listed
    assert (body["runId"], body["score"], body["notes"], body["reviewer"]) == ("r1", 1.0, "good", "alice")
    assert [(r["reviewer"], r["score"]) for r in body["reviews"]] == [("alice", 1.0)]


def test_a_run_id_with_a_slash_or_spaces_is_read_percent_encoded(api):
    feedback_services.record_feedback(agent_name="bot", prompt="p", response="r", run_id="chat/42 b")
    assert api.get(record_url("bot", "chat/42 b")).json()["runId"] == "chat/42 b"


def test_an_unknown_run_id_is_a_404_naming_it(api):
    store("bot", 1)
    assert_error(api.get(record_url("bot", "missing")), 404, "No feedback with runId 'missing' for agent 'bot'")


def test_the_record_url_still_scores_with_patch_and_takes_no_post_put_or_delete(make_user, client_for):
    writer = client_for(make_user("writer", *READS, "feedback.change_feedback"))
    store("bot", 1)
    assert writer.patch(record_url("bot", "r0"), {"score": 0.3}).json()["score"] == 0.3
    assert writer.get(record_url("bot", "r0")).json()["score"] == 0.3
    for method in (writer.post, writer.put, writer.delete):
        assert method(record_url("bot", "r0"), {}).status_code == 405


def test_a_post_answers_as_before_byte_for_byte(make_user, client_for):
    client = client_for(make_user("poster", "feedback.add_feedback"))
    sent = {"prompt": "What is 2+2?", "response": "4.", "score": 0.9, "runId": "same", "notes": "n"}
    created = client.post(feedback_url("bot"), sent)
    again = client.post(feedback_url("bot"), sent)
    listed = client.post(feedback_url("bot"), [sent, {**sent, "runId": "other"}])
    stored = Feedback.objects.get(run_id="same")
    assert (created.status_code, again.status_code, listed.status_code) == (201, 200, 201)
    assert created.content == again.content == JSONRenderer().render(feedback_data(stored))
    assert created["Content-Type"] == "application/json"
    assert json.loads(listed.content)[0] == json.loads(created.content)
    # Reading needs its own permission: posting does not give it.
    assert client.get(feedback_url("bot")).status_code == 403


# --- export: ?format=jsonl | csv -------------------------------------------------------------------------------------


def downloaded(response) -> bytes:
    assert response.status_code == 200, getattr(response, "content", b"")
    assert isinstance(response, StreamingHttpResponse)
    return b"".join(response.streaming_content)


def test_the_jsonl_export_streams_the_filter_in_the_exports_line_format(api, mixed):
    response = api.get(feedback_url("bot", format="jsonl", scored="true"))
    data = downloaded(response)
    assert response["Content-Type"] == "application/x-ndjson; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="feedback-bot-')
    scored = Feedback.objects.filter(agent__name="bot", score__isnull=False)
    assert data.decode() == "".join(importexport.export_lines(queryset=scored, fmt="jsonl"))
    assert [json.loads(line)["runId"] for line in data.splitlines()] == run_ids(api, scored="true")


def copy_agent() -> None:
    """An agent with the versions the mixed records name: a file's policyVersion must be one of the agent's."""
    copy = Agent.objects.create(name="copy")
    for number in (1, 2):
        PolicyVersion.objects.create(agent=copy, number=number, status="trained")


def test_the_export_reimports_to_the_same_records(api, mixed):
    data = downloaded(api.get(feedback_url("bot", format="jsonl")))
    copy_agent()

    result = importexport.import_feedback(agent_name="copy", stream=io.BytesIO(data), fmt="jsonl")

    assert (result.created, result.existing) == (10, 0)

    def comparable(agent: str) -> list[dict]:
        return [{key: value for key, value in record.items() if key not in ("id", "agent", "createdAt", "updatedAt")}
                for record in all_pages(api, feedback_url(agent))]
    assert comparable("copy") == comparable("bot")
    # Into the agent it came from it is a no-op, as the admin's export is.
    again = importexport.import_feedback(agent_name="bot", stream=io.BytesIO(data), fmt="jsonl")
    assert (again.created, again.existing) == (0, 10)


def test_the_csv_export_and_the_accept_header_give_the_export_too(api, mixed):
    csv_data = downloaded(api.get(feedback_url("bot", format="csv", source="api", scored="false")))
    copy_agent()
    assert csv_data.decode().splitlines()[0] == ",".join(importexport.COLUMNS)
    assert importexport.import_feedback(agent_name="copy", stream=io.BytesIO(csv_data), fmt="csv").created == 4
    by_header = api.get(feedback_url("bot", policyVersion="v1"), HTTP_ACCEPT="application/x-ndjson")
    assert [json.loads(line)["runId"] for line in downloaded(by_header).splitlines()] == ["v1-a", "v1-b"]


def test_an_export_of_no_records_is_an_empty_file(api):
    store("bot", 1)
    assert downloaded(api.get(feedback_url("bot", format="jsonl", scored="true"))) == b""


# --- who may read ----------------------------------------------------------------------------------------------------


def test_reads_need_a_token(anonymous):
    store("bot", 1)
    for url in ("/api/policies/", feedback_url("bot"), feedback_url("bot", format="jsonl"), record_url("bot", "r0")):
        response = anonymous.get(url)
        assert_error(response, 401)
        assert response["WWW-Authenticate"] == 'Token'


def test_feedback_reads_need_the_view_feedback_permission(make_user, client_for):
    store("bot", 1)
    versions_only = client_for(make_user("versions-only", "policies.view_policyversion"))
    for url in (feedback_url("bot"), feedback_url("bot", format="jsonl"), record_url("bot", "r0")):
        assert_error(versions_only.get(url), 403, "feedback.view_feedback")
    assert versions_only.get("/api/policies/").status_code == 200
    feedback_only = client_for(make_user("feedback-only", "feedback.view_feedback"))
    assert_error(feedback_only.get("/api/policies/"), 403, "policies.view_policyversion")


def test_public_reads_open_the_agents_but_not_their_feedback(anonymous, settings):
    settings.N3_PUBLIC_READ = True
    store("bot", 1)
    assert anonymous.get("/api/policies/").json()[0]["feedbackCount"] == 1
    assert_error(anonymous.get(feedback_url("bot")), 401)
    assert_error(anonymous.get(record_url("bot", "r0")), 401)
