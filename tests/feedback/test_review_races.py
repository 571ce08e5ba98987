"""Reviewers racing for an item's last review slots, for real: threads of one process on the site's database (SQLite
with its IMMEDIATE transactions, and PostgreSQL with the item's row lock), each saving a review at the same moment.
"""
import json
from pathlib import Path

import pytest

from tests.servers import postgres_database
from tests.sites import make_site

pytestmark = pytest.mark.slow

# Overlap 3, two reviews given: 6 reviewers race for the last slot of each of 5 items.
RACE = """
import json, threading
from django.contrib.auth.models import User
from django.db import connection
from feedback import review
from feedback.models import Feedback, Review
from n3site.exceptions import Conflict
from policies.models import Agent

agent = Agent.objects.create(name="race", review_overlap=3)
users = [User.objects.create_user(f"reviewer{i}") for i in range(8)]
items = [Feedback.objects.create(agent=agent, prompt=f"question {i}", response="answer") for i in range(5)]
for item in items:
    for user in users[:2]:
        review.score_feedback(feedback_id=item.pk, user=user, score=0.5)
barrier = threading.Barrier(6)
outcomes = []

def race(user):
    try:
        barrier.wait()
        for item in items:
            try:
                review.score_feedback(feedback_id=item.pk, user=user, score=0.8)
                outcomes.append("saved")
            except Conflict:
                outcomes.append("conflict")
    finally:
        connection.close()

threads = [threading.Thread(target=race, args=(user,)) for user in users[2:]]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({
    "outcomes": sorted(outcomes),
    "reviews": [Review.objects.filter(feedback=item).count() for item in items],
    "scores": list(Feedback.objects.filter(agent=agent).order_by("id").values_list("score", flat=True)),
}))
"""


@pytest.fixture
def postgres_url(postgres):
    with postgres_database(postgres.url, prefix="n3_review") as url:
        yield url


def assert_exactly_overlap_reviews(site) -> None:
    result = json.loads(site.shell(RACE).strip().splitlines()[-1])
    assert result["outcomes"] == ["conflict"] * 25 + ["saved"] * 5  # one winner per item, the others told so
    assert result["reviews"] == [3] * 5
    assert result["scores"] == [0.6] * 5  # the mean of 0.5, 0.5 and the winner's 0.8


def test_racing_for_the_last_slot_on_sqlite(tmp_path: Path):
    assert_exactly_overlap_reviews(make_site(tmp_path))


def test_racing_for_the_last_slot_on_postgresql(tmp_path: Path, postgres_url: str):
    assert_exactly_overlap_reviews(make_site(tmp_path, DATABASE_URL=postgres_url))
