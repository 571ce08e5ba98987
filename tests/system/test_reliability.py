"""Issue 11: reliability of training jobs, against a real qcluster and real training processes where it matters.

- 2: a stopping qcluster starts no queued training; a run interrupted by the shutdown is failed, not cancelled;
- 3: a deleted version or agent takes its files with it; a running job whose version vanished stops cleanly; a
  re-created agent trains over nothing a deleted one left;
- 4: the feedback snapshot of an agent with a million scored rows, on SQLite;
- 5: a hung training process (SIGSTOP) is ended after N3_STALL_TIMEOUT without progress;
- 7: feedbackCount is the number of records the version trained on;
- 9: the sweep runs while a job trains, and nothing piles up in the queue;
- 10: a version's directory deleted mid-training fails the version at its next report, with the reason.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest
from django.db import connection
from django.utils import timezone

from feedback import services as feedback_services
from feedback.models import Feedback
from n3_server.rlhf.layout import LOG_FILE, RESULTS_FILE
from policies.models import Agent, PolicyVersion
from tests.servers import postgres_database
from tests.sites import LEAN_CONFIG, children_of, descendants, feedback_records, make_site, tmp_models_dir
from training import files, selectors, services
from training.jobs import run


def wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if os.path.exists(f"/proc/{p}") and " Z " not in open(f"/proc/{p}/stat").read()]
        if not alive:
            return
        time.sleep(0.2)


@pytest.fixture
def models_dir(tmp_path, settings):
    settings.MODELS_DIR = tmp_models_dir(tmp_path)
    settings.N3_METRICS_INTERVAL = 0.0
    return settings.MODELS_DIR


def queue(agent_name: str = "bot", *, scored: int = 12, enqueue: bool = True, **overrides) -> PolicyVersion:
    feedback_services.record_feedback_batch(agent_name=agent_name, records=feedback_records(scored))
    agent = Agent.objects.get(name=agent_name)
    config = services.resolve_training_config(agent=agent, overrides={**LEAN_CONFIG, "max_steps": 2, **overrides})
    return services.queue_training(agent=agent, config=config, enqueue=enqueue)


def waiting_jobs(site) -> list[int]:
    """The version ids whose training job waits in the ORM queue."""
    code = "from django_q.models import OrmQ; print([q.args()[0] for q in OrmQ.objects.all()])"
    return eval(site.shell(code).strip().splitlines()[-1])  # noqa: S307 (our own output)


# --- 2. a stopping cluster ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_to_the_cluster_and_its_training_fails_the_run_and_starts_nothing_new(tmp_path):
    """systemd's KillMode=control-group: SIGTERM to every process of the cluster, the training process too."""
    site = make_site(tmp_path)
    running = site.queue_version(max_steps=500)
    waiting = site.queue_version(max_steps=2)
    cluster = site.popen("qcluster")
    try:
        site.wait_for(running, lambda v: v["step"] >= 1, timeout=180)
        processes = [cluster.pid, *descendants(cluster.pid)]
        for pid in processes:
            os.kill(pid, signal.SIGTERM)
        site.wait_for(running, lambda v: v["status"] != "running", timeout=60)
        wait_gone(processes[1:], 20)  # the workers are gone: nothing can start the next version any more
    finally:
        # (django-q2's cluster process waits forever for a sentinel that SIGTERM killed: systemd SIGKILLs it.)
        for pid in [cluster.pid, *descendants(cluster.pid)]:
            os.kill(pid, signal.SIGKILL)
        log, _ = cluster.communicate(timeout=30)

    interrupted = site.version(running)
    assert interrupted["status"] == "failed", (interrupted, log[-4000:])
    assert interrupted["error"].startswith("Interrupted by shutdown"), interrupted["error"]
    assert not interrupted["cancel_requested"]
    queued = site.version(waiting)
    assert queued["status"] == "queued", (queued, log[-4000:])
    assert not (site.models_dir / "bot" / f"v{queued['number']}").exists()  # never started
    assert waiting in waiting_jobs(site)  # its job waits for the next cluster (fetched, locked by the dead one)

    cluster = site.popen("qcluster")
    try:
        trained = site.wait_for(waiting, lambda v: v["status"] not in ("queued", "running"), timeout=180)
    finally:
        cluster.send_signal(signal.SIGTERM)
        cluster.communicate(timeout=60)
    assert trained["status"] == "trained", trained["error"]


@pytest.mark.slow
def test_sigterm_to_the_cluster_alone_lets_the_run_finish_and_starts_nothing_new(tmp_path):
    site = make_site(tmp_path)
    running = site.queue_version(max_steps=12)
    waiting = site.queue_version(max_steps=2)
    cluster = site.popen("qcluster")
    try:
        site.wait_for(running, lambda v: v["step"] >= 1, timeout=180)
        cluster.send_signal(signal.SIGTERM)
        log, _ = cluster.communicate(timeout=180)
    finally:
        cluster.kill()

    assert site.version(running)["status"] == "trained", log[-4000:]
    queued = site.version(waiting)
    assert queued["status"] == "queued", (queued, log[-4000:])
    assert not (site.models_dir / "bot" / f"v{queued['number']}").exists()
    assert waiting_jobs(site) == [waiting]
    assert cluster.returncode == 0 and "Traceback" not in log, log[-4000:]


# --- 3. deleting versions and agents ------------------------------------------------------------------------------


def version_files(models_dir, agent: str, number: int):
    directory = models_dir / agent / f"v{number}"
    (directory / "policy").mkdir(parents=True)
    (directory / LOG_FILE).write_text("trained\n")
    return directory


@pytest.mark.django_db
def test_deleting_versions_and_agents_in_the_admin_deletes_their_files(models_dir, admin_client,
                                                                       django_capture_on_commit_callbacks):
    v1, v2, v3 = queue(), queue(), queue()
    dirs = {v.number: version_files(models_dir, "bot", v.number) for v in (v1, v2, v3)}

    page = admin_client.get(f"/admin/policies/policyversion/{v1.pk}/delete/").content.decode()
    assert f"Files: {dirs[1]}/ (deleted from disk with it)" in page
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(f"/admin/policies/policyversion/{v1.pk}/delete/", {"post": "yes"})
    assert not dirs[1].exists() and dirs[2].exists()

    bulk = {"action": "delete_selected", "_selected_action": [v2.pk]}
    assert f"Files: {dirs[2]}/" in admin_client.post("/admin/policies/policyversion/", bulk).content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post("/admin/policies/policyversion/", {**bulk, "post": "yes"})
    assert not dirs[2].exists() and dirs[3].exists()
    assert queue().number == 4  # numbers are never given again

    agent = Agent.objects.get(name="bot")
    page = admin_client.get(f"/admin/policies/agent/{agent.pk}/delete/").content.decode()
    assert f"Files: {models_dir / 'bot'}/ (deleted from disk with it)" in page
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(f"/admin/policies/agent/{agent.pk}/delete/", {"post": "yes"})
    assert not (models_dir / "bot").exists() and (models_dir / "_base").exists()


@pytest.mark.django_db
@pytest.mark.slow
def test_a_re_created_agent_trains_v1_beside_what_a_deleted_agent_left(models_dir):
    """An agent deleted before deletes removed files left bot/v1 with a finished run: the new v1 trained into it
    raised FileExistsError. The old directory is set aside instead."""
    old = version_files(models_dir, "bot", 1)
    (old / RESULTS_FILE).write_text("{}")
    version = queue(enqueue=False)
    assert version.number == 1

    version = run.run_version(version_id=version.pk)

    assert (version.status, version.error) == ("trained", "")
    (aside,) = (models_dir / "bot").glob("v1.previous-*")
    assert (aside / RESULTS_FILE).read_text() == "{}" and (aside / LOG_FILE).read_text() == "trained\n"
    assert json.loads((old / RESULTS_FILE).read_text())["training_steps"] == 2


@pytest.mark.slow
def test_deleting_an_agent_while_it_trains_stops_its_job_cleanly_and_removes_its_files(tmp_path):
    site = make_site(tmp_path)
    pk = site.queue_version(max_steps=500)
    job = site.start_job(pk)
    try:
        site.wait_for(pk, lambda v: v["step"] >= 1, timeout=180)
        site.shell("from policies.models import Agent; Agent.objects.get(name='bot').delete()")
        output, _ = job.communicate(timeout=90)
    finally:
        job.kill()

    assert job.returncode == 0 and "Traceback" not in output and "DoesNotExist" not in output, output[-3000:]
    assert output.strip().splitlines()[-1] == "bot v1: deleted"
    assert not (site.models_dir / "bot").exists()


# --- 4. a million feedback rows -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db
def test_the_snapshot_of_a_million_scored_rows_works_on_sqlite(models_dir):
    """One parameter per id overflowed SQLite's variable limit at about 250,000 rows."""
    agent = Agent.objects.create(name="big", default_training_config=LEAN_CONFIG)
    now = timezone.now().isoformat()
    n = 1_000_000
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO feedback_feedback (agent_id, prompt, response, score, run_id, notes, source, created_at,"
            " updated_at) VALUES (%s, %s, %s, %s, '', '', 'api', %s, %s)",
            ((agent.pk, f"Q{i}?", f"A{i}.", None if i % 10 == 0 else (i % 7) / 6, now, now) for i in range(n)),
        )
    inserted = time.monotonic() - started
    config = services.resolve_training_config(agent=agent, overrides={"max_steps": 2})

    version = services.queue_training(agent=agent, config=config, enqueue=False)
    Feedback.objects.create(agent=agent, prompt="After the snapshot?", response="Yes.", score=0.5)  # not in it
    started = time.monotonic()
    records = selectors.snapshot_records(version=version)
    read = time.monotonic() - started

    assert version.feedback_count == len(records) == n - n // 10
    assert records[0] == {"prompt": "Q1?", "response": "A1.", "score": 1 / 6, "run_id": "", "notes": ""}
    assert records[-1]["prompt"] == f"Q{n - 1}?"
    print(f"inserted {n} rows in {inserted:.1f} s, snapshot of {len(records)} read in {read:.1f} s")


# --- 5. a hung training process -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_stopped_training_process_is_ended_after_the_stall_timeout(tmp_path):
    """SIGSTOP: the supervisor's heartbeat went on, so the version showed running until N3_TRAINING_TIMEOUT."""
    site = make_site(tmp_path, N3_STALL_TIMEOUT="15")
    pk = site.queue_version(max_steps=500)
    job = site.start_job(pk)
    try:
        site.wait_for(pk, lambda v: v["step"] >= 1, timeout=180)
        (child,) = children_of(job.pid)
        os.kill(child, signal.SIGSTOP)
        stopped = time.monotonic()
        output, _ = job.communicate(timeout=120)
        ended = time.monotonic() - stopped
    finally:
        job.kill()

    version = site.version(pk)
    assert version["status"] == "failed", output[-3000:]
    assert version["error"].startswith("The training process made no progress for 1"), version["error"]
    assert "N3_STALL_TIMEOUT=15 s" in version["error"]
    assert 1 <= version["step"] < 500 and 14 <= ended < 45, ended
    assert not (site.models_dir / "bot" / "v1" / RESULTS_FILE).exists()
    assert not children_of(job.pid)


# --- 7. feedbackCount -----------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.slow
def test_feedback_count_is_the_number_trained_on_when_rows_change_before_the_job_starts(models_dir):
    version = queue(scored=14, enqueue=False)
    assert version.feedback_count == 14
    rows = list(Feedback.objects.order_by("id"))
    Feedback.objects.filter(pk__in=[rows[0].pk, rows[1].pk]).delete()
    Feedback.objects.filter(pk=rows[2].pk).update(score=None)

    version = run.run_version(version_id=version.pk)

    assert version.status == "trained", version.error
    directory = files.version_dir("bot", 1)
    assert version.feedback_count == 11
    assert json.loads((directory / RESULTS_FILE).read_text())["feedback_count"] == 11
    assert " on 11 feedback samples " in (directory / LOG_FILE).read_text()


# --- 9. the sweep while a job trains --------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_sweep_runs_while_a_job_trains_and_nothing_piles_up_in_the_queue(tmp_path):
    site = make_site(tmp_path, N3_SWEEP_INTERVAL="1", N3_HEARTBEAT_TIMEOUT="30")
    pk = site.queue_version(max_steps=500)
    cluster = site.popen("qcluster")
    try:
        site.wait_for(pk, lambda v: v["step"] >= 1, timeout=180)
        # A version whose process died, while the cluster's only worker trains pk.
        dead = int(site.shell(
            "from datetime import timedelta; from django.utils import timezone; "
            "from policies.models import Agent, PolicyVersion; t = timezone.now() - timedelta(hours=1); "
            "print(PolicyVersion.objects.create(agent=Agent.objects.get(name='bot'), number=99, status='running', "
            "started_at=t, heartbeat_at=t).pk)"
        ))
        swept = site.wait_for(dead, lambda v: v["status"] != "running", timeout=30)
        training = site.version(pk)
        time.sleep(3)  # a few more sweeps
        queue_rows = site.query("SELECT COUNT(*) FROM django_q_ormq")
        site.shell(f"from training.services import cancel_training; from policies.models import PolicyVersion; "
                   f"cancel_training(version=PolicyVersion.objects.get(pk={pk}))")
        site.wait_for(pk, lambda v: v["status"] != "running", timeout=60)
    finally:
        cluster.send_signal(signal.SIGTERM)
        log, _ = cluster.communicate(timeout=60)

    assert swept["status"] == "failed" and "no heartbeat" in swept["error"]
    assert training["status"] == "running"  # swept while the job trained
    assert queue_rows == [(1,)]  # the training job alone: no sweep task waits behind it
    assert site.query("SELECT COUNT(*) FROM django_q_schedule") == [(0,)]
    assert site.query("SELECT func FROM django_q_task") == [("training.tasks.run_policy_version",)]
    assert cluster.returncode == 0 and "Traceback" not in log, log[-3000:]


# --- 10. the version's directory deleted mid-training ------------------------------------------------------------


@pytest.mark.slow
def test_a_version_directory_deleted_mid_training_fails_the_version_at_once(tmp_path):
    site = make_site(tmp_path)
    pk = site.queue_version(max_steps=2000)
    job = site.start_job(pk)
    try:
        site.wait_for(pk, lambda v: v["step"] >= 1, timeout=180)
        shutil.rmtree(site.models_dir / "bot" / "v1")
        deleted = time.monotonic()
        output, _ = job.communicate(timeout=60)
        ended = time.monotonic() - deleted
    finally:
        job.kill()

    version = site.version(pk)
    assert version["status"] == "failed", output[-3000:]
    assert version["error"].startswith(f"The version's directory {site.models_dir / 'bot' / 'v1'} was deleted during "
                                       "training"), version["error"]
    assert version["step"] < 2000 and ended < 15, (version["step"], ended)


@pytest.mark.slow
def test_the_snapshot_of_a_million_scored_rows_works_on_postgresql(tmp_path, postgres):
    """The same on PostgreSQL: a throwaway server (tests/servers.py), a Site on it."""
    with postgres_database(postgres.url, prefix="n3_snapshot") as url:
        import psycopg

        site = make_site(tmp_path, DATABASE_URL=url)
        site.shell("from policies.models import Agent; Agent.objects.create(name='big')")
        (agent_id,) = site.query("SELECT id FROM policies_agent WHERE name = 'big'")[0]
        n = 1_000_000
        started = time.monotonic()
        with psycopg.connect(url) as db, db.cursor().copy(
            "COPY feedback_feedback (agent_id, prompt, response, score, run_id, notes, source, created_at,"
            " updated_at) FROM STDIN"
        ) as copy:
            now = timezone.now()
            for i in range(n):
                copy.write_row((agent_id, f"Q{i}?", f"A{i}.", None if i % 10 == 0 else (i % 7) / 6, "", "", "api",
                                now, now))
        inserted = time.monotonic() - started
        out = site.shell(
            "import time; from policies.models import Agent; from training import selectors, services; "
            "agent = Agent.objects.get(name='big'); "
            "config = services.resolve_training_config(agent=agent, overrides={'max_steps': 2}); "
            "version = services.queue_training(agent=agent, config=config, enqueue=False); "
            "t = time.monotonic(); records = selectors.snapshot_records(version=version); "
            "print(version.feedback_count, len(records), records[0]['prompt'], records[-1]['prompt'], "
            "round(time.monotonic() - t, 1))"
        ).split()

    assert out[:4] == [str(n - n // 10), str(n - n // 10), "Q1?", f"Q{n - 1}?"], out
    print(f"PostgreSQL: inserted {n} rows in {inserted:.1f} s, snapshot read in {out[4]} s")
