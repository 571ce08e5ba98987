"""The embedded deployment end to end: a real `manage.py qcluster` on SQLite trains a queued version."""
import signal
import sqlite3

import pytest

from tests.sites import make_site


@pytest.mark.slow
def test_a_qcluster_trains_a_queued_version_and_stops_cleanly(tmp_path):
    site = make_site(tmp_path)
    pk = site.queue_version(max_steps=3)
    # A version whose worker died while no cluster ran: the workers' start-up sweep fails it.
    dead = int(site.shell(
        "from datetime import timedelta; from django.utils import timezone; "
        "from policies.models import Agent, PolicyVersion; "
        "t = timezone.now() - timedelta(hours=1); "
        "print(PolicyVersion.objects.create(agent=Agent.objects.get(name='bot'), number=99, status='running', "
        "started_at=t, heartbeat_at=t).pk)"
    ))
    cluster = site.popen("qcluster")
    seen: list[str] = []
    try:
        version = site.wait_for(pk, lambda v: v["status"] not in ("queued", "running"), timeout=240, seen=seen)
    finally:
        cluster.send_signal(signal.SIGTERM)
        log, _ = cluster.communicate(timeout=60)

    assert version["status"] == "trained", log
    assert seen == ["queued", "running", "trained"]
    assert version["step"] == 3 and version["metrics"]["objective/scores"] is not None
    assert (site.models_dir / "bot" / "v1" / "training_results.json").exists()
    assert site.version(dead)["status"] == "failed" and "no heartbeat" in site.version(dead)["error"]
    assert log.index("Marked 1 training job(s) failed") < log.index("[bot v1]")  # swept before the first job
    # The job ran once, in a worker, and said so; the worker's log carries the training's own lines.
    with sqlite3.connect(site.db_path) as db:
        results = db.execute(
            "SELECT success FROM django_q_task WHERE func = 'training.tasks.run_policy_version'"
        ).fetchall()
        schedules = db.execute("SELECT func FROM django_q_schedule").fetchall()
    assert results == [(1,)]
    # the workers sweep in a thread (tests/system/test_reliability.py): no sweep task in the queue
    assert schedules == []
    assert "[bot v1]" in log and "ppo step 3/3" in log
    assert "Q Cluster" in log and "has stopped" in log and "Traceback" not in log
    assert cluster.returncode == 0
