"""A throwaway n3 installation for tests that need several processes (a django-q2 cluster, a job's child).

pytest-django's test database is in memory: another process cannot see it. A Site has its own SQLite file in a
tmp dir, migrated by ``manage.py migrate``; the test drives it through manage.py and reads it with sqlite3.
Built-in base models are shared with the rest of the suite (a symlink to the test MODELS_DIR's ``_base``).
``make_site(tmp_path, DATABASE_URL="postgres://...")`` makes one on PostgreSQL instead (see ``Site.query``).

The web side: ``Site.api_token()`` makes an API user, ``Site.gunicorn()`` serves the site with a real gunicorn on
127.0.0.1, and ``feedback_load()`` drives it with concurrent keep-alive HTTP clients (tests/system/test_load.py,
bench/).
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from django.conf import settings

from tests.servers import free_port, free_ports  # noqa: F401  (tests import them from here too)

ROOT = Path(__file__).resolve().parent.parent

# A run of a few seconds on n3-tiny-random (the training core's own tests cover bigger ones).
LEAN_CONFIG = {
    "base_model": "n3-tiny-random", "batch_size": 2, "mini_batch_size": 2, "ppo_epochs": 1, "max_new_tokens": 8,
    "reward_model_config": {"num_epochs": 1, "batch_size": 4},
}


def feedback_records(n: int = 12) -> list[dict]:
    """Helpful answers scored high, unhelpful ones low."""
    return [
        {"prompt": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}." if i % 2 else "I don't know.",
         "score": 0.9 if i % 2 else 0.1, "run_id": f"run-{i}"}
        for i in range(n)
    ]


def add_steps(version: Any, steps: list[dict]) -> None:
    """TrainingStep rows for ``version``: one per dict of a step's figures under the core's names,
    e.g. {"step": 1, "objective/scores": 0.5, "objective/kl": 0.0, "loss/total": 0.9}."""
    from policies.models import TrainingStep  # noqa: PLC0415  (bench/ imports this module before Django is set up)

    TrainingStep.objects.bulk_create(
        TrainingStep(version=version, step=s["step"], metrics={k: v for k, v in s.items() if k != "step"})
        for s in steps
    )


@dataclass
class Site:
    root: Path
    env: dict[str, str]

    @property
    def db_path(self) -> Path:
        return self.root / "var" / "n3.sqlite3"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def manage(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=self.env, capture_output=True,
            text=True, timeout=timeout, check=check,
        )

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, **kwargs,
        )

    def qcluster(self, name: str = "qcluster") -> subprocess.Popen:
        """``manage.py qcluster`` in a session of its own, as on a machine of its own: ``kill_tree(process.pid)``
        ends it whole. Its output goes to ``root/<name>.log`` (a pipe nobody reads would fill and stall it)."""
        with open(self.root / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "qcluster"], cwd=ROOT, env=self.env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    def shell(self, code: str) -> str:
        return self.manage("shell", "-v", "0", "-c", code).stdout

    def start_job(self, pk: int) -> subprocess.Popen:
        """The django-q2 task, run the way a worker runs it (its own process, on this site's database)."""
        code = f"from training.tasks import run_policy_version; print(run_policy_version({pk}))"
        return self.popen("shell", "-v", "0", "-c", code)

    def queue_version(self, *, agent: str = "bot", max_steps: int = 2, config: Optional[dict] = None) -> int:
        """An agent with 12 scored feedback records and a queued version (its job row waits in the ORM queue).

        ``config``: TrainingConfig fields (snake_case) instead of LEAN_CONFIG."""
        code = f"""
from feedback.services import record_feedback_batch
from policies.models import Agent
from training import services
record_feedback_batch(agent_name={agent!r}, records={feedback_records()!r})
agent = Agent.objects.get(name={agent!r})
config = services.resolve_training_config(agent=agent, overrides={{**{config or LEAN_CONFIG!r}, "max_steps": {max_steps}}})
print(services.queue_training(agent=agent, config=config).pk)
"""  # noqa: E501  (a line of the embedded script; wrapping it would change the string)
        return int(self.shell(code).strip().splitlines()[-1])

    def version(self, pk: int) -> dict:
        with sqlite3.connect(self.db_path, timeout=20) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM policies_policyversion WHERE id = ?", (pk,)).fetchone()
        data = dict(row)
        data["metrics"] = json.loads(data["metrics"] or "{}")
        return data

    def wait_for(self, pk: int, predicate: Callable[[dict], bool], *, timeout: float, poll: float = 0.2,
                 seen: Optional[list] = None) -> dict:
        """Poll the version until ``predicate(row)``; ``seen`` collects each status observed, in order."""
        deadline = time.monotonic() + timeout
        while True:
            row = self.version(pk)
            if seen is not None and (not seen or seen[-1] != row["status"]):
                seen.append(row["status"])
            if predicate(row):
                return row
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting on version {pk}: {row['status']} {row['error']}"
                )
            time.sleep(poll)

    # --- the web side: an API user, a real gunicorn, the database read directly ------------------------------

    def api_token(self, username: str = "load-bot", perms: tuple[str, ...] = ("feedback.add_feedback",)) -> str:
        """A user holding exactly ``perms`` (not staff, not superuser) and its API token's key."""
        code = f"""
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token
user, _ = get_user_model().objects.get_or_create(username={username!r})
for perm in {list(perms)!r}:
    app_label, codename = perm.split(".")
    user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
print(Token.objects.get_or_create(user=user)[0].key)
"""
        return self.shell(code).strip().splitlines()[-1]

    @contextlib.contextmanager
    def gunicorn(self, *, workers: Optional[int] = None, threads: Optional[int] = None, worker_class: str = "",
                 args: tuple[str, ...] = (), ready_timeout: float = 60) -> Iterator[Server]:
        """Serve this site with gunicorn on 127.0.0.1 (a free port) using n3site/gunicorn.conf.py; stop it after.

        None/empty: the config's choice (the ``asgi`` worker serving n3site.serve:application). ``threads``: the
        threads that run Django in each worker (N3_WEB_THREADS). ``worker_class`` "gthread" or "sync": gunicorn's
        threaded or sync worker on the plain WSGI app (n3site.wsgi:application), for comparison. The server's log is
        ``root/gunicorn.log`` (``Server.log()``). N3_WSGI_APP in the environment replaces the application
        (``module:callable``, e.g. a profiling wrapper).
        """
        port = free_port()
        log_path = self.root / "gunicorn.log"
        wsgi = worker_class in ("gthread", "sync")
        app = os.environ.get("N3_WSGI_APP", "n3site.wsgi:application" if wsgi else "n3site.serve:application")
        command = [
            sys.executable, "-m", "gunicorn", "-c", str(ROOT / "n3site" / "gunicorn.conf.py"),
            "--bind", f"127.0.0.1:{port}", "--no-control-socket",  # not the one in $HOME that a real server uses
            *(("--workers", str(workers)) if workers else ()),
            *(("--threads", str(threads)) if threads and wsgi else ()),
            *(("--worker-class", worker_class) if worker_class else ()), *args, app,
        ]
        server_env = {**self.env, **({"N3_WEB_THREADS": str(threads)} if threads else {})}
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, cwd=ROOT, env=server_env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        server = Server(process=process, host="127.0.0.1", port=port, log_path=log_path)
        try:
            server.wait_ready(ready_timeout)
            yield server
        finally:
            server.stop()

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of one SQL query (``?`` placeholders) on the site's own database: SQLite, or DATABASE_URL's
        PostgreSQL."""
        url = self.env.get("DATABASE_URL")
        if url:
            import psycopg  # noqa: PLC0415  (only sites on PostgreSQL need it)

            with psycopg.connect(url) as db:
                return db.execute(sql.replace("?", "%s"), params).fetchall()
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=20)) as db:
            return db.execute(sql, params).fetchall()

    def feedback_rows(self, agent: str) -> dict[str, tuple[int, str, Optional[float]]]:
        """The agent's stored feedback by run id: (rows with that run id, prompt, score)."""
        rows = self.query(
            "SELECT f.run_id, COUNT(*), MIN(f.prompt), MIN(f.score) FROM feedback_feedback f "
            "JOIN policies_agent a ON a.id = f.agent_id WHERE a.name = ? GROUP BY f.run_id", (agent,))
        return {run_id: (count, prompt, score) for run_id, count, prompt, score in rows}


def tmp_models_dir(tmp_path: Path) -> Path:
    """``tmp_path/models``: a MODELS_DIR where versions start afresh, sharing the suite's built base models."""
    shared_base = Path(settings.MODELS_DIR) / "_base"
    shared_base.mkdir(parents=True, exist_ok=True)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "_base").symlink_to(shared_base, target_is_directory=True)
    return tmp_path / "models"


def make_site(tmp_path: Path, **env: str) -> Site:
    tmp_models_dir(tmp_path)
    site = Site(root=tmp_path, env={
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "n3site.settings",
        "SECRET_KEY": "test-site-secret-key",
        "N3_VAR_DIR": str(tmp_path / "var"),
        "MODELS_DIR": str(tmp_path / "models"),
        "STATIC_ROOT": str(tmp_path / "static"),  # collectstatic (the Procfile web line) writes here, not in the repo
        "HF_HUB_OFFLINE": "1",
        "N3_METRICS_INTERVAL": "0.2",
        "N3_Q_POLL": "0.2",
        "LOG_LEVEL": "INFO",
        **env,
    })
    for name in ("DATABASE_URL", "REDIS_URL", "N3_Q_SYNC", "N3_TRAINING_LAUNCHER"):
        if name not in env:
            site.env.pop(name, None)
    site.manage("migrate", "-v", "0")
    return site


def children_of(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: children, their children, ..."""
    found, todo = [], [pid]
    while todo:
        for child in children_of(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to ``pid``, its process group and every descendant (a training process runs in a session of its
    own), as a machine losing power would; returns the process ids signalled."""
    doomed = [pid, *descendants(pid)]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    for each in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, sig)
    return doomed


# --- a real web server and concurrent HTTP clients -------------------------------------------------------------


@dataclass
class Server:
    """A gunicorn started by ``Site.gunicorn``, in its own session (stop() ends it and its workers)."""

    process: subprocess.Popen
    host: str
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float) -> None:
        """Until the API answers (401 without a token is an answer); raises with the log if gunicorn exits first."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                conn.request("GET", "/api/policies/ready-check")
                conn.getresponse().read()
                conn.close()
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"gunicorn did not answer in {timeout} s:\n{self.log()[-4000:]}") from exc
                time.sleep(0.2)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (graceful: workers finish their request), SIGKILL to the whole session after ``timeout``."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, 9)
                self.process.wait(10)
        return self.process.returncode


@dataclass
class LoadResult:
    """What ``feedback_load`` sent and what it got back."""

    records: dict[str, dict] = field(default_factory=dict)  # run id -> the record sent (every one, once)
    statuses: Counter = field(default_factory=Counter)  # HTTP status of every response read (retries included)
    single_latencies: list[float] = field(default_factory=list)  # seconds per single-record POST
    bulk_latencies: list[float] = field(default_factory=list)  # seconds per list POST
    single_requests: int = 0
    bulk_requests: int = 0
    bulk_records: int = 0
    retries: int = 0  # requests sent again after a simulated timeout (same body, same runIds)
    retry_statuses: Counter = field(default_factory=Counter)  # the answers to those re-sends
    reconnects: int = 0  # keep-alive connections the server had closed (request re-sent on a new one)
    errors: list[str] = field(default_factory=list)  # 5xx, unexpected statuses or bodies, connection failures
    wall_s: float = 0.0

    @property
    def requests(self) -> int:
        return self.single_requests + self.bulk_requests

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)

    def problems(self, stored: dict[str, tuple[int, str, Optional[float]]]) -> list[str]:
        """Differences between the records sent and ``stored`` (Site.feedback_rows): lost, doubled, extra, altered."""
        found = []
        missing = [run_id for run_id in self.records if run_id not in stored]
        doubled = [run_id for run_id, (count, _, _) in stored.items() if count != 1]
        extra = [run_id for run_id in stored if run_id not in self.records]
        altered = [
            run_id for run_id, (_, prompt, score) in stored.items() if run_id in self.records
            and (prompt != self.records[run_id]["prompt"] or score != self.records[run_id]["score"])
        ]
        for name, run_ids in (("missing", missing), ("stored more than once", doubled), ("not sent", extra),
                              ("stored with other content", altered)):
            if run_ids:
                found.append(f"{len(run_ids)} {name}: {run_ids[:5]}")
        return found


def load_records(client: int, count: int, rng: random.Random) -> list[dict]:
    """``count`` feedback records for one client, each with its own runId; one in ten awaits review (score null)."""
    return [
        {"prompt": f"Client {client} question {i}: what is {i} times {client}?",
         "response": f"{i} times {client} is {i * client}. " + "x" * rng.randrange(0, 200),
         "score": None if i % 10 == 9 else round(rng.random(), 3),
         "runId": f"{client:02d}-{i:06d}", "notes": "load test" if i % 3 == 0 else ""}
        for i in range(count)
    ]


def feedback_load(
    base_url: str | list[str], token: str, *, agent: str | list[str], records: int, clients: int = 16,
    bulk_share: float = 0.5, bulk_size: tuple[int, int] = (10, 100), retry_clients: int = 4, retry_every: int = 10,
    seed: int = 0, timeout: float = 60, max_seconds: Optional[float] = None, agent_prefix: str = "c",
) -> LoadResult:
    """``clients`` threads, each on its own keep-alive connection, POST ``records`` feedback records in all.

    About ``bulk_share`` of the records go in JSON arrays of ``bulk_size`` records, the rest one per POST, in an
    order mixed at random. The first ``retry_clients`` clients give up on every ``retry_every``-th request as a
    client whose timeout fired would: half the time they close the connection without reading the answer, half
    the time they read it and act as if it was lost; then they send the same body again (same runIds), which must
    answer 200 or 201 with the same records and store nothing twice. Request bodies are built before the clock
    starts; the clock covers sending and reading every response. ``max_seconds``: clients stop starting requests
    after that long (``records`` then lists only what was sent). ``agent_prefix`` starts every runId, so that
    several loads on one agent do not collide. Several ``base_url``s (servers) and ``agent``s: client ``i`` posts to
    server ``i % len(base_url)`` for agent ``i % len(agent)``; each record sent carries its ``agent``.
    """
    base_urls = [base_url] if isinstance(base_url, str) else base_url
    agents = [agent] if isinstance(agent, str) else agent
    result = LoadResult()
    plans = []
    for client in range(clients):
        rng = random.Random(seed * 1000 + client)
        share = records // clients + (1 if client < records % clients else 0)
        mine = load_records(client, share, rng)
        client_agent = agents[client % len(agents)]
        for record in mine:
            record["runId"] = agent_prefix + record["runId"]
        result.records.update(
            {record["runId"]: {"prompt": record["prompt"], "score": record["score"], "agent": client_agent}
             for record in mine}
        )
        mean_bulk = sum(bulk_size) / 2
        p_bulk = bulk_share / (mean_bulk * (1 - bulk_share) + bulk_share) if bulk_share < 1 else 1.0
        plan, i = [], 0
        while i < len(mine):
            if rng.random() < p_bulk:
                size = rng.randint(*bulk_size)
                batch = mine[i:i + size]
                plan.append((True, [r["runId"] for r in batch], json.dumps(batch).encode()))
                i += len(batch)
            else:
                plan.append((False, [mine[i]["runId"]], json.dumps(mine[i]).encode()))
                i += 1
        plans.append(plan)
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    headers = {"Content-Type": "application/json", "Authorization": f"Token {token}"}

    def run(client: int, plan: list) -> None:
        rng = random.Random(seed * 1000 + client + 500)
        retrying = client < retry_clients
        host, port = base_urls[client % len(base_urls)].removeprefix("http://").split(":")
        path = f"/api/policies/feedback/{agents[client % len(agents)]}"
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        statuses, retry_statuses, errors = Counter(), Counter(), []
        single, bulk, reconnects, retries, bulk_records = [], [], 0, 0, 0

        def send(body: bytes) -> tuple[int, bytes]:
            nonlocal reconnects
            for attempt in range(2):
                try:
                    conn.request("POST", path, body, headers)
                    response = conn.getresponse()
                    return response.status, response.read()
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    conn.close()  # the server closed the idle keep-alive connection: same request, new connection
                    if attempt:
                        raise
                    reconnects += 1
            raise AssertionError("unreachable")

        def check(status: int, content: bytes, run_ids: list, is_bulk: bool, allowed: tuple) -> None:
            statuses[status] += 1
            if status not in allowed:
                errors.append(f"client {client}: {status} for {run_ids[0]}: {content[:300]!r}")
                return
            data = json.loads(content)
            got = [item["runId"] for item in data] if is_bulk else [data["runId"]]
            if got != run_ids:
                errors.append(f"client {client}: answer for {run_ids[0]} names {got[:3]}")

        start.wait()
        stop_at = time.perf_counter() + max_seconds if max_seconds else None
        for n, (is_bulk, run_ids, body) in enumerate(plan):
            if stop_at and time.perf_counter() > stop_at:
                with lock:
                    for _, unsent, _ in plan[n:]:
                        for run_id in unsent:
                            del result.records[run_id]
                break
            try:
                if retrying and n % retry_every == retry_every // 2:
                    retries += 1
                    if rng.random() < 0.5:  # gave up before the answer came
                        conn.request("POST", path, body, headers)
                        time.sleep(rng.random() * 0.005)
                        conn.close()
                    else:  # the answer was lost on the way
                        status, content = send(body)
                        check(status, content, run_ids, is_bulk, (201,))
                    began = time.perf_counter()
                    status, content = send(body)
                    retry_statuses[status] += 1
                    check(status, content, run_ids, is_bulk, (200, 201))
                else:
                    began = time.perf_counter()
                    status, content = send(body)
                    check(status, content, run_ids, is_bulk, (201,))
                (bulk if is_bulk else single).append(time.perf_counter() - began)
                bulk_records += len(run_ids) if is_bulk else 0
            except (OSError, http.client.HTTPException, ValueError) as error:
                errors.append(f"client {client}: {type(error).__name__} {error} for {run_ids[0]}")
                conn.close()
        conn.close()
        with lock:
            result.statuses.update(statuses)
            result.retry_statuses.update(retry_statuses)
            result.errors.extend(errors)
            result.single_latencies.extend(single)
            result.bulk_latencies.extend(bulk)
            result.single_requests += len(single)
            result.bulk_requests += len(bulk)
            result.bulk_records += bulk_records
            result.reconnects += reconnects
            result.retries += retries

    threads = [threading.Thread(target=run, args=(client, plan), daemon=True) for client, plan in enumerate(plans)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    result.wall_s = time.perf_counter() - began
    return result


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


@dataclass
class SlowClients:
    """The connections ``slow_clients`` holds open."""

    sockets: list[socket.socket]

    def open_count(self) -> int:
        """How many of the connections the server still holds open (a closed one reads EOF or fails)."""
        count = 0
        for sock in self.sockets:
            sock.setblocking(False)
            try:
                count += sock.recv(1, socket.MSG_PEEK) != b""
            except BlockingIOError:
                count += 1  # open, nothing to read
            except OSError:
                pass
        return count


@contextlib.contextmanager
def slow_clients(host: str, port: int, *, stalled_bodies: int = 8, unfinished_headers: int = 5, tricklers: int = 2,
                 path: str = "/api/policies/feedback/slow-bot") -> Iterator[SlowClients]:
    """Connections that tie up a server which gives each one a thread until its request is read in full.

    ``stalled_bodies`` declare ``Content-Length: 1000`` and send 11 bytes of it; ``unfinished_headers`` send a request
    line and one header, never the blank line; ``tricklers`` send their headers one byte every 0.2 s. All stay open
    (unless the server closes them) until the block exits.
    """
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n".encode()
    sockets, stop = [], threading.Event()
    try:
        for _ in range(stalled_bodies):
            sock = socket.create_connection((host, port), timeout=10)
            sock.sendall(head + b"Content-Length: 1000\r\n\r\n" + b'{"prompt": ')
            sockets.append(sock)
        for _ in range(unfinished_headers):
            sock = socket.create_connection((host, port), timeout=10)
            sock.sendall(head)
            sockets.append(sock)
        trickling = [socket.create_connection((host, port), timeout=10) for _ in range(tricklers)]
        sockets += trickling

        def trickle() -> None:
            text = head + b"X-Padding: " + b"x" * 4000
            for i in range(len(text)):
                for sock in trickling:
                    with contextlib.suppress(OSError):
                        sock.send(text[i:i + 1])
                if stop.wait(0.2):
                    return

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        yield SlowClients(sockets)
    finally:
        stop.set()
        for sock in sockets:
            sock.close()
