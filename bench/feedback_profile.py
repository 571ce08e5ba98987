"""Where a feedback POST's CPU time goes, in-process (no HTTP, no gunicorn): the split ingest_bench.py prints.

    .venv/bin/python bench/feedback_profile.py              # a throwaway SQLite site
    .venv/bin/python bench/feedback_profile.py --requests 500 --bulk 20

Runs Django's WSGI handler directly on ``--requests`` single-record POSTs and ``--bulk`` 100-record POSTs with token
auth (a user holding only feedback.add_feedback), in a throwaway site (tests/sites.py; ``--site-env`` runs inside
an existing one instead, as ingest_bench.py does). Each part's CPU time is taken by wrapping the function that does
it (not by a profiler, which would distort the small ones), plus the SQL queries per request. Prints one table.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (label, "module:qualname"): each wrapped; nested labels are parts of the one above (indented in the table).
PARTS = [
    ("token authentication (cached)", "api.authentication:CachedTokenAuthentication.authenticate"),
    ("permission check (cached)", "api.permissions:N3ModelPermissions.has_permission"),
    ("JSON body parsing", "rest_framework.parsers:JSONParser.parse"),
    ("input validation (records rules)", "api.feedback_serializers:validated_feedback"),
    ("service: record_feedback", "feedback.services:record_feedback"),
    ("service: record_feedback_batch", "feedback.services:record_feedback_batch"),
    ("  records.record_problems (both)", "n3_server.rlhf.records:record_problems"),
    ("  agent lookup (1 query)", "policies.services:get_or_create_agent"),
    ("  INSERT (feedback/inserts.py)", "feedback.inserts:insert"),
    ("  INSERT (bulk_create)", "django.db.models.query:QuerySet.bulk_create"),
    ("output: feedback_data", "api.feedback_serializers:feedback_data"),
    ("output: JSON rendering", "rest_framework.renderers:JSONRenderer.render"),
]


def wrap_parts(totals: dict) -> None:
    import importlib  # noqa: PLC0415

    for label, target in PARTS:
        module_name, qualname = target.split(":")
        owner = importlib.import_module(module_name)
        *path, name = qualname.split(".")
        for attr in path:
            owner = getattr(owner, attr)
        original = getattr(owner, name)
        depth = [0]

        def wrapper(*args, __original=original, __label=label, __depth=depth, **kwargs):
            if __depth[0]:  # recursive or nested call of the same function: counted once, at the top
                return __original(*args, **kwargs)
            __depth[0] += 1
            began = time.process_time()
            try:
                return __original(*args, **kwargs)
            finally:
                totals[__label] += time.process_time() - began
                __depth[0] -= 1

        if isinstance(owner, type) and isinstance(owner.__dict__.get(name), staticmethod):
            wrapper = staticmethod(wrapper)
        setattr(owner, name, wrapper)
        if not path:  # a module-level function: also where other modules imported it by name
            for module in list(sys.modules.values()):
                if getattr(module, "__name__", "").split(".")[0] in ("api", "policies", "feedback", "training"):
                    for attr, value in list(vars(module).items()):
                        if value is original:
                            setattr(module, attr, wrapper)


def profile(requests: int, bulk: int) -> None:
    """Runs inside the site's own settings (DJANGO_SETTINGS_MODULE and env of the site)."""
    import django  # noqa: PLC0415

    django.setup()
    from django.contrib.auth import get_user_model  # noqa: PLC0415
    from django.contrib.auth.models import Permission  # noqa: PLC0415
    from django.core.wsgi import get_wsgi_application  # noqa: PLC0415
    from django.db import connection  # noqa: PLC0415
    from django.test.utils import CaptureQueriesContext  # noqa: PLC0415
    from rest_framework.authtoken.models import Token  # noqa: PLC0415

    user, _ = get_user_model().objects.get_or_create(username="profile-bot")
    user.user_permissions.add(Permission.objects.get(content_type__app_label="feedback", codename="add_feedback"))
    token = Token.objects.get_or_create(user=user)[0].key
    app = get_wsgi_application()

    def post(body: bytes) -> str:
        environ = {
            "REQUEST_METHOD": "POST", "PATH_INFO": "/api/policies/feedback/profile-bot", "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000", "HTTP_HOST": "127.0.0.1", "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http",
            "HTTP_AUTHORIZATION": f"Token {token}", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.errors": sys.stderr,
        }
        status = []
        response = app(environ, lambda s, h: status.append(s))
        b"".join(response)
        response.close()
        return status[0]

    def single(i: int) -> bytes:
        return json.dumps({"prompt": f"What is {i}?", "response": f"{i} is {i}. " + "x" * 100, "score": 0.5,
                           "runId": f"s-{i}", "notes": ""}).encode()

    def many(k: int) -> bytes:
        return json.dumps([{"prompt": f"What is {i}?", "response": f"{i} is {i}. " + "x" * 100, "score": 0.5,
                            "runId": f"b-{k}-{i}", "notes": ""} for i in range(100)]).encode()

    for i in range(50):  # warm: code paths, the connection (kept, as under gunicorn.conf.py)
        assert post(single(-1 - i)).startswith("201"), "warm-up POST failed"
    post(many(-1))
    totals: dict = defaultdict(float)
    wrap_parts(totals)
    rows = []
    for kind, count, body, units in (("single", requests, single, 1), ("bulk", bulk, many, 100)):
        totals.clear()
        with CaptureQueriesContext(connection) as queries:
            began = time.process_time()
            for i in range(count):
                status = post(body(i))
                assert status.startswith("201"), status
            total = time.process_time() - began
        rows.append((kind, count, units, total, len(queries.captured_queries), dict(totals)))
    for kind, count, units, total, queries, parts in rows:
        per = 1000 / (count * units)
        unit = "request" if units == 1 else "record (100 per request)"
        print(f"\nCPU per {unit}, {kind} POST, in-process ({count} requests): {total * per:.3f} ms, "
              f"{queries / count:.1f} SQL queries per request")
        accounted = 0.0
        for label, _ in PARTS:
            if parts.get(label):
                print(f"  {label:<36} {parts[label] * per:7.3f} ms  {parts[label] / total:6.1%}")
                accounted += 0 if label.startswith("  ") else parts[label]
        print(f"  {'Django/DRF dispatch, middleware, rest':<36} {(total - accounted) * per:7.3f} ms  "
              f"{(total - accounted) / total:6.1%}")
    sys.stdout.flush()



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--bulk", type=int, default=20)
    parser.add_argument("--in-site", action="store_true", help=argparse.SUPPRESS)  # the child run
    args = parser.parse_args()
    if args.in_site:
        profile(args.requests, args.bulk)
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import throwaway_site  # noqa: PLC0415

    with throwaway_site("profile") as site:
        print(run_in_site(site, args.requests, args.bulk), end="")
    return 0


def run_in_site(site, requests: int, bulk: int) -> str:
    """Run the profile in a child process with the site's settings; returns what it printed."""
    env = {**site.env, "DB_CONN_MAX_AGE": "300", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, __file__, "--in-site", "--requests", str(requests), "--bulk", str(bulk)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode:
        print(done.stdout, done.stderr[-3000:], file=sys.stderr)
        raise RuntimeError("feedback_profile failed")
    return done.stdout


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
