"""Feedback ingestion under a real gunicorn: throughput, latency, and no record lost or doubled.

    .venv/bin/python bench/ingest_bench.py                  # SQLite, then PostgreSQL if one can be had
    .venv/bin/python bench/ingest_bench.py --no-postgres    # SQLite only
    .venv/bin/python bench/ingest_bench.py --quick          # a tenth of the sizes, to try it out

Each database gets a throwaway site (tests/sites.py) served by gunicorn on 127.0.0.1 with n3site/gunicorn.conf.py
(``--workers``/``--threads`` override it), and 16 client threads in this process on keep-alive connections with
token auth (a user holding only feedback.add_feedback, so the permission check runs):

1. single POST: one record per request, as fast as the clients go, for at most ``--seconds``: requests/s and
   p50/p99 latency (target: >= 1,000 requests/s).
2. bulk POST: JSON arrays of 100 records: records/s, next to
3. raw SQLite: plain sqlite3 INSERTs of the same rows into the same table, 100 per transaction, WAL and
   synchronous=NORMAL like the site (target: bulk >= 20 % of it).
4. the proof at full size: 10,000 records, mixed single and bulk (5..100), four clients that give up on every
   tenth request and send it again: every record stored exactly once, no 5xx answer.

Then bench/feedback_profile.py splits a feedback POST's server CPU by part (auth, validation, agent lookup,
INSERT, output, Django/DRF), in-process on the SQLite site.

PostgreSQL: N3_TEST_DATABASE_URL when set (a database is created and dropped on that server), else a throwaway
cluster on 127.0.0.1 when this machine has initdb/pg_ctl, else skipped. Steps 1, 2 and 4 run on it too.

The clients share the machine's cores with the server, as they would on a one-box deployment; each table says how
much CPU the server and the clients used per request, and how busy the cores were with other work meanwhile
(a number well above 0 means someone else's work slowed this run). Stops by itself in about 1-4 minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import feedback_profile
from _common import Figure, cpu_note, cpu_use, postgres_database, postgres_server, print_table, throwaway_site

from tests.sites import LoadResult, Site, feedback_load, load_records, percentile

SINGLE_TARGET = 1000.0  # requests/s
BULK_SHARE_TARGET = 0.20  # of the raw SQLite insert rate
BULK_SIZE = 100


def serve(site: Site, args):
    return site.gunicorn(workers=args.workers, threads=args.threads)


def warm_up(server, token: str) -> None:
    """Every worker loads its code paths and opens its connection before the clock starts."""
    feedback_load(server.base_url, token, agent="warm-up", records=400, clients=16, bulk_share=0.3,
                  bulk_size=(5, 20), retry_clients=0)


def check(result: LoadResult, what: str) -> None:
    if result.errors or result.server_errors:
        print(f"  {what}: {result.server_errors} 5xx, {len(result.errors)} errors, e.g. {result.errors[:3]}")


def measure(site: Site, args, label: str) -> tuple[list[Figure], list[str]]:
    figures, notes = [], []
    token = site.api_token()
    with serve(site, args) as server:
        warm_up(server, token)
        # 1. single POST
        with cpu_use(server.process.pid) as use:
            single = feedback_load(server.base_url, token, agent="single", records=args.single_records,
                                   clients=args.clients, bulk_share=0.0, retry_clients=0, max_seconds=args.seconds)
        check(single, "single POST")
        rate = single.single_requests / single.wall_s
        figures += [
            Figure(f"{label}: single POST throughput", rate, "req/s", f">= {SINGLE_TARGET:,.0f}",
                   rate >= SINGLE_TARGET),
            Figure(f"{label}: single POST latency p50", percentile(single.single_latencies, 50) * 1000, "ms"),
            Figure(f"{label}: single POST latency p99", percentile(single.single_latencies, 99) * 1000, "ms"),
        ]
        notes.append(f"{label} single POST: {single.single_requests:,} requests in {single.wall_s:.1f} s, "
                     f"{args.clients} clients; " + cpu_note(use[0], single.single_requests, "request"))
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
    for what, result in (("single", single), ("bulk", bulk)):
        problems += [f"{what}: {p}" for p in result.problems(site.feedback_rows(what))]
    figures += [
        Figure(f"{label}: {args.records:,} mixed records stored once", exactly_once, "records",
               f"= {len(proof.records):,}", exactly_once == len(proof.records) and not problems),
        Figure(f"{label}: 5xx answers (all phases)", single.server_errors + bulk.server_errors + proof.server_errors,
               "", "= 0", single.server_errors + bulk.server_errors + proof.server_errors == 0),
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
        notes.append(f"{label}: the server logged a traceback:\n{server.log()[-2000:]}")
    return figures, notes


def raw_sqlite_rate(site: Site, records: int) -> float:
    """Rows/s of plain sqlite3 inserting the bulk phase's rows into a fresh copy of the feedback table."""
    schema = [sql for (sql,) in site.query(
        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND tbl_name IN ('feedback_feedback', 'policies_agent')"
        " ORDER BY type = 'index'")]
    columns = ("agent_id", "prompt", "response", "score", "run_id", "notes", "source", "created_at", "updated_at")
    with tempfile.TemporaryDirectory(prefix="n3-bench-raw-") as tmp:
        db = sqlite3.connect(Path(tmp) / "raw.sqlite3", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=OFF")
        for sql in schema:
            db.execute(sql)
        db.execute("INSERT INTO policies_agent (name, description, default_training_config, version_counter, "
                   "traffic, record_served, created_at) VALUES ('raw', '', 'null', 0, '{}', 0, '2026-01-01')")
        rows = []
        for client in range(16):
            for record in load_records(client, records // 16, random.Random(client)):
                now = time.strftime("%Y-%m-%d %H:%M:%S")
                rows.append((1, record["prompt"], record["response"], record["score"], record["runId"],
                             record["notes"], "api", now, now))
        sql = f"INSERT INTO feedback_feedback ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        began = time.perf_counter()
        for start in range(0, len(rows), BULK_SIZE):
            db.execute("BEGIN IMMEDIATE")
            db.executemany(sql, rows[start:start + BULK_SIZE])
            db.execute("COMMIT")
        elapsed = time.perf_counter() - began
        db.close()
    return len(rows) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=10_000, help="records in the mixed proof (default 10,000)")
    parser.add_argument("--single-records", type=int, default=20_000, help="most single POSTs to send (default 20,000)")
    parser.add_argument("--bulk-records", type=int, default=50_000,
                        help="most records to send in bulk (default 50,000)")
    parser.add_argument("--seconds", type=float, default=15, help="longest a throughput phase runs (default 15)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", 0)) or None,
                        help="gunicorn workers (default: n3site/gunicorn.conf.py's)")
    parser.add_argument("--threads", type=int, default=None, help="threads per worker (default: the config's)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the in-process CPU split (bench/feedback_profile.py)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes and 5 s phases")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.records, args.single_records, args.bulk_records, args.seconds = 1000, 2000, 5000, 5

    began = time.monotonic()
    figures, notes = [], []
    with throwaway_site("ingest-sqlite") as site:
        found, said = measure(site, args, "SQLite")
        figures += found
        notes += said
        raw = raw_sqlite_rate(site, args.bulk_records)
        split = "" if args.no_profile else feedback_profile.run_in_site(site, 300, 10)
    bulk_rate = next(f.value for f in figures if f.name.startswith("SQLite: bulk"))
    figures.append(Figure("raw sqlite3 INSERT (100/transaction)", raw, "rows/s"))
    figures.append(Figure("SQLite: bulk POST / raw sqlite3", bulk_rate / raw * 100, "%",
                          f">= {BULK_SHARE_TARGET:.0%}", bulk_rate / raw >= BULK_SHARE_TARGET))
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
