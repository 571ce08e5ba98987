"""Feedback ingestion under a real gunicorn, against Django's own limit: throughput, latency, no record lost or doubled.

    .venv/bin/python bench/ingest_bench.py                  # SQLite, then PostgreSQL if one can be had
    .venv/bin/python bench/ingest_bench.py --no-postgres    # SQLite only
    .venv/bin/python bench/ingest_bench.py --quick          # a tenth of the sizes, to try it out

Each database gets a throwaway site (tests/sites.py) served by two gunicorns on 127.0.0.1 with the same
n3site/gunicorn.conf.py and n3site/serve.py (``--workers``/``--threads`` override both): the product, and a bare
Django view (bench/bare_urls.py via bench/bare_settings.py) that only authenticates the token (the API's own
cached TokenAuthentication) and INSERTs the row with one SQL statement. 16 client threads in this process post on
keep-alive connections with token auth (a user holding only feedback.add_feedback, so the API's permission check
runs):

1. single POST, taken in turns against the feedback API and the bare view (``--rounds`` pairs, in ABBA order, so
   both see the same machine): requests/s of each and their ratio (target: API >= 0.8x the bare view), the API's
   p50/p99 latency, and the server CPU per request of each.
2. bulk POST: JSON arrays of 100 records: records/s, next to
3. raw INSERT: the same rows into the same table of the same database by the database's own driver (sqlite3,
   psycopg), ``executemany`` of 100 rows per transaction.
4. the proof at full size: 10,000 records, mixed single and bulk (5..100), four clients that give up on every
   tenth request and send it again: every record stored exactly once, no 5xx answer.

Then bench/feedback_profile.py splits a feedback POST's server CPU by part (auth, validation, agent lookup,
INSERT, output, Django/DRF), in-process on the SQLite site.

PostgreSQL: N3_TEST_DATABASE_URL when set (a database is created and dropped on that server), else a throwaway
cluster on 127.0.0.1 when this machine has initdb/pg_ctl (tests/servers.py), else skipped. Every step but the
profile runs on it too.

The clients share the machine's cores with the server, as they would on a one-box deployment; each table says how
much CPU the server and the clients used per request, and how busy the cores were with other work meanwhile
(a number well above 0 means someone else's work slowed this run). Stops by itself in about 2-5 minutes.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sqlite3
import sys
import time
from dataclasses import replace
from pathlib import Path

import feedback_profile
from _common import (
    CpuUse,
    Figure,
    cpu_note,
    cpu_use,
    postgres_database,
    postgres_server,
    print_table,
    throwaway_site,
)

from tests.sites import LoadResult, Site, feedback_load, load_records, percentile

RATIO_TARGET = 0.8  # feedback API single POSTs/s over the bare view's, same run
BULK_SHARE_TARGET = 0.20  # of the raw SQLite insert rate
BULK_SIZE = 100


def bare_site(site: Site) -> Site:
    """The same site (database, env) with bench/bare_urls.py as its URLs."""
    return replace(site, env={**site.env, "DJANGO_SETTINGS_MODULE": "bench.bare_settings"})


def serve(site: Site, args):
    return site.gunicorn(workers=args.workers, threads=args.threads)


def warm_up(server, token: str, *, bulk: bool = True) -> None:
    """Every worker loads its code paths and opens its connection before the clock starts."""
    feedback_load(server.base_url, token, agent="warm-up", records=400, clients=16, bulk_share=0.3 if bulk else 0.0,
                  bulk_size=(5, 20), retry_clients=0, agent_prefix=f"w{server.port}-")


def check(result: LoadResult, what: str) -> None:
    if result.errors or result.server_errors:
        print(f"  {what}: {result.server_errors} 5xx, {len(result.errors)} errors, e.g. {result.errors[:3]}")


class SinglePhases:
    """Single-POST phases of one server, summed over the rounds."""

    def __init__(self) -> None:
        self.requests, self.wall_s, self.latencies, self.results = 0, 0.0, [], []
        self.cpu = CpuUse(0.0, 0.0, 0.0, 0.0)

    def add(self, result: LoadResult, use: CpuUse) -> None:
        self.requests += result.single_requests
        self.wall_s += result.wall_s
        self.latencies += result.single_latencies
        self.results.append(result)
        self.cpu = CpuUse(*(a + b for a, b in zip(
            (self.cpu.server_s, self.cpu.client_s, self.cpu.machine_s, self.cpu.wall_s),
            (use.server_s, use.client_s, use.machine_s, use.wall_s))))

    @property
    def rate(self) -> float:
        return self.requests / self.wall_s if self.wall_s else 0.0


def single_posts(server, token: str, args, agent: str, prefix: str, phases: SinglePhases) -> None:
    with cpu_use(server.process.pid) as use:
        result = feedback_load(server.base_url, token, agent=agent, records=args.single_records, clients=args.clients,
                               bulk_share=0.0, retry_clients=0, max_seconds=args.seconds / args.rounds,
                               agent_prefix=prefix)
    check(result, f"single POST ({agent})")
    phases.add(result, use[0])


def measure(site: Site, args, label: str) -> tuple[list[Figure], list[str]]:
    figures, notes = [], []
    token = site.api_token()
    with serve(site, args) as server, serve(bare_site(site), args) as bare:
        warm_up(server, token)
        warm_up(bare, token, bulk=False)
        # 1. single POST, the API and the bare view in turns: API, bare, bare, API, API, bare, ...
        api, floor = SinglePhases(), SinglePhases()
        for round_ in range(args.rounds):
            order = [(server, "single", api), (bare, "bare", floor)]
            for target, agent, phases in (order if round_ % 2 == 0 else order[::-1]):
                single_posts(target, token, args, agent, f"r{round_}-", phases)
        ratio = api.rate / floor.rate
        figures += [
            Figure(f"{label}: single POST, feedback API", api.rate, "req/s"),
            Figure(f"{label}: single POST, bare Django view", floor.rate, "req/s"),
            Figure(f"{label}: feedback API / bare view", ratio * 100, "%", f">= {RATIO_TARGET:.0%}",
                   ratio >= RATIO_TARGET),
            Figure(f"{label}: single POST latency p50", percentile(api.latencies, 50) * 1000, "ms"),
            Figure(f"{label}: single POST latency p99", percentile(api.latencies, 99) * 1000, "ms"),
        ]
        for name, phases in (("API", api), ("bare view", floor)):
            notes.append(f"{label} single POST, {name}: {phases.requests:,} requests in {phases.wall_s:.1f} s "
                         f"({args.rounds} turns), {args.clients} clients; " + cpu_note(phases.cpu, phases.requests,
                                                                                      "request"))
        server_ms = [p.cpu.server_s / p.requests * 1000 for p in (api, floor)]
        notes.append(f"{label}: server CPU per request, bare view / API = {server_ms[1]:.2f} / {server_ms[0]:.2f} ms "
                     f"= {server_ms[1] / server_ms[0]:.2f}x (the ratio with the clients on other machines)")
        # 2. bulk POST
        with cpu_use(server.process.pid) as use:
            bulk = feedback_load(server.base_url, token, agent="bulk", records=args.bulk_records, clients=args.clients,
                                 bulk_share=1.0, bulk_size=(BULK_SIZE, BULK_SIZE), retry_clients=0,
                                 max_seconds=args.seconds)
        check(bulk, "bulk POST")
        bulk_rate = bulk.bulk_records / bulk.wall_s
        figures.append(Figure(f"{label}: bulk POST ({BULK_SIZE}/request)", bulk_rate, "records/s"))
        notes.append(f"{label} bulk POST: {bulk.bulk_requests:,} requests, {bulk.bulk_records:,} records in "
                     f"{bulk.wall_s:.1f} s; " + cpu_note(use[0], bulk.bulk_records, "record"))
        # 4. the proof
        proof = feedback_load(server.base_url, token, agent="proof", records=args.records, clients=args.clients,
                              bulk_share=0.5, bulk_size=(5, BULK_SIZE), retry_clients=4, retry_every=10)
    stored = site.feedback_rows("proof")
    problems = proof.problems(stored)
    exactly_once = sum(1 for run_id, (count, _, _) in stored.items() if count == 1 and run_id in proof.records)
    singles = LoadResult(records={k: v for r in api.results for k, v in r.records.items()})
    for what, result in (("single", singles), ("bulk", bulk)):
        problems += [f"{what}: {p}" for p in result.problems(site.feedback_rows(what))]
    # 3. raw INSERT, with the servers stopped (after the check above: its rows go to the agent "bulk")
    raw = raw_insert_rate(site, args.bulk_records)
    figures.append(Figure(f"{label}: raw INSERT (executemany, {BULK_SIZE}/transaction)", raw, "rows/s"))
    is_sqlite = "DATABASE_URL" not in site.env
    figures.append(Figure(f"{label}: bulk POST / raw INSERT", bulk_rate / raw * 100, "%",
                          f">= {BULK_SHARE_TARGET:.0%}" if is_sqlite else "",
                          bulk_rate / raw >= BULK_SHARE_TARGET if is_sqlite else None))
    server_errors = sum(r.server_errors for r in (*api.results, *floor.results, bulk, proof))
    figures += [
        Figure(f"{label}: {args.records:,} mixed records stored once", exactly_once, "records",
               f"= {len(proof.records):,}", exactly_once == len(proof.records) and not problems),
        Figure(f"{label}: 5xx answers (all phases)", server_errors, "", "= 0", server_errors == 0),
    ]
    notes.append(
        f"{label} proof: {proof.single_requests:,} single + {proof.bulk_requests:,} bulk requests "
        f"in {proof.wall_s:.1f} s "
        f"({len(proof.records) / proof.wall_s:,.0f} records/s); {proof.retries} re-sent after a simulated timeout, "
        f"answered {dict(proof.retry_statuses)}; {proof.reconnects} keep-alive reconnects; "
        f"statuses {dict(proof.statuses)}"
        + (f"; PROBLEMS: {problems} {proof.errors[:3]}" if problems or proof.errors else "")
    )
    if "Traceback" in server.log():
        notes.append(f"{label}: a server logged a traceback:\n{server.log()[-2000:]}")
    return figures, notes


def raw_rows(records: int, agent_id: int) -> list[tuple]:
    """The bulk phase's records as table rows (runIds of their own), timestamps as the database driver takes them."""
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    return [(agent_id, r["prompt"], r["response"], r["score"], f"raw-{r['runId']}", r["notes"], "api", now, now)
            for client in range(16) for r in load_records(client, records // 16, random.Random(client))]


def raw_insert_rate(site: Site, records: int) -> float:
    """Rows/s of the database's own driver inserting the bulk phase's rows into the site's feedback table (its
    indexes and constraints, under the agent "bulk"): ``executemany`` of 100 rows per transaction. SQLite with
    the site's WAL, synchronous=NORMAL and foreign keys; PostgreSQL through psycopg on the same server."""
    columns = "agent_id, prompt, response, score, run_id, notes, source, created_at, updated_at"
    url = site.env.get("DATABASE_URL")
    if url:
        import psycopg  # noqa: PLC0415  (only with a PostgreSQL site)

        db = psycopg.connect(url)
        placeholder, begin, commit = "%s", None, db.commit
    else:
        db = sqlite3.connect(site.db_path, isolation_level=None, timeout=20)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
            db.execute(f"PRAGMA {pragma}")
        placeholder, begin, commit = "?", "BEGIN IMMEDIATE", lambda: db.execute("COMMIT")
    with contextlib.closing(db):
        (agent_id,) = db.execute(f"SELECT id FROM policies_agent WHERE name = {placeholder}", ("bulk",)).fetchone()
        rows = raw_rows(records, agent_id)
        sql = f"INSERT INTO feedback_feedback ({columns}) VALUES ({', '.join([placeholder] * 9)})"
        cursor = db.cursor()
        began = time.perf_counter()
        for start in range(0, len(rows), BULK_SIZE):
            if begin:
                db.execute(begin)
            cursor.executemany(sql, rows[start:start + BULK_SIZE])
            commit()
        elapsed = time.perf_counter() - began
    return len(rows) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=10_000, help="records in the mixed proof (default 10,000)")
    parser.add_argument("--single-records", type=int, default=20_000,
                        help="most single POSTs to send per turn (default 20,000)")
    parser.add_argument("--bulk-records", type=int, default=50_000,
                        help="most records to send in bulk (default 50,000)")
    parser.add_argument("--seconds", type=float, default=16,
                        help="longest a throughput phase runs; single POSTs: per server, over all turns (default 16)")
    parser.add_argument("--rounds", type=int, default=4, help="turns of the API and the bare view (default 4)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", 0)) or None,
                        help="gunicorn workers (default: n3site/gunicorn.conf.py's)")
    parser.add_argument("--threads", type=int, default=None, help="threads per worker (default: the config's)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the in-process CPU split (bench/feedback_profile.py)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes and 6 s phases")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.records, args.single_records, args.bulk_records, args.seconds, args.rounds = 1000, 2000, 5000, 6, 2

    began = time.monotonic()
    figures, notes, split = [], [], ""
    with throwaway_site("ingest-sqlite") as site:
        found, said = measure(site, args, "SQLite")
        figures += found
        notes += said
        split = "" if args.no_profile else feedback_profile.run_in_site(site, 300, 10)
    if not args.no_postgres:
        with postgres_server() as server:
            if server is None:
                notes.append("PostgreSQL: skipped (set N3_TEST_DATABASE_URL, or install PostgreSQL's initdb/pg_ctl)")
            else:
                with postgres_database(server.url) as url, throwaway_site("ingest-pg", DATABASE_URL=url) as site:
                    found, said = measure(site, args, "PostgreSQL")
                    figures += found
                    notes += said
    workers, threads = args.workers or "config", args.threads or "config"
    print_table(f"Feedback ingestion, gunicorn workers={workers} threads={threads}, {args.clients} clients, "
                f"{os.cpu_count()} CPU cores ({time.monotonic() - began:.0f} s)", figures, notes)
    if split:
        print("\nWhere a feedback POST's server CPU goes "
              "(bench/feedback_profile.py: in-process, SQLite, no HTTP):", end="")
        print(split, end="")
    if args.json:
        args.json.write_text(json.dumps([f.__dict__ for f in figures], indent=2))
    return 0 if all(f.passed is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
