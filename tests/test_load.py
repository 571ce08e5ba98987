"""No feedback is lost or doubled under load: a real gunicorn, 16 concurrent token-auth clients, retries.

Each test serves a throwaway site (tests/sites.py) with gunicorn on 127.0.0.1 and has 16 keep-alive clients POST
1,000 feedback records, singly and in JSON arrays, mixed. Four of the clients give up on every tenth request as if
their timeout fired (closing the connection unread, or dropping the answer) and send the same body again. Then
every record must be in the database exactly once with the content sent, and no answer may be a 5xx.

On SQLite (WAL, IMMEDIATE transactions, busy timeout) always; on PostgreSQL when N3_TEST_DATABASE_URL names a
server this test may create and drop a database on (``postgres://user:password@127.0.0.1:5432/postgres``).
bench/ingest_bench.py runs the same load at full size (10,000 records) and measures throughput. About 8-12 s a test
on a quiet 2-core machine (not marked slow: no training, and no timing is asserted, so a busy machine only waits).
"""
import os
import uuid
from pathlib import Path

import pytest

from tests.sites import Site, feedback_load, make_site

CLIENTS = 16
RECORDS = 1_000


@pytest.fixture
def postgres_url():
    """The URL of a new, empty PostgreSQL database on N3_TEST_DATABASE_URL's server, dropped afterwards."""
    server_url = os.environ.get("N3_TEST_DATABASE_URL", "")
    if not server_url.startswith(("postgres://", "postgresql://")):
        pytest.skip("N3_TEST_DATABASE_URL does not name a PostgreSQL server")
    import psycopg  # noqa: PLC0415

    name = f"n3_load_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = server_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(server_url, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def assert_every_record_stored_once(site: Site, *, workers: int, threads: int, worker_class: str) -> None:
    token = site.api_token()
    with site.gunicorn(workers=workers, threads=threads, worker_class=worker_class) as server:
        result = feedback_load(server.base_url, token, agent="load-bot", records=RECORDS, clients=CLIENTS,
                               bulk_share=0.5, bulk_size=(5, 50), retry_clients=4, retry_every=10)
    log = server.log()

    assert result.errors == [], result.errors[:10]
    assert result.server_errors == 0, result.statuses
    assert result.single_requests > 100 and result.bulk_requests > 5  # both kinds, mixed
    # Retried requests answered with the stored records: mostly 200 (already stored), 201 when the retry won.
    assert result.retries >= 10 and set(result.retry_statuses) <= {200, 201} and result.retry_statuses[200] > 0
    stored = site.feedback_rows("load-bot")
    assert result.problems(stored) == []
    assert len(stored) == RECORDS == len(result.records)
    assert site.query("SELECT COUNT(*) FROM feedback_feedback")[0][0] == RECORDS
    assert "Traceback" not in log, log[-3000:]
    assert f"Using worker: {worker_class}" in log


def test_sqlite_gthread_workers_store_every_record_once(tmp_path: Path):
    assert_every_record_stored_once(make_site(tmp_path), workers=2, threads=4, worker_class="gthread")


def test_sqlite_sync_workers_store_every_record_once(tmp_path: Path):
    assert_every_record_stored_once(make_site(tmp_path), workers=3, threads=1, worker_class="sync")


def test_postgresql_stores_every_record_once(tmp_path: Path, postgres_url: str):
    assert_every_record_stored_once(make_site(tmp_path, DATABASE_URL=postgres_url), workers=2, threads=4,
                                    worker_class="gthread")
