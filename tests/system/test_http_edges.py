"""HTTP edge cases against the shipped server config (n3site/gunicorn.conf.py: gunicorn's asgi worker serving
n3site/serve.py): chunked bodies, bodies over N3_MAX_BODY_BYTES, and slow clients beside normal requests.

Each test starts a real gunicorn on a throwaway site (tests/sites.py), one worker where starving it is the point.
Under Django's own ASGI application (N3_WSGI_APP=n3site.asgi:application) the chunked, 413 and 408 tests
fail: they are why n3site/serve.py exists (its docstring says how each fails).
"""
import asyncio
import http.client
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from n3site.serve import BufferedWSGI
from tests.sites import Site, make_site, slow_clients

LIMIT = 4096  # N3_MAX_BODY_BYTES of these sites


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path, N3_MAX_BODY_BYTES=str(LIMIT))


def post(server, token: str, path: str, body, *, timeout: float = 10, **headers) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={
            "Content-Type": "application/json", "Authorization": f"Token {token}", **headers,
        }, encode_chunked=headers.get("Transfer-Encoding") == "chunked")
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def chunks(data: bytes, size: int):
    return (data[i:i + size] for i in range(0, len(data), size))


@pytest.mark.slow


def test_chunked_json_post_is_read_in_full(site: Site):
    token = site.api_token()
    record = {"prompt": "What is 2 plus 2?", "response": "4.", "score": 0.75, "runId": "chunked-1"}
    body = json.dumps(record).encode()
    with site.gunicorn(workers=1) as server:
        status, data = post(server, token, "/api/policies/feedback/chunky", chunks(body, 7),
                            **{"Transfer-Encoding": "chunked"})
    assert status == 201, data
    assert (data["prompt"], data["score"], data["runId"]) == (record["prompt"], 0.75, "chunked-1")
    assert site.feedback_rows("chunky") == {"chunked-1": (1, record["prompt"], 0.75)}


@pytest.mark.slow


def test_bodies_over_the_limit_answer_413_chunked_or_not(site: Site):
    token = site.api_token()
    records = [{"prompt": f"question {i}", "response": "answer " * 20, "score": 0.5} for i in range(60)]
    body = json.dumps(records).encode()
    assert LIMIT < len(body) < 3 * LIMIT
    with site.gunicorn(workers=1) as server:
        chunked = post(server, token, "/api/policies/feedback/big", chunks(body, 1000),
                       **{"Transfer-Encoding": "chunked"})
        # Declared too large: refused on the header, without waiting for a body that never comes.
        sock = socket.create_connection((server.host, server.port), timeout=10)
        sock.sendall(f"POST /api/policies/feedback/big HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Authorization: Token {token}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {100 * LIMIT}\r\n\r\n".encode())
        began = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        declared_seconds = time.monotonic() - began
        sock.close()
        under = post(server, token, "/api/policies/feedback/big", json.dumps(records[:5]).encode())
    assert chunked[0] == 413 and "Request body too large" in chunked[1]["detail"], chunked
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert declared_seconds < 5
    assert under[0] == 201
    assert site.query("SELECT COUNT(*) FROM feedback_feedback")[0][0] == 5  # nothing of the refused ones


@pytest.mark.slow


def test_slow_clients_do_not_starve_a_single_worker(site: Site):
    """8 stalled bodies, 5 unfinished headers and 2 header tricklers against one worker with 4 threads: normal
    requests keep answering within their 5 s timeout. (gunicorn's gthread worker on the same load: the unfinished
    headers alone time every request out.)"""
    token = site.api_token()
    record = {"prompt": "p", "response": "r", "score": 0.5}
    latencies, statuses = [], []
    with site.gunicorn(workers=1, threads=4) as server:
        with slow_clients(server.host, server.port) as slow:
            time.sleep(1)  # the server has read what they sent and waits for the rest
            for i in range(20):
                began = time.monotonic()
                body = json.dumps({**record, "runId": str(i)})
                status, _ = post(server, token, "/api/policies/feedback/fast-bot", body, timeout=5)
                latencies.append(time.monotonic() - began)
                statuses.append(status)
            still_open = slow.open_count()
    assert statuses == [201] * 20
    assert max(latencies) < 5
    assert still_open == 15  # the slow clients were all there, waiting, the whole time
    assert len(site.feedback_rows("fast-bot")) == 20


@pytest.mark.slow


def test_a_stalled_body_is_answered_408_and_closed(tmp_path: Path):
    site = make_site(tmp_path, N3_WEB_TIMEOUT="2")
    with site.gunicorn(workers=1) as server:
        with slow_clients(server.host, server.port, stalled_bodies=1, unfinished_headers=0, tricklers=0) as slow:
            sock = slow.sockets[0]
            sock.settimeout(10)
            began = time.monotonic()
            answer = b""
            while chunk := sock.recv(65536):  # until the server closes the connection
                answer += chunk
            waited = time.monotonic() - began
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["detail"].startswith("Request body incomplete")
    assert 1.5 < waited < 6


def call(bridge: BufferedWSGI, scope: dict, messages: list[dict]) -> list[dict]:
    """One request through the bridge in-process; the messages it sent."""
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(bridge(scope, receive, send))
    return sent


def scope_of(method: str, path: str, headers: list) -> dict:
    return {"type": "http", "method": method, "path": path, "query_string": b"x=1", "root_path": "",
            "headers": headers, "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 5000)}


def test_buffered_wsgi_streams_the_answer_and_closes_it_in_its_thread():
    """The bridge in-process: environ from the scope (path, query, headers, the buffered body's length), a
    streamed answer sent chunk by chunk, none to a HEAD, and the response's close() run in the app's thread."""
    seen = {}

    class Answer(list):
        def close(self):
            seen["closed_in"] = threading.current_thread().name

    def app(environ, start_response):
        seen["environ"] = environ
        seen["body"] = environ["wsgi.input"].read()
        seen["ran_in"] = threading.current_thread().name
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Answer([b"one,", b"", b"two"])

    bridge = BufferedWSGI(app, threads=2, max_body_bytes=100)
    headers = [(b"transfer-encoding", b"chunked"), (b"cookie", b"a=1"), (b"cookie", b"b=2")]
    sent = call(bridge, scope_of("POST", "/api/caf\u00e9", headers), [
        {"type": "http.request", "body": b'{"a": ', "more_body": True},
        {"type": "http.request", "body": b"1}", "more_body": False},
    ])

    environ = seen["environ"]
    assert seen["body"] == b'{"a": 1}' and environ["CONTENT_LENGTH"] == "8"
    assert "HTTP_TRANSFER_ENCODING" not in environ and environ["HTTP_COOKIE"] == "a=1; b=2"
    assert environ["PATH_INFO"] == "/api/caf\u00e9".encode().decode("latin1") and environ["QUERY_STRING"] == "x=1"
    assert [m["type"] for m in sent] == ["http.response.start"] + ["http.response.body"] * 2
    assert [(m["body"], m["more_body"]) for m in sent[1:]] == [(b"one,", True), (b"two", False)]
    assert seen["closed_in"] == seen["ran_in"] and seen["ran_in"].startswith("n3-web")

    head = call(bridge, scope_of("HEAD", "/", []), [{"type": "http.request", "body": b"", "more_body": False}])
    assert [(m["type"], m.get("body")) for m in head] == [("http.response.start", None), ("http.response.body", b"")]
    assert "CONTENT_LENGTH" not in seen["environ"]


def test_buffered_wsgi_bounds_what_it_reads():
    """A body larger than the spool (on disk meanwhile) arrives whole; past the limit, reading stops one byte over
    (Django answers 413 on that length); a declared length over the limit is not read at all."""
    lengths = []

    def app(environ, start_response):
        lengths.append((environ.get("CONTENT_LENGTH"), len(environ["wsgi.input"].read())))
        start_response("204 No Content", [])
        return []

    bridge = BufferedWSGI(app, threads=1, max_body_bytes=3 * 1024 * 1024)
    piece = b"x" * (256 * 1024)
    call(bridge, scope_of("POST", "/", []), [{"type": "http.request", "body": piece, "more_body": True}] * 8
         + [{"type": "http.request", "body": b"", "more_body": False}])
    too_long = [{"type": "http.request", "body": piece, "more_body": True}] * 40
    call(bridge, scope_of("POST", "/", []), too_long)
    declared = [(b"content-length", str(50 * 1024 * 1024).encode())]
    call(bridge, scope_of("POST", "/", declared), [])  # receive() would fail: nothing may be read

    assert lengths == [("2097152", 2097152), (str(3 * 1024 * 1024 + 256 * 1024), 3 * 1024 * 1024 + 256 * 1024),
                       (str(50 * 1024 * 1024), 0)]
    assert len(too_long) == 40 - 13  # read 13 pieces (3.25 MiB), then stopped
