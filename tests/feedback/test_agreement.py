"""Reviewer agreement (feedback/agreement.py, its reads in feedback/selectors.py): Krippendorff's alpha against
examples checked by hand, per agent and per reviewer pair; the disagreements view and a lead settling an item (what
training reads changes, the reviews stay); reviewer progress; who may see and do what; bad input answered with a 4xx
that says what is wrong."""
from fractions import Fraction

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from feedback import agreement
from feedback import selectors as feedback_selectors
from feedback import services as feedback_services
from feedback.agreement import interval_alpha
from feedback.models import Feedback, Review
from policies.models import Agent
from training import selectors

# --- alpha by hand -----------------------------------------------------------------------------


def test_krippendorffs_own_example():
    """Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: four observers, twelve units,
    values 1..5 with missing data; interval alpha = 0.849 (the paper's figure). Unit 12 has one value only and
    cannot be paired. (The ``krippendorff`` package gives 0.8491071428571428 for the same data.)"""
    observers = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    units = [[v for v in unit if v is not None] for unit in zip(*observers)]
    assert interval_alpha(units) == pytest.approx(0.8491071428571428, abs=1e-12)
    assert round(interval_alpha(units), 3) == 0.849


def test_a_tiny_example_worked_out():
    """Two reviewers, three items: (0, 0), (0.5, 1), (1, 1). Six scores, n = 6.

    D_o = 1/n * sum over items of [sum over ordered pairs (a - b)^2 / (m - 1)]
        = 1/6 * (0 + (0.25 + 0.25) / 1 + 0) = 1/12
    D_e = 1/(n (n - 1)) * sum over ordered pairs of all six scores (a - b)^2
        = 2 * (6 * sum(v^2) - sum(v)^2) / 30 = 2 * (6 * 3.25 - 3.5^2) / 30 = 14.5 / 30
    alpha = 1 - (1/12) / (14.5/30) = 1 - 5/29 = 24/29 = 0.8276
    """
    assert interval_alpha([[0, 0], [0.5, 1], [1, 1]]) == pytest.approx(24 / 29)


def test_perfect_agreement_is_one():
    assert interval_alpha([[0.2, 0.2], [0.9, 0.9, 0.9], [0.5, 0.5]]) == pytest.approx(1.0)


def test_systematic_disagreement_is_below_zero():
    """(0, 1) and (1, 0): D_o = (2 * 1 + 2 * 1) / 4 = 1, D_e = 2 * (4 * 2 - 2^2) / 12 = 2/3, alpha = 1 - 3/2."""
    assert interval_alpha([[0, 1], [1, 0]]) == pytest.approx(-0.5)
    assert interval_alpha([[0.1, 0.9], [0.9, 0.2], [0.3, 0.8], [0.7, 0.1]]) < 0


def test_too_little_data_has_no_alpha():
    assert interval_alpha([]) is None
    assert interval_alpha([[0.3, 0.9]]) is None  # one item
    assert interval_alpha([[0.3], [0.9], [0.5]]) is None  # no item with two scores
    assert interval_alpha([[0.5, 0.5], [0.5, 0.5]]) is None  # no variation at all: 0/0
    assert agreement.agreement_of([[0.3, 0.9]]).verdict == "too little data"
    assert agreement.agreement_of([[0.5, 0.5], [0.5, 0.5]]).verdict == "no variation in the scores"


def test_verdicts_use_krippendorffs_thresholds():
    verdict = lambda alpha: agreement.Agreement(alpha=alpha, items=10, scores=20).verdict  # noqa: E731
    assert (verdict(0.8), verdict(0.79), verdict(0.667), verdict(0.66)) == (
        "reliable", "tentative", "tentative", "unreliable")


# --- numerically stable, and the same as the krippendorff package (issue 20 item 5) ---------------------

def _package_alpha(units) -> float | None:
    """The ``krippendorff`` package's interval alpha (a test-only dependency) for the same units; None for its nan."""
    import math

    import krippendorff
    import numpy as np

    width = max(len(u) for u in units)
    data = np.array([[*u, *[np.nan] * (width - len(u))] for u in units], dtype=float).T  # reviewers x items
    try:
        value = krippendorff.alpha(reliability_data=data, level_of_measurement="interval")
    except ValueError:  # "There has to be more than one value in the domain."
        return None
    return None if math.isnan(value) else float(value)


@pytest.mark.parametrize("units", [
    [[0.95] * 3] * 10,  # gave 0.676
    [[0.8, 0.8]] * 3,  # gave 1.0
    [[0.6] * 3] * 5,  # the Agent page showed -0.094, /review/progress/ 1.000
    [[0.1, 0.1]] * 7, [[1.0, 1.0, 1.0]] * 4, [[1e-9, 1e-9]] * 3,
    [[0.6, 0.6000000000000001], [0.6000000000000001, 0.6]],  # a mean of reviews next to a score: the same score
])
def test_no_variation_has_no_alpha_however_the_floats_round(units):
    assert interval_alpha(units) is None
    assert agreement.agreement_of(units).display == "—"


def test_barely_varying_scores_give_the_packages_alpha():
    units = [[0.95, 0.95, 0.95]] * 9 + [[0.95, 0.95, 0.96]]
    assert interval_alpha(units) == pytest.approx(_package_alpha(units), abs=1e-9)
    units = [[0.7 + 1e-6, 0.7], [0.7, 0.7 + 1e-6], [0.7, 0.7]]
    assert interval_alpha(units) == pytest.approx(_package_alpha(units), abs=1e-6)


def test_alpha_matches_the_package_on_random_and_degenerate_data():
    """Property test: random numbers of items and reviewers, scores on the queue's grid (0.1 steps), continuous, or
    all nearly equal; alpha agrees with the package's, is None exactly where the package has none, and is within
    [-1, 1]."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    grid = st.sampled_from([i / 10 for i in range(11)])
    continuous = st.floats(0, 1, allow_nan=False)
    nearly = st.sampled_from([0.95, 0.95, 0.95, 0.95 + 1e-7])
    score = st.one_of(grid, continuous)

    @st.composite
    def units(draw):
        values = draw(st.sampled_from([grid, continuous, nearly, score]))
        return draw(st.lists(st.lists(values, min_size=2, max_size=5), min_size=2, max_size=12))

    @settings(max_examples=400, deadline=None, derandomize=True)
    @given(units())
    def check(data):
        ours, theirs = interval_alpha(data), _package_alpha(data)
        values = [v for unit in data for v in unit]
        if theirs is None:  # the package has no figure without variation; ours neither
            assert ours is None
        elif max(values) - min(values) <= 1e-9:  # "variation" of float rounding alone: none for us, "—"
            assert ours is None
        else:
            assert ours == pytest.approx(theirs, abs=1e-6)
            assert -1 <= ours <= 1

    check()


def test_every_page_agrees_when_nobody_varies(reviewers, client):
    """Three reviewers score five items 0.6 each: the Agent page showed "-0.094 (unreliable)", its pair rows "—"
    and /review/progress/ "1.000 reliable". Now every page says "—"."""
    agent = Agent.objects.create(name="flat", review_overlap=3)
    for i in range(5):
        item = Feedback.objects.create(agent=agent, prompt=f"q{i}", response="a", score=0.6)
        for name in NAMES:
            Review.objects.create(feedback=item, reviewer=reviewers[name], score=0.6)
    result = feedback_selectors.agent_agreement(agent=agent)
    assert result.overall.display == "—" and result.overall.verdict == "no variation in the scores"
    assert [p.agreement.display for p in result.pairs] == ["—"] * 3
    progress = feedback_selectors.reviewer_progress()
    assert {r.username: r.agreement.display for r in progress.agents[0].rows if r.agreement.items} == {
        "alice": "—", "bob": "—", "carol": "—"}
    client.force_login(User.objects.create_superuser("boss", password="pw"))
    html = client.get(reverse("admin:policies_agent_change", args=[agent.pk])).content.decode()
    assert '<strong id="n3-alpha">—</strong>' in html
    html = client.get(reverse("review:progress")).content.decode()
    assert "1.000" not in html and html.count('title="no variation in the scores">—</td>') >= 3


# --- the seeded example: three reviewers, six items ---------------------------------------------

# (alice, bob, carol); None: that reviewer did not review the item.
SEEDED = {
    "Reset my password": ("0.9", "0.8", "0.9"),
    "Cancel my order": ("0.2", "0.3", "0.1"),
    "Where is my parcel?": ("0.6", "0.6", None),
    "Do you ship abroad?": ("0.4", None, "0.9"),
    "Change my address": (None, "0.7", "0.8"),
    "Talk to a human": ("1.0", "0.2", "0.9"),
}
NAMES = ("alice", "bob", "carol")


def _alpha_exact(units) -> Fraction:
    """The same formula in exact fractions, as one would on paper."""
    def squared(values):
        n, total = len(values), sum(values)
        return 2 * (n * sum(v * v for v in values) - total * total)

    values = [v for unit in units for v in unit]
    n = len(values)
    return 1 - (sum(squared(u) / (len(u) - 1) for u in units) / n) / (squared(values) / (n * (n - 1)))


def test_the_seeded_examples_figures_by_hand():
    """The figures the Agent page shows for the seeded example, in exact fractions: alice and carol agree
    tentatively, bob agrees with neither."""
    units = [[Fraction(s) for s in scores if s] for scores in SEEDED.values()]
    assert _alpha_exact(units) == Fraction(123, 326)  # 0.377
    pair = lambda i, j: [[Fraction(s[i]), Fraction(s[j])] for s in SEEDED.values() if s[i] and s[j]]  # noqa: E731
    assert _alpha_exact(pair(0, 1)) == Fraction(47, 278)  # alice & bob 0.169
    assert _alpha_exact(pair(0, 2)) == Fraction(562, 751)  # alice & carol 0.748
    assert _alpha_exact(pair(1, 2)) == Fraction(46, 123)  # bob & carol 0.374


@pytest.fixture
def reviewers(db):
    perm = Permission.objects.get(content_type__app_label="feedback", codename="change_feedback")
    users = {}
    for name in (*NAMES, "lead"):
        users[name] = User.objects.create_user(name, password="pw", is_staff=True)
        users[name].user_permissions.add(perm)
    return users


def seed(agent: Agent, users: dict) -> dict[str, Feedback]:
    """The SEEDED reviews, as the queue would leave them: an item with all its reviews has their mean as score."""
    items = {}
    for prompt, scores in SEEDED.items():
        item = Feedback.objects.create(agent=agent, prompt=prompt, response=f"Answer to: {prompt}")
        given = [(users[name], float(s)) for name, s in zip(NAMES, scores) if s]
        for user, score in given:
            Review.objects.create(feedback=item, reviewer=user, score=score)
        if len(given) >= agent.review_overlap:
            item.score = round(sum(s for _, s in given) / len(given), 6)
            item.reviewer = given[-1][0]
            item.save()
        items[prompt] = item
    return items


@pytest.fixture
def seeded(reviewers):
    agent = Agent.objects.create(name="support", review_overlap=2)
    return agent, seed(agent, reviewers)


def test_agent_and_pair_alphas(seeded):
    agent, _ = seeded
    result = feedback_selectors.agent_agreement(agent=agent)
    assert result.overall.alpha == pytest.approx(123 / 326)
    assert (result.overall.items, result.overall.scores) == (6, 15)
    pairs = {(p.first, p.second): (round(p.agreement.alpha, 3), p.agreement.items) for p in result.pairs}
    assert pairs == {("alice", "bob"): (0.169, 4), ("alice", "carol"): (0.748, 4), ("bob", "carol"): (0.374, 4)}


def test_a_reviewer_against_the_others(seeded):
    """alice against bob and carol: her score paired with each other score of the items she shares, 8 pairs on 5
    items; the pooled alpha of those pairs."""
    agent, _ = seeded
    by_item = feedback_selectors._scores_by_item(Review.objects.filter(feedback__agent=agent))
    alice = User.objects.get(username="alice")
    result = agreement.reviewer_agreements(by_item)[alice.pk]
    units = [[Fraction(s[0]), Fraction(other)] for s in SEEDED.values() if s[0] for other in s[1:] if other]
    assert len(units) == 8 and result.items == 5
    assert result.alpha == pytest.approx(float(_alpha_exact(units)))


def test_disagreements_list_the_spread_items_with_their_reviews(seeded):
    _, items = seeded
    found = feedback_selectors.disagreements(spread=0.3)
    assert [d.item.prompt for d in found] == ["Talk to a human", "Do you ship abroad?"]  # latest reviewed first
    talk = found[0]
    assert talk.spread == pytest.approx(0.8)
    assert [(r.reviewer.username, r.score) for r in talk.reviews] == [("bob", 0.2), ("carol", 0.9), ("alice", 1.0)]
    # "More than" the threshold: 0.6 vs 0.6 (spread 0) never, 0.2/0.3/0.1 (spread 0.2) only below 0.2.
    assert len(feedback_selectors.disagreements(spread=0.0)) == 5
    assert "Cancel my order" not in [d.item.prompt for d in feedback_selectors.disagreements(spread=0.2)]
    assert "Cancel my order" in [d.item.prompt for d in feedback_selectors.disagreements(spread=0.19)]
    assert feedback_selectors.disagreements(spread=0.3, agent_name="other") == []


def test_settling_sets_the_score_training_reads_and_keeps_the_reviews(seeded, reviewers):
    agent, items = seeded
    item = items["Talk to a human"]
    assert item.score == pytest.approx(0.7)  # the mean of 1.0, 0.2, 0.9
    feedback_services.settle(feedback_id=item.pk, user=reviewers["lead"], score="0.95", notes="bob misread the request")

    item.refresh_from_db()
    assert item.score == 0.95 and item.reviewer == reviewers["lead"]
    assert item.notes == (
        "Settled by lead at 0.95 (reviews: bob 0.2, carol 0.9, alice 1). bob misread the request")
    records = {r["prompt"]: r["score"] for r in selectors.feedback_records(selectors.scored_feedback(agent=agent))}
    assert records["Talk to a human"] == 0.95
    assert Review.objects.filter(feedback=item).count() == 3  # the reviews stay, and so does alpha
    assert feedback_selectors.agent_agreement(agent=agent).overall.alpha == pytest.approx(123 / 326)

    assert [d.item.prompt for d in feedback_selectors.disagreements()] == ["Do you ship abroad?"]
    shown = feedback_selectors.disagreements(include_settled=True)
    assert [(d.item.prompt, d.settled) for d in shown] == [("Talk to a human", True), ("Do you ship abroad?", False)]

    # A reviewer who changes their review later reopens the question: the item is a disagreement again.
    review = Review.objects.get(feedback=item, reviewer=reviewers["bob"])
    review.score = 0.1
    review.save()
    assert "Talk to a human" in [d.item.prompt for d in feedback_selectors.disagreements()]


def test_settling_an_item_still_in_the_queue_takes_it_out(reviewers):
    agent = Agent.objects.create(name="triple", review_overlap=3)
    item = Feedback.objects.create(agent=agent, prompt="p", response="r")
    Review.objects.create(feedback=item, reviewer=reviewers["alice"], score=0.1)
    Review.objects.create(feedback=item, reviewer=reviewers["bob"], score=0.9)
    assert [d.item for d in feedback_selectors.disagreements()] == [item]
    feedback_services.settle(feedback_id=item.pk, user=reviewers["lead"], score=0.5)
    item.refresh_from_db()
    assert item.score == 0.5


def test_settle_refuses_what_it_cannot_do(seeded, reviewers):
    from n3site.exceptions import Conflict, NotFound, ServiceError

    _, items = seeded
    lead = reviewers["lead"]
    with pytest.raises(NotFound, match="Feedback 999999 does not exist"):
        feedback_services.settle(feedback_id=999999, user=lead, score=0.5)
    with pytest.raises(ServiceError, match="between 0 and 1"):
        feedback_services.settle(feedback_id=items["Talk to a human"].pk, user=lead, score=1.5)
    single = Feedback.objects.create(agent=items["Talk to a human"].agent, prompt="p", response="r")
    Review.objects.create(feedback=single, reviewer=reviewers["alice"], score=0.3)
    with pytest.raises(Conflict, match="has 1 review"):
        feedback_services.settle(feedback_id=single.pk, user=lead, score=0.5)


def test_progress_per_reviewer_and_agent(seeded, reviewers):
    agent, items = seeded
    waiting = Feedback.objects.create(agent=agent, prompt="Open question", response="r")
    Review.objects.create(feedback=waiting, reviewer=reviewers["carol"], score=0.5)  # 1 of 2: still in the queue
    Feedback.objects.create(agent=agent, prompt="Nobody yet", response="r")
    progress = feedback_selectors.reviewer_progress()
    rows = {r.username: (r.today, r.total, r.remaining) for r in progress.agents[0].rows}
    # Two items await a score; carol reviewed one of them already.
    assert rows == {"alice": (5, 5, 2), "bob": (5, 5, 2), "carol": (6, 6, 1), "lead": (0, 0, 2)}
    everyone = {r.username: r for r in progress.everyone}
    assert everyone["carol"].total == 6 and everyone["lead"].agreement.alpha is None
    assert everyone["alice"].agreement.items == 5


# --- the pages ---------------------------------------------------------------------------------


@pytest.fixture
def lead_client(client, reviewers):
    client.force_login(reviewers["lead"])
    return client


def test_pages_need_a_reviewer(client, seeded, django_user_model):
    urls = [reverse("review:disagreements"), reverse("review:progress")]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    client.login(username="viewer", password="pw")
    for url in urls:
        assert client.get(url).status_code == 403
    item = seeded[1]["Talk to a human"]
    assert client.post(reverse("review:settle", args=[item.pk]), {"score": "0.5"}).status_code == 403
    item.refresh_from_db()
    assert item.score == pytest.approx(0.7)


def test_disagreements_page(lead_client, seeded):
    response = lead_client.get(reverse("review:disagreements"), {"spread": "0.3"})
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count('class="n3-card n3-disagreement"') == 2
    assert "Talk to a human" in html and "Do you ship abroad?" in html and "Cancel my order" not in html
    narrow = lead_client.get(reverse("review:disagreements"), {"spread": "0.6"}).content.decode()
    assert narrow.count('class="n3-card n3-disagreement"') == 1


@pytest.mark.parametrize("spread, detail", [
    ("lots", "spread must be a number between 0 and 1, not 'lots'"),
    ("1.5", "spread must be at least 0 and below 1 (scores lie in 0..1), not 1.5"),
    ("-0.1", "spread must be at least 0 and below 1 (scores lie in 0..1), not -0.1"),
])
def test_a_bad_threshold_is_a_400_that_says_why(lead_client, seeded, spread, detail):
    response = lead_client.get(reverse("review:disagreements"), {"spread": spread})
    assert response.status_code == 400
    assert detail.replace("'", "&#x27;") in response.content.decode()


def test_settling_from_the_page(lead_client, seeded, reviewers):
    _, items = seeded
    item = items["Talk to a human"]
    response = lead_client.post(reverse("review:settle", args=[item.pk]),
                                {"score": "0.9", "notes": "", "spread": "0.3", "agent": "support"})
    assert response.status_code == 302
    assert response["Location"] == reverse("review:disagreements") + "?spread=0.3&agent=support"
    item.refresh_from_db()
    assert item.score == 0.9 and item.reviewer == reviewers["lead"]
    page = lead_client.get(response["Location"]).content.decode()
    assert "settled at 0.9: training now reads this score" in page
    assert "Talk to a human" not in page


@pytest.mark.parametrize("score, status, detail", [
    ("", 400, "Score is required: the final score, a number between 0 and 1"),
    ("high", 400, "between 0 and 1"),
    ("1.2", 400, "between 0 and 1"),
])
def test_a_bad_settlement_is_a_4xx_that_says_why(lead_client, seeded, score, status, detail):
    item = seeded[1]["Talk to a human"]
    url = reverse("review:settle", args=[item.pk])
    response = lead_client.post(url, {"score": score}, HTTP_ACCEPT="application/json")
    assert response.status_code == status and detail in response.json()["detail"]
    page = lead_client.post(url, {"score": score, "spread": "0.3"})
    assert page.status_code == status and 'class="errornote"' in page.content.decode()
    item.refresh_from_db()
    assert item.score == pytest.approx(0.7)


def test_settling_what_is_not_there_or_not_disputed(lead_client, seeded, reviewers):
    response = lead_client.post(reverse("review:settle", args=[999999]), {"score": "0.5"},
                                HTTP_ACCEPT="application/json")
    assert response.status_code == 404 and response.json() == {"detail": "Feedback 999999 does not exist"}
    item = Feedback.objects.create(agent=seeded[0], prompt="p", response="r")
    response = lead_client.post(reverse("review:settle", args=[item.pk]), {"score": "0.5"},
                                HTTP_ACCEPT="application/json")
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"Feedback {item.pk} has 0 review(s): settling decides between two or more")
    assert lead_client.get(reverse("review:settle", args=[item.pk])).status_code == 405


def test_progress_page(lead_client, seeded):
    html = lead_client.get(reverse("review:progress")).content.decode()
    assert 'id="n3-progress-support"' in html
    assert '<tr class="n3-you" data-reviewer="lead">' in html


def test_agent_page_shows_alpha_per_agent_and_pair(seeded, reviewers, client):
    agent, _ = seeded
    boss = User.objects.create_superuser("boss", password="pw")
    client.force_login(boss)
    html = client.get(reverse("admin:policies_agent_change", args=[agent.pk])).content.decode()
    assert '<strong id="n3-alpha">0.377</strong>' in html
    assert "<td>alice &amp; carol</td><td class=\"n3-num\">0.748</td><td class=\"n3-num\">4</td>" in html
    assert f'href="{reverse("review:disagreements")}?agent=support"' in html
    assert f'href="{reverse("review:progress")}"' in html
