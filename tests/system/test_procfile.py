"""The Procfile starts the one-machine installation: ``honcho start`` runs the web server, the worker and the
inference process; the web server takes feedback; SIGTERM to honcho leaves no process of it behind."""
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sites import ROOT, descendants, free_ports, make_site

pytestmark = pytest.mark.slow


def answer(port: int, method: str, path: str, body=None, token: str = "") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Token {token}"} if token else {})}
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_for_port(port: int, path: str, honcho: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert honcho.poll() is None, f"honcho exited with {honcho.returncode}:\n{log.read_text()[-4000:]}"
        try:
            answer(port, "GET", path)
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing answered on {port} in {timeout} s:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)


def running(pid: int) -> bool:
    """Alive and not a zombie (one its parent has not reaped yet has stopped all the same)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_honcho_start_runs_the_installation_and_stops_every_process(tmp_path):
    site = make_site(tmp_path)  # migrated first, as the README says
    token = site.api_token("procfile-bot")
    web, inference = free_ports(2)
    env = {
        **site.env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # the venv's python first
        "N3_BIND": f"127.0.0.1:{web}", "N3_SERVE_BIND": f"127.0.0.1:{inference}",
        "WEB_CONCURRENCY": "1", "N3_Q_WORKERS": "1", "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "honcho.log"
    with open(log, "wb") as out:
        honcho = subprocess.Popen(
            [sys.executable, "-m", "honcho", "start", "-f", str(ROOT / "Procfile"), "-e", os.devnull, "--no-colour"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    processes: set[int] = set()
    try:
        wait_for_port(web, "/api/policies/ready-check", honcho, log)
        status, body = answer(web, "POST", "/api/policies/feedback/procfile-bot",
                              {"prompt": "What is 2+2?", "response": "4", "score": 0.9, "runId": "honcho-1"}, token)
        assert status == 201, body
        assert site.feedback_rows("procfile-bot") == {"honcho-1": (1, "What is 2+2?", 0.9)}

        wait_for_port(inference, "/v1/models", honcho, log)  # the inference process answers too
        processes = set(descendants(honcho.pid))
        commands = [command_line(pid) for pid in processes]
        assert any("qcluster" in command for command in commands), commands  # and the worker runs
        assert any("serve_policies" in command for command in commands), commands
        assert any("gunicorn" in command for command in commands), commands
    finally:
        processes |= set(descendants(honcho.pid))
        honcho.send_signal(signal.SIGTERM)
        try:
            honcho.wait(60)  # honcho sends SIGTERM to each process group, SIGKILL after 5 s
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait(10)
            raise
    deadline = time.monotonic() + 15
    while any(running(pid) for pid in processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: command_line(pid) for pid in processes if running(pid)}
    assert not left, f"still running after honcho stopped: {left}\n{log.read_text()[-3000:]}"
    text = log.read_text()
    for name in ("web.1", "worker.1", "inference.1"):
        assert f"{name} started" in text, text[-3000:]
