"""bin/demo as a new user runs it: the closed loop, then it keeps serving (admin, API docs, the OpenAI protocol) until
Ctrl-C, which stops every process it started (the worker's children and their training or calibration processes
included); ``--no-serve`` runs the loop and exits, leaving nothing behind.

Two PPO steps per version (N3_DEMO_STEPS), 30 feedback records (N3_DEMO_RECORDS) and the suite's built base models
keep it to a few minutes; what the default run learns is tested in test_effect.py and measured in bench/."""
import http.client
import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.sites import ROOT, descendants, free_ports, tmp_models_dir

pytestmark = pytest.mark.slow

DEMO_TIMEOUT_S = 1500  # a fresh machine builds n3-tiny first (minutes on 2 cores), then trains twice
STOP_TIMEOUT_S = 20


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def running(pid: int, command: str) -> bool:
    """Still running as the process we saw (not a zombie, and its id not reused by another)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and command_line(pid) == command


class Demo:
    """bin/demo in a session of its own (as a terminal runs it), with every process below it recorded as it runs:
    a calibration or training process may start and end between two looks at the tree, a long-lived one not."""

    def __init__(self, tmp_path: Path, *args: str, env: dict):
        self.log_path = tmp_path / f"demo{'-'.join(args)}.log"
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                [str(ROOT / "bin" / "demo"), *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                # Ctrl-C as in a terminal: a test run in the background (nohup, `&`) hands its children SIGINT
                # ignored, and a shell cannot trap a signal ignored on entry.
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
        self.seen: dict[int, str] = {}
        self._watching = True
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while self._watching:
            for pid in descendants(self.process.pid):
                if pid not in self.seen and (command := command_line(pid)):
                    self.seen[pid] = command
            time.sleep(0.2)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, self.log, re.MULTILINE)):
            assert self.process.poll() is None, f"bin/demo exited ({self.process.returncode}):\n{self.log[-5000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} in {timeout} s:\n{self.log[-5000:]}"
            time.sleep(0.5)
        return match

    def left_running(self, timeout: float) -> dict[int, str]:
        """The processes seen below the demo that still run ``timeout`` seconds from now (or fewer, once none is)."""
        self._watching = False
        self._watcher.join()
        deadline = time.monotonic() + timeout
        while True:
            left = {pid: command for pid, command in self.seen.items() if running(pid, command)}
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)

    def kill(self) -> None:
        """After a failed test: nothing of it may outlive the test either."""
        self._watching = False
        for pid in [self.process.pid, *descendants(self.process.pid), *self.seen]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def served_feedback_is_trained_on(database: Path) -> None:
    """The score of the served answer (the one record tied to a version) is in v2's training set, not held out."""
    from n3_server.rlhf import TrainingConfig
    from n3_server.rlhf.data import heldout_split

    with sqlite3.connect(database) as db:
        prompts = [row[0] for row in db.execute("SELECT prompt FROM feedback_feedback")]
        served = db.execute("SELECT prompt FROM feedback_feedback WHERE policy_version_id IS NOT NULL").fetchall()
        counts = dict(db.execute("SELECT number, feedback_count FROM policies_policyversion"))
    assert len(served) == 1, served
    heldout, _ = heldout_split(prompts, TrainingConfig())
    assert heldout and served[0][0] not in heldout
    assert counts[2] == counts[1] + 1 == len(prompts), counts  # v2 trains on one record more than v1: that one


@pytest.fixture
def demo_env(tmp_path):
    web, inference = free_ports(2)
    env = {
        **os.environ,
        "N3_VAR_DIR": str(tmp_path / "var"), "MODELS_DIR": str(tmp_models_dir(tmp_path)),
        "N3_DEMO_PORT": str(web), "N3_DEMO_SERVE_PORT": str(inference), "N3_DEMO_STEPS": "2", "N3_DEMO_RECORDS": "30",
        "N3_Q_POLL": "0.2", "N3_METRICS_INTERVAL": "0.5",
    }
    # As a user runs it: the real settings, no key (so DEBUG=1 on 127.0.0.1), whatever this test process was given.
    for name in ("DJANGO_SETTINGS_MODULE", "SECRET_KEY", "DEBUG", "DATABASE_URL", "REDIS_URL", "N3_Q_SYNC"):
        env.pop(name, None)
    return env, web, inference


def test_demo_keeps_serving_until_ctrl_c_then_stops_everything_and_no_serve_exits(tmp_path, demo_env):
    env, web, inference = demo_env
    demo = Demo(tmp_path, env=env)
    try:
        serving = demo.wait_for_line(r"^Serving: .* API token (\w+)$", DEMO_TIMEOUT_S)
        token = serving.group(1)
        time.sleep(2)
        assert demo.process.poll() is None, f"bin/demo stopped serving:\n{demo.log[-3000:]}"  # the bug: it did

        status, body = get(web, "/admin/login/")
        assert status == 200 and b"Log in" in body, body[:500]
        css = re.search(rb'href="(/static/admin/css/[^"]+\.css)"', body)
        assert css and get(web, css.group(1).decode())[0] == 200  # the admin is styled
        status, body = get(web, "/api/docs/")
        assert status == 200 and b"swagger" in body.lower(), body[:500]
        status, body = get(inference, "/v1/models", {"Authorization": f"Bearer {token}"})
        assert status == 200, body
        assert any(model["id"].startswith("demo_agent") for model in json.loads(body)["data"]), body
        commands = list(demo.seen.values())
        for service in ("qcluster", "runserver", "serve_policies"):
            assert any(service in command for command in commands), commands

        os.killpg(demo.process.pid, signal.SIGINT)  # Ctrl-C in the demo's terminal
        stopped_at = time.monotonic()
        assert demo.process.wait(60) == 130, demo.log[-3000:]
        left = demo.left_running(STOP_TIMEOUT_S)
        assert not left, f"still running after bin/demo stopped: {left}\n{demo.log[-3000:]}"
        assert "stopped" in demo.log.splitlines()[-1]
        # v1 is promoted only if better (two steps learn nothing: it keeps its start, says what to change, and the
        # demo promotes it by hand, showing the API's warning); the served answer's score is in what v2 trains on
        assert re.search(r"^  v1 not promoted: kept the starting model", demo.log, re.MULTILINE), demo.log[-5000:]
        assert re.search(r"^  next time: \S", demo.log, re.MULTILINE), demo.log[-5000:]
        warning = r"^  warning: v1 is not known to be better than the model it started from: kept the starting"
        assert re.search(warning, demo.log, re.MULTILINE), demo.log[-5000:]
        served_feedback_is_trained_on(tmp_path / "var" / "n3.sqlite3")
        # the dry run's header claims no measurement above an estimate that is not one
        assert "measures this machine once" not in demo.log and "(a rough estimate: the worker measures" in demo.log
        print(f"bin/demo: everything stopped {time.monotonic() - stopped_at:.1f} s after Ctrl-C, "
              f"{len(demo.seen)} processes seen")
    finally:
        demo.kill()

    # --no-serve, on the same installation: continues from the active version, then stops everything and exits.
    demo = Demo(tmp_path, "--no-serve", env=env)
    try:
        assert demo.process.wait(DEMO_TIMEOUT_S) == 0, demo.log[-5000:]
        assert "Serving:" not in demo.log and "continues from it" in demo.log, demo.log[-3000:]
        left = demo.left_running(STOP_TIMEOUT_S)
        assert not left, f"still running after bin/demo --no-serve exited: {left}\n{demo.log[-3000:]}"
        for port in (web, inference):
            with pytest.raises(OSError):
                get(port, "/")
    finally:
        demo.kill()

    # Ctrl-C while a version trains: the training process (a grandchild, in a session of its own) stops too.
    demo = Demo(tmp_path, "--no-serve", env=env)
    try:
        demo.wait_for_line(r"^\s+\d+s  running  step", DEMO_TIMEOUT_S)
        os.killpg(demo.process.pid, signal.SIGINT)
        stopped_at = time.monotonic()
        assert demo.process.wait(60) == 130, demo.log[-3000:]
        left = demo.left_running(STOP_TIMEOUT_S)
        assert not left, f"still running after bin/demo stopped mid-training: {left}\n{demo.log[-3000:]}"
        assert re.search(r"^  cancelling demo_agent v\d+$", demo.log, re.MULTILINE), demo.log[-3000:]
        assert any("train_policy" in command for command in demo.seen.values()), demo.seen
        with sqlite3.connect(tmp_path / "var" / "n3.sqlite3") as db:
            status, error = db.execute("SELECT status, error FROM policies_policyversion ORDER BY id DESC").fetchone()
        assert status not in ("queued", "running"), status  # decided, not left for the sweep to find dead
        print(f"bin/demo mid-training: everything stopped {time.monotonic() - stopped_at:.1f} s after Ctrl-C; "
              f"the version is {status} ({error})")
    finally:
        demo.kill()
