"""Scale-out, for real (issue 14, item 2): PostgreSQL, two gunicorn instances and two ``qcluster`` workers (separate
process sessions, as on separate machines, sharing one MODELS_DIR), with django-q2's Redis broker and with its ORM
broker on the same PostgreSQL.

While 8 keep-alive clients post 2,000 feedback records across 3 agents through both gunicorns (some retrying a
request as a client whose timeout fired would), training is queued for each agent, two versions each, each pair
from two clients at the same moment through different gunicorns. One version trains for long; once it has taken a
step, its whole ``qcluster`` is SIGKILLed (main process, sentinel, pusher, monitor, worker and the training process,
as a machine losing power). Then:

- every feedback record is stored exactly once, for its agent, with the content sent; no answer is a 5xx;
- each agent has versions 1 and 2 and nothing else; no version was trained twice (one training start in its log,
  one run of its job that trained, TrainingStep rows 1..max_steps once each);
- the killed version ends ``failed`` with the sweep's "no heartbeat" reason within the heartbeat window
  (N3_HEARTBEAT_TIMEOUT + N3_SWEEP_INTERVAL + slack), its unfinished outputs removed;
- every other version ends ``trained``; those not trained before the kill are trained by the surviving worker.

``pytest -s`` prints the figures: records, requests, versions, who trained what, wall time, what the kill left.

The jobs the killed cluster had fetched ahead of its busy worker (django-q2's pusher holds one or two) are handed on
by the survivor's sweep: enqueued again with Redis, their rows unlocked with the ORM broker (training/jobs/sweep.py).
Without that, those versions stayed queued: for ever with Redis, for `retry` (hours) with the ORM broker. The last
test checks the ORM release on its own, without processes.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from feedback.services import record_feedback_batch
from policies.models import Agent, PolicyVersion
from tests.servers import postgres_database
from tests.sites import (
    LEAN_CONFIG,
    LoadResult,
    Site,
    descendants,
    feedback_load,
    feedback_records,
    kill_tree,
    make_site,
)
from training import services
from training.jobs import sweep, transitions

AGENTS = ("alpha", "beta", "gamma")
RECORDS = 2_000
CLIENTS = 8
HEARTBEAT_TIMEOUT = 8  # N3_HEARTBEAT_TIMEOUT: seconds without a heartbeat before the sweep fails a running version
SWEEP_INTERVAL = 1  # N3_SWEEP_INTERVAL
SHORT_STEPS = 2
LONG_STEPS = 5_000  # the version that is training when its worker dies (never finishes by itself in this test)
# TrainingConfig fields as the API takes them: a run of a few seconds on n3-tiny-random (LEAN_CONFIG).
LEAN = {
    "baseModel": "n3-tiny-random", "batchSize": 2, "miniBatchSize": 2, "ppoEpochs": 1, "maxNewTokens": 8,
    "rewardModelConfig": {"numEpochs": 1, "batchSize": 4},
}
PERMISSIONS = ("feedback.add_feedback", "policies.add_policyversion", "policies.view_policyversion")
FINAL = ("trained", "failed", "cancelled")


def post(base_url: str, path: str, token: str, body: dict) -> tuple[int, dict]:
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json",
                                                      "Authorization": f"Token {token}"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def versions(site: Site) -> dict[int, dict]:
    """Every version by id: agent, number, status, error, max_steps, step, started/finished/heartbeat times."""
    rows = site.query(
        "SELECT v.id, a.name, v.number, v.status, v.error, v.max_steps, v.step, v.started_at, v.finished_at, "
        "v.heartbeat_at FROM policies_policyversion v JOIN policies_agent a ON a.id = v.agent_id"
    )
    keys = ("agent", "number", "status", "error", "max_steps", "step", "started_at", "finished_at", "heartbeat_at")
    return {row[0]: dict(zip(keys, row[1:])) for row in rows}


def scored_per_agent(site: Site) -> Counter:
    return Counter(dict(site.query(
        "SELECT a.name, COUNT(*) FROM feedback_feedback f JOIN policies_agent a ON a.id = f.agent_id "
        "WHERE f.score IS NOT NULL GROUP BY a.name"
    )))


def training_starts(site: Site, agent: str, number: int) -> int:
    """How many times a training began in the version's directory (the trainer logs one line per start)."""
    log = site.models_dir / agent / f"v{number}" / "training.log"
    if not log.exists():
        return 0
    return sum(" into " in line and line.split(" ", 3)[-1].startswith("Training ")
               for line in log.read_text().splitlines())


def job_results(site: Site) -> list[str]:
    """The stored results of every training job that ran (django-q2 keeps them pickled in its Task table, whichever
    the broker)."""
    import base64  # noqa: PLC0415  (only here)
    import pickle  # noqa: PLC0415  (django-q2's own format; our rows)

    rows = site.query("SELECT result FROM django_q_task WHERE func = 'training.tasks.run_policy_version'")
    return [pickle.loads(base64.b64decode(result)) for (result,) in rows]  # noqa: S301


def handed_on_by_sweep(log: str) -> int:
    """How many jobs a worker's sweep enqueued again (Redis) or released (ORM broker), by its log."""
    count = 0
    for line in log.splitlines():
        if "WARNING training.jobs.sweep" in line and " queued again as task " in line:
            count += 1
        elif "WARNING training.jobs.sweep: Released " in line:
            count += int(line.split("Released ", 1)[1].split()[0])
    return count


def training_pid(cluster_pid: int, version_id: int) -> int | None:
    """The training process of ``version_id`` among the cluster's descendants, if it runs there."""
    for pid in descendants(cluster_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"train_policy" in argv and str(version_id).encode() in argv:
            return pid
    return None


def all_final_in(site: Site):
    """A function that returns every version once all are final (else None), for wait_until."""
    def check():
        found = versions(site)
        return found if all(v["status"] in FINAL for v in found.values()) else None
    return check


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def wait_until(predicate, *, timeout: float, what: str, poll: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


@pytest.fixture(params=["redis", "orm"])
def broker_env(request, postgres):
    """The site's environment: a fresh PostgreSQL database, and REDIS_URL (a Redis database of its own, emptied)
    for the Redis broker or nothing for the ORM broker (its queue in the same PostgreSQL)."""
    with postgres_database(postgres.url, prefix="n3_scale") as url:
        env = {"DATABASE_URL": url}
        if request.param == "redis":
            import redis as redis_client  # noqa: PLC0415  (only the Redis case needs the client)

            server = request.getfixturevalue("redis")
            env["REDIS_URL"] = f"{server.url.rpartition('/')[0]}/5"
            redis_client.from_url(env["REDIS_URL"]).flushdb()
        yield request.param, env


@pytest.mark.slow
def test_two_web_processes_and_two_workers_one_killed_lose_nothing_and_train_nothing_twice(tmp_path, broker_env):
    broker, env = broker_env
    began = time.monotonic()
    site = make_site(tmp_path, **env, N3_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT),
                     N3_SWEEP_INTERVAL=str(SWEEP_INTERVAL), N3_STALL_TIMEOUT="300")
    token = site.api_token(perms=PERMISSIONS)
    clusters = {"worker-1": site.qcluster("worker-1"), "worker-2": site.qcluster("worker-2")}
    train_answers: list[tuple[str, int, dict, float]] = []  # (agent, status, body, seconds since the load began)
    load: dict[str, LoadResult] = {}
    try:
        with site.gunicorn(workers=1, threads=4) as web1, site.gunicorn(workers=1, threads=4) as web2:
            servers = [web1.base_url, web2.base_url]
            # Keep-alive clients: client i posts to server i % 2 for agent i % 3; half the records in lists.
            loader = threading.Thread(target=lambda: load.update(result=feedback_load(
                servers, token, agent=list(AGENTS), records=RECORDS, clients=CLIENTS, bulk_share=0.3,
                bulk_size=(5, 40), retry_clients=2, timeout=60,
            )))
            load_began = time.monotonic()
            loader.start()
            # As soon as every agent has enough scored feedback, while the load goes on: the long run first (a worker
            # takes it while the other measures the dry run's timing), then the five others at the same moment, two
            # clients per agent, through both gunicorns: the busy worker's django-q2 pusher fetches jobs ahead.
            wait_until(lambda: all(scored_per_agent(site)[a] >= 10 for a in AGENTS), timeout=120,
                       what="10 scored records per agent")
            alpha, beta, gamma = AGENTS
            requests = [(alpha, servers[0], LONG_STEPS)] + [
                (agent, servers[i % 2], SHORT_STEPS) for i, agent in enumerate((alpha, beta, beta, gamma, gamma), 1)
            ]

            def train(agent: str, server: str, steps: int) -> tuple[str, int, dict, float]:
                if barrier is not None:
                    barrier.wait()
                body = {**LEAN, "dryRun": False, "maxSteps": steps}
                status, answer = post(server, f"/api/policies/train_policy/{agent}", token, body)
                return agent, status, answer, time.monotonic() - load_began

            barrier = None
            train_answers = [train(*requests[0])]
            barrier = threading.Barrier(len(requests) - 1)
            with concurrent.futures.ThreadPoolExecutor(len(requests) - 1) as pool:
                train_answers += list(pool.map(lambda r: train(*r), requests[1:]))
            loader.join(timeout=300)
            load_wall = load["result"].wall_s
            assert all(status == 202 for _, status, _, _ in train_answers), train_answers
            web_log = web1.log()
        by_version = {(agent, int(answer["version"].removeprefix("v"))): answer for agent, _, answer, _ in
                      train_answers}
        all_versions = versions(site)
        long_id = next(pk for pk, v in all_versions.items() if v["max_steps"] == LONG_STEPS)
        long_version = all_versions[long_id]

        # The long run takes a step; its worker dies whole, the training process with it.
        wait_until(lambda: versions(site)[long_id]["step"] >= 1, timeout=240, what="the long run's first step")
        victim = next(name for name, c in clusters.items() if training_pid(c.pid, long_id))
        survivor = next(name for name in clusters if name != victim)
        before_kill = versions(site)
        killed_pids = kill_tree(clusters[victim].pid)
        killed_at = time.monotonic()
        clusters[victim].wait(30)
        wait_until(lambda: not any(alive(pid) for pid in killed_pids), timeout=30, what="the killed processes to end")
        failed = wait_until(lambda: (v := versions(site)[long_id])["status"] != "running" and v,
                            timeout=HEARTBEAT_TIMEOUT + 60, what="the killed version to be swept")
        swept_after = time.monotonic() - killed_at
        stuck: dict = {}
        all_final = all_final_in(site)
        try:
            final = wait_until(all_final, timeout=180, what="every version to finish")
        except AssertionError:
            stuck = {pk: v for pk, v in versions(site).items() if v["status"] not in FINAL}
            final = versions(site)
        # (django-q2 stores a job's result after it returns, the version's status before.)
        trained = sum(v["status"] == "trained" for v in final.values())
        with contextlib.suppress(AssertionError):
            wait_until(lambda: sum(r.endswith(": trained") for r in job_results(site)) >= trained, timeout=30,
                       what="the jobs' results")
        ended = time.monotonic() - began
    finally:
        for cluster in clusters.values():
            if cluster.poll() is None:
                kill_tree(cluster.pid)
                cluster.wait(30)
    logs = {name: (tmp_path / f"{name}.log").read_text(errors="replace") for name in clusters}

    # --- the figures (pytest -s) ----------------------------------------------------------------------------
    result = load["result"]
    trained_by = {name: sorted(f"{v['agent']} v{v['number']}" for v in final.values()
                               if f"[{v['agent']} v{v['number']}]" in logs[name]) for name in clusters}
    print(f"\n[{broker} broker] {len(result.records)} records from {CLIENTS} clients over 2 gunicorns in "
          f"{load_wall:.1f} s ({result.requests} requests, {result.retries} retried, statuses "
          f"{dict(result.statuses)}); train requests answered at "
          f"{', '.join(f'{t:.1f}' for *_, t in train_answers)} s into the load")
    print(f"  versions: {sorted((v['agent'], v['number'], v['status'], v['step']) for v in final.values())}")
    print(f"  trained by {trained_by}; killed {victim} ({len(killed_pids)} processes) with {long_version['agent']} "
          f"v{long_version['number']} at step {before_kill[long_id]['step']}; swept failed {swept_after:.1f} s "
          f"after the kill (heartbeat timeout {HEARTBEAT_TIMEOUT} s, sweep every {SWEEP_INTERVAL} s)")
    queued_at_kill = sorted(f"{v['agent']} v{v['number']}" for v in before_kill.values() if v["status"] == "queued")
    handed_on = {name: handed_on_by_sweep(logs[name]) for name in clusters}
    print(f"  queued at the kill: {queued_at_kill}; jobs handed on by the workers' sweeps (queued long, fetched "
          f"ahead but not started: enqueued again with Redis, released with the ORM broker): {handed_on}")
    print(f"  left by the kill: {failed['error'][:160]!r}; job results {dict(Counter(job_results(site)))}; "
          f"stuck {stuck}; whole test {ended:.0f} s")

    # --- every feedback record stored exactly once, as sent, no 5xx ---------------------------------------
    assert result.errors == [], result.errors[:10]
    assert result.server_errors == 0, result.statuses
    assert len(result.records) == RECORDS and result.retries > 0
    stored = site.query(
        "SELECT a.name, f.run_id, COUNT(*), MIN(f.prompt), MIN(f.score) FROM feedback_feedback f "
        "JOIN policies_agent a ON a.id = f.agent_id GROUP BY a.name, f.run_id"
    )
    assert len(stored) == RECORDS == site.query("SELECT COUNT(*) FROM feedback_feedback")[0][0]
    for agent, run_id, count, prompt, score in stored:
        sent = result.records[run_id]
        assert (agent, count, prompt, score) == (sent["agent"], 1, sent["prompt"], sent["score"]), run_id
    assert any(t < load_wall for *_, t in train_answers)  # training was queued while the load went on
    assert "Traceback" not in web_log, web_log[-3000:]

    # --- versions: numbers once per agent, the killed one failed in time, the rest trained, each once -------
    assert not stuck, stuck
    assert sorted((v["agent"], v["number"]) for v in final.values()) == sorted(
        (agent, n) for agent in AGENTS for n in (1, 2))
    assert sorted(by_version) == sorted((agent, n) for agent in AGENTS for n in (1, 2))
    assert failed["status"] == "failed" and "no heartbeat" in failed["error"], failed
    assert swept_after <= HEARTBEAT_TIMEOUT + 2 * SWEEP_INTERVAL + 10, swept_after
    killed_dir = site.models_dir / long_version["agent"] / f"v{long_version['number']}"
    assert sorted(p.name for p in killed_dir.iterdir()) == ["training.log"]  # nothing that looks finished
    for pk, v in final.items():
        if pk != long_id:
            assert v["status"] == "trained", (v, logs[survivor][-3000:])
            assert v["step"] == SHORT_STEPS
            steps = [s for (s,) in site.query("SELECT step FROM policies_trainingstep WHERE version_id = ?", (pk,))]
            assert sorted(steps) == list(range(1, SHORT_STEPS + 1)), (v, steps)
        assert training_starts(site, v["agent"], v["number"]) == 1, v
    # Each version's job trained it once; any other delivery of a job found its version taken and did nothing.
    results = Counter(job_results(site))
    for v in final.values():
        if (v["agent"], v["number"]) != (long_version["agent"], long_version["number"]):
            assert results[f"{v['agent']} v{v['number']}: trained"] == 1, results
    assert all(r.endswith(": trained") or r.startswith("not run") for r in results), results
    # What the kill did not take: the versions not yet trained by then were trained by the survivor.
    untrained_at_kill = [f"{v['agent']} v{v['number']}" for pk, v in before_kill.items()
                         if pk != long_id and v["status"] != "trained"]
    assert set(untrained_at_kill) <= set(trained_by[survivor]), (untrained_at_kill, trained_by)
    assert "Traceback" not in logs[survivor], logs[survivor][-3000:]


@pytest.mark.django_db
def test_the_sweep_releases_a_job_fetched_long_ago_and_not_started_and_nothing_else(settings):
    """ORM broker (the test settings'): the row of a version queued before the heartbeat window and fetched by a
    cluster (locked until fetch time + retry, as django-q2's ORM broker leaves it) is unlocked; a version queued
    just now, one already claimed and a row nobody fetched are left as they are."""
    settings.N3_HEARTBEAT_TIMEOUT = 60
    record_feedback_batch(agent_name="bot", records=feedback_records(12))
    agent = Agent.objects.get(name="bot")
    config = services.resolve_training_config(agent=agent, overrides={**LEAN_CONFIG, "max_steps": 2})
    held, fresh, claimed, unfetched = (services.queue_training(agent=agent, config=config) for _ in range(4))
    long_ago = timezone.now() - timedelta(minutes=10)
    PolicyVersion.objects.filter(pk__in=[held.pk, claimed.pk, unfetched.pk]).update(queued_at=long_ago)
    assert transitions.claim_version(version_id=claimed.pk)
    fetched_until = timezone.now() + timedelta(seconds=settings.Q_CLUSTER["retry"])
    rows = {row.task_id(): row.pk for row in OrmQ.objects.all()}
    OrmQ.objects.filter(pk__in=[rows[v.task_id] for v in (held, fresh)]).update(lock=fetched_until)
    # The claimed (running) one was fetched after the held one, by a live cluster: the held job does not wait behind
    # it (test_queue_fairness: one that does is left alone).
    OrmQ.objects.filter(pk=rows[claimed.task_id]).update(lock=fetched_until + timedelta(seconds=1))

    sweep.sweep_stale_versions()

    now = timezone.now()
    locked = {v.number: OrmQ.objects.get(pk=rows[v.task_id]).lock > now for v in (held, fresh, claimed, unfetched)}
    assert locked == {held.number: False, fresh.number: True, claimed.number: True, unfetched.number: False}
    assert sweep.release_held_jobs(now - timedelta(seconds=60)) == 0  # the released row waits for a pusher
    assert OrmQ.objects.count() == 4  # nothing enqueued twice
