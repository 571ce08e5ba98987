"""Throwaway PostgreSQL and Redis servers on 127.0.0.1 for the tests and benchmarks that need the scale-out topology.

``postgres_server()`` / ``redis_server()`` yield a running server (a ``DatabaseServer``) or None when this machine
has no such program. The programs come from Debian's ``postgresql`` and ``redis-server`` packages, which ``.ci/run``
installs when missing; each server gets its own temporary directory and free port and is stopped and removed
afterwards. PostgreSQL refuses to run as root, so as root its programs run as the ``postgres`` user (``runuser``).

``N3_TEST_DATABASE_URL`` (a server this code may create and drop databases on) replaces the throwaway PostgreSQL;
such a given server cannot be restarted by a test. With ``N3_REQUIRE_SERVERS=1`` (set by ``.ci/run``) the fixtures
in tests/conftest.py fail instead of skipping when a server cannot be had, so CI never skips these tests silently.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: every socket stays bound until all are chosen, so the
    kernel cannot hand the same port out twice (two free_port() calls in a row can)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(contextlib.closing(socket.socket())) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _wait_for_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def _program(name: str) -> str | None:
    """A PostgreSQL/Redis program on PATH or in Debian's versioned PostgreSQL directory (not on PATH by default)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return versions[-1] if versions else None


@dataclass
class DatabaseServer:
    """A running server: ``url`` to connect; ``stop()`` / ``start()`` restart it on the same port and data."""

    kind: str  # "postgres" or "redis"
    url: str
    port: int
    _start: list[str] = field(default_factory=list, repr=False)
    _stop: list[str] = field(default_factory=list, repr=False)
    _process: subprocess.Popen | None = field(default=None, repr=False)
    directory: Path | None = None

    @property
    def restartable(self) -> bool:
        return bool(self._start)

    def start(self) -> None:
        if self.kind == "redis":
            log = open(self.directory / "redis.log", "ab")  # noqa: SIM115  (the server process owns it)
            self._process = subprocess.Popen(self._start, stdout=log, stderr=subprocess.STDOUT)
        else:
            subprocess.run(self._start, check=True, capture_output=True, timeout=120)
        if not _wait_for_port(self.port, 60):
            raise RuntimeError(f"{self.kind} did not listen on 127.0.0.1:{self.port} within 60 s")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (``kill``: at once, as a crash would; else a clean, fast shutdown)."""
        if self.kind == "redis":
            if self._process is not None and self._process.poll() is None:
                self._process.kill() if kill else self._process.terminate()
                self._process.wait(30)
        elif self._stop:
            command = [*self._stop, "-m", "immediate" if kill else "fast", "-w", "stop"]
            subprocess.run(command, capture_output=True, timeout=120)

    def restart(self, *, down_s: float = 0.0, kill: bool = False) -> None:
        self.stop(kill=kill)
        time.sleep(down_s)
        self.start()


def _run_as_postgres() -> list[str] | None:
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else None


@contextlib.contextmanager
def postgres_server() -> Iterator[DatabaseServer | None]:
    """A PostgreSQL server: N3_TEST_DATABASE_URL when set, else a throwaway cluster, else None."""
    given = os.environ.get("N3_TEST_DATABASE_URL", "")
    if given.startswith(("postgres://", "postgresql://")):
        yield DatabaseServer("postgres", given, port=0)
        return
    initdb, pg_ctl, as_user = _program("initdb"), _program("pg_ctl"), _run_as_postgres()
    if not (initdb and pg_ctl) or as_user is None:
        yield None
        return
    tmp = Path(tempfile.mkdtemp(prefix="n3-pg-"))
    tmp.chmod(0o777)
    data, port = tmp / "data", free_port()
    options = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200"
    server = DatabaseServer(
        "postgres", f"postgres://postgres@127.0.0.1:{port}/postgres", port, directory=tmp,
        _start=[*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(tmp / "pg.log"), "-w", "start"],
        _stop=[*as_user, pg_ctl, "-D", str(data)],
    )
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120)
        server.start()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, RuntimeError) as error:
        print(f"(no temporary PostgreSQL: {error})", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
        yield None
        return
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def postgres_database(server_url: str, prefix: str = "n3_test") -> Iterator[str]:
    """A new empty database on ``server_url``'s server, dropped afterwards; yields its URL."""
    import psycopg  # noqa: PLC0415  (only the PostgreSQL tests need the driver loaded)

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server_url.rpartition('/')[0]}/{name}"
    finally:
        with contextlib.suppress(Exception), psycopg.connect(server_url, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def redis_server() -> Iterator[DatabaseServer | None]:
    """A throwaway Redis (no persistence: a restart loses what it held, as a Redis without AOF does), else None."""
    program = _program("redis-server")
    if not program:
        yield None
        return
    tmp = Path(tempfile.mkdtemp(prefix="n3-redis-"))
    port = free_port()
    server = DatabaseServer(
        "redis", f"redis://127.0.0.1:{port}/0", port, directory=tmp,
        _start=[program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(tmp), "--daemonize", "no"],
    )
    try:
        server.start()
    except (OSError, RuntimeError) as error:
        print(f"(no temporary Redis: {error})", file=sys.stderr)
        server.stop(kill=True)
        shutil.rmtree(tmp, ignore_errors=True)
        yield None
        return
    try:
        yield server
    finally:
        server.stop(kill=True)
        shutil.rmtree(tmp, ignore_errors=True)
