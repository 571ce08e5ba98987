"""The Procfile's web line with DEBUG off, as the one-machine deployment runs it: the admin and the review queue get
their scripts and styles from the web process itself (WhiteNoise, after the line's collectstatic), and the queue
leaves "Loading the next response…" for the first response in a real Chromium."""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser.test_browser import CHROMIUM, browser  # noqa: F401  (the fixture)
from tests.sites import ROOT, free_port, make_site
from tests.system.test_procfile import wait_for_port

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]


def test_procfile_web_line_serves_the_admin_and_review_queue_static_files(tmp_path, browser):  # noqa: F811
    site = make_site(tmp_path, DEBUG="0")
    site.shell("""
from django.contrib.auth.models import Permission, User
from feedback.models import Feedback
from policies.models import Agent
user = User.objects.create_user("rita", password="correct horse battery", is_staff=True)
user.user_permissions.set(Permission.objects.filter(
    content_type__app_label__in=["feedback", "policies"], codename__startswith="view_",
) | Permission.objects.filter(codename="change_feedback"))
Feedback.objects.create(agent=Agent.objects.create(name="support"), prompt="What is 2+2?", response="4")
""")
    port = free_port()
    env = {
        **site.env, "DEBUG": "0", "STATIC_ROOT": str(tmp_path / "static"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # the venv's python first
        "N3_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "1", "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "honcho.log"
    with open(log, "wb") as out:
        honcho = subprocess.Popen(
            [sys.executable, "-m", "honcho", "start", "-f", str(ROOT / "Procfile"), "-e", os.devnull, "--no-colour",
             "web"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_for_port(port, "/api/policies/ready-check", honcho, log)
        static: dict[str, tuple[int, str]] = {}
        page = browser.new_page()
        page.on("response", lambda r: static.__setitem__(r.url.split(str(port), 1)[1], (
            r.status, r.headers.get("content-encoding", ""))) if "/static/" in r.url else None)
        page.goto(f"http://127.0.0.1:{port}/review/?agent=support")
        assert "/admin/login/" in page.url
        page.fill("#id_username", "rita")
        page.fill("#id_password", "correct horse battery")
        page.click("input[type=submit]")
        page.locator("#n3-prompt").wait_for()  # review.js ran: the item replaced "Loading the next response…"
        assert page.inner_text("#n3-prompt") == "What is 2+2?"
        assert page.locator("#n3-loading").is_hidden()

        # collectstatic's hashed, compressed names (cache-busted), every one found
        scripts = [path for path in static if re.fullmatch(r"/static/n3/review\.[0-9a-f]{12}\.js", path)]
        sheets = [path for path in static if re.fullmatch(r"/static/admin/css/base\.[0-9a-f]{12}\.css", path)]
        assert scripts and sheets, static
        assert all(status == 200 for status, _ in static.values()), static
        assert static[scripts[0]][1] in ("gzip", "br"), static  # served compressed
        # and the admin is styled: its stylesheet applied, not just fetched
        assert page.evaluate("getComputedStyle(document.getElementById('header')).backgroundColor") not in (
            "rgba(0, 0, 0, 0)", "")
    finally:
        honcho.send_signal(signal.SIGTERM)
        try:
            honcho.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait(10)
