"""A training job's visibility through the REST API (issue 21, item 2): a version's elapsed time, estimated finish and
phase progress in its body, and its events (GET /api/policies/<agent>/<version>/events), derived from what the
training writes: the version's fields, its step rows and its training.log. Versions, step rows and logs are built
here as the training writes them (JobProgress, the core's log format); the slow test trains for real."""
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from n3_server.rlhf.progress import Progress
from policies.models import Agent, PolicyVersion
from tests.sites import LEAN_CONFIG, add_steps, feedback_records, tmp_models_dir
from training import files
from training.jobs import progress as progress_module
from training.jobs.events import STAGE, step_stride
from training.jobs.progress import JobProgress
from training.jobs.status import progress as admin_progress

pytestmark = pytest.mark.django_db

NEW_KEYS = ["elapsedSeconds", "estimatedFinish", "progress"]


@pytest.fixture
def models_dir(tmp_path, settings) -> Path:
    settings.MODELS_DIR = tmp_models_dir(tmp_path)
    return settings.MODELS_DIR


def make_version(agent: str, number: int, status: str, **fields) -> PolicyVersion:
    agent_obj, _ = Agent.objects.get_or_create(name=agent)
    return PolicyVersion.objects.create(agent=agent_obj, number=number, status=status, **fields)


def events_url(agent: str, version: str, **params) -> str:
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return f"/api/policies/{agent}/{version}/events" + (f"?{query}" if query else "")


def write_log(version: PolicyVersion, start: datetime, lines: list[str]) -> Path:
    """training.log as the core writes it (logging's asctime, local time): one line a second from ``start``;
    "LEVEL message" or a bare message (INFO)."""
    path = files.version_dir(version.agent.name, version.number) / "training.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = []
    for i, line in enumerate(lines):
        level, _, message = line.partition(" ") if line.split(" ", 1)[0] in ("WARNING", "ERROR") else ("INFO", "", line)
        at = (start + timedelta(seconds=i)).astimezone().replace(tzinfo=None)
        text.append(f"{at:%Y-%m-%d %H:%M:%S},{at.microsecond // 1000:03d} {level} {message}")
    path.write_text("\n".join(text) + "\n")
    return path


REWARD_MODEL_LOG = [
    "Training n3-tiny with PPO on 30 feedback samples (score 0.500 ± 0.300) on cpu (float32) into /srv/models/bot/v1",
    'config {"algorithm": "ppo"}',
    "WARNING 5 of 30 feedback records await review and are not used",
    "reward model (fold 1/2): n3-tiny + LoRA r=8, 12 train / 12 validation samples, 2 epochs",
    "reward model epoch 1/2 train_loss=0.0616 val_mse=0.0599",
    "reward model epoch 2/2 train_loss=0.0292 val_mse=0.0290",
    "reward model (fold 2/2): n3-tiny + LoRA r=8, 12 train / 12 validation samples, 2 epochs",
    "reward model epoch 1/2 train_loss=0.0604 val_mse=0.0334",
    "reward model epoch 2/2 train_loss=0.0327 val_mse=0.0218",
    "reward model (all records): n3-tiny + LoRA r=8, 24 train / 0 validation samples, 2 epochs",
    "reward model (2-fold cross-validation): val_mse=0.0254 (predict-the-mean 0.0932), pearson=0.9052, "
    "spearman=n/a, best epoch 2 of 2",
    "ppo: 65,536 trainable of 1,199,616 parameters",
]


def step_line(step: int, total: int) -> str:
    return f"ppo step {step}/{total} reward=0.5000 kl=0.1000 loss=0.2000 tokens/s=50.0"


def steps(count: int) -> list[dict]:
    return [{"step": s, "objective/scores": 0.5 + s / 10_000, "objective/scores_std": 0.1, "objective/kl": s / 1000,
             "loss/total": 0.3} for s in range(1, count + 1)]


# --- the version's body -------------------------------------------------------------------------------------------


def test_a_running_version_shows_elapsed_time_estimated_finish_and_its_phase_as_the_admin_does(api, monkeypatch):
    """JobProgress writes the reward model's batches with their wall times; the body's estimatedFinish is the admin's
    "remaining" figure (training.jobs.status.timing) counted from now."""
    started = timezone.now() - timedelta(seconds=90)
    version = make_version("bot", 1, "running", max_steps=1000, started_at=started, config={"algorithm": "ppo"})
    base = started.timestamp() + 60
    clock = iter(base + t for t in range(0, 1000, 2))  # a batch every 2 s
    monkeypatch.setattr(progress_module, "wall_clock", lambda: next(clock))
    job = JobProgress(version.pk, interval=0)
    for batch in range(1, 13):
        job(Progress(phase="reward_model", step=batch, total=40, metrics={"loss": 0.1, "epoch": 1}))
    pace = job.phase_progress
    now = pace["at"] + 0.5  # half a second after the latest batch
    monkeypatch.setattr(timezone, "now", lambda: datetime.fromtimestamp(now, tz=UTC))

    body = api.get("/api/policies/bot/v1").json()

    assert list(body)[-3:] == NEW_KEYS  # added after the existing keys
    assert body["progress"] == {"phase": "reward_model", "done": 12, "total": 40, "unit": "reward-model batches"}
    version.refresh_from_db()
    expected = version.started_at.timestamp()
    assert body["elapsedSeconds"] == pytest.approx(now - expected, abs=0.1)
    left = (datetime.fromisoformat(body["estimatedFinish"]).timestamp() - now)
    shown = admin_progress(version)  # the admin's status box, at the same moment
    assert left == pytest.approx(shown["etaSeconds"], abs=1) and left == pytest.approx(2.0 * 28 - 0.5, abs=1)
    listed = api.get("/api/policies/bot").json()[0]
    assert list(listed)[-3:] == NEW_KEYS
    assert (listed["progress"], listed["estimatedFinish"]) == (body["progress"], body["estimatedFinish"])


def test_queued_ended_and_not_yet_estimated_versions(api):
    now = timezone.now()
    make_version("bot", 1, "queued", max_steps=10)
    make_version("bot", 2, "running", max_steps=10, started_at=now, step=1,
                 metrics={"phase": "policy", "phase_progress": {"step": 1, "total": 10, "at": now.timestamp(),
                                                                "pace": 1.0, "timed": 0}})
    make_version("bot", 3, "trained", max_steps=10, step=10, started_at=now - timedelta(seconds=75.25),
                 finished_at=now, metrics={"phase": "saving"})

    listed = {v["version"]: {key: v[key] for key in NEW_KEYS} for v in api.get("/api/policies/bot").json()}

    assert listed == {
        "v1": {"elapsedSeconds": None, "estimatedFinish": None,
               "progress": {"phase": None, "done": 0, "total": 10, "unit": "steps"}},
        "v2": {"elapsedSeconds": listed["v2"]["elapsedSeconds"], "estimatedFinish": None,  # "estimating…"
               "progress": {"phase": "policy", "done": 1, "total": 10, "unit": "steps"}},
        "v3": {"elapsedSeconds": 75.2, "estimatedFinish": None,  # its duration; no estimate once ended
               "progress": {"phase": "saving", "done": 10, "total": 10, "unit": "steps"}},
    }
    assert 0 <= listed["v2"]["elapsedSeconds"] < 60


def test_the_list_reads_no_steps_and_no_more_queries_for_the_new_keys(api):
    for number in (1, 2, 3):
        add_steps(make_version("bot", number, "trained", step=30, max_steps=30), steps(30))
    with CaptureQueriesContext(connection) as listing:
        assert len(api.get("/api/policies/bot").json()) == 3
    assert not [q["sql"] for q in listing.captured_queries if "policies_trainingstep" in q["sql"]]
    assert len(listing.captured_queries) <= 6


# --- events -------------------------------------------------------------------------------------------------------


def test_a_trained_run_lists_queued_started_reward_model_steps_evaluation_promotion_and_end(api, models_dir):
    started = timezone.now().replace(microsecond=0) - timedelta(hours=1)
    version = make_version(
        "bot", 1, "trained", max_steps=1000, step=1000, feedback_count=30, started_at=started,
        finished_at=started + timedelta(minutes=50), config={"algorithm": "ppo", "base_model": "n3-tiny"},
        promotion_note="promoted: win rate 0.70 [0.60, 0.80] beats base model n3-tiny, KL 1.20 within the budget 10",
        metrics={"evaluation": {"better": True, "win_rate": 0.7, "win_rate_ci": [0.6, 0.8], "kl": 1.2,
                                "baseline": "base model n3-tiny", "verdict": "better than base model n3-tiny"}},
    )
    add_steps(version, steps(1000))
    write_log(version, started, [
        *REWARD_MODEL_LOG, *(step_line(s, 1000) for s in range(1, 1001)),
        "evaluation against base model n3-tiny on 48 held-out samples ...",
        "verdict: better than base model n3-tiny",
    ])

    body = api.get(events_url("bot", "v1", limit=1000)).json()

    assert body["next"] is None
    events = body["results"]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    types = [e["type"] for e in events]
    assert types[:3] == ["queued", "started", "warning"]
    assert types[3:8] == ["reward_model.epoch"] * 4 + ["reward_model.fitted"]
    assert types[-3:] == ["evaluation", "promotion", "end"]
    step_events = [e for e in events if e["type"] == "policy.step"]
    assert step_stride(1000) == 10
    assert [e["data"]["step"] for e in step_events] == [1, *range(10, 1001, 10)]  # ~100 for 1000 steps
    assert set(e["level"] for e in events) == {"info", "warning"}

    epoch = events[3]
    assert epoch["data"] == {"fit": "fold 1/2", "epoch": 1, "epochs": 2, "trainLoss": 0.0616, "valMse": 0.0599}
    assert epoch["message"] == "Reward model (fold 1/2) epoch 1/2: train loss 0.0616, validation MSE 0.0599"
    assert datetime.fromisoformat(epoch["createdAt"]) == started + timedelta(seconds=4)
    assert events[7]["data"] == {"validation": "2-fold cross-validation", "valMse": 0.0254, "valMseBaseline": 0.0932,
                                 "pearson": 0.9052, "spearman": None, "bestEpoch": 2, "epochs": 2}
    assert events[2] == {"id": 3 * STAGE + 1, "createdAt": events[2]["createdAt"], "level": "warning",
                         "type": "warning", "message": "5 of 30 feedback records await review and are not used",
                         "data": {}}
    tenth = step_events[1]
    assert tenth["data"] == {"step": 10, "maxSteps": 1000, "rewardMean": 0.501, "rewardStd": 0.1, "kl": 0.01,
                             "loss": 0.3}
    assert tenth["message"] == "PPO step 10/1000: reward 0.501, KL 0.010, loss 0.300"
    assert datetime.fromisoformat(tenth["createdAt"]) == started + timedelta(seconds=len(REWARD_MODEL_LOG) + 9)
    evaluation, promotion, end = events[-3:]
    assert evaluation["data"]["better"] is True and evaluation["data"]["winRateCi"] == [0.6, 0.8]
    assert evaluation["message"] == "Evaluation: better than base model n3-tiny"
    assert promotion["data"]["promoted"] is True and promotion["message"].startswith("Promoted: win rate 0.70")
    assert end["data"] == {"status": "trained", "step": 1000, "error": None, "durationSeconds": 3000.0}
    assert (end["level"], end["message"]) == ("info", "Trained: 1000 steps")
    assert datetime.fromisoformat(end["createdAt"]) == version.finished_at
    queued = events[0]
    assert queued["data"] == {"maxSteps": 1000, "algorithm": "ppo", "baseModel": "n3-tiny", "initFrom": None}
    assert events[1]["data"] == {"feedbackCount": 30}


def test_pages_follow_after_and_limit(api, models_dir):
    version = make_version("bot", 1, "trained", max_steps=20, step=20, started_at=timezone.now(),
                           finished_at=timezone.now())
    add_steps(version, steps(20))
    everything = api.get(events_url("bot", "v1")).json()["results"]
    assert len(everything) == 1 + 1 + 20 + 1  # queued, started, every step of a short run, end

    first = api.get(events_url("bot", "v1", limit=5)).json()
    assert [e["id"] for e in first["results"]] == [e["id"] for e in everything[:5]]
    assert first["next"].endswith(f"/api/policies/bot/v1/events?after={everything[4]['id']}&limit=5")
    seen = list(first["results"])
    link = first["next"]
    while link:
        page = api.get(link).json()
        seen += page["results"]
        link = page["next"]
    assert seen == everything
    after_last = api.get(events_url("bot", "v1", after=everything[-1]["id"])).json()
    assert after_last == {"next": None, "results": []}


def test_a_poller_sees_new_events_only_above_the_last_id_even_while_the_log_runs_ahead_of_the_steps(api, models_dir):
    """The log is written at each step, the step rows every N3_METRICS_INTERVAL s: an event logged after a step the
    database has not stored yet waits for it, so that no event ever appears below an id a poller has passed."""
    started = timezone.now() - timedelta(minutes=5)
    version = make_version("bot", 1, "running", max_steps=10, step=4, started_at=started,
                           metrics={"phase": "policy"})
    add_steps(version, steps(4))
    log = [*REWARD_MODEL_LOG, *(step_line(s, 10) for s in range(1, 7)), "WARNING KL 25.3 above target"]
    write_log(version, started, log)

    first = api.get(events_url("bot", "v1")).json()["results"]
    assert [e["data"].get("step") for e in first if e["type"] == "policy.step"] == [1, 2, 3, 4]
    assert first[-1]["type"] == "policy.step"  # the warning after step 6 waits for step 6
    last_id = first[-1]["id"]

    PolicyVersion.objects.filter(pk=version.pk).update(step=6)
    add_steps(version, steps(6)[4:])
    new = api.get(events_url("bot", "v1", after=last_id)).json()["results"]
    assert [(e["type"], e["data"].get("step")) for e in new] == [
        ("policy.step", 5), ("policy.step", 6), ("warning", None)]
    assert new[-1]["message"] == "KL 25.3 above target" and new[-1]["level"] == "warning"

    PolicyVersion.objects.filter(pk=version.pk).update(
        status="failed", finished_at=timezone.now(), error="Training diverged: loss is NaN at step 7")
    write_log(version, started, [*log, "ERROR Training failed: NonFiniteError: loss is NaN"])
    ended = api.get(events_url("bot", "v1", after=new[-1]["id"])).json()["results"]
    assert [(e["type"], e["level"], e["message"]) for e in ended] == [
        ("end", "error", "Failed: Training diverged: loss is NaN at step 7")]
    assert ended[0]["data"]["status"] == "failed" and ended[0]["data"]["error"].startswith("Training diverged")


def test_a_version_cancelled_while_queued_and_one_without_its_log(api, models_dir):
    make_version("bot", 1, "cancelled", max_steps=10, finished_at=timezone.now(), error="Cancelled before it started")
    events = api.get(events_url("bot", "v1")).json()["results"]
    assert [(e["type"], e["level"]) for e in events] == [("queued", "info"), ("end", "warning")]
    assert events[1]["data"] == {"status": "cancelled", "step": 0, "error": "Cancelled before it started",
                                 "durationSeconds": None}

    version = make_version("bot", 2, "trained", max_steps=3, step=3, started_at=timezone.now(),
                           finished_at=timezone.now(), metrics={"evaluation": {"skipped": "eval_fraction is 0"}})
    add_steps(version, steps(3))
    events = api.get(events_url("bot", "v2")).json()["results"]  # no training.log: what the database holds
    assert [e["type"] for e in events] == ["queued", "started", "policy.step", "policy.step", "policy.step",
                                           "evaluation", "end"]
    assert [e["createdAt"] for e in events if e["type"] == "policy.step"] == [None] * 3
    assert events[-2]["message"] == "Evaluation skipped: eval_fraction is 0"


@pytest.mark.parametrize("path, status, fragment", [
    ("/api/policies/ghost/v1/events", 404, "Agent 'ghost' not found"),
    ("/api/policies/bot/v9/events", 404, "Version 'v9' of agent 'bot' not found"),
    ("/api/policies/bot/v1/events?after=x", 400, "after"),
    ("/api/policies/bot/v1/events?limit=0", 400, "limit"),
    ("/api/policies/bot/v1/events?cursor=1", 400, "cursor"),
])
def test_bad_requests(api, path, status, fragment):
    make_version("bot", 1, "queued")
    response = api.get(path)
    assert response.status_code == status, response.content
    body = response.json()
    assert fragment in body["detail"] or fragment in body.get("errors", {}), body


def test_events_need_the_permission_that_the_version_needs(anonymous, api_without_permissions, settings):
    make_version("bot", 1, "failed", error=f"Could not read {settings.MODELS_DIR}/bot/v1/x")
    assert anonymous.get(events_url("bot", "v1")).status_code == 401
    assert api_without_permissions.get(events_url("bot", "v1")).status_code == 403
    settings.N3_PUBLIC_READ = True
    end = anonymous.get(events_url("bot", "v1")).json()["results"][-1]
    assert end["data"]["error"] == "Could not read MODELS_DIR/bot/v1/x"  # no server paths for anonymous readers


# --- a real run ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_two_step_run_lists_its_events_from_start_to_end(api, models_dir, settings):
    from feedback import services as feedback_services
    from training import services
    from training.jobs import run, transitions

    settings.N3_METRICS_INTERVAL = 0.0
    feedback_services.record_feedback_batch(agent_name="bot", records=feedback_records(12))
    agent = Agent.objects.get(name="bot")
    agent.default_training_config = LEAN_CONFIG
    agent.save()
    config = services.resolve_training_config(agent=agent, overrides={"max_steps": 2})
    version = services.queue_training(agent=agent, config=config)
    transitions.claim_version(version_id=version.pk)
    assert run.run_version(version_id=version.pk).status == "trained"

    events = api.get(events_url("bot", "v1")).json()["results"]

    types = [e["type"] for e in events]
    assert types[:2] == ["queued", "started"] and types[-1] == "end"
    assert "reward_model.epoch" in types and "reward_model.fitted" in types
    assert [e["data"]["step"] for e in events if e["type"] == "policy.step"] == [1, 2]
    assert all(e["createdAt"] for e in events)  # the steps timed by their log lines
    assert types.index("reward_model.fitted") < types.index("policy.step") < types.index("evaluation") < len(types) - 1
    assert events[types.index("evaluation")]["data"]["verdict"]  # LEAN_CONFIG holds prompts out: evaluated
    assert events[-1]["data"]["status"] == "trained"
    body = api.get("/api/policies/bot/v1").json()
    assert body["estimatedFinish"] is None and body["elapsedSeconds"] > 0
