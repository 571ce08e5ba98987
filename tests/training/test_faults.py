"""Faults during training: every one ends the version `failed` with a reason a person can act on, never leaves a
directory that looks like a finished version, and never trains a version twice.

- a training process killed with SIGKILL (the out-of-memory killer), and the agent's next training afterwards;
- the whole qcluster killed with SIGKILL mid-run (every process, the training too), then a new qcluster;
- a loss that turns NaN (a learning rate far too high);
- a MODELS_DIR where the version's directory cannot be made;
- a full disk: MODELS_DIR on a 1 MiB tmpfs mounted for the training process alone (a user+mount namespace,
  ``unshare -rm``), so the kernel itself answers ENOSPC; skipped where namespaces are not allowed.

The process tests use a Site (tests/sites.py): their own SQLite file, real ``manage.py`` processes.
"""
from __future__ import annotations

import base64
import os
import pickle
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from feedback import services as feedback_services
from n3_server.rlhf.results import RESULTS_FILE
from policies.models import Agent
from tests.sites import LEAN_CONFIG, children_of, descendants, feedback_records, make_site, tmp_models_dir
from training import services
from training.jobs import run, transitions

LEFTOVERS = ("policy", "reward_model", ".policy.tmp", ".reward_model.tmp", RESULTS_FILE)


def assert_no_finished_looking_outputs(version_dir: Path) -> None:
    """Nothing of an unfinished run but its training.log: no results file, no model directories, no temporaries."""
    left = sorted(p.name for p in version_dir.iterdir()) if version_dir.exists() else []
    assert not set(left) & set(LEFTOVERS), left


# --- in this process, on pytest-django's database --------------------------------------------------------------


@pytest.fixture
def models_dir(tmp_path, settings):
    settings.MODELS_DIR = tmp_models_dir(tmp_path)
    settings.N3_METRICS_INTERVAL = 0.0
    return settings.MODELS_DIR


def queued_version(max_steps: int = 2, **overrides):
    feedback_services.record_feedback_batch(agent_name="bot", records=feedback_records(12))
    agent = Agent.objects.get(name="bot")
    config = services.resolve_training_config(
        agent=agent, overrides={**LEAN_CONFIG, "max_steps": max_steps, **overrides}
    )
    version = services.queue_training(agent=agent, config=config, enqueue=False)
    assert transitions.claim_version(version_id=version.pk)
    return version


@pytest.mark.django_db
@pytest.mark.slow
def test_a_loss_that_turns_nan_fails_the_version_cleanly(models_dir):
    version = queued_version(max_steps=20, learning_rate=1e30)

    version = run.run_version(version_id=version.pk)

    assert version.status == "failed", (version.status, version.error)
    assert "nan" in version.error.lower() and "Traceback" not in version.error, version.error
    assert f"Try a lower learning_rate (now {1e30:g})" in version.error, version.error
    assert version.finished_at is not None and version.step < 20
    assert_no_finished_looking_outputs(models_dir / "bot" / "v1")


@pytest.mark.django_db
@pytest.mark.slow
def test_a_version_directory_that_cannot_be_made_fails_the_version_naming_the_path(models_dir):
    # A regular file where the agent's directory should be: mkdir fails for root too (chmod would not stop root).
    (models_dir / "bot").write_text("not a directory")
    version = queued_version()

    version = run.run_version(version_id=version.pk)

    assert version.status == "failed"
    assert str(models_dir / "bot") in version.error, version.error
    print(version.error)
    assert "Traceback" not in version.error
    assert (models_dir / "bot").read_text() == "not a directory"  # nothing written over it


# --- real processes on a Site ----------------------------------------------------------------------------------


def run_job(site, pk: int, timeout: float = 300) -> str:
    """Site.start_job, waited for; returns its output."""
    job = site.start_job(pk)
    try:
        return job.communicate(timeout=timeout)[0]
    finally:
        job.kill()


def training_starts(site, number: int) -> int:
    """How many times a training began in the version's directory (the trainer logs one line per start)."""
    log = site.models_dir / "bot" / f"v{number}" / "training.log"
    return sum(
        " into " in line and line.split(" ", 3)[-1].startswith("Training ") for line in log.read_text().splitlines()
    )


@pytest.mark.slow
def test_a_killed_training_process_fails_its_version_and_the_next_training_works(tmp_path):
    site = make_site(tmp_path)
    pk = site.queue_version(max_steps=500)
    job = site.start_job(pk)
    try:
        site.wait_for(pk, lambda v: v["step"] >= 1, timeout=180)
        (child,) = children_of(job.pid)
        os.kill(child, signal.SIGKILL)
        output, _ = job.communicate(timeout=60)
    finally:
        job.kill()

    killed = site.version(pk)
    assert killed["status"] == "failed", output
    assert killed["error"].startswith("The training process was killed by SIGKILL"), killed["error"]
    assert_no_finished_looking_outputs(site.models_dir / "bot" / "v1")

    # The agent is not stuck: its next version trains, into its own directory.
    pk2 = site.queue_version(max_steps=2)
    output = run_job(site, pk2)
    trained = site.version(pk2)
    assert (trained["number"], trained["status"], trained["step"]) == (2, "trained", 2), output
    assert (
        (site.models_dir / "bot" / "v2" / RESULTS_FILE).exists()
        and (site.models_dir / "bot" / "v2" / "policy").is_dir()
    )
    assert site.version(pk)["status"] == "failed"
    assert_no_finished_looking_outputs(site.models_dir / "bot" / "v1")


@pytest.mark.slow
def test_a_qcluster_killed_mid_run_leaves_a_failed_version_that_is_never_trained_again(tmp_path):
    site = make_site(tmp_path, N3_HEARTBEAT_TIMEOUT="4", N3_SWEEP_INTERVAL="2")
    pk = site.queue_version(max_steps=500)
    cluster = site.popen("qcluster")
    try:
        running = site.wait_for(pk, lambda v: v["step"] >= 1, timeout=180)
        # Every process of the cluster, the training process too (as a machine losing power or `docker kill`).
        doomed = [cluster.pid, *descendants(cluster.pid)]
        assert len(doomed) >= 4, doomed  # cluster, sentinel, workers..., training
        for pid in doomed:
            os.kill(pid, signal.SIGKILL)
        cluster.communicate(timeout=30)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(") ")[1][:1]
                  for pid in doomed) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        cluster.kill()

    orphaned = site.version(pk)
    assert orphaned["status"] == "running"  # nobody was left to record anything
    with sqlite3.connect(site.db_path) as db:
        # Its job still sits in the ORM queue, locked by the dead worker. django-q2 re-delivers a locked job once
        # `retry` seconds have passed (N3_TRAINING_TIMEOUT + 600): make that moment now.
        assert db.execute("SELECT COUNT(*) FROM django_q_ormq").fetchone() == (1,)
        db.execute("UPDATE django_q_ormq SET lock = '2000-01-01 00:00:00'")

    killed_at = time.monotonic()
    cluster = site.popen("qcluster")
    try:
        failed = site.wait_for(pk, lambda v: v["status"] != "running", timeout=60)
        swept_after = time.monotonic() - killed_at
        deadline = time.monotonic() + 60
        while True:  # the re-delivered job has run and recorded its result
            with sqlite3.connect(site.db_path) as db:
                results = db.execute(
                    "SELECT result FROM django_q_task WHERE func = 'training.tasks.run_policy_version'"
                ).fetchall()
            if results or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        cluster.send_signal(signal.SIGTERM)
        log, _ = cluster.communicate(timeout=60)

    assert failed["status"] == "failed" and "no heartbeat" in failed["error"], failed
    assert swept_after < 60
    # Never trained twice: the re-delivered job found the version taken and did nothing.
    results = [pickle.loads(base64.b64decode(result)) for (result,) in results]  # django-q2 stores them pickled
    assert len(results) == 1 and results[0].startswith(f"not run: version {pk} is "), results
    assert (failed["started_at"], failed["step"]) == (running["started_at"], orphaned["step"])
    assert training_starts(site, 1) == 1
    assert "[bot v1]" not in log, log[-3000:]
    assert_no_finished_looking_outputs(site.models_dir / "bot" / "v1")


def _namespaces_allowed() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _namespaces_allowed(),
                    reason="needs unprivileged user+mount namespaces (unshare -rm) for a tiny tmpfs")
def test_a_full_disk_fails_the_version_with_the_reason_and_leaves_no_partial_model(tmp_path):
    """MODELS_DIR/bot is a 512 KiB tmpfs for the training process alone: the reward model (~80 KB) fits, the
    policy (~1.2 MB) does not, so the save fails with the kernel's own ENOSPC. Inside the namespace, after the
    training exits, the launcher prints what was left in the version directory (the tmpfs vanishes with it)."""
    script = (
        'mkdir -p "$MODELS_DIR/bot" && mount -t tmpfs -o size=512k tmpfs "$MODELS_DIR/bot" || exit 99; '
        f'{shlex.quote(sys.executable)} "$@"; rc=$?; '
        'echo "LEFT IN v1: [$(ls -A "$MODELS_DIR/bot/v1" | tr "\\n" " ")]"; exit $rc'
    )
    site = make_site(tmp_path, N3_TRAINING_LAUNCHER=f"unshare -rm sh -c {shlex.quote(script)} sh")
    pk = site.queue_version(max_steps=2)

    output = run_job(site, pk)

    version = site.version(pk)
    assert version["status"] == "failed", output[-3000:]
    assert "No space left on device" in version["error"], version["error"]
    assert "Traceback" not in version["error"]
    left = output.rsplit("LEFT IN v1: [", 1)[1].split("]")[0].split()  # (the first mention is the logged command)
    assert left == ["training.log"], output[-3000:]  # no policy/, reward_model/, temporaries or results


@pytest.mark.django_db
@pytest.mark.slow
def test_a_child_printing_nul_bytes_before_dying_still_gets_its_version_failed_portably(models_dir, settings):
    """The error quotes the child's last output. PostgreSQL refuses NUL in text, so an error carrying one would make
    the UPDATE that fails the version raise, leaving it running until the sweep: the NUL is escaped instead."""
    from training import tasks

    settings.N3_TRAINING_LAUNCHER = "sh -c 'printf \"binary\\000garbage\\n\"; exit 3'"
    feedback_services.record_feedback_batch(agent_name="bot", records=feedback_records(12))
    agent = Agent.objects.get(name="bot")
    version = services.queue_training(
        agent=agent, config=services.resolve_training_config(agent=agent, overrides=LEAN_CONFIG)
    )

    assert tasks.run_policy_version(version.pk) == "bot v1: failed"

    version.refresh_from_db()
    assert version.error.startswith("The training process exited with code 3.")
    assert "\x00" not in version.error and "binary\\x00garbage" in version.error, repr(version.error)
