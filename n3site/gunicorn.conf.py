"""gunicorn settings for the n3 web process (the REST API and the admin).

    gunicorn -c n3site/gunicorn.conf.py n3site.serve:application

The worker class is gunicorn's asyncio one (``asgi``), serving n3site/serve.py: each worker reads requests, headers
and whole bodies, on its event loop and only then runs Django (WSGI) in one of its ``N3_WEB_THREADS`` threads. Slow
or stalled clients (trickled headers, a Content-Length never sent in full) cost a socket, not a thread: with the
``gthread`` worker 8 such connections held a third of the other requests past their timeout and 5 unfinished
headers blocked a one-worker server outright. No proxy is needed for that; one in front (TLS) may buffer or not.
Django's own ASGI application (n3site.asgi) under this worker was tried in its place and fails the chunked,
413 and 408 tests at half the throughput; n3site/serve.py's docstring has the figures.

Every value can be changed by an environment variable here, or on gunicorn's command line (which wins):

- ``N3_BIND`` (``127.0.0.1:8000``): where to listen; put a TLS-terminating proxy in front for anything public.
- ``WEB_CONCURRENCY`` (one per CPU core, at least 2): worker processes. Django's work is CPU-bound under the GIL,
  so processes, not threads, add throughput; on SQLite every write still takes the one write lock in turn.
- ``N3_WEB_THREADS`` (4): threads per worker that run Django (read by n3site/serve.py). A worker's other threads
  keep the CPU busy while one waits for SQLite's write lock or runs a dry run's calibration (seconds on n3-tiny, a
  minute or more for bigger models on CPU). Connections stay alive between requests (keepalive).
- ``N3_WEB_CONNECTIONS`` (1000): open client connections per worker, slow ones included. Headers that never end
  are not timed: each holds one of these (a public proxy's header timeout, e.g. nginx's, bounds them).
- ``N3_WEB_TIMEOUT`` (60 s): a body that stops arriving for this long is answered 408 and its connection closed; a
  worker whose event loop is silent for this long is killed and replaced (a long request in a thread does not).
- ``N3_ACCESS_LOG`` (unset: no access log; ``-``: stdout): one line per request costs a little time per request.
- No control socket (``gunicornc``): its default path is shared by every gunicorn of the user. Signals manage the
  server (HUP reloads, TERM stops gracefully).
- ``DB_CONN_MAX_AGE`` (here 300 s; settings.py's default, for other processes, is 0): each of a worker's threads
  keeps its database connection between requests. Opening one per request costs more CPU than the rest of a
  feedback POST's database work (on SQLite: the connection, its PRAGMAs and Django's SQL functions; about 40 % of
  the request). Django checks a kept connection before reusing it (CONN_HEALTH_CHECKS).

bench/ingest_bench.py measures the throughput of these settings on the machine at hand; tests/system/test_load.py and
tests/system/test_http_edges.py hold them to slow clients and chunked bodies.
"""
import os

_cores = os.cpu_count() or 1
# Read by n3site/settings.py when the app loads (below, or in each worker without preload).
os.environ.setdefault("DB_CONN_MAX_AGE", "300")

wsgi_app = "n3site.serve:application"  # the default when the command line names no application
bind = os.environ.get("N3_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", max(2, _cores)))
worker_class = "asgi"
worker_connections = int(os.environ.get("N3_WEB_CONNECTIONS", 1000))
keepalive = 5
timeout = int(os.environ.get("N3_WEB_TIMEOUT", 60))
graceful_timeout = 30
# Django and the app load before the fork: workers start at once and share the code's memory pages.
# Django opens database connections lazily (in each worker's threads), so none is shared across the fork.
preload_app = True
accesslog = os.environ.get("N3_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# No control socket: gunicorn's default path (~/.gunicorn/gunicorn.ctl or $XDG_RUNTIME_DIR/gunicorn.ctl) is one for
# every gunicorn of the user, so two sites would take it from each other. Reload and stop by signals (HUP, TERM),
# as the Procfile runner and the tests do; manage.py serve_policies turns it off too.
control_socket_disable = True
