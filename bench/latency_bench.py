"""API latency while a training job runs on the same machine: p50/p99 of ``GET /api/policies/<agent>``.

    .venv/bin/python bench/latency_bench.py                 # 10 s idle, 2 x 25 s while training
    .venv/bin/python bench/latency_bench.py --seconds 60 --clients 8

A throwaway site (tests/sites.py, SQLite in WAL mode) served by gunicorn on 127.0.0.1 with n3site/gunicorn.conf.py,
and the embedded deployment's worker: a real ``manage.py qcluster`` that trains a queued version of n3-tiny (the
built-in 4-layer model, from MODELS_DIR/_base; n3-tiny-random when n3-tiny has not been built there) in its own
child process, with torch using every core. ``--clients`` threads (4) each GET the agent's version list on a
keep-alive connection with token auth, pausing ``--pause`` (50 ms) between requests, as dashboards and agents
polling for a new version would. First ``--idle-seconds`` without training (the baseline), then ``--seconds`` while
the version is ``running`` (requests answered after the training stopped are not counted), then as long again
with the training process reniced to ``--nice`` (10), which is what ``N3_TRAINING_LAUNCHER="nice -n 10 python"``
gives a deployment (the web workers then get the cores first). The training is then cancelled through the API
and the cluster stopped. Target: p99 < 200 ms while training (at the default priority). Stops by itself in about
2-3 minutes.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import Figure, machine_busy_s, print_table, throwaway_site

from tests.sites import LEAN_CONFIG, Site, children_of, percentile

TARGET_P99_MS = 200.0


def base_model(site: Site) -> str:
    return "n3-tiny" if (site.models_dir / "_base" / "n3-tiny" / "config.json").exists() else "n3-tiny-random"


def poll(server, token: str, path: str, *, clients: int, pause: float, seconds: float,
         keep: callable = lambda: True) -> list[float]:
    """Latencies (s) of GETs from ``clients`` threads for ``seconds``; a request counts when ``keep()`` after it."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def run() -> None:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
        mine = []
        while time.perf_counter() < stop_at:
            began = time.perf_counter()
            try:
                conn.request("GET", path, headers={"Authorization": f"Token {token}"})
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as error:
                conn.close()
                errors.append(f"{type(error).__name__}: {error}")
                continue
            elapsed = time.perf_counter() - began
            if response.status != 200:
                errors.append(f"{response.status}: {body[:200]!r}")
            elif keep():
                mine.append(elapsed)
            time.sleep(pause)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        print(f"  {len(errors)} failed requests, e.g. {errors[:3]}", file=sys.stderr)
    return latencies


def descendants(pid: int) -> list[int]:
    found = []
    for child in children_of(pid):
        found += [child, *descendants(child)]
    return found


def renice_training(cluster_pid: int, nice: int) -> list[int]:
    """Set every thread of the cluster's training process(es) (``manage.py train_policy``) to ``nice``."""
    pids = []
    for pid in descendants(cluster_pid):
        with contextlib.suppress(OSError):
            if b"train_policy" in Path(f"/proc/{pid}/cmdline").read_bytes():
                for task in Path(f"/proc/{pid}/task").iterdir():
                    with contextlib.suppress(OSError):
                        os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
                pids.append(pid)
    return pids


def stop_cluster(cluster: subprocess.Popen) -> None:
    if cluster.poll() is None:
        cluster.send_signal(signal.SIGTERM)
        try:
            cluster.wait(60)
        except subprocess.TimeoutExpired:
            for pid in [*children_of(cluster.pid), cluster.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            cluster.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=25, help="each window while training (default 25)")
    parser.add_argument("--idle-seconds", type=float, default=10, help="the baseline, before training (default 10)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--nice", type=int, default=10, help="the training's niceness in the second window")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds each client waits between requests")
    parser.add_argument("--workers", type=int, default=None, help="gunicorn workers (default: the config's)")
    parser.add_argument("--threads", type=int, default=None, help="threads per worker (default: the config's)")
    args = parser.parse_args()
    began = time.monotonic()
    figures, notes = [], []
    with throwaway_site("latency") as site:
        model = base_model(site)
        config = {**LEAN_CONFIG, "base_model": model, "batch_size": 4, "mini_batch_size": 2, "max_new_tokens": 16}
        pk = site.queue_version(agent="bot", max_steps=100_000, config=config)  # cancelled when done
        token = site.api_token(perms=("policies.view_policyversion", "policies.change_policyversion"))
        path = "/api/policies/bot"
        with site.gunicorn(workers=args.workers, threads=args.threads) as server:
            poll(server, token, path, clients=args.clients, pause=args.pause, seconds=2)  # warm up
            idle = poll(server, token, path, clients=args.clients, pause=args.pause, seconds=args.idle_seconds)
            cluster = site.popen("qcluster")
            try:
                site.wait_for(pk, lambda v: v["status"] == "running" and (v["step"] or 0) >= 1, timeout=240, poll=0.5)
                running = threading.Event()
                running.set()

                def watch() -> None:  # clears `running` as soon as the version leaves "running"
                    while running.is_set():
                        if site.version(pk)["status"] != "running":
                            running.clear()
                        time.sleep(0.2)

                watcher = threading.Thread(target=watch, daemon=True)
                watcher.start()
                step_before, busy_before, t0 = site.version(pk)["step"], machine_busy_s(), time.perf_counter()
                training = poll(server, token, path, clients=args.clients, pause=args.pause, seconds=args.seconds,
                                keep=running.is_set)
                busy = (machine_busy_s() - busy_before) / (time.perf_counter() - t0)
                step_after = site.version(pk)["step"]
                reniced = renice_training(cluster.pid, args.nice)
                step_before_nice = site.version(pk)["step"]
                niced = poll(server, token, path, clients=args.clients, pause=args.pause, seconds=args.seconds,
                             keep=running.is_set) if reniced else []
                step_after_nice = site.version(pk)["step"]
                still_running = running.is_set()
                running.clear()
                conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
                conn.request("POST", f"{path}/v1/cancel", headers={"Authorization": f"Token {token}"})
                cancel_status = conn.getresponse().status
                conn.close()
                final = site.wait_for(pk, lambda v: v["status"] not in ("queued", "running"), timeout=120, poll=0.5)
            finally:
                stop_cluster(cluster)
    p99 = percentile(training, 99) * 1000
    figures += [
        Figure("idle: GET /api/policies/<agent> p50", percentile(idle, 50) * 1000, "ms"),
        Figure("idle: GET /api/policies/<agent> p99", percentile(idle, 99) * 1000, "ms"),
        Figure("idle: requests", len(idle), ""),
        Figure("training: GET /api/policies/<agent> p50", percentile(training, 50) * 1000, "ms"),
        Figure("training: GET /api/policies/<agent> p99", p99, "ms", f"< {TARGET_P99_MS:.0f}",
               bool(training) and p99 < TARGET_P99_MS),
        Figure("training: max", max(training, default=float("nan")) * 1000, "ms"),
        Figure("training: requests", len(training), ""),
        Figure(f"training at nice {args.nice}: p50", percentile(niced, 50) * 1000, "ms"),
        Figure(f"training at nice {args.nice}: p99", percentile(niced, 99) * 1000, "ms"),
        Figure(f"training at nice {args.nice}: requests", len(niced), ""),
    ]
    notes += [
        f"training {model} (batch 4, 16 new tokens): PPO steps {step_before} -> {step_after} during the "
        f"{args.seconds:.0f} s window, {step_before_nice} -> {step_after_nice} at nice {args.nice} "
        f"(training processes {reniced or 'not found'}); cores busy {busy:.2f} of {os.cpu_count()} in the first"
        + ("" if still_running else "; the training ended inside the window (later requests not counted)"),
        f"{args.clients} clients, {args.pause * 1000:.0f} ms pause; then cancelled through the API "
        f"({cancel_status}), version ended {final['status']}",
    ]
    print_table(f"API latency while training, gunicorn workers={args.workers or 'config'} "
                f"threads={args.threads or 'config'} ({time.monotonic() - began:.0f} s)", figures, notes)
    return 0 if all(f.passed is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
