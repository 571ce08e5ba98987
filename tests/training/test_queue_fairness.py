"""A training never waits behind hidden work (issue 23 item 4): a training request queues no timing measurement
(the run files its own timings under its key), a queued measurement returns without work while a training waits and
one in flight is stopped when a training is queued, a queued version says what it waits for (API and admin), and the
sweep does not release (and so deliver twice) a job that simply waits behind a live training."""
import json
import logging
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_q.models import OrmQ

from feedback.services import record_feedback_batch
from n3_server.rlhf import TrainingConfig, timing
from n3_server.rlhf.data import prepare_feedback
from n3_server.rlhf.layout import RESULTS_FILE
from policies.models import Agent, PolicyVersion
from tests.sites import LEAN_CONFIG, feedback_records, tmp_models_dir
from training import calibration, services, tasks
from training.files import version_dir
from training.jobs import sweep, transitions

LEAN_API = {"baseModel": "n3-tiny-random", "batchSize": 2, "miniBatchSize": 2, "ppoEpochs": 1, "maxNewTokens": 8,
            "maxSteps": 2, "rewardModelConfig": {"numEpochs": 1, "batchSize": 4}}


@pytest.fixture
def models_dir(settings, tmp_path):
    settings.MODELS_DIR = tmp_models_dir(tmp_path)
    return settings.MODELS_DIR


def calibration_jobs() -> list:
    return [row for row in OrmQ.objects.all() if row.func() == "training.tasks.calibrate_timing"]


def pending(models_dir) -> list:
    return list((models_dir / timing.CALIBRATION_DIR).glob("*.pending.json"))


def queue(agent_name: str = "bot", **overrides) -> PolicyVersion:
    agent = Agent.objects.get(name=agent_name)
    config = services.resolve_training_config(agent=agent, overrides={**LEAN_CONFIG, "max_steps": 2, **overrides})
    return services.queue_training(agent=agent, config=config)


# --- measurements yield to trainings ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_training_request_queues_no_measurement_and_a_cancelled_one_leaves_none(api, models_dir):
    """The demo's v1 sat queued for 2 minutes behind the measurement its own request had queued, and a KTO run
    cancelled while queued still had its measurement run afterwards."""
    record_feedback_batch(agent_name="bot", records=feedback_records(12))
    response = api.post("/api/policies/train_policy/bot", LEAN_API, format="json")
    assert response.status_code == 202, response.content
    assert calibration_jobs() == [] and pending(models_dir) == []
    [job] = OrmQ.objects.all()
    assert job.func() == "training.tasks.run_policy_version"  # the training is first in the queue, alone

    cancelled = api.post(f"/api/policies/bot/{response.json()['version']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert calibration_jobs() == [] and pending(models_dir) == []

    dry = api.post("/api/policies/train_policy/bot", {**LEAN_API, "dryRun": True}, format="json").json()
    assert dry["estimateSource"] != "measured"  # the dry run still answers at once, and queues the measurement
    assert len(calibration_jobs()) == 1


@pytest.mark.django_db
def test_a_queued_measurement_returns_without_work_while_a_training_waits(api, models_dir):
    record_feedback_batch(agent_name="bot", records=feedback_records(12))
    assert api.post("/api/policies/train_policy/bot", {**LEAN_API, "dryRun": True}, format="json").status_code == 200
    [job] = calibration_jobs()
    version = queue()  # queued after the measurement: it must not wait behind it

    started = time.perf_counter()
    outcome = tasks.calibrate_timing(job.args()[0])
    assert time.perf_counter() - started < 2  # no child process: a measurement takes tens of seconds at least
    assert outcome.startswith(f"calibrate {job.args()[0]}: not run: bot {version.version} is queued"), outcome
    assert pending(models_dir) == []  # released: the next dry run queues it again
    assert not list((models_dir / timing.CALIBRATION_DIR).glob("*[0-9a-f].json"))  # nothing measured


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_measurement_in_flight_stops_when_a_training_is_queued(api, models_dir):
    record_feedback_batch(agent_name="bot", records=feedback_records(12))
    assert api.post("/api/policies/train_policy/bot", {**LEAN_API, "dryRun": True}, format="json").status_code == 200
    [job] = calibration_jobs()
    queued_at = []

    def queue_a_training_soon():
        time.sleep(3)  # the measuring child has started
        try:
            queue()
            queued_at.append(time.perf_counter())
        finally:
            connection.close()

    thread = threading.Thread(target=queue_a_training_soon)
    thread.start()
    outcome = tasks.calibrate_timing(job.args()[0])
    stopped_at = time.perf_counter()
    thread.join()
    assert "stopped: bot v1 is queued" in outcome, outcome
    # Stopped within the poll and the child's SIGTERM handling, not after the whole measurement.
    assert stopped_at - queued_at[0] < 10, stopped_at - queued_at[0]
    assert pending(models_dir) == []
    calibration_dir = models_dir / timing.CALIBRATION_DIR
    assert not [p.name for p in calibration_dir.iterdir()], "no calibration stored, no scratch directory left"


@pytest.mark.django_db
def test_a_trained_version_files_its_timings_as_its_key_s_calibration(api, models_dir):
    """The run measures its own key: a dry run of the same configuration afterwards answers "measured", with the
    run's own pace, and queues nothing."""
    record_feedback_batch(agent_name="bot", records=feedback_records(12))
    version = queue()
    directory = version_dir("bot", version.number)
    directory.mkdir(parents=True)
    history = [{"timing/generate_s": 0.5, "timing/score_s": 0.25, "timing/update_s": 1.25}] * 2
    (directory / RESULTS_FILE).write_text(json.dumps({
        "model_path": str(directory / "policy"), "reward_model_path": str(directory / "reward_model"),
        "final_reward_mean": 0.5, "final_reward_std": 0.1, "training_steps": 2, "history": history,
        "reward_model_metrics": {"epochs": 1, "val_size": 2, "eval_seconds": 0.5, "fit_seconds": 3.5, "steps": 3},
        "config": version.config, "timings": {"total_s": 30.0},
    }))
    PolicyVersion.objects.filter(pk=version.pk).update(status="trained")
    version.refresh_from_db()

    tasks._record_timings(version)

    dry = api.post("/api/policies/train_policy/bot", {**LEAN_API, "dryRun": True}, format="json").json()
    assert dry["estimateSource"] == "measured", dry
    assert calibration_jobs() == []
    config = TrainingConfig.from_dict(version.config)
    key = timing.timing_key(config, prepare_feedback(feedback_records(12)).records, models_dir=models_dir)
    measured = timing.load_calibration(models_dir, key)
    assert (measured.ppo_step_s, measured.rm_step_s) == (2.0, 1.0)  # the run's 2 s steps, 3 s over 3 batches
    assert calibration.record_run_timings(version=version) is None  # measured already: not filed again


# --- a queued version says what it waits for -----------------------------------------------------------------------
@pytest.mark.django_db
def test_a_queued_version_says_what_is_ahead_of_it_in_the_api_and_the_admin(api, models_dir, django_user_model):
    record_feedback_batch(agent_name="bot", records=feedback_records(12))
    record_feedback_batch(agent_name="other", records=feedback_records(12))
    first, second = queue("other"), queue("bot")
    mine = queue("bot")
    assert transitions.claim_version(version_id=first.pk)  # running now

    body = api.get(f"/api/policies/bot/{mine.version}").json()
    assert body["status"] == "queued" and body["queuePosition"] == 2
    assert "other v1 (running, step 0 of 2)" in body["waitingFor"] and "bot v1 (queued)" in body["waitingFor"]
    assert body["waitingFor"].startswith("A free worker")
    assert api.get(f"/api/policies/bot/{second.version}").json()["queuePosition"] == 1
    running = api.get("/api/policies/other/v1").json()
    assert running["status"] == "running" and running["queuePosition"] is None and running["waitingFor"] is None
    for key in ("version", "status", "policyId", "metrics"):  # the spec's fields are still there
        assert key in body

    engineer = django_user_model.objects.create_superuser("eng", password="pw")
    client = Client()
    client.force_login(engineer)
    html = client.get(reverse("admin:policies_policyversion_change", args=[mine.pk])).content.decode()
    assert "Waiting for" in html and "other v1 (running, step 0 of 2)" in html
    progress = client.get(reverse("admin:policies_policyversion_progress", args=[mine.pk])).json()
    assert progress["waitingFor"] == body["waitingFor"]  # what version.js shows while it polls

    PolicyVersion.objects.filter(pk__in=[first.pk, second.pk]).update(status="cancelled")
    alone = api.get(f"/api/policies/bot/{mine.version}").json()
    assert alone["queuePosition"] == 1 and "nothing runs or waits ahead of it" in alone["waitingFor"]


# --- the sweep ----------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_sweep_leaves_a_job_waiting_behind_a_live_training_alone(settings, models_dir, caplog):
    """The demo's v2 waited behind v1 in the one worker's cluster (its pusher had fetched it): the sweep released it
    with "was it killed?" and it was delivered twice. Behind a running training it is left as it is; once no
    training fetched before it runs, it is released (its cluster was killed)."""
    settings.N3_HEARTBEAT_TIMEOUT = 60
    record_feedback_batch(agent_name="bot", records=feedback_records(12))
    running, waiting = queue(), queue()
    long_ago = timezone.now() - timedelta(minutes=10)
    PolicyVersion.objects.filter(pk__in=[running.pk, waiting.pk]).update(queued_at=long_ago)
    assert transitions.claim_version(version_id=running.pk)
    fetched = timezone.now() + timedelta(seconds=settings.Q_CLUSTER["retry"])
    rows = {row.task_id(): row.pk for row in OrmQ.objects.all()}
    OrmQ.objects.filter(pk=rows[running.task_id]).update(lock=fetched)
    OrmQ.objects.filter(pk=rows[waiting.task_id]).update(lock=fetched + timedelta(seconds=1))  # fetched after it

    with caplog.at_level(logging.WARNING, logger="training.jobs.sweep"):
        assert sweep.sweep_stale_versions() == 0
    assert OrmQ.objects.get(pk=rows[waiting.task_id]).lock > timezone.now()  # still held: no second delivery
    assert "was" not in caplog.text and "Released" not in caplog.text

    # Its training ended (django-q2 acknowledged its row), and nothing fetched before the waiting job runs any more.
    PolicyVersion.objects.filter(pk=running.pk).update(status="trained", finished_at=timezone.now())
    OrmQ.objects.filter(pk=rows[running.task_id]).delete()
    sweep.sweep_stale_versions()
    assert OrmQ.objects.get(pk=rows[waiting.task_id]).lock <= timezone.now()
