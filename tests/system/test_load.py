"""No feedback is lost or doubled under load: a real gunicorn, 16 concurrent token-auth clients, retries, and
slow clients beside them.

Each test serves a throwaway site (tests/sites.py) with gunicorn on 127.0.0.1 (n3site/gunicorn.conf.py's asgi
worker serving n3site/serve.py) and has 16 keep-alive clients POST 1,000 feedback records, singly and in JSON
arrays, mixed. Four of the clients give up on every tenth request as if their timeout fired (closing the connection
unread, or dropping the answer) and send the same body again. Meanwhile 15 slow clients hold connections open (8
bodies stalled after 11 of 1,000 declared bytes, 5 unfinished headers, 2 headers trickled a byte at a time), and
every normal request must still be answered within its 10 s timeout. Then every record must be in the database
exactly once with the content sent, and no answer may be a 5xx.

On SQLite (WAL, IMMEDIATE transactions, busy timeout) and on a throwaway PostgreSQL (tests/servers.py; CI installs
Debian's postgresql, and N3_TEST_DATABASE_URL may name a server to use instead).
bench/ingest_bench.py runs the same load at full size (10,000 records) and measures throughput. About 5 s a test on
a quiet 2-core machine (not marked slow: no training; the one timing held is the clients' 10 s timeout, which the
load meets in under 1 s even on a busy machine).
"""
from pathlib import Path

import pytest

from tests.servers import postgres_database
from tests.sites import Site, feedback_load, make_site, percentile, slow_clients

CLIENTS = 16
RECORDS = 1_000
TIMEOUT = 10  # seconds a normal client waits for an answer


@pytest.fixture
def postgres_url(postgres):
    """The URL of a new, empty database on the session's PostgreSQL server, dropped afterwards."""
    with postgres_database(postgres.url, prefix="n3_load") as url:
        yield url


def assert_every_record_stored_once(site: Site, *, workers: int, threads: int) -> None:
    token = site.api_token()
    with site.gunicorn(workers=workers, threads=threads) as server:
        with slow_clients(server.host, server.port) as slow:
            result = feedback_load(server.base_url, token, agent="load-bot", records=RECORDS, clients=CLIENTS,
                                   bulk_share=0.5, bulk_size=(5, 50), retry_clients=4, retry_every=10,
                                   timeout=TIMEOUT)
            slow_open = slow.open_count()
    log = server.log()
    print(f"workers={workers} threads={threads}: {result.requests} requests in {result.wall_s:.2f} s beside "
          f"{slow_open} slow clients; single POST p50 {percentile(result.single_latencies, 50) * 1000:.0f} ms, "
          f"p99 {percentile(result.single_latencies, 99) * 1000:.0f} ms, max "
          f"{max(result.single_latencies + result.bulk_latencies):.2f} s")

    assert result.errors == [], result.errors[:10]  # a timed-out request is an error
    assert result.server_errors == 0, result.statuses
    assert slow_open == 15  # the slow clients were held open the whole time, not dropped
    assert result.single_requests > 100 and result.bulk_requests > 5  # both kinds, mixed
    # Retried requests answered with the stored records: mostly 200 (already stored), 201 when the retry won.
    assert result.retries >= 10 and set(result.retry_statuses) <= {200, 201} and result.retry_statuses[200] > 0
    stored = site.feedback_rows("load-bot")
    assert result.problems(stored) == []
    assert len(stored) == RECORDS == len(result.records)
    assert site.query("SELECT COUNT(*) FROM feedback_feedback")[0][0] == RECORDS
    assert "Traceback" not in log, log[-3000:]
    assert "Using worker: asgi" in log


@pytest.mark.slow


def test_sqlite_stores_every_record_once_beside_slow_clients(tmp_path: Path):
    assert_every_record_stored_once(make_site(tmp_path), workers=2, threads=4)


@pytest.mark.slow


def test_one_worker_one_thread_serves_the_load_beside_slow_clients(tmp_path: Path):
    """The narrowest server: every request in turn on one thread; the slow clients must not take it."""
    assert_every_record_stored_once(make_site(tmp_path), workers=1, threads=1)


@pytest.mark.slow


def test_postgresql_stores_every_record_once(tmp_path: Path, postgres_url: str):
    assert_every_record_stored_once(make_site(tmp_path, DATABASE_URL=postgres_url), workers=2, threads=4)
