"""Several training processes under a launcher (n3_server/rlhf/distributed.py), for real: two CPU processes that
talk over gloo, started by `accelerate launch --multi_gpu` (what N3_TRAINING_LAUNCHER documents; it takes the
multi-process path on a machine without GPUs too) or by torchrun (torch elastic, which accelerate runs underneath).

The job runs in a Site (its own SQLite file) with N3_TRAINING_LAUNCHER set, through the job supervisor
(training.tasks.run_policy_version) exactly as a django-q2 worker runs it. The launcher is torchrun plus a small
hook script (written here) that wraps the PPO entry point: rank 1 saves its merged policy weights after training,
to be compared with what rank 0 saved; with N3_TEST_FAIL_RANK set, that rank fails before PPO starts.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from n3_server.rlhf import distributed
from tests.sites import LEAN_CONFIG, ROOT, feedback_records, free_port, make_site

TORCHRUN = Path(sys.executable).with_name("torchrun")
ACCELERATE = Path(sys.executable).with_name("accelerate")

HOOK = """
import os, runpy, sys
sys.path.insert(0, {root!r})
import torch
from n3_server.rlhf import trainer

ppo = trainer.ALGORITHMS["ppo"]


def ppo_then_save_weights(**kwargs):
    rank = int(os.environ["RANK"])
    if os.environ.get("N3_TEST_FAIL_RANK") == str(rank):
        raise RuntimeError(f"rank {{rank}} fails on purpose")
    history = ppo(**kwargs)
    if rank:
        merged = kwargs["policy"].merge_and_unload()
        weights = {{k: v.detach().cpu().clone() for k, v in merged.state_dict().items()}}
        torch.save(weights, os.environ["N3_TEST_WEIGHTS"] + f".rank{{rank}}")
    return history


trainer.ALGORITHMS["ppo"] = ppo_then_save_weights
sys.argv = sys.argv[1:]  # manage.py train_policy --version-id N
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A Site whose jobs run under torchrun (2 processes), with one queued version per scenario:
    agents ok, bad, stop."""
    root = tmp_path_factory.mktemp("launched")
    hook = root / "rank_hook.py"
    hook.write_text(HOOK.format(root=str(ROOT)))
    site = make_site(
        root, N3_TRAINING_LAUNCHER=f"{TORCHRUN} --standalone --nproc_per_node 2 {hook}",
        N3_TEST_WEIGHTS=str(root / "weights"), OMP_NUM_THREADS="1", N3_CANCEL_GRACE="120",
    )
    code = f"""
from feedback.services import record_feedback_batch
from policies.models import Agent
from training import services
for name in ("ok", "bad", "stop"):
    record_feedback_batch(agent_name=name, records={feedback_records()!r})
    agent = Agent.objects.get(name=name)
    # fall_back_to_start off: these runs are too small to be judged better, and what is checked is the trained weights
    config = services.resolve_training_config(
        agent=agent, overrides={{**{LEAN_CONFIG!r}, "max_steps": 2, "fall_back_to_start": False}}
    )
    print(name, services.queue_training(agent=agent, config=config).pk)
"""  # one shell for all three: each manage.py start loads torch
    site.pks = dict(line.split() for line in site.shell(code).strip().splitlines()[-3:])
    site.hook = hook
    return site


def run_job(site, agent: str, **env: str) -> tuple[str, dict, float]:
    """Run the agent's job as a django-q2 worker would; (its outcome, the version's row, seconds it took)."""
    pk = int(site.pks[agent])
    code = f"from training.tasks import run_policy_version; print(run_policy_version({pk}))"
    started = time.monotonic()
    outcome = dataclasses.replace(site, env={**site.env, **env}).shell(code).strip().splitlines()[-1]
    return outcome, site.version(pk), time.monotonic() - started


@pytest.mark.slow
def test_two_processes_train_one_version_and_end_with_identical_weights(site):
    launcher = (
        f"{ACCELERATE} launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no "
        f"--dynamo_backend no --main_process_port {free_port()} {site.hook}"
    )
    outcome, row, _ = run_job(site, "ok", N3_TRAINING_LAUNCHER=launcher)

    assert (outcome, row["status"]) == ("ok v1: trained", "trained"), row["error"]
    steps = site.query("SELECT step FROM policies_trainingstep WHERE version_id = ? ORDER BY step", (row["id"],))
    assert row["step"] == 2 and steps == [(1,), (2,)]
    # One complete version, written once (by rank 0), nothing left under a temporary name.
    assert [p.name for p in (site.models_dir / "ok").iterdir()] == ["v1"]
    version_dir = site.models_dir / "ok" / "v1"
    assert sorted(p.name for p in version_dir.iterdir()) == [
        "policy", "reward_model", "training.log", "training_results.json"
    ]
    log = (version_dir / "training.log").read_text()
    assert "2 processes, data parallel: batch_size 2 per process, 4 rollouts per step" in log
    assert log.count("ppo step 1/2") == 1 and log.count("ppo step 2/2") == 1
    # Rank 1 ends with exactly the weights rank 0 saved (its rollouts differed: seed + rank; gradients averaged).
    saved = load_file(version_dir / "policy" / "model.safetensors")
    rank1 = torch.load(site.root / "weights.rank1", weights_only=True)
    assert saved and all(torch.equal(saved[key], rank1[key]) for key in saved)
    base = load_file(site.models_dir / "_base" / "n3-tiny-random" / "model.safetensors")
    assert any(not torch.equal(saved[key], base[key]) for key in saved if key in base)  # and training moved them


@pytest.mark.slow
def test_a_failing_process_fails_the_version_and_stops_the_others(site):
    outcome, row, seconds = run_job(site, "bad", N3_TEST_FAIL_RANK="1")

    assert (outcome, row["status"]) == ("bad v1: failed", "failed")
    # Rank 0's collective fails when its partner's connection closes, or the launcher stops it first.
    reasons = ("remote worker crashing", "another one failed", "The training process exited with code 1")
    assert any(reason in row["error"] for reason in reasons), row["error"]
    assert seconds < 90  # rank 0 did not wait on a partner that is gone (gloo's own timeout is 30 min)
    version_dir = site.models_dir / "bad" / "v1"
    assert not (version_dir / "training_results.json").exists() and not (version_dir / "policy").exists()


@pytest.mark.slow
def test_a_cancel_seen_by_rank_0_stops_every_process_at_the_same_step(site):
    # Requested before the job starts: rank 0's first progress write (reward model step 1) reads it and stops;
    # the job leaves the processes N3_CANCEL_GRACE=120 s, so an ending in time is the processes' own.
    with contextlib.closing(sqlite3.connect(site.db_path, timeout=20)) as db, db:
        db.execute("UPDATE policies_policyversion SET cancel_requested = 1 WHERE id = ?", (int(site.pks["stop"]),))
    outcome, row, seconds = run_job(site, "stop")

    assert (outcome, row["status"]) == ("stop v1: cancelled", "cancelled"), row["error"]
    assert "reward_model phase (step 1 of" in row["error"]
    assert seconds < 90
    assert not (site.models_dir / "stop" / "v1" / "reward_model").exists()


def test_in_a_single_process_the_helpers_change_nothing():
    assert (distributed.num_processes(), distributed.process_index(), distributed.is_main_process()) == (1, 0, True)
    x = torch.arange(3.0)
    assert distributed.gather(x) is x
    assert distributed.mean({"a": 1.5}) == {"a": 1.5}
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    distributed.average_gradients([p])
    distributed.broadcast_parameters([p])
    assert p.grad.tolist() == [3.0, 3.0] and p.tolist() == [1.0, 1.0]
    assert distributed.should_stop(lambda: True) and not distributed.should_stop(lambda: None)
    with pytest.raises(KeyError):
        distributed.should_stop(lambda: {}["cancelled"])
