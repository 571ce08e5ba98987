"""gunicorn settings for the n3 web process (the REST API and the admin).

    gunicorn -c n3site/gunicorn.conf.py n3site.wsgi:application

Every value can be changed by an environment variable here, or on gunicorn's command line (which wins):

- ``N3_BIND`` (``127.0.0.1:8000``): where to listen; put a TLS-terminating proxy in front for anything public.
- ``WEB_CONCURRENCY`` (one per CPU core, at least 2): worker processes. Django's work is CPU-bound under the GIL,
  so processes, not threads, add throughput; on SQLite every write still takes the one write lock in turn.
- ``N3_WEB_THREADS`` (4): threads per worker. Above 1 the worker class is ``gthread``, which keeps client
  connections alive (the sync worker closes each connection after one answer: a new TCP connection per request
  cost the server and the client about a third more CPU per feedback POST in bench/ingest_bench.py), and a
  worker's other threads keep the CPU busy while one waits for SQLite's write lock. 1: the ``sync`` worker.
- ``N3_WEB_TIMEOUT`` (60 s): a worker silent for longer is killed and replaced. Training runs in the qcluster,
  but the first dry run for a new model/batch measures a miniature training in the web process (seconds on
  n3-tiny, a minute or more for bigger models on CPU). A gthread worker stays responsive meanwhile (the request
  runs in one of its threads); with the sync worker (``N3_WEB_THREADS=1``) raise this above that time.
- ``N3_ACCESS_LOG`` (unset: no access log; ``-``: stdout): one line per request costs a little time per request.
- ``DB_CONN_MAX_AGE`` (here 300 s; settings.py's default, for other processes, is 0): each worker (each thread
  under gthread) keeps its database connection between requests. Opening one per request costs more CPU than the
  rest of a feedback POST's database work (on SQLite: the connection, its PRAGMAs and Django's SQL functions;
  about 40 % of the request). Django checks a kept connection before reusing it (CONN_HEALTH_CHECKS).

bench/ingest_bench.py measures the throughput of these settings on the machine at hand.
"""
import os

_cores = os.cpu_count() or 1
# Read by n3site/settings.py when the app loads (below, or in each worker without preload).
os.environ.setdefault("DB_CONN_MAX_AGE", "300")

bind = os.environ.get("N3_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", max(2, _cores)))
threads = int(os.environ.get("N3_WEB_THREADS", 4))
# No worker_class: gunicorn runs "gthread" when threads > 1 and "sync" at 1, whichever sets the threads.
keepalive = 5
timeout = int(os.environ.get("N3_WEB_TIMEOUT", 60))
graceful_timeout = 30
# Django and the app load before the fork: workers start at once and share the code's memory pages.
# Django opens database connections lazily (in each worker), so none is shared across the fork.
preload_app = True
accesslog = os.environ.get("N3_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
