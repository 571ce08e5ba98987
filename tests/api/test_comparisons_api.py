"""Comparisons through the REST API (issue 21, item 3): two versions side by side (GET .../compare?a=&b=, what the
admin's compare page shows) and blind comparisons (start one, list them, one with its result and interval), on the
real database with token-authenticated clients. The worker that generates a comparison's responses does not run
here: its job is checked in the queue, and its responses are stored as the worker stores them."""
import math
from html import unescape

import pytest
from django.urls import reverse
from django_q.models import OrmQ

from feedback import comparisons
from feedback.models import Comparison, Feedback
from n3_server.rlhf.stats import wilson_interval
from policies.models import Agent, PolicyVersion
from tests.errors import assert_error
from tests.users import login, staff
from training.admin.views import human_score_rows, signed
from training.deployment import t975
from training.jobs.progress import evaluation_metrics
from training.selectors import version_comparison

pytestmark = pytest.mark.django_db

EVALUATION = {
    "better": True, "baseline": "base model n3-tiny", "scored_by": "reward models it was not trained against",
    "n": 64, "heldout_prompts": 12, "split_seed": 42, "win_rate": 0.66, "win_rate_ci": [0.55, 0.76],
    "reward_mean": 0.71, "baseline_reward_mean": 0.52, "reward_diff": 0.19, "reward_diff_ci": [0.10, 0.28],
    "kl": 3.1, "response_length": 9.2, "baseline_response_length": 11.0,
}
V1_SCORES = [0.2, 0.3, 0.4]
V2_SCORES = [0.7, 0.8, 0.9, 0.8]


def compare_url(agent: str, query: str) -> str:
    return f"/api/policies/{agent}/compare?{query}"



@pytest.fixture
def agent():
    return Agent.objects.create(name="support")


@pytest.fixture
def pair(agent, tmp_path, settings):
    """v1 and v2, trained (empty policy directories: nothing here loads them), v2 evaluated, each with feedback
    tied to it and scored by people."""
    settings.MODELS_DIR = tmp_path
    versions = []
    for number, scores in ((1, V1_SCORES), (2, V2_SCORES)):
        policy = tmp_path / f"v{number}" / "policy"
        policy.mkdir(parents=True)
        metrics = {"objective/scores": 0.5 + number / 10, "evaluation": evaluation_metrics(EVALUATION)} \
            if number == 2 else {"objective/scores": 0.6, "evaluation": {"skipped": "no held-out prompts"}}
        version = PolicyVersion.objects.create(agent=agent, number=number, status="trained", model_path=str(policy),
                                               config={"seed": 42}, metrics=metrics)
        Feedback.objects.bulk_create([
            Feedback(agent=agent, prompt=f"v{number} prompt {i}", response="r", score=score, policy_version=version)
            for i, score in enumerate(scores)
        ])
        Feedback.objects.create(agent=agent, prompt=f"v{number} unscored", response="r", policy_version=version)
        versions.append(version)
    return versions


@pytest.fixture
def viewer(make_user, client_for):
    """May read versions, not change them."""
    return client_for(make_user("viewer", "policies.view_policyversion"))


def welch(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """mean(y) - mean(x) with its 95 % Welch interval, from the textbook formula."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    vx = sum((v - mx) ** 2 for v in x) / (len(x) - 1) / len(x)
    vy = sum((v - my) ** 2 for v in y) / (len(y) - 1) / len(y)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    half = t975(df) * math.sqrt(vx + vy)
    return my - mx, my - mx - half, my - mx + half


def votes(comparison: Comparison, user, choices: list[str]) -> None:
    """Reviewers' votes through the queue (claim, then vote for the side that shows the chosen version)."""
    for choice in choices:
        item = comparisons.claim_next_item(comparison=comparison, user=user)
        side = "tie" if choice == "tie" else "left" if (choice == "a") == item.a_on_left else "right"
        comparisons.vote(item_id=item.pk, user=user, side=side)


def ready_comparison(pair, prompts: int) -> Comparison:
    comparison = comparisons.create_comparison(version_a=pair[0], version_b=pair[1],
                                               prompts=[f"held out {i}" for i in range(prompts)],
                                               prompt_source="test", max_new_tokens=8)
    comparisons.set_responses(comparison_id=comparison.pk, responses_a=[f"A{i}" for i in range(prompts)],
                              responses_b=[f"B{i}" for i in range(prompts)])
    comparison.refresh_from_db()
    return comparison


# --- GET .../compare?a=&b= -------------------------------------------------------------------------------------------


def test_compare_shows_both_versions_their_human_scores_and_the_welch_difference(api, pair):
    v1, v2 = pair
    response = api.get(compare_url("support", "a=v1&b=v2"))

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["agent"], body["a"]["version"], body["b"]["version"]) == ("support", "v1", "v2")
    # Each version as its list entry: its evaluation against its own start, and its human score.
    assert body["a"]["metrics"]["evaluation"] == {"skipped": "no held-out prompts"}
    evaluation = body["b"]["metrics"]["evaluation"]
    assert (evaluation["winRate"], evaluation["winRateCi"], evaluation["better"]) == (0.66, [0.55, 0.76], True)
    assert "samples" not in evaluation
    assert body["a"]["humanScore"]["n"] == 4 and body["a"]["humanScore"]["nScored"] == 3
    assert body["a"]["humanScore"]["mean"] == pytest.approx(0.3)
    assert body["b"]["humanScore"]["nScored"] == 4 and body["b"]["humanScore"]["mean"] == pytest.approx(0.8)
    # b's mean minus a's, with the Welch interval: the textbook formula, and what the compare page's selector says.
    difference, low, high = welch(V1_SCORES, V2_SCORES)
    diff = body["humanScoreDifference"]
    assert diff["difference"] == pytest.approx(0.5) == pytest.approx(difference)
    assert diff["ci"] == [pytest.approx(low, abs=1e-6), pytest.approx(high, abs=1e-6)]
    assert 0 < diff["ci"][0] < 0.5 < diff["ci"][1]
    selected = version_comparison(a=v1, b=v2).difference
    assert [diff["difference"], *diff["ci"]] == [round(x, 6) for x in (selected.difference, *selected.ci)]
    assert diff["preferred"] == "v2"  # the interval excludes 0
    assert body["blindComparison"] is None


def test_compare_says_what_the_admin_compare_page_says(api, pair):
    """The compare page of v2 with v1 shows v2 − v1: the API's b − a for a=v1, b=v2, from the same selector."""
    v1, v2 = pair
    diff = api.get(compare_url("support", "a=v1&b=v2")).json()["humanScoreDifference"]
    engineer = staff("eng", "policies.view_policyversion", "policies.change_policyversion")
    html = unescape(login(engineer).get(
        reverse("admin:policies_policyversion_compare", args=[v2.pk]), {"other": v1.pk}).content.decode())

    shown = f"v2 − v1: {signed(diff['difference'])} (95 % interval {signed(diff['ci'][0])} to {signed(diff['ci'][1])})"
    assert shown in html
    assert human_score_rows([v2, v1])["difference"] in shown


def test_compare_the_other_way_round_changes_the_sign(api, pair):
    forward = api.get(compare_url("support", "a=v1&b=v2")).json()["humanScoreDifference"]
    backward = api.get(compare_url("support", "a=v2&b=v1")).json()["humanScoreDifference"]

    assert backward["difference"] == pytest.approx(-forward["difference"])
    assert backward["ci"] == [pytest.approx(-forward["ci"][1]), pytest.approx(-forward["ci"][0])]
    assert backward["preferred"] == "v2"


def test_compare_without_scored_feedback_has_no_difference(api, agent):
    for number in (1, 2):
        PolicyVersion.objects.create(agent=agent, number=number, status="trained")

    body = api.get(compare_url("support", "a=v1&b=v2")).json()

    assert body["humanScoreDifference"] == {"difference": None, "ci": None, "preferred": None}
    assert body["a"]["humanScore"] == {"n": 0, "nScored": 0, "mean": None, "ci": None}


def test_compare_shows_the_pairs_latest_blind_comparison(api, pair, make_user):
    older = ready_comparison(pair, 2)
    latest = ready_comparison(pair, 3)
    votes(latest, make_user("rita"), ["b", "b", "tie"])

    blind = api.get(compare_url("support", "a=v2&b=v1")).json()["blindComparison"]

    assert blind["id"] == latest.pk != older.pk
    assert (blind["a"], blind["b"], blind["prompts"]) == ("v1", "v2", 3)
    assert (blind["result"]["wins"], blind["result"]["ties"], blind["result"]["judged"]) == (2, 1, 3)


@pytest.mark.parametrize("query, field, message", [
    ("b=v2", "a", "This field is required."),
    ("a=v1", "b", "This field is required."),
    ("a=v1&b=v1", "b", "a version is not compared with itself"),
    ("a=v1&b=v2&a=v1", "a", "Give it once."),
    ("a=v1&b=v2&c=v3", "c", "Unknown query parameter (known: a, b)"),
    ("a=one&b=v2", "a", 'Write a version as "v3".'),
    ("a=v01&b=v2", "a", 'Write a version as "v3".'),
    ("a=v1&b=", "b", "This field may not be blank."),
])
def test_compare_refuses_a_bad_query_naming_the_parameter(api, pair, query, field, message):
    body = assert_error(api.get(compare_url("support", query)), 400, field, message)
    assert list(body["errors"]) == [field]


@pytest.mark.parametrize("agent_name, query, message", [
    ("nobody", "a=v1&b=v2", "Agent 'nobody' not found"),
    ("nobody", "a=v1&b=v1", "Agent 'nobody' not found"),  # an unknown agent first, whatever the versions
    ("support", "a=v1&b=v9", "Version 'v9' of agent 'support' not found"),
])
def test_compare_of_an_unknown_agent_or_version_is_a_404(api, pair, agent_name, query, message):
    assert_error(api.get(compare_url(agent_name, query)), 404, message)


def test_compare_needs_the_permission_to_view_versions(pair, anonymous, api_without_permissions, viewer):
    assert_error(anonymous.get(compare_url("support", "a=v1&b=v2")), 401)
    assert_error(api_without_permissions.get(compare_url("support", "a=v1&b=v2")), 403,
                 "policies.view_policyversion")
    assert viewer.get(compare_url("support", "a=v1&b=v2")).status_code == 200


# --- POST .../comparisons: start a blind comparison -------------------------------------------------------------


def test_starting_a_comparison_queues_the_generation_and_answers_202(api, pair, api_user):
    v1, v2 = pair
    response = api.post("/api/policies/support/comparisons", {"b": "v1", "a": "v2", "count": 5}, format="json")

    assert response.status_code == 202, response.content
    body = response.json()
    comparison = Comparison.objects.get()
    # The older version is A whatever the order given (the result is always the newer one's win rate).
    assert (comparison.version_a, comparison.version_b, comparison.created_by) == (v1, v2, api_user)
    assert (body["id"], body["a"], body["b"], body["status"], body["error"]) == (comparison.pk, "v1", "v2",
                                                                                 "generating", None)
    # 5 pairs that differ asked for; up to 4 prompts drawn per pair, of the 8 neither version trained on (each
    # trained before its feedback existed): all 9.
    assert (body["requested"], body["prompts"], comparison.items.count()) == (5, 9, 9)
    assert body["maxNewTokens"] == 64
    assert "most recent prompts that neither version trained on" in body["promptSource"]
    assert body["result"] == {"pairs": 9, "judged": 0, "wins": 0, "losses": 0, "ties": 0, "remaining": 9,
                              "identical": 0, "winRate": None, "ci": None, "preferred": None}
    assert body["url"] == f"http://testserver/api/policies/support/comparisons/{comparison.pk}"
    assert response["Location"] == body["url"]
    assert body["reviewUrl"] == f"http://testserver/review/compare/{comparison.pk}/"
    jobs = [task.args() for task in OrmQ.objects.all() if task.func() == "training.tasks.generate_comparison"]
    assert jobs == [(comparison.pk,)]


def test_a_comparison_starts_with_twenty_prompts_unless_told(api, pair, agent):
    Feedback.objects.bulk_create([Feedback(agent=agent, prompt=f"new {i}", response="r") for i in range(30)])

    body = api.post("/api/policies/support/comparisons", {"a": "v1", "b": "v2"}, format="json").json()

    assert (body["requested"], body["prompts"]) == (20, 39)  # every prompt neither trained on: fewer than 4 x 20


@pytest.mark.parametrize("payload, field, message", [
    ({"a": "v1", "b": "v1"}, "b", "a version is not compared with itself"),
    ({"a": "v1"}, "b", "This field is required."),
    ({"b": "v2"}, "a", "This field is required."),
    ({"a": "v1", "b": "v2", "count": 0}, "count", "greater than or equal to 1"),
    ({"a": "v1", "b": "v2", "count": 201}, "count", "less than or equal to 200"),
    ({"a": "v1", "b": "v2", "count": "5"}, "count", "A valid integer is required."),
    ({"a": "v1", "b": "v2", "prompts": 5}, "prompts", "Unknown field."),
    ({"a": "1", "b": "v2"}, "a", 'Write a version as "v3".'),
])
def test_a_bad_comparison_request_is_a_400_naming_the_field(api, pair, payload, field, message):
    body = assert_error(api.post("/api/policies/support/comparisons", payload, format="json"), 400, field, message)
    assert list(body["errors"]) == [field]
    assert not Comparison.objects.exists()


def test_a_comparison_needs_trained_versions_with_policies_and_prompts(api, pair, agent):
    v1, v2 = pair
    url = "/api/policies/support/comparisons"
    Feedback.objects.filter(agent=agent).delete()
    assert_error(api.post(url, {"a": "v1", "b": "v2"}, format="json"), 400, "No prompts to compare on")
    Feedback.objects.create(agent=agent, prompt="fresh", response="r")
    PolicyVersion.objects.filter(pk=v2.pk).update(status="failed")
    assert_error(api.post(url, {"a": "v1", "b": "v2"}, format="json"), 400, "support v2 is failed, not trained")
    PolicyVersion.objects.filter(pk=v2.pk).update(status="trained", model_path="/nowhere/policy")
    assert_error(api.post(url, {"a": "v1", "b": "v2"}, format="json"), 400, "no policy files at /nowhere/policy")
    assert_error(api.post(url, {"a": "v1", "b": "v7"}, format="json"), 404, "Version 'v7' of agent 'support'")
    assert_error(api.post("/api/policies/nobody/comparisons", {"a": "v1", "b": "v2"}, format="json"), 404,
                 "Agent 'nobody' not found")
    assert not Comparison.objects.exists()


def test_starting_a_comparison_needs_the_permission_to_change_versions(pair, viewer, anonymous, make_user,
                                                                       client_for):
    """Viewing versions is not enough: a comparison queues a worker job and asks reviewers for their time."""
    url = "/api/policies/support/comparisons"
    assert_error(viewer.post(url, {"a": "v1", "b": "v2"}, format="json"), 403, "policies.change_policyversion")
    assert_error(anonymous.post(url, {"a": "v1", "b": "v2"}, format="json"), 401)
    lead = client_for(make_user("lead", "policies.change_policyversion"))
    assert lead.post(url, {"a": "v1", "b": "v2"}, format="json").status_code == 202
    assert viewer.get(url).status_code == 200


# --- GET .../comparisons and .../comparisons/<id> ---------------------------------------------------------------


def test_a_comparisons_result_has_its_win_rate_and_wilson_interval(api, pair, make_user):
    comparison = ready_comparison(pair, 12)
    votes(comparison, make_user("rita"), ["b"] * 8 + ["a", "tie"])

    body = api.get(f"/api/policies/support/comparisons/{comparison.pk}").json()

    assert body["status"] == "ready" and body["readyAt"] and body["prompts"] == 12
    result = body["result"]
    assert (result["judged"], result["wins"], result["losses"], result["ties"], result["remaining"]) == (10, 8, 1, 1, 2)
    assert result["winRate"] == pytest.approx(8.5 / 10)
    low, high = wilson_interval(8.5, 10)  # ties count half
    assert result["ci"] == [round(low, 6), round(high, 6)] and 0.5 < low < 8.5 / 10 < high < 1
    assert result["preferred"] == "v2"
    # The same figures as the compare page's panel reads.
    tally = comparisons.tally(comparison=comparison)
    assert (tally.n, tally.win_rate) == (result["judged"], pytest.approx(result["winRate"]))


def test_identical_pairs_are_ties_without_a_vote_left_out_of_the_win_rate(api, pair, make_user):
    comparison = comparisons.create_comparison(version_a=pair[0], version_b=pair[1],
                                               prompts=[f"held out {i}" for i in range(7)], prompt_source="test",
                                               max_new_tokens=8, requested=4)
    comparisons.set_responses(comparison_id=comparison.pk, responses_a=["same", "A1", "same", "A3", "A4", "A5", "A6"],
                              responses_b=["same", "B1", "same", "B3", "B4", "B5", "B6"])
    comparison.refresh_from_db()
    votes(comparison, make_user("rita"), ["b", "b", "a"])

    body = api.get(f"/api/policies/support/comparisons/{comparison.pk}").json()

    # The store keeps the items up to the 4th pair that differs: the 7th prompt was not needed.
    assert (body["requested"], body["prompts"]) == (4, 6)
    result = body["result"]
    assert (result["pairs"], result["identical"], result["judged"], result["ties"], result["remaining"]) == (4, 2, 3,
                                                                                                           0, 1)
    assert result["winRate"] == pytest.approx(2 / 3)  # the identical pairs are not ties in it
    assert result["ci"] == [round(bound, 6) for bound in wilson_interval(2, 3)]


def test_a_comparison_without_evidence_prefers_no_version(api, pair, make_user):
    comparison = ready_comparison(pair, 4)
    votes(comparison, make_user("rita"), ["a", "b"])

    result = api.get(f"/api/policies/support/comparisons/{comparison.pk}").json()["result"]

    assert result["winRate"] == 0.5 and result["ci"][0] < 0.5 < result["ci"][1] and result["preferred"] is None


def test_a_failed_comparison_says_why(api, pair):
    comparison = comparisons.create_comparison(version_a=pair[0], version_b=pair[1], prompts=["q"],
                                               prompt_source="test", max_new_tokens=8)
    comparisons.fail_comparison(comparison_id=comparison.pk, error="Cannot load the policy of v1")

    body = api.get(f"/api/policies/support/comparisons/{comparison.pk}").json()

    assert (body["status"], body["error"], body["readyAt"]) == ("failed", "Cannot load the policy of v1", None)


def test_an_unknown_comparison_is_a_404(api, pair):
    other = Agent.objects.create(name="other")
    theirs = comparisons.create_comparison(
        version_a=PolicyVersion.objects.create(agent=other, number=1, status="trained"),
        version_b=PolicyVersion.objects.create(agent=other, number=2, status="trained"),
        prompts=["q"], prompt_source="test", max_new_tokens=8)

    assert_error(api.get(f"/api/policies/support/comparisons/{theirs.pk}"), 404,
                 f"No blind comparison {theirs.pk} for agent 'support'")
    assert_error(api.get("/api/policies/support/comparisons/99999"), 404, "No blind comparison 99999")
    assert_error(api.get(f"/api/policies/nobody/comparisons/{theirs.pk}"), 404, "Agent 'nobody' not found")
    assert_error(api.get("/api/policies/support/comparisons/abc"), 404)
    assert_error(api.get("/api/policies/support/comparisons/" + "9" * 30), 404)
    assert api.get(f"/api/policies/other/comparisons/{theirs.pk}").status_code == 200


def test_the_list_pages_the_agents_comparisons_newest_first(api, pair):
    made = [ready_comparison(pair, 1).pk for _ in range(5)]

    first = api.get("/api/policies/support/comparisons?limit=2").json()
    assert [c["id"] for c in first["results"]] == made[::-1][:2]
    assert first["next"] == f"http://testserver/api/policies/support/comparisons?before={made[3]}&limit=2"
    second = api.get(first["next"]).json()
    third = api.get(second["next"]).json()
    assert [c["id"] for c in second["results"] + third["results"]] == made[::-1][2:]
    assert third["next"] is None
    everything = api.get("/api/policies/support/comparisons").json()
    assert [c["id"] for c in everything["results"]] == made[::-1] and everything["next"] is None
    assert everything["results"][0]["result"]["remaining"] == 1


def test_the_list_is_the_agents_own(api, pair):
    assert api.get("/api/policies/support/comparisons").json() == {"next": None, "results": []}
    assert_error(api.get("/api/policies/nobody/comparisons"), 404, "Agent 'nobody' not found")


@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"), ("limit=101", "limit"), ("before=x", "before"), ("limit=2&limit=3", "limit"),
    ("page=2", "page"),
])
def test_the_list_refuses_a_bad_query_naming_the_parameter(api, pair, query, field):
    body = assert_error(api.get(f"/api/policies/support/comparisons?{query}"), 400, field)
    assert list(body["errors"]) == [field]


def test_anonymous_readers_get_no_server_paths(pair, anonymous, settings):
    """N3_PUBLIC_READ opens the comparisons as it opens the versions, without this machine's directories."""
    settings.N3_PUBLIC_READ = True
    comparison = comparisons.create_comparison(version_a=pair[0], version_b=pair[1], prompts=["q"],
                                               prompt_source="test", max_new_tokens=8)
    comparisons.fail_comparison(comparison_id=comparison.pk,
                                error=f"Cannot load the policy of v1 at {pair[0].model_path}")

    body = anonymous.get(f"/api/policies/support/comparisons/{comparison.pk}").json()

    assert body["error"] == "Cannot load the policy of v1 at MODELS_DIR/v1/policy"
    assert anonymous.get(compare_url("support", "a=v1&b=v2")).json()["b"]["modelPath"] == "MODELS_DIR/v2/policy"
    assert_error(anonymous.post("/api/policies/support/comparisons", {"a": "v1", "b": "v2"}, format="json"), 401)


def test_the_endpoints_answer_with_a_trailing_slash_too(api, pair):
    comparison = ready_comparison(pair, 1)
    assert api.get("/api/policies/support/compare/?a=v1&b=v2").status_code == 200
    assert api.get("/api/policies/support/comparisons/").status_code == 200
    assert api.get(f"/api/policies/support/comparisons/{comparison.pk}/").status_code == 200

