"""Issue 20 item 15: the web gunicorn, started with the shipped n3site/gunicorn.conf.py, opened a control socket
at ~/.gunicorn/gunicorn.ctl (or $XDG_RUNTIME_DIR/gunicorn.ctl): one path shared by every gunicorn of the user, so
two n3 sites (or any other gunicorn) took it from each other, and ``gunicornc`` reached whichever bound last. The
config turns it off, as ``manage.py serve_policies`` does for the inference process."""
import os
import subprocess
import sys
from pathlib import Path

from tests.sites import ROOT, Server, free_port


def test_the_web_gunicorn_opens_no_control_socket_in_home(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "DJANGO_SETTINGS_MODULE": "n3site.settings",
           "SECRET_KEY": "test-secret", "N3_VAR_DIR": str(tmp_path / "var"), "MODELS_DIR": str(tmp_path / "models"),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "WEB_CONCURRENCY": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("XDG_RUNTIME_DIR", None)
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "n3site" / "gunicorn.conf.py"),
             "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = Server(process=process, host="127.0.0.1", port=port, log_path=log_path)
    try:
        server.wait_ready(60)
        assert not (home / ".gunicorn").exists(), server.log()[-2000:]
        assert "control" not in server.log().lower(), server.log()[-2000:]
    finally:
        server.stop()
