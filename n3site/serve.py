"""The web process as gunicorn serves it: ``gunicorn -c n3site/gunicorn.conf.py n3site.serve:application``.

Why n3 does not serve Django's own ASGI application (n3site.asgi) instead: tried under the same gunicorn ``asgi``
worker (issue 24, item 8), 3 of tests/system/test_http_edges.py's 4 server tests fail, and the API loses about half its
throughput. tests/system/test_load.py and the slow-client test pass under both.

- test_chunked_json_post_is_read_in_full: Django reads a chunked body but sets no CONTENT_LENGTH, so DRF parses
  it as empty (400 "prompt: is required"). Here CONTENT_LENGTH is what was read.
- test_bodies_over_the_limit_answer_413_chunked_or_not: a chunked body over N3_MAX_BODY_BYTES gets that 400 too,
  read in full; a declared Content-Length over it gets no answer until the body comes (none within 10 s).
- test_a_stalled_body_is_answered_408_and_closed: Django drops a stalled request unanswered; gunicorn sends 500.
- Throughput: asgiref runs each request's sync code in a thread of its own, so each request opens a database
  connection, and with DB_CONN_MAX_AGE > 0 leaves it open until garbage-collected (one worker held 49 SQLite
  connections after 200 requests, 71 after 600), so it needs DB_CONN_MAX_AGE=0. bench/ingest_bench.py --quick
  --no-postgres, SQLite, 2 shared cores: 95-119 single feedback POSTs/s against 164-239/s here (-42 to -53 %),
  server CPU 8.9-9.9 ms a POST against 3.0-3.3 ms (DB_CONN_MAX_AGE 0 or 300 alike).

How: the worker reads each request, headers and whole body, on its event loop (a slow client holds a socket, not a
thread); then ``BufferedWSGI`` runs Django's WSGI application in a pool of ``N3_WEB_THREADS`` long-lived threads,
each keeping its database connection (DB_CONN_MAX_AGE). A body is read at most one byte past N3_MAX_BODY_BYTES
(Django answers 413, ``n3site.exceptions``); a declared Content-Length over it is refused unread; a body that stops
coming for N3_WEB_TIMEOUT seconds is answered 408 and its connection closed.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Optional

from django.conf import settings

from n3site.wsgi import application as django_application

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]
# A body above this waits on disk, not in memory: a worker may hold many connections, each with a body on its way.
SPOOL_BYTES = 1024 * 1024


class BufferedWSGI:
    """An ASGI application that buffers each HTTP request, then runs ``app`` (WSGI) in a pool of ``threads``.

    (asgiref's WsgiToAsgi buffers the same way but runs every request of a process in one thread.)"""

    def __init__(self, app: WSGIApp, *, threads: int, max_body_bytes: int):
        self.app, self.threads, self.max_body_bytes = app, threads, max_body_bytes
        self._pool: Optional[ThreadPoolExecutor] = None  # made in the worker, after gunicorn's fork

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        else:  # websocket: nothing in n3 speaks it
            raise ValueError(f"n3 serves HTTP only, not {scope['type']!r}")

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._pool is not None:  # let running requests finish (gunicorn's graceful_timeout bounds it)
                    await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict, receive: Callable, send: Callable) -> None:
        headers = [(name.decode("latin1").lower(), value.decode("latin1")) for name, value in scope["headers"]]
        declared = next((value for name, value in headers if name == "content-length"), None)
        body = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # closed by _respond, or here
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_body_bytes:
            length = int(declared)  # Django refuses it (413) on the declared length: none of the body is read
        else:
            # Read up to one byte past the limit: enough for Django to see it is too large.
            while body.tell() <= self.max_body_bytes:
                message = await receive()
                if message["type"] == "http.disconnect":  # the client left, or its body stalled past the timeout
                    body.close()
                    await send_timeout(send)
                    return
                body.write(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            length = body.tell()
            body.seek(0)
        environ = wsgi_environ(scope, headers, body, length)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="n3-web")
        loop = asyncio.get_running_loop()
        for message in await loop.run_in_executor(self._pool, self._respond, environ, send, loop):
            await send(message)

    def _respond(self, environ: dict, send: Callable, loop: asyncio.AbstractEventLoop) -> list[dict]:
        """Runs in a pool thread: the WSGI call, then ``close()`` (Django's request_finished: the thread's database
        connection is checked in) and the body's file closed. Returns the answer's last messages, for the event loop
        to send; earlier chunks of a streamed answer are sent from here as they come."""

        def send_now(*messages: dict) -> None:  # one hop to the event loop for all of them
            async def send_all() -> None:
                for message in messages:
                    await send(message)

            asyncio.run_coroutine_threadsafe(send_all(), loop).result()

        start: dict = {"sent": False}

        def start_response(status: str, response_headers: list, exc_info: Any = None) -> Callable:
            if exc_info and start["sent"]:
                raise exc_info[1].with_traceback(exc_info[2])
            headers = [(name.lower().encode("latin1"), value.encode("latin1")) for name, value in response_headers]
            code = int(status.split(" ", 1)[0])
            start["message"] = {"type": "http.response.start", "status": code, "headers": headers}
            start["bodiless"] = environ["REQUEST_METHOD"] == "HEAD" or code in (204, 304)  # RFC 9110: no content
            return lambda data: None  # the legacy write() callable: Django never uses it

        def unsent_start() -> list[dict]:
            if start["sent"]:
                return []
            start["sent"] = True
            return [start["message"]]

        response = None
        try:
            response = self.app(environ, start_response)
            # Each chunk goes out when the next one is there: a one-chunk answer (most) goes back whole.
            held: Optional[bytes] = None
            for chunk in response:
                if chunk and not start["bodiless"]:
                    if held is not None:
                        send_now(*unsent_start(), {"type": "http.response.body", "body": held, "more_body": True})
                    held = chunk
            return [*unsent_start(), {"type": "http.response.body", "body": held or b"", "more_body": False}]
        except OSError as exc:  # the client went away while the answer was being sent
            log.debug("Client disconnected during the response: %s", exc)
            return []
        finally:
            if hasattr(response, "close"):
                response.close()
            environ["wsgi.input"].close()


async def send_timeout(send: Callable) -> None:
    """408 to a client whose body stopped coming (gunicorn drops it unsent when the client has gone)."""
    body = json.dumps({"detail": "Request body incomplete: no more of it came within N3_WEB_TIMEOUT seconds."},
                      separators=(",", ":"))
    await send({"type": "http.response.start", "status": 408, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body.encode(), "more_body": False})


def wsgi_environ(scope: dict, headers: list[tuple[str, str]], body: IO[bytes], length: int) -> dict:
    """The WSGI environ (PEP 3333) of a buffered request: CONTENT_LENGTH is what was read (a chunked body's too)."""
    path = scope["path"].encode("utf-8").decode("latin1")
    root = scope.get("root_path", "").encode("utf-8").decode("latin1")
    server = scope.get("server") or ("localhost", 80)
    environ = {
        "REQUEST_METHOD": scope["method"], "SCRIPT_NAME": root, "PATH_INFO": path.removeprefix(root),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin1"),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "SERVER_NAME": server[0], "SERVER_PORT": str(server[1] or 80),
        "wsgi.version": (1, 0), "wsgi.url_scheme": scope.get("scheme", "http"), "wsgi.input": body,
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
    }
    if scope.get("client"):
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = scope["client"][0], str(scope["client"][1])
    for name, value in headers:
        if name in ("content-length", "transfer-encoding"):  # the body is no longer framed: CONTENT_LENGTH says it
            continue
        key = "CONTENT_TYPE" if name == "content-type" else "HTTP_" + name.upper().replace("-", "_")
        separator = "; " if key == "HTTP_COOKIE" else ","
        environ[key] = f"{environ[key]}{separator}{value}" if key in environ else value
    if length:
        environ["CONTENT_LENGTH"] = str(length)
    return environ


application = BufferedWSGI(django_application, threads=int(os.environ.get("N3_WEB_THREADS", 4)),
                           max_body_bytes=settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
