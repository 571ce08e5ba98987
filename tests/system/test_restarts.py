"""The scale-out topology's servers restart: Redis (the broker) and PostgreSQL (the database), for real.

1. Redis without persistence loses its queue when it restarts, and django-q2's Redis broker never delivers a job
   twice: a version queued before the restart would stay queued for ever. A worker's sweep enqueues it again
   (training.jobs.sweep.enqueue_lost_redis_jobs); with the ORM broker nothing is lost and nothing is enqueued twice.
2. PostgreSQL restarts for a few seconds while a qcluster trains: the training, its progress and heartbeat and the
   worker that supervises it reconnect (training.jobs.transitions.reconnecting); the version ends trained. The API
   answers 503 meanwhile (n3site.exceptions).
"""
from __future__ import annotations

import base64
import http.client
import json
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import OperationalError
from django.urls import path
from django.utils import timezone
from django_q.models import OrmQ

from feedback import services as feedback_services
from policies.models import Agent, PolicyVersion
from tests.servers import postgres_database
from tests.sites import LEAN_CONFIG, ROOT, Site, feedback_records, make_site
from training import services
from training.jobs import sweep

QUEUE_KEY = "django_q:n3:q"  # django-q2's Redis list for the cluster named "n3" (n3site/settings.py)


def version_row(site: Site, pk: int) -> dict:
    columns = ("status", "error", "step", "task_id", "heartbeat_at")
    (row,) = site.query(f"SELECT {', '.join(columns)} FROM policies_policyversion WHERE id = ?", (pk,))
    return dict(zip(columns, row))


def wait_for(site: Site, pk: int, predicate: Callable[[dict], bool], *, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            row = version_row(site, pk)
        except Exception:  # noqa: BLE001  (the database restarts meanwhile)
            row = None
        if row is not None and predicate(row):
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting on version {pk}: {row}")
        time.sleep(0.2)


def execute(url: str, sql: str, *params) -> None:
    import psycopg

    with psycopg.connect(url) as db:
        db.execute(sql, params)


def training_results(site: Site) -> list[str]:
    """What each training job returned (django-q2 stores it pickled), in the order they ran."""
    return [pickle.loads(base64.b64decode(result)) for (result,) in site.query(
        "SELECT result FROM django_q_task WHERE func = 'training.tasks.run_policy_version' ORDER BY started"
    )]


def start_cluster(site: Site, log_path: Path) -> subprocess.Popen:
    """``manage.py qcluster`` writing its log to a file: while a server is away its processes log a lot, and a pipe
    nobody reads until the end would fill and block them."""
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "qcluster"], cwd=ROOT, env=site.env,
                                stdout=log, stderr=subprocess.STDOUT)


def stop(cluster: subprocess.Popen, log_path: Path) -> str:
    cluster.send_signal(signal.SIGTERM)
    cluster.wait(60)
    return log_path.read_text(errors="replace")


def test_with_the_orm_broker_an_old_queued_version_keeps_its_one_job(db, settings):
    """The ORM broker's queue is in the database: a version waiting there for hours (a busy worker) is neither
    enqueued again nor failed by the sweep."""
    settings.N3_HEARTBEAT_TIMEOUT = 60
    feedback_services.record_feedback_batch(agent_name="bot", records=feedback_records(12))
    agent = Agent.objects.get(name="bot")
    version = services.queue_training(
        agent=agent, config=services.resolve_training_config(agent=agent, overrides={**LEAN_CONFIG, "max_steps": 2}),
    )
    PolicyVersion.objects.filter(pk=version.pk).update(queued_at=timezone.now() - timedelta(hours=3))

    assert sweep.sweep_stale_versions() == 0
    assert sweep.sweep_stale_versions() == 0

    version.refresh_from_db()
    assert version.status == "queued"
    assert [q.task_id() for q in OrmQ.objects.all()] == [version.task_id]


def test_after_the_database_was_away_the_sweep_gives_heartbeats_a_whole_window(settings, monkeypatch):
    """No training can beat while the database is away: after a sweep that could not reach it, the sweep thread
    does not judge heartbeats for N3_HEARTBEAT_TIMEOUT seconds (the trainings reconnect and beat meanwhile)."""
    settings.N3_HEARTBEAT_TIMEOUT = 1
    calls: list[tuple[float, bool]] = []

    def fake_sweep(*, heartbeats: bool = True) -> int:
        calls.append((time.monotonic(), heartbeats))
        if len(calls) == 2:
            raise OperationalError("connection failed: Connection refused")
        return 0

    monkeypatch.setattr(sweep, "sweep_stale_versions", fake_sweep)
    thread = sweep.SweepThread(every=0.05)
    thread.start()
    time.sleep(2)
    thread.stop()
    thread.join(5)

    assert calls[0][1] and calls[1][1]  # judged until the database failed
    away = calls[1][0]
    assert all(not judged for at, judged in calls[2:] if at - away < 0.95)
    assert all(judged for at, judged in calls[2:] if at - away > 1.05)
    assert calls[-1][1]


def test_the_api_answers_503_with_a_detail_while_the_database_is_away(api, monkeypatch):
    def database_away(**kwargs):
        raise OperationalError('connection to server at "127.0.0.1", port 5432 failed: Connection refused')

    monkeypatch.setattr(services, "queue_training_request", database_away)
    response = api.post("/api/policies/train_policy/bot", {"maxSteps": 2}, format="json")

    assert response.status_code == 503
    assert response.json() == {
        "detail": "The database is unavailable right now (restarting or overloaded); retry in a few seconds.",
    }
    assert response["Retry-After"] == "5"


@pytest.mark.slow
def test_a_job_queued_before_redis_restarts_is_enqueued_again_and_trains_once(tmp_path, postgres, redis):
    import redis as redis_client

    queue = redis_client.Redis.from_url(redis.url)
    queue.delete(QUEUE_KEY)
    with postgres_database(postgres.url, prefix="n3_redis") as url:
        site = make_site(tmp_path, DATABASE_URL=url, REDIS_URL=redis.url, N3_HEARTBEAT_TIMEOUT="10",
                         N3_SWEEP_INTERVAL="1")
        pk = site.queue_version(max_steps=2)
        assert queue.llen(QUEUE_KEY) == 1  # the job waits in Redis; no cluster runs
        lost_task = version_row(site, pk)["task_id"]
        redis.restart()
        assert queue.llen(QUEUE_KEY) == 0  # gone with the restart
        # A while later (longer than N3_HEARTBEAT_TIMEOUT), a worker starts.
        execute(url, "UPDATE policies_policyversion SET queued_at = queued_at - interval '1 minute' WHERE id = %s", pk)
        cluster = start_cluster(site, tmp_path / "qcluster.log")
        try:
            started = time.monotonic()
            row = wait_for(site, pk, lambda v: v["status"] not in ("queued", "running"), timeout=120)
            took = time.monotonic() - started
            # Redis restarts under a running cluster: a version queued after that trains too.
            redis.restart()
            restarted = time.monotonic()
            pk2 = site.queue_version(max_steps=2)
            row2 = wait_for(site, pk2, lambda v: v["status"] not in ("queued", "running"), timeout=120)
            took2 = time.monotonic() - restarted
        finally:
            log = stop(cluster, tmp_path / "qcluster.log")
        results = training_results(site)
    print(f"lost job trained {took:.1f} s after the worker started; after a restart under the cluster, the next "
          f"version trained {took2:.1f} s after Redis was back")

    assert row["status"] == "trained", log
    assert row["task_id"] != lost_task
    assert row2["status"] == "trained", log
    assert results == ["bot v1: trained", "bot v2: trained"], log  # each job ran once
    assert log.count("ppo step 2/2") == 2
    assert "queued again" in log


def post_feedback(server, token: str, run_id: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        body = {"prompt": "Is the database back?", "response": "Yes.", "score": 0.8, "runId": run_id}
        conn.request("POST", "/api/policies/feedback/bot", json.dumps(body),
                     {"Content-Type": "application/json", "Authorization": f"Token {token}"})
        response = conn.getresponse()
        content = response.read()
        try:
            return response.status, json.loads(content)
        except ValueError:
            return response.status, {"body": content[:500].decode(errors="replace")}
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.parametrize(("down_s", "heartbeat_timeout"), [(5, 20), (10, 4)], ids=["short", "past-the-heartbeat"])
def test_a_training_outlives_a_postgresql_restart(tmp_path, postgres, redis, down_s, heartbeat_timeout):
    """PostgreSQL stops for a few seconds while a real qcluster trains (its child writes progress, its job beats the
    heartbeat and the sweep runs every second): the version ends trained with every step stored once, also when
    the outage lasts longer than N3_HEARTBEAT_TIMEOUT; the API answers 503 meanwhile and 201 again afterwards."""
    if not postgres.restartable:
        pytest.skip("N3_TEST_DATABASE_URL names a server this test cannot restart")
    steps = 1500  # n3-tiny-random takes 10-60 ms a step on 2 cores: the training outlasts the outage
    with postgres_database(postgres.url, prefix="n3_pg_restart") as url:
        site = make_site(tmp_path, DATABASE_URL=url, REDIS_URL=redis.url, N3_HEARTBEAT_TIMEOUT=str(heartbeat_timeout),
                         N3_SWEEP_INTERVAL="1")
        token = site.api_token()
        pk = site.queue_version(max_steps=steps)
        with site.gunicorn(workers=1) as server:
            cluster = start_cluster(site, tmp_path / "qcluster.log")
            try:
                before = wait_for(site, pk, lambda v: v["status"] != "queued" and v["step"] >= 20, timeout=180)
                postgres.stop()
                stopped = time.monotonic()
                during = post_feedback(server, token, "during-outage")
                time.sleep(max(0.0, down_s - (time.monotonic() - stopped)))
                postgres.start()
                back, back_at = time.monotonic(), datetime.now(tz=UTC)
                after = post_feedback(server, token, "after-outage")
                beating = wait_for(site, pk, lambda v: v["heartbeat_at"] > back_at or v["status"] != "running",
                                   timeout=120)
                beat_after = time.monotonic() - back
                row = wait_for(site, pk, lambda v: v["status"] not in ("queued", "running"), timeout=300)
            finally:
                log = stop(cluster, tmp_path / "qcluster.log")
        stored_steps = site.query(
            "SELECT COUNT(*), COUNT(DISTINCT step) FROM policies_trainingstep WHERE version_id = ?", (pk,))[0]
        results = training_results(site)
    print(f"PostgreSQL stopped at step {before['step']} for {back - stopped:.1f} s; the first heartbeat came "
          f"{beat_after:.1f} s after it was back (step {beating['step']})")

    assert beating["status"] == "running"  # (the outage ended before the training: the test shows what it means to)
    assert row["status"] == "trained", (row, log)
    assert row["step"] == steps and row["error"] == ""
    assert stored_steps == (steps, steps)  # every step stored, once
    # The job itself ended well: its supervisor reconnected. With N3_HEARTBEAT_TIMEOUT at 4 s the sweep may have
    # queued the job again while a slow-starting cluster's pusher held it out of Redis (sweep.enqueue_lost_redis_jobs
    # says when): that second delivery finds the version claimed and trains nothing, which is the guarantee.
    assert results[0] == "bot v1: trained", results
    assert all(r.startswith("not run: ") for r in results[1:]), results
    assert "the connection is closed" not in log  # what the supervisor said for ever before it reconnected
    assert during[0] == 503 and "database is unavailable" in during[1]["detail"], during
    assert after[0] == 201, after


@pytest.mark.slow
def test_a_train_request_while_redis_is_down_is_a_503_and_leaves_no_version_queued(tmp_path, redis):
    """Redis away when a version is queued: the API answers 503 with what happened (not a 500), and the version,
    committed before its job could be sent, is failed with the reason instead of waiting for ever."""
    redis.stop()
    try:
        site = make_site(tmp_path, REDIS_URL=redis.url)
        token = site.api_token(perms=("feedback.add_feedback", "policies.add_policyversion"))
        code = f"""
import json
from rest_framework.test import APIClient
from feedback.services import record_feedback_batch
record_feedback_batch(agent_name="bot", records={feedback_records()!r})
client = APIClient(SERVER_NAME="127.0.0.1")
client.credentials(HTTP_AUTHORIZATION="Token {token}")
response = client.post("/api/policies/train_policy/bot", {{"baseModel": "n3-tiny-random", "maxSteps": 2}},
                       format="json")
print(json.dumps([response.status_code, response.get("Retry-After"), response.json()]))
"""
        status, retry_after, body = json.loads(site.shell(code).strip().splitlines()[-1])
    finally:
        redis.start()
    assert (status, retry_after) == (503, "5"), body
    assert body["detail"].startswith("Could not queue the training job (ConnectionError: "), body
    assert body["detail"].endswith("the job queue is unavailable right now. bot v1 was marked failed; send the "
                                   "request again in a moment."), body
    (row,) = site.query("SELECT status, error FROM policies_policyversion")
    assert row[0] == "failed" and row[1].startswith("Could not enqueue the training job: "), row


def _page_whose_database_is_away(request):
    raise OperationalError('connection to server at "127.0.0.1", port 5432 failed: Connection refused')


urlpatterns = [path("page", _page_whose_database_is_away)]


@pytest.mark.urls(__name__)
def test_a_page_answers_503_while_the_database_is_away(client):
    """The admin's and the reviewers' pages (Django views, not the API): 503 with Retry-After and a sentence."""
    response = client.get("/page")
    assert (response.status_code, response["Retry-After"], response.content.decode()) == (
        503, "5", "The database is unavailable right now (restarting or overloaded); retry in a few seconds.")
