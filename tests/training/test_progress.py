"""How a training's progress reaches the database (training.jobs.progress.JobProgress): per-step figures as TrainingStep
rows inserted as they come, the version's metrics kept to its latest figures."""
import json
import math
import time

import pytest
from django.db import connection

from n3_server.rlhf.progress import Progress
from n3_server.rlhf.results import TrainingResult
from policies.models import Agent, PolicyVersion, TrainingStep
from tests.sites import add_steps
from training.jobs.progress import JobProgress, result_metrics

pytestmark = pytest.mark.django_db


def running_version(max_steps: int) -> PolicyVersion:
    agent = Agent.objects.create(name="bot")
    return PolicyVersion.objects.create(agent=agent, number=1, status="running", max_steps=max_steps)


def stats(step: int) -> dict:
    """A PPO step's figures as the core reports them (n3_server.rlhf.metrics.STEP_METRICS)."""
    return {
        "step": step, "objective/scores": 0.3 + step / 10_000, "objective/scores_std": 0.1, "objective/kl": step / 1000,
        "objective/kl_coef": 0.2, "objective/rlhf_reward": 0.25, "policy/entropy": 2.1, "policy/clipfrac": 0.05,
        "policy/approxkl": 0.01, "loss/policy": -0.02, "loss/value": 0.4, "loss/total": 0.38, "val/clipfrac": 0.1,
        "timing/generate_s": 0.8, "timing/score_s": 0.2, "timing/update_s": 0.5, "tokens_per_s": 150.0,
        "response_length": 24.0,
    }


def policy_step(step: int, total: int) -> Progress:
    return Progress(phase="policy", step=step, total=total, metrics=stats(step))


def test_a_long_run_inserts_each_step_once_and_keeps_every_write_small():
    """5,000 steps (the production preset), a write at every step: each UPDATE carries the latest figures only (a
    few hundred bytes, the same at step 5,000 as at step 1) and each step is one inserted row, never rewritten."""
    steps = 5000
    version = running_version(steps)
    job = JobProgress(version.pk, interval=0)

    statements: list[tuple[str, tuple]] = []  # every statement with its parameters (Django's query log keeps 9,000)

    def record(execute, sql, params, many, context):
        statements.append((sql, tuple(params or ())))
        return execute(sql, params, many, context)

    started = time.perf_counter()
    with connection.execute_wrapper(record), job:
        job(Progress(phase="reward_model", step=1, total=1, metrics={"loss": 0.3}))
        for step in range(1, steps + 1):
            assert job(policy_step(step, steps)) is False
    seconds = time.perf_counter() - started

    updates = [params for sql, params in statements if sql.startswith('UPDATE "policies_policyversion"')]
    inserts = [params for sql, params in statements if sql.startswith("INSERT") and '"policies_trainingstep"' in sql]
    assert len(updates) == steps + 1 and len(inserts) == steps  # each write: one row, the step since the last one
    sizes = [max(len(str(p)) for p in params) for params in updates]  # the largest parameter: the metrics JSON
    assert max(sizes) < 300 and sizes[-1] - sizes[1] < 10  # as small at step 5,000 as at step 1
    assert not [sql for sql, _ in statements if "policies_trainingstep" in sql and not sql.startswith("INSERT")]
    version.refresh_from_db()
    assert len(json.dumps(version.metrics)) < 300 and version.step == steps
    phase_progress = version.metrics.pop("phase_progress")  # the page's counter and ETA (test_version_display)
    assert (phase_progress["step"], phase_progress["total"], phase_progress["timed"]) == (steps, steps, 10)
    assert version.metrics == {
        "objective/scores": 0.8, "objective/scores_std": 0.1, "objective/kl": 5.0, "loss/total": 0.38,
        "phase": "policy", "reward_model_loss": 0.3,
    }
    assert TrainingStep.objects.filter(version=version).count() == steps
    last = TrainingStep.objects.get(version=version, step=steps)
    assert last.metrics == {k: v for k, v in stats(steps).items() if k != "step"}
    print(f"{steps} steps written one by one in {seconds:.1f} s; metrics of {sizes[-1]} characters per UPDATE")


def test_a_write_that_finds_its_steps_already_stored_goes_on():
    """A write retried after an error it did not see (its rows were committed) must not fail on them."""
    version = running_version(3)
    add_steps(version, [{"step": 2, "objective/scores": 0.9}])  # stored by an earlier attempt
    job = JobProgress(version.pk, interval=math.inf)
    for step in (1, 2, 3):
        job(policy_step(step, 3))

    assert job.write() is False
    assert list(version.steps.values_list("step", flat=True)) == [1, 2, 3]
    assert version.steps.get(step=2).metrics == {"objective/scores": 0.9}  # never rewritten
    job.store_steps([stats(1), stats(2), stats(3)])  # and again at the end: nothing new, no error
    assert version.steps.count() == 3


def test_a_cancelled_run_keeps_every_step_it_logged():
    """Once cancel is requested the write stops the run without storing; leaving the JobProgress stores the rest."""
    version = running_version(10)
    job = JobProgress(version.pk, interval=math.inf)
    with job:
        for step in (1, 2, 3):
            job(policy_step(step, 10))
        assert job.write() is False
        PolicyVersion.objects.filter(pk=version.pk).update(cancel_requested=True)
        for step in (4, 5):
            job(policy_step(step, 10))
        assert job.write() is True  # stop
        assert version.steps.count() == 3
    assert list(version.steps.values_list("step", flat=True)) == [1, 2, 3, 4, 5]
    assert job.metrics()["objective/kl"] == 0.005  # what the run ends with (training.jobs.run's end_version)


def test_a_finished_run_stores_the_steps_its_callbacks_missed():
    version = running_version(3)
    job = JobProgress(version.pk, interval=0)
    with job:
        job(policy_step(1, 3))
    history = [stats(1), stats(2), {**stats(3), "objective/kl": math.nan}]
    job.store_steps(history)
    job.store_steps(history)  # idempotent

    assert list(version.steps.values_list("step", flat=True)) == [1, 2, 3]
    assert version.steps.get(step=3).metrics["objective/kl"] is None  # strict JSON
    result = TrainingResult(model_path="p", reward_model_path="r", final_reward_mean=0.8, final_reward_std=0.1,
                            training_steps=3, history=history)
    assert "history" not in result_metrics(result)  # the version's metrics hold no steps
