"""Blind side-by-side comparison of two versions (issue 13 item 3): prompts neither version trained on, sides
random and balanced and never in the page, one leased vote per pair, the win rate with its Wilson interval, the
compare page's panel, and (slow) the worker really generating both versions' responses."""
import io
import json
import random
import re
from datetime import timedelta
from html import unescape

import pytest
from django.urls import reverse
from django.utils import timezone

from feedback import comparisons
from feedback.models import Comparison, ComparisonItem, Feedback
from n3_server.rlhf import TrainingConfig
from n3_server.rlhf.data import heldout_split
from n3site.exceptions import Conflict, ServiceError
from policies.models import Agent, PolicyVersion
from tests.users import login, staff
from training.comparisons import DRAWS_PER_PAIR, comparison_prompts, start_comparison

pytestmark = pytest.mark.django_db

TINY = "n3-tiny-random"




@pytest.fixture
def agent():
    return Agent.objects.create(name="support")


@pytest.fixture
def reviewers():
    return [staff(name, "feedback.change_feedback", "feedback.view_feedback") for name in ("rita", "sam")]


@pytest.fixture
def engineer():
    return staff("eng", "policies.view_agent", "policies.view_policyversion", "policies.change_policyversion",
                 "feedback.view_feedback")


@pytest.fixture
def pair(agent, tmp_path, settings):
    """v1 and v2, both trained, with policy directories (empty: nothing here loads them)."""
    settings.MODELS_DIR = tmp_path
    versions = []
    for number in (1, 2):
        policy = tmp_path / f"v{number}" / "policy"
        policy.mkdir(parents=True)
        versions.append(PolicyVersion.objects.create(
            agent=agent, number=number, status="trained", model_path=str(policy), config={"seed": 42}))
    return versions


def make_comparison(pair, prompts, rng=None) -> Comparison:
    return comparisons.create_comparison(version_a=pair[0], version_b=pair[1], prompts=list(prompts),
                                         prompt_source="test", max_new_tokens=8, rng=rng)


def ready(comparison: Comparison) -> Comparison:
    """Responses as a worker would store them: A's and B's recognisable."""
    items = list(comparison.items.order_by("position"))
    comparisons.set_responses(comparison_id=comparison.pk, responses_a=[f"answer A{i.position}" for i in items],
                              responses_b=[f"answer B{i.position}" for i in items])
    comparison.refresh_from_db()
    return comparison


# --- sides -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 9, 10, 31])
def test_sides_are_balanced(count):
    for seed in range(20):
        sides = comparisons.balanced_sides(count, random.Random(seed))
        assert len(sides) == count and abs(sum(sides) - (count - sum(sides))) <= 1


def test_sides_are_random_per_item(pair):
    draws = [[i.a_on_left for i in make_comparison(pair, [f"q{n}" for n in range(10)]).items.order_by("position")]
             for _ in range(20)]
    assert all(sum(sides) == 5 for sides in draws)  # each comparison balanced: A on the left for half its items
    # and which half is drawn afresh: every position is A-left in some draw and B-left in another (a position stuck
    # on one side over 20 balanced draws: about 1 in 50,000 for the ten), and the draws are not one repeated pattern
    assert all(0 < sum(column) < 20 for column in zip(*draws))
    assert len({tuple(sides) for sides in draws}) > 10


def test_the_queue_hides_which_version_is_which(pair, reviewers):
    pair[0].policy_id, pair[1].policy_id = "aaaa1111", "bbbb2222"
    for v in pair:
        v.save()
    comparison = ready(make_comparison(pair, [f"question {n}" for n in range(6)], rng=random.Random(3)))
    client = login(reviewers[0])
    seen_a_left = set()
    for _ in range(6):
        response = client.get(reverse("review:compare", args=[comparison.pk]))
        html = response.content.decode()
        item = response.context["item"]
        assert not re.search(r"\bv[12]\b", html)  # no version name
        for secret in ("aaaa1111", "bbbb2222", str(pair[0].model_path), "a_on_left", "response_a"):
            assert secret not in html
        left, right = response.context["left"], response.context["right"]
        assert html.index(left) < html.index('id="n3-right"') < html.index(right)
        seen_a_left.add(left.startswith("answer A"))
        # A vote names a side; the item turns it into the version it showed.
        client.post(reverse("review:compare_vote", args=[comparison.pk, item.pk]), {"choice": "left"})
        item.refresh_from_db()
        assert item.choice == ("a" if item.a_on_left else "b") and item.reviewer == reviewers[0]
    assert seen_a_left == {True, False}
    assert comparisons.tally(comparison=comparison).n == 6
    page = client.get(reverse("review:compare", args=[comparison.pk])).content.decode()
    assert "All 6 pairs are judged" in page


# --- the queue: one vote per pair, leased ------------------------------------------------------------------------


def test_two_reviewers_never_get_the_same_pair_and_a_pair_gets_one_vote(pair, reviewers):
    comparison = ready(make_comparison(pair, ["q1", "q2"]))
    rita, sam = reviewers
    first = comparisons.claim_next_item(comparison=comparison, user=rita)
    second = comparisons.claim_next_item(comparison=comparison, user=sam)
    assert first.pk != second.pk
    assert comparisons.claim_next_item(comparison=comparison, user=rita).pk == first.pk  # a reload: the same pair
    with pytest.raises(Conflict, match="Another reviewer is judging this pair"):
        comparisons.vote(item_id=second.pk, user=rita, side="tie")
    comparisons.vote(item_id=first.pk, user=rita, side="tie")
    with pytest.raises(Conflict, match="already judged"):
        comparisons.vote(item_id=first.pk, user=sam, side="left")
    assert ComparisonItem.objects.get(pk=first.pk).choice == "tie"


def test_skip_leaves_the_pair_to_others_and_can_be_undone(pair, reviewers):
    comparison = ready(make_comparison(pair, ["only one"]))
    rita, sam = [login(r) for r in reviewers]
    url = reverse("review:compare", args=[comparison.pk])
    item = rita.get(url).context["item"]
    rita.post(reverse("review:compare_skip", args=[comparison.pk, item.pk]))
    page = rita.get(url)
    assert page.context["item"] is None and "you skipped 1" in page.content.decode()
    assert sam.get(url).context["item"].pk == item.pk  # free for the next reviewer
    assert rita.get(url, {"skipped": "again"}).status_code == 302


def test_a_generating_comparison_has_nothing_to_judge_yet(pair, reviewers):
    comparison = make_comparison(pair, ["q1"])
    page = login(reviewers[0]).get(reverse("review:compare", args=[comparison.pk]))
    assert page.context["item"] is None and "still writing their responses" in page.content.decode()


def test_a_vote_counts_only_for_a_generated_pair_this_reviewer_holds(pair, reviewers):
    """Issue 20 item 7: while the comparison was still generating, a POSTed vote answered 302 and counted (a win
    rate from votes on nothing); so did a vote on a pair never given to the voter. Now each is a 409 that says why
    and nothing is counted."""
    rita, sam = reviewers
    client = login(rita)
    generating = make_comparison(pair, ["q1", "q2"])
    first = generating.items.order_by("position").first()
    response = client.post(reverse("review:compare_vote", args=[generating.pk, first.pk]), {"choice": "left"})
    assert response.status_code == 409
    assert "responses are not there yet" in response.content.decode()
    assert comparisons.tally(comparison=generating).n == 0

    comparison = ready(generating)
    first, second = comparison.items.order_by("position")
    url = lambda item: reverse("review:compare_vote", args=[comparison.pk, item.pk])  # noqa: E731
    # Nobody holds it: not given to rita.
    response = client.post(url(second), {"choice": "right"})
    assert response.status_code == 409 and "You do not hold this pair" in response.content.decode()
    # sam holds it.
    held = comparisons.claim_next_item(comparison=comparison, user=sam)
    response = client.post(url(held), {"choice": "right"})
    assert response.status_code == 409 and "Another reviewer is judging this pair" in response.content.decode()
    # rita's lease ran out.
    mine = comparisons.claim_next_item(comparison=comparison, user=rita)
    ComparisonItem.objects.filter(pk=mine.pk).update(claimed_until=timezone.now() - timedelta(seconds=1))
    assert client.post(url(mine), {"choice": "tie"}).status_code == 409
    assert comparisons.tally(comparison=comparison).n == 0
    # Held and generated: counted, then the next pair.
    mine = comparisons.claim_next_item(comparison=comparison, user=rita)
    assert client.post(url(mine), {"choice": "tie"}).status_code == 302
    assert comparisons.tally(comparison=comparison).ties == 1


def test_the_queue_needs_the_reviewer_permission(pair):
    comparison = ready(make_comparison(pair, ["q1"]))
    viewer = staff("viewer", "feedback.view_feedback")
    assert login(viewer).get(reverse("review:compare", args=[comparison.pk])).status_code == 403


# --- the result --------------------------------------------------------------------------------------------------


def test_win_rate_counts_ties_half_with_a_wilson_interval():
    # 6 wins, 2 losses, 2 ties: (6 + 2/2) / 10 = 0.7. Wilson, z = 1.96, p = 0.7, n = 10, by hand:
    # centre (0.7 + 3.8415/20) / (1 + 3.8415/10) = 0.6445; half 1.96 * sqrt(0.021 + 3.8415/400) / 1.38415 = 0.2477.
    tally = comparisons.Tally(wins=6, losses=2, ties=2, total=12)
    assert (tally.n, tally.remaining, tally.win_rate) == (10, 2, 0.7)
    assert tally.ci == pytest.approx((0.3968, 0.8922), abs=1e-4)
    # 8 of 8: the interval is not [1, 1] (as a bootstrap or a normal interval would say) but from 0.68.
    assert comparisons.Tally(wins=8, losses=0, ties=0, total=8).ci == pytest.approx((0.6756, 1.0), abs=1e-4)
    assert comparisons.Tally(wins=0, losses=0, ties=4, total=4).win_rate == 0.5
    assert comparisons.Tally(wins=0, losses=0, ties=0, total=4).ci is None


def test_tally_counts_the_votes(pair, reviewers):
    comparison = ready(make_comparison(pair, [f"q{n}" for n in range(5)]))
    for item, choice in zip(comparison.items.order_by("position"), ["a", "b", "b", "tie", ""]):
        ComparisonItem.objects.filter(pk=item.pk).update(choice=choice)
    tally = comparisons.tally(comparison=comparison)
    assert (tally.wins, tally.losses, tally.ties, tally.n, tally.total) == (2, 1, 1, 4, 5)
    assert tally.win_rate == 0.625


# --- prompts neither version trained on --------------------------------------------------------------------------


def test_prompts_are_the_held_out_ones_then_newer_ones(agent, pair):
    for n in range(15):
        Feedback.objects.create(agent=agent, prompt=f"old prompt {n}", response="r", score=0.5)
    through = Feedback.objects.order_by("-id").first().pk
    v1, v2 = pair
    v1.config = {"seed": 7, "eval_fraction": 0.2}
    v2.config = {"seed": 7, "eval_fraction": 0.2, "init_from": "v1"}
    for v in pair:
        v.feedback_through_id = through
        v.save()
    for n in range(3):
        Feedback.objects.create(agent=agent, prompt=f"new prompt {n}", response="r")
    heldout, _ = heldout_split([f"old prompt {n}" for n in range(15)], TrainingConfig(seed=7, eval_fraction=0.2))
    assert len(heldout) == 3

    prompts, source = comparison_prompts(version_a=v1, version_b=v2, count=20)
    assert prompts == sorted(heldout) + ["new prompt 2", "new prompt 1", "new prompt 0"]
    assert source == ("3 held out of both versions' training (their evaluations' split) and 3 of the agent's most "
                      "recent prompts that neither version trained on")
    assert comparison_prompts(version_a=v1, version_b=v2, count=4)[0] == sorted(heldout) + ["new prompt 2"]

    # A version with another seed held out other prompts: what it trained on is not a fair prompt any more.
    v2.config = {"seed": 8, "eval_fraction": 0.2}
    v2.save()
    other_heldout, _ = heldout_split([f"old prompt {n}" for n in range(15)], TrainingConfig(seed=8, eval_fraction=0.2))
    prompts, _ = comparison_prompts(version_a=v1, version_b=v2, count=20)
    assert set(prompts) == (heldout & other_heldout) | {"new prompt 0", "new prompt 1", "new prompt 2"}


def test_start_needs_trained_versions_and_prompts(agent, pair):
    v1, v2 = pair
    with pytest.raises(Exception, match="No prompts to compare on"):
        start_comparison(version=v2, other=v1)
    Feedback.objects.create(agent=agent, prompt="fresh", response="r")
    v2.status = "failed"
    v2.save()
    with pytest.raises(Exception, match="support v2 is failed, not trained"):
        start_comparison(version=v2, other=v1)


# --- the compare page --------------------------------------------------------------------------------------------


def test_compare_page_starts_a_comparison_shows_generating_then_the_tally(agent, pair, engineer, reviewers):
    from django_q.models import OrmQ

    v1, v2 = pair
    for n in range(3):
        Feedback.objects.create(agent=agent, prompt=f"prompt {n}", response="r")
    client = login(engineer)
    url = reverse("admin:policies_policyversion_compare", args=[v2.pk])
    page = client.get(url, {"other": v1.pk}).content.decode()
    assert "Start blind comparison (3 prompts)" in page

    response = client.post(f"{url}?other={v1.pk}", {"blind": "1", "count": "3"}, follow=True)
    comparison = Comparison.objects.get()
    assert (comparison.version_a, comparison.version_b, comparison.items.count()) == (v1, v2, 3)
    jobs = [t for t in OrmQ.objects.all() if t.func() == "training.tasks.generate_comparison"]
    assert [t.args()[0] for t in jobs] == [comparison.pk]
    assert "generating… each version's responses until 3 pairs differ, from up to 3 prompts" in \
        response.content.decode()
    assert client.get(url, {"other": v1.pk, "blind": "status"}).json() == {"status": "generating"}

    ready(comparison)
    assert client.get(url, {"other": v1.pk, "blind": "status"}).json() == {"status": "ready"}
    for side in ["b", "b", "tie"]:
        item = comparisons.claim_next_item(comparison=comparison, user=reviewers[0])  # a vote needs the pair held
        choice = "tie" if side == "tie" else "left" if item.a_on_left == (side == "a") else "right"
        comparisons.vote(item_id=item.pk, user=reviewers[0], side=choice)
    # The page of v1 compared with v2 shows the same comparison, B (v2) over A (v1).
    page = client.get(reverse("admin:policies_policyversion_compare", args=[v1.pk]), {"other": v2.pk}).content.decode()
    # (2 + 1/2) / 3 = 0.83; Wilson at n 3: centre 0.646, half-width 0.336.
    assert ("Win rate of v2 over v1: 83 % (95 % interval 31–98 %) on 3 judged pairs: no evidence either way yet"
            in page)
    assert reverse("review:compare", args=[comparison.pk]) in page
    assert "Start a new blind comparison (3 prompts)" in page


@pytest.mark.parametrize("count, reason", [
    ("-5", "must be a whole number, got '-5'"), ("abc", "must be a whole number, got 'abc'"),
    ("2.5", "must be a whole number"), ("0", "must be between 1 and"), ("100000", "must be between 1 and"),
])
def test_a_bad_number_of_prompts_is_a_400_that_says_why(agent, pair, engineer, count, reason):
    """Issue 20 item 15: "-5" or "abc" silently became 20 prompts."""
    v1, v2 = pair
    for n in range(3):
        Feedback.objects.create(agent=agent, prompt=f"prompt {n}", response="r")
    url = reverse("admin:policies_policyversion_compare", args=[v2.pk]) + f"?other={v1.pk}"
    client = login(engineer)
    response = client.post(url, {"blind": "1", "count": count})
    assert response.status_code == 400
    page = unescape(response.content.decode())
    assert reason in page and "No blind comparison started" in page
    assert not Comparison.objects.exists()
    assert client.post(url, {"blind": "1", "count": "2"}).status_code == 302
    # 2 pairs asked for; the 3 prompts there are drawn, the spare one for a pair that turns out identical.
    comparison = Comparison.objects.get()
    assert (comparison.requested, comparison.items.count()) == (2, 3)
    page = unescape(client.get(url).content.decode())
    assert f"Blind comparison {comparison.pk} started for 2 pairs on 3 prompts drawn (" in page


def test_starting_a_comparison_needs_the_change_permission(pair):
    v1, v2 = pair
    viewer = staff("viewer", "policies.view_policyversion")
    url = reverse("admin:policies_policyversion_compare", args=[v2.pk])
    assert login(viewer).post(f"{url}?other={v1.pk}", {"blind": "1"}).status_code == 403
    assert not Comparison.objects.exists()


@pytest.mark.parametrize("choices, verdict", [
    (["b"] * 8, "Win rate of v2 over v1: 100 % (95 % interval 68–100 %) on 8 judged pairs: reviewers prefer v2"),
    (["a"] * 7 + ["tie"], "Win rate of v2 over v1: 6 % (95 % interval 1–40 %) on 8 judged pairs: reviewers prefer v1"),
])
def test_the_panel_says_which_version_reviewers_prefer(pair, choices, verdict):
    """As the API's ``preferred`` says it (feedback.selectors.ComparisonResult.preferred, the one rule)."""
    from feedback.selectors import latest_comparison_of
    from training.comparisons import comparison_panel

    comparison = ready(make_comparison(pair, [f"q{n}" for n in range(8)]))
    for item, choice in zip(comparison.items.all(), choices):
        ComparisonItem.objects.filter(pk=item.pk).update(choice=choice)
    panel = comparison_panel(version=pair[0], other=pair[1])
    assert panel["sentence"] == verdict
    preferred = latest_comparison_of(version_a=pair[0], version_b=pair[1]).preferred
    assert verdict.endswith(f"reviewers prefer {preferred.version}") and panel["better"] == (preferred == pair[1])


# --- the worker, for real ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_worker_generates_both_versions_responses(agent, engineer, settings, tmp_path):
    """The queued job, run here with its real child process (manage.py generate_comparison) on n3-tiny-random."""
    from n3_server.rlhf.base_models import resolve_base_model
    from tests.sites import tmp_models_dir
    from training import tasks

    settings.MODELS_DIR = tmp_models_dir(tmp_path)
    policy = resolve_base_model(TINY, models_dir=settings.MODELS_DIR)
    v1, v2 = [PolicyVersion.objects.create(agent=agent, number=n, status="trained", model_path=policy)
              for n in (1, 2)]
    for prompt in ("What is 2+2?", "Name a colour.", "Say hello."):
        Feedback.objects.create(agent=agent, prompt=prompt, response="...")
    comparison = start_comparison(version=v2, other=v1, count=3, max_new_tokens=6, user=engineer)

    assert tasks.generate_comparison(comparison.pk) == f"comparison {comparison.pk}: exit code 0"

    comparison.refresh_from_db()
    assert comparison.status == "ready" and comparison.ready_at is not None
    for item in comparison.items.all():
        assert item.response_a and item.response_a == item.response_b  # same weights, greedy: the same text
        assert (item.identical, item.choice, item.reviewer) == (True, "tie", None)  # nothing to ask a reviewer
    tally = comparisons.tally(comparison=comparison)
    assert (tally.identical, tally.total, tally.n) == (3, 0, 0)
    assert comparisons.claim_next_item(comparison=comparison, user=engineer) is None


@pytest.mark.slow
def test_a_policy_that_cannot_load_fails_the_comparison(agent, settings, tmp_path):
    settings.MODELS_DIR = tmp_path
    v1, v2 = [PolicyVersion.objects.create(agent=agent, number=n, status="trained", model_path=str(tmp_path))
              for n in (1, 2)]
    comparison = make_comparison([v1, v2], ["q"])
    from training import tasks

    assert tasks.generate_comparison(comparison.pk).endswith("exit code 1")
    comparison.refresh_from_db()
    assert comparison.status == "failed" and "Cannot load the policy of v1" in comparison.error


# --- identical pairs: ties without asking, more prompts drawn (issue 21, item 4) ---------------------------------


def test_an_identical_pair_is_a_tie_without_a_vote_and_spare_prompts_make_up_the_pairs(pair, reviewers):
    """3 of 4 pairs were byte-identical and still asked for a vote: now they are ties nobody is asked about, and
    the worker's further answers fill the 2 informative pairs asked for; the prompts not needed are dropped."""
    comparison = comparisons.create_comparison(version_a=pair[0], version_b=pair[1],
                                               prompts=[f"q{n}" for n in range(8)], prompt_source="test",
                                               max_new_tokens=8, requested=2)
    # The worker answered 5 prompts (q0 to q4): q0, q1 and q3 alike, q2 and q4 not.
    comparisons.set_responses(comparison_id=comparison.pk, responses_a=["same", "same", "A2", "same", "A4"],
                              responses_b=["same", "same", "B2", "same", "B4"])
    items = list(comparison.items.order_by("position"))
    assert [(i.prompt, i.identical, i.choice, i.reviewer) for i in items] == [
        ("q0", True, "tie", None), ("q1", True, "tie", None), ("q2", False, "", None), ("q3", True, "tie", None),
        ("q4", False, "", None)]
    assert sorted(i.a_on_left for i in items if not i.identical) == [False, True]  # sides balanced over the shown
    tally = comparisons.tally(comparison=comparison)
    assert (tally.total, tally.identical, tally.ties, tally.n, tally.drawn, tally.win_rate) == (2, 3, 0, 0, 5, None)

    # Reviewers get the two informative pairs only; their votes alone make the win rate.
    client = login(reviewers[0])
    shown = []
    for _ in range(2):
        item = client.get(reverse("review:compare", args=[comparison.pk])).context["item"]
        shown.append(item.prompt)
        client.post(reverse("review:compare_vote", args=[comparison.pk, item.pk]),
                    {"choice": "left" if not item.a_on_left else "right"})  # B each time
    assert shown == ["q2", "q4"]
    page = client.get(reverse("review:compare", args=[comparison.pk])).content.decode()
    assert "All 2 pairs are judged" in page and "3 pairs with identical responses not asked" in page
    tally = comparisons.tally(comparison=comparison)
    assert (tally.wins, tally.ties, tally.n, tally.win_rate) == (2, 0, 2, 1.0)


def test_answers_beyond_the_pairs_asked_for_are_dropped(pair):
    comparison = comparisons.create_comparison(version_a=pair[0], version_b=pair[1], prompts=["q0", "q1", "q2"],
                                               prompt_source="test", max_new_tokens=8, requested=1)
    comparisons.set_responses(comparison_id=comparison.pk, responses_a=["a0", "a1"], responses_b=["b0", "b1"])
    assert list(comparison.items.values_list("prompt", "identical")) == [("q0", False)]
    # Without ``requested`` every prompt is a pair, and every answer is needed.
    plain = make_comparison(pair, ["q0", "q1"])
    with pytest.raises(ServiceError, match="2 items but 1 and 1 responses"):
        comparisons.set_responses(comparison_id=plain.pk, responses_a=["a"], responses_b=["b"])


def test_start_draws_spare_prompts_for_pairs_that_turn_out_identical(agent, pair):
    for n in range(30):
        Feedback.objects.create(agent=agent, prompt=f"prompt {n}", response="r")
    comparison = start_comparison(version=pair[1], other=pair[0], count=3)
    assert (comparison.requested, comparison.items.count()) == (3, 3 * DRAWS_PER_PAIR)


def test_the_worker_answers_more_prompts_until_enough_pairs_differ(tmp_path, monkeypatch):
    """The child (no models here: its generate() stands in): the first round's 3 prompts give 1 differing pair, so
    it answers more, in as few rounds as the share of differing pairs says, and stops at 3."""
    from django.core.management import call_command

    from training.management.commands import generate_comparison as command

    alike = {"q0", "q2", "q3", "q5", "q7"}
    calls = []

    def fake_generate(path, prompts, max_new_tokens):
        calls.append((path, list(prompts)))
        return ["same" if p in alike else f"{path} on {p}" for p in prompts]

    monkeypatch.setattr(command, "generate", fake_generate)
    (tmp_path / "request.json").write_text(json.dumps({
        "prompts": [f"q{n}" for n in range(12)], "model_paths": ["A", "B"], "names": ["v1", "v2"],
        "max_new_tokens": 8, "wanted": 3}))
    call_command("generate_comparison", str(tmp_path), stdout=io.StringIO())
    responses_a, responses_b = json.loads((tmp_path / "responses.json").read_text())["responses"]
    # Round 1: q0-q2 (1 differs); round 2: 2 more wanted at a share of 1/3, so 6 prompts (q3-q8): 3 more differ.
    assert [prompts for path, prompts in calls if path == "A"] == [["q0", "q1", "q2"],
                                                                   ["q3", "q4", "q5", "q6", "q7", "q8"]]
    assert len(responses_a) == len(responses_b) == 9
    assert sum(a != b for a, b in zip(responses_a, responses_b)) == 4


def test_the_worker_stops_at_the_prompts_drawn_when_the_versions_answer_alike(tmp_path, monkeypatch):
    from django.core.management import call_command

    from training.management.commands import generate_comparison as command

    rounds = []
    monkeypatch.setattr(command, "generate", lambda path, prompts, tokens: rounds.append(prompts) or
                        ["same"] * len(prompts))
    (tmp_path / "request.json").write_text(json.dumps({
        "prompts": [f"q{n}" for n in range(8)], "model_paths": ["A", "B"], "names": ["v1", "v2"],
        "max_new_tokens": 8, "wanted": 2}))
    call_command("generate_comparison", str(tmp_path), stdout=io.StringIO())
    assert [len(r) for r in rounds] == [2, 2, 6, 6]  # two rounds of both versions, then every prompt was answered
    assert len(json.loads((tmp_path / "responses.json").read_text())["responses"][0]) == 8


def test_the_panel_counts_identical_pairs_apart_and_says_how_many_were_informative(pair):
    from training.comparisons import comparison_panel

    comparison = comparisons.create_comparison(version_a=pair[0], version_b=pair[1],
                                               prompts=[f"q{n}" for n in range(4)], prompt_source="test",
                                               max_new_tokens=8, requested=3)
    comparisons.set_responses(comparison_id=comparison.pk, responses_a=["same", "A1", "same", "A3"],
                              responses_b=["same", "B1", "same", "B3"])
    for item in comparison.items.filter(identical=False):
        ComparisonItem.objects.filter(pk=item.pk).update(choice="b")
    panel = comparison_panel(version=pair[0], other=pair[1])
    assert panel["sentence"].startswith("Win rate of v2 over v1: 100 % (95 % interval 34–100 %) on 2 judged pairs")
    assert panel["identical_sentence"] == (
        "2 informative pairs (responses that differ) of 4 prompts answered; the 2 with identical responses are ties "
        "recorded without a vote and left out of the win rate. 3 were asked for: no more prompts that neither "
        "version trained on.")


# --- going back: previous pair, a changed vote, undo (issue 21, item 4) ------------------------------------------


def test_previous_reopens_the_pairs_judged_with_the_vote_marked_and_a_vote_can_be_changed(pair, reviewers):
    comparison = ready(make_comparison(pair, ["q0", "q1", "q2"]))
    rita, sam = reviewers
    client = login(rita)
    url = reverse("review:compare", args=[comparison.pk])
    judged = []
    for side in ("left", "tie"):
        item = client.get(url).context["item"]
        client.post(reverse("review:compare_vote", args=[comparison.pk, item.pk]), {"choice": side})
        judged.append(item)
    held = client.get(url).context["item"]  # q2, held by rita while she goes back
    assert held.prompt == "q2"

    last = client.get(reverse("review:compare_previous", args=[comparison.pk]))
    assert last.context["item"].pk == judged[1].pk and last.context["my_side"] == "tie"
    assert "Your vote on this pair" in last.content.decode()
    assert reverse("review:compare_change", args=[comparison.pk, judged[1].pk]) in last.content.decode()
    earlier = client.get(reverse("review:compare_previous", args=[comparison.pk]), {"before": judged[1].pk})
    assert earlier.context["item"].pk == judged[0].pk and earlier.context["my_side"] == "left"
    first = client.get(reverse("review:compare_previous", args=[comparison.pk]), {"before": judged[0].pk},
                       follow=True)
    assert "No earlier vote" in first.content.decode()

    # Changing the first vote to "right": the item records the other version, the tally follows.
    client.post(reverse("review:compare_change", args=[comparison.pk, judged[0].pk]), {"choice": "right"})
    changed = ComparisonItem.objects.get(pk=judged[0].pk)
    assert changed.choice == ("b" if changed.a_on_left else "a") and changed.reviewer == rita
    assert comparisons.side_of(changed) == "right"
    # Only one's own vote: sam has none to change or undo.
    with pytest.raises(Exception, match="You have no vote on pair"):
        comparisons.change_vote(item_id=judged[0].pk, user=sam, side="left")
    with pytest.raises(Exception, match="You have no vote on pair"):
        comparisons.undo_vote(item_id=judged[0].pk, user=sam)
    # Going back kept rita's held pair.
    assert client.get(url).context["item"].pk == held.pk


def test_undo_removes_the_latest_vote_and_shows_that_pair_again(pair, reviewers):
    comparison = ready(make_comparison(pair, ["q0", "q1"]))
    client = login(reviewers[0])
    url = reverse("review:compare", args=[comparison.pk])
    item = client.get(url).context["item"]
    client.post(reverse("review:compare_vote", args=[comparison.pk, item.pk]), {"choice": "left"})
    page = client.get(url)
    assert page.context["last_vote"].pk == item.pk
    assert reverse("review:compare_undo", args=[comparison.pk, item.pk]) in page.content.decode()

    response = client.post(reverse("review:compare_undo", args=[comparison.pk, item.pk]), follow=True)
    assert "Undone: your vote on pair 1 was removed" in response.content.decode()
    assert response.context["item"].pk == item.pk  # shown again, held by this reviewer
    undone = ComparisonItem.objects.get(pk=item.pk)
    assert (undone.choice, undone.reviewer, undone.decided_at, undone.claimed_by) == ("", None, None, reviewers[0])
    assert ComparisonItem.objects.exclude(pk=item.pk).get().claimed_by is None  # one pair at a time
    assert comparisons.tally(comparison=comparison).n == 0
