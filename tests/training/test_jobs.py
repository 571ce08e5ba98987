"""Training jobs: queueing, claiming, running, cancelling, failing and sweeping versions, with real training.

Most tests run in this process on pytest-django's database. The two that need a real child process to see the
database (a SIGKILLed training, a cancel seen by the child) use a Site: a SQLite file in a tmp dir.
"""
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from django_q.models import OrmQ, Task

from api.serializers import PolicyVersionSerializer
from feedback import services as feedback_services
from n3_server.rlhf import ConfigError, InsufficientFeedbackError
from n3_server.rlhf.results import RESULTS_FILE
from n3site.exceptions import Conflict
from policies.models import Agent, PolicyVersion
from tests.sites import LEAN_CONFIG, children_of, feedback_records, make_site, tmp_models_dir
from training import files, selectors, services, tasks
from training.jobs import run, sweep, transitions

pytestmark = pytest.mark.django_db


@pytest.fixture
def models_dir(tmp_path, settings):
    settings.MODELS_DIR = tmp_models_dir(tmp_path)
    settings.N3_METRICS_INTERVAL = 0.0
    return settings.MODELS_DIR


def agent_with_feedback(name: str = "bot", *, scored: int = 12, unscored: int = 0) -> Agent:
    records = feedback_records(scored) + [{"prompt": f"Pending {i}?", "response": "..."} for i in range(unscored)]
    feedback_services.record_feedback_batch(agent_name=name, records=records)
    agent = Agent.objects.get(name=name)
    agent.default_training_config = LEAN_CONFIG
    agent.save()
    return agent


def queue(agent: Agent, **overrides) -> PolicyVersion:
    config = services.resolve_training_config(agent=agent, overrides={"max_steps": 2, **overrides})
    return services.queue_training(agent=agent, config=config)


# --- configuration and queueing ---------------------------------------------------------------------------------


def test_config_layers_defaults_agent_preset_then_overrides(settings):
    settings.N3_DEFAULT_BASE_MODEL = "n3-tiny"
    agent = Agent.objects.create(name="bot")
    assert services.resolve_training_config(agent=agent).base_model == "n3-tiny"

    agent.default_training_config = {
        "base_model": "n3-tiny-random", "lora_r": 4, "reward_model_config": {"num_epochs": 1},
    }
    config = services.resolve_training_config(
        agent=agent, preset="low_memory", overrides={"learning_rate": 3e-4, "reward_model_config": {"batch_size": 2}},
    )

    assert config.base_model == "n3-tiny-random"  # the agent's, not the preset's hub model (test_config_validation)
    assert config.lora_r == 4 and config.gradient_accumulation_steps == 4  # preset over agent
    assert config.learning_rate == 3e-4
    assert (config.reward_model_config.num_epochs, config.reward_model_config.batch_size) == (1, 2)  # merged
    with pytest.raises(ConfigError, match="Unknown preset 'fast'"):
        services.resolve_training_config(agent=agent, preset="fast")
    with pytest.raises(ConfigError, match="Unknown config field.*max_step"):
        services.resolve_training_config(agent=agent, overrides={"max_step": 5})


def test_versions_are_numbered_per_agent_and_keep_their_feedback_snapshot():
    bot = agent_with_feedback("bot", scored=11, unscored=2)
    other = agent_with_feedback("other")

    v1 = queue(bot)
    feedback_services.record_feedback(agent_name="bot", prompt="One more?", response="Yes.", score=0.8)
    v2 = queue(bot, max_steps=7)
    other_v1 = queue(other)

    assert [v1.number, v2.number, other_v1.number] == [1, 2, 1]
    scored = list(bot.feedback.filter(score__isnull=False).order_by("id").values_list("id", flat=True))
    snapshot = lambda version: list(selectors.snapshot_feedback(version=version).values_list("id", flat=True))  # noqa: E731
    assert snapshot(v1) == scored[:11] and v1.feedback_count == 11  # the two unscored ones are not in it
    assert snapshot(v2) == scored and v2.feedback_count == 12
    assert (v2.status, v2.max_steps, v2.config["max_steps"]) == ("queued", 7, 7)
    assert v2.config["base_model"] == "n3-tiny-random"
    # Each version's job waits in the ORM queue, committed with it.
    waiting = {q.task_id(): q.args() for q in OrmQ.objects.all()}
    assert waiting == {v1.task_id: (v1.pk,), v2.task_id: (v2.pk,), other_v1.task_id: (other_v1.pk,)}


def test_too_little_scored_feedback_queues_nothing():
    agent = agent_with_feedback(scored=9, unscored=5)

    with pytest.raises(InsufficientFeedbackError, match=r"Insufficient feedback: 9 samples \(minimum 10 required\)"):
        queue(agent)
    assert not PolicyVersion.objects.exists() and not OrmQ.objects.exists()


# --- claiming and cancelling ------------------------------------------------------------------------------------


def test_a_version_is_claimed_once_and_its_job_never_trains_it_twice(models_dir):
    version = queue(agent_with_feedback())

    assert transitions.claim_version(version_id=version.pk) is True
    assert transitions.claim_version(version_id=version.pk) is False
    version.refresh_from_db()
    heartbeat = version.heartbeat_at

    # A second delivery of the job (or a job for a claimed version) returns without starting a training.
    assert tasks.run_policy_version(version.pk) == f"not run: version {version.pk} is running"
    version.refresh_from_db()
    assert (version.status, version.heartbeat_at) == ("running", heartbeat)
    assert not files.version_dir("bot", 1).exists()


def test_cancelling_a_queued_version_is_immediate_and_its_job_does_nothing(models_dir):
    version = services.cancel_training(version=queue(agent_with_feedback()))

    assert (version.status, version.error) == ("cancelled", "Cancelled before it started.")
    assert version.finished_at is not None
    assert tasks.run_policy_version(version.pk) == f"not run: version {version.pk} is cancelled"
    with pytest.raises(Conflict, match="bot v1 is already cancelled"):
        services.cancel_training(version=version)


@pytest.mark.slow


def test_a_running_version_stops_at_the_next_step_once_cancel_is_requested(models_dir):
    version = queue(agent_with_feedback(), max_steps=50)
    transitions.claim_version(version_id=version.pk)

    version = services.cancel_training(version=version)
    assert (version.status, version.cancel_requested) == ("running", True)  # the training process decides
    version = run.run_version(version_id=version.pk)

    assert version.status == "cancelled" and "cancelled" in version.error.lower()
    assert version.step < 50 and version.finished_at is not None
    out = files.version_dir("bot", 1)
    assert not (out / RESULTS_FILE).exists() and not (out / "policy").exists()
    assert "Training cancelled" in (out / "training.log").read_text()


# --- running ------------------------------------------------------------------------------------------------------


@pytest.mark.slow


def test_run_version_trains_and_records_the_spec_metrics(models_dir):
    version = queue(agent_with_feedback(), max_steps=2)
    transitions.claim_version(version_id=version.pk)

    version = run.run_version(version_id=version.pk)

    assert (version.status, version.step, version.error) == ("trained", 2, "")
    assert version.model_path == str(models_dir / "bot" / "v1" / "policy")  # MODELS_DIR outside the project: absolute
    assert (Path(version.model_path) / "config.json").exists()
    assert (Path(version.reward_model_path) / "reward_head.pt").exists()
    # stored under the core's names, its steps as rows, shown under the spec's
    assert {"objective/scores", "objective/scores_std", "objective/kl", "loss/total"} <= set(version.metrics)
    assert 0.0 <= version.reward_mean <= 1.0 and "history" not in version.metrics
    assert {"val_mse", "val_pearson", "val_spearman"} <= set(version.metrics["reward_model"])  # the core's names
    assert list(version.steps.values_list("step", flat=True)) == [1, 2]
    metrics = PolicyVersionSerializer(version).data["metrics"]
    assert {"rewardMean", "rewardStd", "kl", "loss", "rewardModel", "history"} <= set(metrics)
    assert metrics["rewardMean"] == version.reward_mean
    assert {"valMse", "pearson", "spearman"} <= set(metrics["rewardModel"])
    assert [h["step"] for h in metrics["history"]] == [1, 2]
    assert {"rewardMean", "rewardStd", "kl", "loss", "objective/kl", "policy/entropy"} <= set(metrics["history"][0])
    assert version.started_at <= version.heartbeat_at <= version.finished_at


def test_stored_paths_are_relative_to_the_project_when_models_dir_is_inside_it(settings):
    settings.MODELS_DIR = Path(settings.BASE_DIR) / "models"
    path = files.version_dir("my_agent", 15) / "policy"

    assert files.stored_path(path) == "models/my_agent/v15/policy"
    assert files.absolute_path("models/my_agent/v15/policy") == path
    assert files.stored_path("/srv/models/x/v1/policy") == "/srv/models/x/v1/policy"


@pytest.mark.slow


def test_a_training_error_fails_the_version_with_its_reason(models_dir):
    version = queue(agent_with_feedback(), base_model=str(models_dir / "no-such-model"))
    transitions.claim_version(version_id=version.pk)

    version = run.run_version(version_id=version.pk)

    assert version.status == "failed"
    assert "no-such-model" in version.error and "unavailable" in version.error
    assert "Traceback" not in version.error
    assert not (files.version_dir("bot", 1) / RESULTS_FILE).exists()


@pytest.mark.parametrize("launcher, reason", [
    ("false", "The training process exited with code 1."),
    ("sh -c 'echo CUDA out of memory >&2; kill -KILL $$'", "The training process was killed by SIGKILL"),
    ("/no/such/launcher", "Could not start the training process (/no/such/launcher "),
])
@pytest.mark.slow
def test_a_child_that_cannot_record_an_outcome_fails_its_version_with_the_reason(
    models_dir, settings, launcher, reason,
):
    # The launcher replaces the training command's interpreter: these children die at once, like a crashed one.
    settings.N3_TRAINING_LAUNCHER = launcher
    version = queue(agent_with_feedback())

    outcome = tasks.run_policy_version(version.pk)

    version.refresh_from_db()
    assert (outcome, version.status) == ("bot v1: failed", "failed")
    assert version.error.startswith(reason)
    if "SIGKILL" in reason:
        assert version.error.endswith("Last output:\nCUDA out of memory")


@pytest.mark.slow


def test_a_training_longer_than_the_timeout_is_stopped_and_failed(models_dir, settings):
    settings.N3_TRAINING_LAUNCHER = "sh -c 'sleep 60'"  # a child that hangs
    settings.N3_TRAINING_TIMEOUT = 1
    version = queue(agent_with_feedback())

    started = time.monotonic()
    tasks.run_policy_version(version.pk)

    version.refresh_from_db()
    assert version.status == "failed" and "N3_TRAINING_TIMEOUT=1" in version.error
    assert time.monotonic() - started < 15


# --- the dead-worker sweep ----------------------------------------------------------------------------------------


def test_the_sweep_fails_running_versions_without_a_heartbeat_and_lost_queued_ones(settings):
    settings.N3_HEARTBEAT_TIMEOUT = 60
    agent = Agent.objects.create(name="bot")
    now = timezone.now()
    long_ago = now - timedelta(minutes=10)

    def version(number, status, **fields):
        return PolicyVersion.objects.create(agent=agent, number=number, status=status, **fields)

    dead = version(1, "running", started_at=long_ago, heartbeat_at=long_ago)
    alive = version(2, "running", started_at=long_ago, heartbeat_at=now - timedelta(seconds=5))
    finished = version(3, "trained", started_at=long_ago, heartbeat_at=long_ago)
    crashed_job = version(4, "queued", task_id="a" * 32)
    Task.objects.create(id="a" * 32, name="train", func="training.tasks.run_policy_version", started=now,
                        stopped=now, success=False, result="ImportError: no module named torch\nTraceback ...")
    never_enqueued = version(5, "queued")
    PolicyVersion.objects.filter(pk=never_enqueued.pk).update(queued_at=long_ago)
    just_queued = queue(agent_with_feedback("bot"))  # v6: its job waits in the queue

    assert sweep.sweep_stale_versions() == 3

    states = {v.number: (v.status, v.error) for v in PolicyVersion.objects.filter(agent=agent)}
    assert states[dead.number][0] == "failed" and "no heartbeat for 600 s" in states[dead.number][1]
    assert states[alive.number] == ("running", "")
    assert states[finished.number] == ("trained", "")
    assert states[crashed_job.number] == (
        "failed", "Its job ended without starting the training: ImportError: no module named torch",
    )
    assert states[never_enqueued.number][0] == "failed"
    assert "never handed to a worker" in states[never_enqueued.number][1]
    assert states[just_queued.number] == ("queued", "")
    assert sweep.sweep_stale_versions() == 0


@pytest.mark.django_db(transaction=True)
def test_the_sweep_runs_in_a_thread_and_migrate_deletes_the_schedule_of_earlier_releases(settings):
    """Issue 11 item 9: a Schedule's sweep tasks queued behind a long training (one worker) and piled up."""
    from django.core.management import call_command
    from django_q.models import Schedule

    Schedule.objects.create(name="n3: fail training jobs whose process died", func=sweep.OLD_SWEEP_TASK,
                            schedule_type=Schedule.MINUTES, minutes=1, repeats=-1)
    call_command("migrate", verbosity=0)
    assert not Schedule.objects.exists() and not OrmQ.objects.exists()

    settings.N3_HEARTBEAT_TIMEOUT = 60
    long_ago = timezone.now() - timedelta(minutes=10)
    dead = PolicyVersion.objects.create(agent=Agent.objects.create(name="bot"), number=1, status="running",
                                        started_at=long_ago, heartbeat_at=long_ago)
    thread = sweep.SweepThread(every=0.1)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while PolicyVersion.objects.get(pk=dead.pk).status == "running" and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        thread.stop()
        thread.join(5)
    assert PolicyVersion.objects.get(pk=dead.pk).status == "failed"
    assert not thread.is_alive() and not OrmQ.objects.exists()


# --- a real child process ---------------------------------------------------------------------------------------


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path)


@pytest.mark.slow
def test_a_training_process_killed_with_sigkill_fails_its_version(site):
    pk = site.queue_version(max_steps=500)
    job = site.start_job(pk)
    try:
        site.wait_for(pk, lambda v: v["step"] >= 1, timeout=120)
        (child,) = children_of(job.pid)
        os.kill(child, signal.SIGKILL)  # what the out-of-memory killer does
        output, _ = job.communicate(timeout=60)
    finally:
        job.kill()

    version = site.version(pk)
    assert version["status"] == "failed", output
    assert version["error"].startswith("The training process was killed by SIGKILL")
    assert "ppo step" in version["error"]  # the tail of its output says how far it got
    assert version["finished_at"] and job.returncode == 0
    out = site.models_dir / "bot" / "v1"
    assert not (out / RESULTS_FILE).exists() and not (out / "policy").exists()


@pytest.mark.slow
def test_a_cancel_reaches_the_training_process_which_stops_by_itself(site):
    pk = site.queue_version(max_steps=500)
    job = site.start_job(pk)
    try:
        site.wait_for(pk, lambda v: v["step"] >= 1, timeout=120)
        site.shell(f"from training import services; from policies.models import PolicyVersion; "
                   f"services.cancel_training(version=PolicyVersion.objects.get(pk={pk}))")
        output, _ = job.communicate(timeout=60)
    finally:
        job.kill()

    version = site.version(pk)
    assert version["status"] == "cancelled", output
    assert version["error"].startswith("Training cancelled during the policy phase")
    assert 1 <= version["step"] < 500
    assert "Stopping the training process" not in output  # it was not terminated: it saw the flag
    assert not (site.models_dir / "bot" / "v1" / RESULTS_FILE).exists()
