"""Deployment (promote, traffic split, sticky assignment) and the A/B result from human scores (issue 12, items 3-4)."""
import hashlib
import math
import statistics
from collections import Counter

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from feedback.models import Feedback
from policies.models import Agent, PolicyVersion
from training import deployment
from training.deployment import HumanScore, assignment_point, human_scores, score_difference, split_choice, version_for

pytestmark = pytest.mark.django_db

TRAINED = PolicyVersion.Status.TRAINED


@pytest.fixture
def agent():
    """An agent with v1, v2 trained, v3 queued."""
    agent = Agent.objects.create(name="bot")
    for number in (1, 2):
        PolicyVersion.objects.create(agent=agent, number=number, status=TRAINED)
    PolicyVersion.objects.create(agent=agent, number=3)
    return agent


def version(agent, number):
    return PolicyVersion.objects.get(agent=agent, number=number)


def scored(agent, number, scores, unscored=0):
    v = version(agent, number)
    rows = [Feedback(agent=agent, prompt="p", response="r", score=s, policy_version=v) for s in scores]
    rows += [Feedback(agent=agent, prompt="p", response="r", policy_version=v) for _ in range(unscored)]
    Feedback.objects.bulk_create(rows)


# --- assignment -------------------------------------------------------------------------------------------------------


def test_version_for_an_agent_not_deployed_is_none(agent):
    assert version_for(agent, "alice") is None


def test_version_for_is_the_active_version_without_a_split(agent):
    deployment.promote_version(agent_name="bot", version="v2")
    agent.refresh_from_db()
    assert version_for(agent, "alice") == version(agent, 2)
    assert version_for(agent) == version(agent, 2)


def test_one_user_always_gets_one_version_and_10000_users_split_near_the_shares(agent):
    deployment.promote_version(agent_name="bot", version="v1")
    deployment.set_traffic(agent_name="bot", shares={"v1": 0.9, "v2": 0.1})
    agent.refresh_from_db()
    first = {f"user-{i}": version_for(agent, f"user-{i}").version for i in range(50)}
    assert all(version_for(agent, user).version == seen for user, seen in first.items())
    counts = Counter(split_choice(agent.traffic, assignment_point("bot", f"user-{i}")) for i in range(10_000))
    # Binomial(10000, 0.1): sd 30, so 4 sd is 120
    assert abs(counts["v2"] - 1000) < 120 and counts["v1"] + counts["v2"] == 10_000


def test_assignment_is_the_documented_hash():
    digest = hashlib.sha256(b"bot\0alice").digest()
    assert assignment_point("bot", "alice") == int.from_bytes(digest[:8], "big") / 2**64
    assert assignment_point("bot", "alice") != assignment_point("other", "alice")  # per agent
    assert split_choice({"v2": 0.5, "v10": 0.5}, 0.49) == "v2"  # version order, not string order
    assert split_choice({"v2": 0.5, "v10": 0.5}, 0.5) == "v10"
    assert split_choice({}, 0.3) is None


def test_without_a_user_the_split_is_random(agent):
    deployment.set_traffic(agent_name="bot", shares={"v1": 0.5, "v2": 0.5})
    agent.refresh_from_db()
    assert {version_for(agent).version for _ in range(60)} == {"v1", "v2"}


def test_a_deleted_split_version_falls_back_to_the_active_one(agent):
    deployment.promote_version(agent_name="bot", version="v1")
    deployment.set_traffic(agent_name="bot", shares={"v2": 1})
    version(agent, 2).delete()
    agent.refresh_from_db()
    assert version_for(agent, "alice") == version(agent, 1)


# --- services ---------------------------------------------------------------------------------------------------------


def test_promote_clears_the_split_and_stores_a_note(agent):
    deployment.set_traffic(agent_name="bot", shares={"v1": 0.5, "v2": 0.5})
    promoted = deployment.promote_version(agent_name="bot", version="v2", note="win rate 0.7 [0.6, 0.8]")
    assert promoted.active_version == version(agent, 2) and promoted.traffic == {}
    assert version(agent, 2).promotion_note == "win rate 0.7 [0.6, 0.8]"


def test_an_empty_split_clears_it_and_record_served_alone_leaves_it(agent):
    deployment.set_traffic(agent_name="bot", shares={"v1": 0.25, "v2": 0.75})
    assert deployment.set_traffic(agent_name="bot", shares=None, record_served=True).traffic == {"v1": 0.25, "v2": 0.75}
    cleared = deployment.set_traffic(agent_name="bot", shares={})
    assert cleared.traffic == {} and cleared.record_served is True


# --- API --------------------------------------------------------------------------------------------------------------


def test_promote_through_the_api(api, agent):
    PolicyVersion.objects.filter(agent=agent, number=2).update(metrics={"evaluation": {"better": True}})
    answer = api.post("/api/policies/bot/v2/promote")
    assert answer.status_code == 200
    assert answer.json() == {"agent": "bot", "activeVersion": "v2", "traffic": {}, "recordServed": False,
                             "warning": None}
    listed = {v["version"]: v for v in api.get("/api/policies/bot").json()}
    assert [listed[f"v{n}"]["active"] for n in (1, 2, 3)] == [False, True, False]


def test_promoting_a_version_not_known_to_be_better_works_and_says_why_it_needs_a_second_thought(api, agent):
    verdict = ("kept the starting model (base model n3-tiny): the trained policy is not credibly better, win rate "
               "0.52 [0.44, 0.60] on 12 held-out prompts: the interval is not above 0.5")
    PolicyVersion.objects.filter(agent=agent, number=2).update(
        metrics={"evaluation": {"better": False, "verdict": verdict}}
    )
    answer = api.post("/api/policies/bot/v2/promote").json()
    assert answer["activeVersion"] == "v2"
    assert answer["warning"] == f"v2 is not known to be better than the model it started from: {verdict}"
    assert api.post("/api/policies/bot/v1/promote").json()["warning"] == (
        "v1 is not known to be better than the model it started from: it was not evaluated against its start"
    )


def test_a_promotes_answer_is_the_state_it_wrote_not_a_put_that_came_after(api, agent, monkeypatch):
    """Issue 20 item 15: the promote re-read the agent after its commit, so a traffic PUT landing in between showed
    up in the promote's answer as if the promote had set it. A PUT is made to land right after the promote's
    transaction commits: the answer is the promote's own state, and the PUT's split is what GET shows after."""
    from contextlib import contextmanager

    real_atomic = deployment.transaction.atomic

    @contextmanager
    def atomic_then_a_put(*args, **kwargs):
        with real_atomic(*args, **kwargs):
            yield
        monkeypatch.setattr(deployment.transaction, "atomic", real_atomic)
        deployment.set_traffic(agent_name="bot", shares={"v1": 0.5, "v2": 0.5})  # another request's PUT

    monkeypatch.setattr(deployment.transaction, "atomic", atomic_then_a_put)
    answer = api.post("/api/policies/bot/v2/promote").json()
    assert (answer["activeVersion"], answer["traffic"]) == ("v2", {})
    assert api.get("/api/policies/bot/traffic").json()["traffic"] == {"v1": 0.5, "v2": 0.5}


def test_promoting_a_version_not_trained_is_409_and_an_unknown_one_404(api, agent):
    answer = api.post("/api/policies/bot/v3/promote")
    assert answer.status_code == 409 and "queued" in answer.json()["detail"]
    assert api.post("/api/policies/bot/v9/promote").status_code == 404
    assert Agent.objects.get(name="bot").active_version is None


def test_traffic_put_and_get(api, agent):
    answer = api.put("/api/policies/bot/traffic", {"v1": 0.9, "v2": 0.1, "recordServed": True}, format="json")
    assert answer.status_code == 200, answer.json()
    state = {"agent": "bot", "activeVersion": None, "traffic": {"v1": 0.9, "v2": 0.1}, "recordServed": True}
    assert answer.json() == state
    assert api.get("/api/policies/bot/traffic").json() == state
    listed = {v["version"]: v["trafficShare"] for v in api.get("/api/policies/bot").json()}
    assert listed == {"v1": 0.9, "v2": 0.1, "v3": None}
    assert api.put("/api/policies/bot/traffic", {}, format="json").json()["traffic"] == {}


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"v1": 0.5, "v2": 0.4}, 400, "sum to 0.9"),
    ({"v1": 1.5}, 400, "at most 1"),
    ({"v1": 0, "v2": 1}, 400, "above 0"),
    ({"v1": "0.5", "v2": 0.5}, 400, "number"),
    ({"v1": True}, 400, "number"),
    ({"three": 1}, 400, "Not a version"),
    ({"v9": 1}, 400, "no version v9"),
    ({"v1": 0.5, "v3": 0.5}, 409, "v3 is queued"),
    ({"recordServed": "yes"}, 400, "true or false"),
    ([0.5, 0.5], 400, "JSON object"),
])
def test_bad_splits_are_refused_and_change_nothing(api, agent, body, status, fragment):
    deployment.set_traffic(agent_name="bot", shares={"v1": 1})
    answer = api.put("/api/policies/bot/traffic", body, format="json")
    assert answer.status_code == status and fragment in answer.json()["detail"], answer.json()
    agent.refresh_from_db()
    assert agent.traffic == {"v1": 1.0} and agent.record_served is False


def test_shares_summing_to_1_within_1e_6_are_accepted(api, agent):
    assert api.put("/api/policies/bot/traffic", {"v1": 1 / 3, "v2": 0.6666667}, format="json").status_code == 200
    assert api.put("/api/policies/bot/traffic", {"v1": 0.5, "v2": 0.50001}, format="json").status_code == 400


def test_deployment_writes_need_the_change_permission(client_for, make_user, agent, anonymous):
    reader = client_for(make_user("reader", "policies.view_policyversion"))
    assert reader.get("/api/policies/bot/traffic").status_code == 200
    assert reader.put("/api/policies/bot/traffic", {"v1": 1}, format="json").status_code == 403
    assert reader.post("/api/policies/bot/v1/promote").status_code == 403
    assert anonymous.post("/api/policies/bot/v1/promote").status_code == 401
    assert Agent.objects.get(name="bot").active_version is None


# --- human scores -----------------------------------------------------------------------------------------------------


def test_human_score_is_the_mean_with_a_t_interval(agent):
    scores = [0.2, 0.4, 0.9, 0.7, 0.6]
    scored(agent, 1, scores, unscored=2)
    got = human_scores([version(agent, 1), version(agent, 2)])
    one = got[version(agent, 1).pk]
    half = 2.776 * statistics.stdev(scores) / math.sqrt(5)  # t(4) 97.5 %
    assert (one.n, one.n_scored) == (7, 5) and one.mean == pytest.approx(0.56)
    assert one.ci == pytest.approx((0.56 - half, 0.56 + half), abs=1e-6)  # shown to 6 decimals
    assert got[version(agent, 2).pk] == HumanScore()


def test_a_human_score_interval_is_rounded_for_display():
    # The API's human score showed "ci": [0.31469999999999265, 1.0].
    score = HumanScore.from_sums(n=3, n_scored=3, total=2.1, squares=1.49)
    assert score.ci == (0.451566, 0.948434)  # 0.7 -/+ t(2) * 0.1 / sqrt(3), to 6 decimals
    assert score.mean == pytest.approx(0.7)


def test_human_scores_of_a_list_are_one_query(agent):
    scored(agent, 1, [0.5, 0.6])
    scored(agent, 2, [0.1])
    versions = list(PolicyVersion.objects.filter(agent=agent))
    with CaptureQueriesContext(connection) as queries:
        got = human_scores(versions)
    assert len(queries) == 1
    assert got[version(agent, 2).pk].mean == pytest.approx(0.1) and got[version(agent, 2).pk].ci is None


def test_the_difference_between_two_versions_has_a_welch_interval():
    a = HumanScore.from_sums(n=40, n_scored=40, total=40 * 0.8, squares=40 * (0.8**2 + 0.01))
    b = HumanScore.from_sums(n=40, n_scored=40, total=40 * 0.5, squares=40 * (0.5**2 + 0.01))
    diff = score_difference(a, b)
    assert diff.difference == pytest.approx(0.3) and 0 < diff.ci[0] < 0.3 < diff.ci[1]
    assert score_difference(a, HumanScore()).difference is None
    same = score_difference(a, a)
    assert same.ci[0] < 0 < same.ci[1]  # no evidence of a difference


def test_the_list_and_detail_show_human_scores(api, agent):
    scored(agent, 2, [1.0, 0.5], unscored=1)
    listed = {v["version"]: v["humanScore"] for v in api.get("/api/policies/bot").json()}
    assert listed["v2"]["n"] == 3 and listed["v2"]["nScored"] == 2 and listed["v2"]["mean"] == pytest.approx(0.75)
    assert len(listed["v2"]["ci"]) == 2
    assert listed["v1"] == {"n": 0, "nScored": 0, "mean": None, "ci": None}
    assert api.get("/api/policies/bot/v2").json()["humanScore"] == listed["v2"]


def test_the_list_does_not_grow_in_queries_with_versions_or_feedback(api, agent):
    def count():
        with CaptureQueriesContext(connection) as queries:
            assert api.get("/api/policies/bot").status_code == 200
        return len(queries)

    count()  # the first request also caches the user's permissions
    before = count()
    for number in range(4, 10):
        PolicyVersion.objects.create(agent=agent, number=number, status=TRAINED)
        scored(agent, number, [0.5] * 5)
    assert count() == before


# --- admin ------------------------------------------------------------------------------------------------------------


def engineer(*perms):
    user = User.objects.create_user("eng", password="pw", is_staff=True)
    user.user_permissions.set([
        Permission.objects.get(content_type__app_label=p.split(".")[0], codename=p.split(".")[1]) for p in perms
    ])
    client = Client()
    client.force_login(user)
    return client


ENGINEER = ("policies.view_agent", "policies.change_agent", "policies.view_policyversion",
            "policies.change_policyversion")


def test_the_agent_page_shows_and_edits_the_deployment(agent):
    client = engineer(*ENGINEER)
    scored(agent, 1, [0.9, 0.7, 0.8])
    url = reverse("admin:policies_agent_deploy", args=[agent.pk])
    # v1 was never evaluated: the first POST asks for a confirmation that says so, and promotes nothing
    page = client.post(url, {"promote": "v1"}).content.decode()
    assert "Promote v1 anyway?" in page and "it was not evaluated against its start" in page
    assert 'name="confirmed" value="1"' in page
    agent.refresh_from_db()
    assert agent.active_version is None
    page = client.post(url, {"promote": "v1", "confirmed": "1"}, follow=True).content.decode()
    assert "Promoted v1" in page and 'id="n3-active-version"' in page
    assert "0.80 [" in page and "3 scored of 3" in page  # human score of v1
    client.post(url, {"share_v1": "0.75", "share_v2": "0.25", "record_served": "on"})
    agent.refresh_from_db()
    assert agent.traffic == {"v1": 0.75, "v2": 0.25} and agent.record_served and agent.active_version.number == 1
    page = client.post(url, {"share_v1": "0.5", "share_v2": "0.4"}, follow=True).content.decode()
    assert "Not saved" in page and "sum to 0.9" in page
    agent.refresh_from_db()
    assert agent.traffic == {"v1": 0.75, "v2": 0.25}
    page = client.get(reverse("admin:policies_agent_change", args=[agent.pk])).content.decode()
    assert 'name="share_v1"' in page and 'name="share_v3"' not in page  # only trained versions
    listing = client.get(reverse("admin:policies_policyversion_changelist")).content.decode()
    assert "active, 75% of traffic" in listing
    assert "v1 (split: v1 75%, v2 25%)" in client.get(reverse("admin:policies_agent_changelist")).content.decode()


def test_the_agent_form_cannot_change_the_deployment(agent):
    """Only the deployment panel (the service's checks) does: the form shows the fields read-only."""
    client = engineer(*ENGINEER)
    client.post(reverse("admin:policies_agent_change", args=[agent.pk]), {
        "name": "bot", "description": "", "default_training_config": "{}", "active_version": version(agent, 3).pk,
        "traffic": '{"v3": 1}', "record_served": "on",
    })
    agent.refresh_from_db()
    assert agent.active_version is None and agent.traffic == {} and not agent.record_served


def test_the_deploy_view_needs_the_change_permission(agent):
    client = engineer("policies.view_agent", "policies.view_policyversion")
    assert client.post(reverse("admin:policies_agent_deploy", args=[agent.pk]), {"promote": "v1"}).status_code == 403
    assert Agent.objects.get(pk=agent.pk).active_version is None
    page = client.get(reverse("admin:policies_agent_change", args=[agent.pk])).content.decode()
    assert 'id="n3-deployment-panel"' in page and 'name="share_v1"' not in page


def test_the_compare_page_shows_human_scores_and_their_difference(agent):
    client = engineer(*ENGINEER)
    scored(agent, 1, [0.9, 0.8, 0.85, 0.95])
    scored(agent, 2, [0.2, 0.3, 0.25, 0.35])
    url = reverse("admin:policies_policyversion_compare", args=[version(agent, 1).pk])
    page = client.get(f"{url}?other={version(agent, 2).pk}").content.decode()
    assert 'id="n3-human-scores"' in page and "v1 − v2: +0.60 (95 % interval +0.49 to +0.71)" in page
    assert "0.88 [0.77, 0.98]" in page  # t(3): 0.875 ± 3.182 * 0.0645 / 2
    assert 'n3-verdict-better" id="n3-human-difference"' in page  # v1 is better: its interval lies above 0
    url = reverse("admin:policies_policyversion_compare", args=[version(agent, 2).pk])
    page = client.get(f"{url}?other={version(agent, 1).pk}").content.decode()
    assert "v2 − v1: -0.60 (95 % interval -0.71 to -0.49)" in page
    assert 'n3-verdict-better" id="n3-human-difference"' not in page
