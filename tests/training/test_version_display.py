"""A version's page while it trains (issue 13, defects 5 and 6): round chart axes with whole-number step ticks, a
smoothed ETA that says "estimating…" until it means something, the reward model's own progress during its phase,
one status label for the page and progress.json, and a KL that cannot be negative."""
import math
import time
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from n3_server.rlhf.progress import Progress
from policies.models import Agent, PolicyVersion
from tests.sites import add_steps
from training.admin.charts import line_chart, nice_axis
from training.jobs import progress as progress_module
from training.jobs.progress import JobProgress, mean_pace
from training.jobs.status import eta_seconds


# --- axes ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("low, high, kwargs, expected", [
    # steps: whole numbers only, never 1.2 / 2.5
    (1, 3, {"integer": True}, (1, 3, [1, 2, 3])),
    (1, 7, {"integer": True}, (0, 8, [0, 2, 4, 6, 8])),
    (1, 40, {"integer": True}, (0, 40, [0, 10, 20, 30, 40])),
    (1, 1, {"integer": True}, (1, 2, [1, 2])),
    (1, 5000, {"integer": True}, (0, 5000, [0, 1000, 2000, 3000, 4000, 5000])),
    # rewards in 0..1: round bounds from the data, never past 1 (nor below 0)
    (0.3, 0.9, {"domain": (0, 1)}, (0.2, 1.0, [0.2, 0.4, 0.6, 0.8, 1.0])),
    (0.05, 0.98, {"domain": (0, 1)}, (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])),
    (0.5, 0.6, {"count": 4, "domain": (0, 1)}, (0.5, 0.6, [0.5, 0.55, 0.6])),  # 1, 2, 5 apart: no 0.525
    (0.5, 0.5, {"domain": (0, 1)}, (0.4, 0.6, [0.4, 0.45, 0.5, 0.55, 0.6])),
    (0.01, 0.2, {"domain": (0, None)}, (0.0, 0.2, [0.0, 0.05, 0.1, 0.15, 0.2])),
    # data outside the domain are not hidden (RLOO's k1 KL can dip below 0)
    (-0.107, 0.4, {"domain": (0, None)}, (-0.2, 0.4, [-0.2, 0.0, 0.2, 0.4])),
    (0.38, 2.1, {}, (0.0, 2.5, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5])),
])
def test_nice_axis(low, high, kwargs, expected):
    assert nice_axis(low, high, **kwargs) == expected


def test_a_reward_chart_has_whole_step_ticks_and_stays_within_0_and_1():
    points = [(1, 0.42), (2, 0.55), (3, 0.61), (4, 0.72), (5, 0.69)]
    chart = line_chart([{"label": "v1", "css": "n3-reward", "points": points}], refs=[(0.7, "target 0.7")],
                       domain=(0.0, 1.0))
    assert [t["label"] for t in chart["x_ticks"]] == ["1", "2", "3", "4", "5"]
    assert [t["label"] for t in chart["y_ticks"]] == ["0.4", "0.5", "0.6", "0.7", "0.8"]
    assert chart["y_ticks"][0]["y"] == chart["bottom"] and chart["y_ticks"][-1]["y"] == chart["top"]


# --- ETA ----------------------------------------------------------------------------------------------------------
def test_mean_pace_is_the_mean_over_the_window():
    assert mean_pace([(4, 100.0)]) is None
    assert mean_pace([(4, 100.0), (5, 103.5), (7, 109.0)]) == 3.0  # 9 s over 3 steps, a slow one included


@pytest.mark.parametrize("phase_progress, now, expected", [
    (None, 0.0, None),
    # estimating…: fewer than 3 steps timed (and under 30 s of them)
    ({"step": 2, "total": 40, "pace": 3.0, "timed": 1, "at": 1000.0}, 1000.0, None),
    ({"step": 3, "total": 40, "pace": 3.0, "timed": 2, "at": 1000.0}, 1000.0, None),
    # from 3 steps timed: 37 steps left at 3 s, counting down between steps
    ({"step": 4, "total": 40, "pace": 3.0, "timed": 3, "at": 1000.0}, 1000.0, 108.0),
    ({"step": 4, "total": 40, "pace": 3.0, "timed": 3, "at": 1000.0}, 1002.0, 106.0),
    # the step in progress is late: no less than the whole steps after it
    ({"step": 4, "total": 40, "pace": 3.0, "timed": 3, "at": 1000.0}, 1010.0, 105.0),
    # slow steps: one of 40 s is enough to estimate
    ({"step": 2, "total": 10, "pace": 40.0, "timed": 1, "at": 1000.0}, 1000.0, 320.0),
    ({"step": 10, "total": 10, "pace": 3.0, "timed": 9, "at": 1000.0}, 1000.0, 0.0),
])
def test_eta_seconds(phase_progress, now, expected):
    assert eta_seconds(phase_progress, now=now) == expected


@pytest.mark.django_db
def test_the_eta_follows_the_recent_pace_not_the_last_step(monkeypatch):
    """Steps at 3 s, then one slow step of 12 s: the pace over the window moves a little, not four-fold."""
    clock = iter([1000.0 + 3 * i for i in range(11)] + [1042.0])
    monkeypatch.setattr(progress_module, "wall_clock", lambda: next(clock))
    job = JobProgress(0, interval=math.inf)
    for step in range(1, 13):
        job(Progress(phase="policy", step=step, total=40, metrics={"step": step}))
    assert job.phase_progress["timed"] == 10 and job.phase_progress["pace"] == 3.9  # (1042 - 1003) / 10
    assert eta_seconds(job.phase_progress, now=1042.0) == pytest.approx(3.9 * 28)


# --- the page and progress.json -----------------------------------------------------------------------------------
@pytest.fixture
def engineer(django_user_model):
    return django_user_model.objects.create_superuser("eng", password="pw")


def get_json(user, version) -> dict:
    client = Client()
    client.force_login(user)
    return client.get(reverse("admin:policies_policyversion_progress", args=[version.pk])).json()


@pytest.mark.django_db
def test_the_reward_model_phase_shows_its_batches_and_epoch(engineer, monkeypatch):
    agent = Agent.objects.create(name="support")
    version = PolicyVersion.objects.create(agent=agent, number=1, status="running", max_steps=40,
                                           started_at=timezone.now() - timedelta(seconds=20))
    clock = iter([1000.0, 1002.0, 1004.0, 1006.0])
    monkeypatch.setattr(progress_module, "wall_clock", lambda: next(clock))
    job = JobProgress(version.pk, interval=0)
    job(Progress(phase="reward_model", step=1, total=30, metrics={"loss": 0.3, "epoch": 1}))
    data = get_json(engineer, version)
    assert (data["statusLabel"], data["done"], data["total"], data["unit"], data["phaseDetail"]) == (
        "Running", 1, 30, "reward-model batches", "epoch 1")
    assert data["eta"] == "estimating…" and data["etaSeconds"] is None

    for step in (12, 13, 14):
        job(Progress(phase="reward_model", step=step, total=30, metrics={"loss": 0.2, "epoch": 2}))
    data = get_json(engineer, version)
    assert (data["done"], data["percent"], data["phaseDetail"]) == (14, 46.7, "epoch 2")
    assert data["etaLabel"] == "remaining (reward model, estimate)"
    # 6 s for 13 batches: 0.462 s each; 16 left, the one in progress long over (its report's clock is in the past)
    assert (data["etaSeconds"], data["eta"]) == (7, "0m 07s")


@pytest.mark.django_db
def test_the_page_and_progress_json_say_the_same_status_and_draw_whole_step_ticks(engineer):
    agent = Agent.objects.create(name="demo_agent")
    version = PolicyVersion.objects.create(agent=agent, number=1, status="running", max_steps=40,
                                           started_at=timezone.now(), metrics={"phase": "policy"},
                                           config={"algorithm": "ppo"})
    add_steps(version, [{"step": s, "objective/scores": 0.4 + s / 20, "objective/kl": 0.01 * s,
                         "loss/total": 1.0 / s} for s in (1, 2, 3)])
    client = Client()
    client.force_login(engineer)
    html = client.get(reverse("admin:policies_policyversion_change", args=[version.pk])).content.decode()
    assert 'id="n3-status-badge">Running</span>' in html
    assert get_json(engineer, version)["statusLabel"] == "Running"  # what version.js writes into the badge
    x_labels = [line.split(">")[1].split("<")[0] for line in html.splitlines() if 'text-anchor="middle"' in line]
    assert x_labels == ["1", "2", "3"] * 3  # three charts, whole steps only
    assert "k3 estimate (never negative)" in html
    # named once in the page's headings: the status panel's, not Django's subtitle as well
    assert html.count("<h2>demo_agent v1") == 1 and "demo_agent v1</h2>" not in html


def test_the_reported_kl_is_never_negative_where_k1_is():
    torch = pytest.importorskip("torch")
    from n3_server.rlhf.ppo import compute_rewards, kl_k3  # noqa: PLC0415  (torch only for this test)

    logprobs = torch.log(torch.tensor([[0.5, 0.25, 0.3]]))
    ref_logprobs = torch.log(torch.tensor([[0.25, 0.5, 0.9]]))
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding
    _, k1 = compute_rewards(torch.tensor([0.0]), logprobs, ref_logprobs, mask, 0.1)
    k3 = kl_k3(logprobs, ref_logprobs, mask)
    assert k1[0, 1].item() == pytest.approx(-math.log(2))  # k1 can be negative per token
    assert k3[0].tolist() == pytest.approx([0.5 - 1 + math.log(2), 2 - 1 - math.log(2), 0.0])
    assert (k3 >= 0).all()


@pytest.mark.slow
def test_a_real_run_reports_each_phase_and_a_pace(tmp_path):
    """A version trained by its job, as a worker runs it, read the way the page reads it: the reward model's batches
    and epoch while it fits, then policy steps with a measured pace, and no phase progress left to a trained version's
    API body."""
    from tests.sites import LEAN_CONFIG, make_site  # noqa: PLC0415  (only the slow test starts a site)

    site = make_site(tmp_path, N3_METRICS_INTERVAL="0")
    config = {**LEAN_CONFIG, "reward_model_config": {"num_epochs": 2, "batch_size": 2}}
    pk = site.queue_version(max_steps=6, config=config)
    job = site.start_job(pk)
    seen: dict[str, dict] = {}
    try:
        while job.poll() is None:
            metrics = site.version(pk)["metrics"]
            if isinstance(metrics.get("phase_progress"), dict):
                seen[metrics["phase"]] = metrics["phase_progress"]  # the latest of each phase
            time.sleep(0.01)
    finally:
        output = job.communicate()[0]
    row = site.version(pk)
    assert row["status"] == "trained", output
    reward_model, policy = seen["reward_model"], seen["policy"]
    assert reward_model["total"] > 0 and reward_model["epoch"] in (1, 2)
    assert policy["total"] == 6 and policy["step"] >= 4 and policy["timed"] >= 3 and policy["pace"] > 0
    assert eta_seconds(policy, now=policy["at"]) == pytest.approx(policy["pace"] * (6 - policy["step"]))
    assert "phase_progress" not in row["metrics"]  # a finished version keeps its results only
