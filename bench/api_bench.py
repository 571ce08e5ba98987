"""p50/p99 of every API call while a training runs: no request waits on training (issue 10's target: p99 < 1 s).

    .venv/bin/python bench/api_bench.py                      # 60 s while training, 4 clients
    .venv/bin/python bench/api_bench.py --seconds 30 --clients 8

A throwaway site (tests/sites.py) served by gunicorn (n3site/gunicorn.conf.py) and a real ``manage.py qcluster``
that trains a queued version of n3-tiny (n3-tiny-random when n3-tiny is not built in MODELS_DIR/_base) in its child
process. Once the version is running, ``--clients`` threads each cycle through every endpoint on a keep-alive
connection with token auth, pausing ``--pause`` between requests: feedback POST (to another agent, so the trained
agent's dry-run key stays put), a dry run whose calibration is cached (hit), a dry run with none (miss: answered from
the default while its measurement waits behind the training in the worker), a training queued and cancelled, the
version list, a version's detail, the OpenAPI schema and the docs page. Requests answered after the training stopped
are not counted, nor a 5-second warm-up before the cluster starts (each gunicorn worker builds the OpenAPI schema on
its first request; the slowest is noted). The training is then cancelled and the cluster stopped. About 1.5 minutes
plus --seconds.
"""
from __future__ import annotations

import argparse
import collections
import http.client
import json
import sys
import threading
import time

import _common  # noqa: F401  (sets up Django and the import path first)
from _common import Figure, machine_busy_s, print_table, throwaway_site
from latency_bench import base_model, stop_cluster

from n3_server.rlhf import TrainingConfig, timing
from n3_server.rlhf.data import prepare_feedback
from tests.sites import LEAN_CONFIG, feedback_records, percentile

TARGET_P99_MS = 1000.0
DRY_RUN = {"dryRun": True, "baseModel": "n3-tiny-random", "maxSteps": 40, "batchSize": 2, "miniBatchSize": 2}


def requests_for(agent: str) -> list[tuple[str, str, str, object]]:
    """(name, method, path, JSON body or None) of one cycle; "train+cancel" is handled by the client."""
    return [
        ("POST feedback", "POST", "/api/policies/feedback/ingest",
         {"prompt": "What is 2 plus 2?", "response": "4.", "score": 0.9}),
        ("POST dry run (hit)", "POST", f"/api/policies/train_policy/{agent}", DRY_RUN),
        ("POST dry run (miss)", "POST", f"/api/policies/train_policy/{agent}", {**DRY_RUN, "maxNewTokens": 24}),
        ("POST train + cancel", "POST", f"/api/policies/train_policy/{agent}", {**DRY_RUN, "dryRun": False}),
        ("GET list", "GET", f"/api/policies/{agent}", None),
        ("GET detail", "GET", f"/api/policies/{agent}/v1", None),
        ("GET schema", "GET", "/api/schema/", None),
        ("GET docs", "GET", "/api/docs/", None),
    ]


def load(server, token: str, agent: str, *, clients: int, pause: float, seconds: float, keep) -> tuple[dict, list]:
    """Latencies (s) by request name from ``clients`` threads for ``seconds``; a request counts when ``keep()``."""
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    errors: list[str] = []
    sources: collections.Counter = collections.Counter()
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}

    def call(conn, method: str, path: str, body) -> tuple[int, bytes, float]:
        began = time.perf_counter()
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = conn.getresponse()
        return response.status, response.read(), time.perf_counter() - began

    def run() -> None:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
        mine = collections.defaultdict(list)
        while time.perf_counter() < stop_at:
            for name, method, path, body in requests_for(agent):
                try:
                    status, content, elapsed = call(conn, method, path, body)
                    if name == "POST train + cancel" and status == 202:
                        version = json.loads(content)["version"]
                        status, content, cancel_s = call(conn, "POST", f"/api/policies/{agent}/{version}/cancel", None)
                        mine["POST cancel"].append(cancel_s)
                except (OSError, http.client.HTTPException) as error:
                    conn.close()
                    errors.append(f"{name}: {type(error).__name__}: {error}")
                    continue
                if status >= 400:
                    errors.append(f"{name}: {status} {content[:200]!r}")
                elif keep():
                    mine[name].append(elapsed)
                    if name.startswith("POST dry run"):
                        sources[(name, json.loads(content).get("estimateSource"))] += 1
                time.sleep(pause)
        conn.close()
        with lock:
            for name, values in mine.items():
                latencies[name].extend(values)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, sources


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="the window while training (default 60)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--pause", type=float, default=0.05, help="seconds each client waits between requests")
    args = parser.parse_args()
    began = time.monotonic()
    with throwaway_site("api") as site:
        model = base_model(site)
        config = {**LEAN_CONFIG, "base_model": model, "batch_size": 4, "mini_batch_size": 2, "max_new_tokens": 16}
        pk = site.queue_version(agent="bot", max_steps=100_000, config=config)  # v1, cancelled when done
        token = site.api_token(perms=("feedback.add_feedback", "policies.add_policyversion",
                                      "policies.change_policyversion", "policies.view_policyversion"))
        # The hit's calibration, as a worker would have stored it (the figures do not matter, the lookup does).
        hit = TrainingConfig.from_dict({"base_model": "n3-tiny-random", "max_steps": 40, "batch_size": 2,
                                        "mini_batch_size": 2})
        key = timing.timing_key(hit, prepare_feedback(feedback_records()).records, models_dir=site.models_dir)
        timing.store_calibration(site.models_dir, key, timing.Calibration(1.0, 0.01, 0.01, 0.2, 0.1))
        with site.gunicorn() as server:
            # Warm up: each worker's first schema request builds the schema (about a second), as after any restart.
            warm, _, _ = load(server, token, "bot", clients=args.clients, pause=args.pause, seconds=5,
                              keep=lambda: True)
            cold_schema = max(warm.get("GET schema", [float("nan")]))
            cluster = site.popen("qcluster")
            try:
                site.wait_for(pk, lambda v: v["status"] == "running" and (v["step"] or 0) >= 1, timeout=240, poll=0.5)
                running = threading.Event()
                running.set()

                def watch() -> None:
                    while running.is_set():
                        if site.version(pk)["status"] != "running":
                            running.clear()
                        time.sleep(0.2)

                threading.Thread(target=watch, daemon=True).start()
                step_before, busy_before, t0 = site.version(pk)["step"], machine_busy_s(), time.perf_counter()
                latencies, errors, sources = load(server, token, "bot", clients=args.clients, pause=args.pause,
                                                  seconds=args.seconds, keep=running.is_set)
                busy = (machine_busy_s() - busy_before) / (time.perf_counter() - t0)
                step_after, still_running = site.version(pk)["step"], running.is_set()
                running.clear()
                conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
                conn.request("POST", "/api/policies/bot/v1/cancel", headers={"Authorization": f"Token {token}"})
                conn.getresponse().read()
                conn.close()
                site.wait_for(pk, lambda v: v["status"] not in ("queued", "running"), timeout=120, poll=0.5)
            finally:
                stop_cluster(cluster)
    figures = []
    everything = [value for values in latencies.values() for value in values]
    for name in sorted(latencies):
        values = latencies[name]
        p99 = percentile(values, 99) * 1000
        figures += [
            Figure(f"{name}: p50", percentile(values, 50) * 1000, "ms"),
            Figure(f"{name}: p99 ({len(values)} requests)", p99, "ms", f"< {TARGET_P99_MS:.0f}", p99 < TARGET_P99_MS),
        ]
    figures.append(Figure("every call: p99", percentile(everything, 99) * 1000, "ms", f"< {TARGET_P99_MS:.0f}",
                          bool(everything) and percentile(everything, 99) * 1000 < TARGET_P99_MS))
    notes = [
        f"before the window (a warm-up, no training): slowest schema request {cold_schema * 1000:.0f} ms",
        f"training {model} (batch 4, 16 new tokens): steps {step_before} -> {step_after} in the window; cores busy "
        f"{busy:.2f}" + ("" if still_running else "; the training ended inside the window (later ones not counted)"),
        f"{args.clients} clients, {args.pause * 1000:.0f} ms pause; dry-run answers: "
        + ", ".join(f"{name} {source} x{n}" for (name, source), n in sorted(sources.items())),
        f"{len(errors)} failed requests" + (f", e.g. {errors[:3]}" if errors else ""),
    ]
    print_table(f"Every API call while training ({time.monotonic() - began:.0f} s)", figures, notes)
    return 0 if not errors and all(f.passed is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
