"""The feedback list (GET /api/policies/feedback/<agent>) on an agent with many records: a page's time at any depth.

    .venv/bin/python bench/feedback_list_bench.py                      # 1,000,000 records
    nice -n 10 .venv/bin/python bench/feedback_list_bench.py --records 200000

A throwaway installation (tests/sites.py: its own SQLite file in WAL mode, the default settings) under a temp dir,
filled with ``--records`` records of one agent by bulk_create (every 7th awaiting review, one in 50 reviewed by
"alice", a tenth tied to v2 and imported, a tenth tied to v1, another tenth imported), plus a second agent with a
few, in a child process with the site's settings. Then Django's WSGI handler runs in that process (no HTTP, no
gunicorn) with token auth, and the table gives the median wall time of ``--repeat`` requests of: the first page, a
page deep in the list (a cursor at 90 % of the ids), filtered pages (the worst: a filter that matches nothing) and
the list of agents (which counts every agent's records). Pages are the default 100 records. The query plan of the
deep page's SELECT is printed: it must be a seek on an (agent, id) index.
Prints a table; not a test.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import time
from base64 import b64encode
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 100  # a page, at any depth: the target of this bench


def fill(records: int) -> None:
    """``records`` feedback of agent "big" (and 10 of "small"), with versions v1-v2 and alice's reviews."""
    from django.contrib.auth import get_user_model  # noqa: PLC0415  (Django is set up by the caller)
    from django.db import transaction  # noqa: PLC0415

    from feedback.models import Feedback, Review  # noqa: PLC0415
    from policies.models import Agent, PolicyVersion  # noqa: PLC0415

    alice = get_user_model().objects.create_user("alice")
    get_user_model().objects.create_user("bob")
    big, small = Agent.objects.create(name="big"), Agent.objects.create(name="small")
    v1, v2 = (PolicyVersion.objects.create(agent=big, number=n, status="trained") for n in (1, 2))
    big.active_version = v2
    big.save()
    Feedback.objects.bulk_create(Feedback(agent=small, prompt="p", response="r") for _ in range(10))
    chunk = 20_000
    for start in range(0, records, chunk):
        with transaction.atomic():
            rows = [
                Feedback(
                    agent=big, prompt=f"What is {i % 97} plus {i % 89}? (ticket {i})",
                    response=f"{i % 97} plus {i % 89} is {i % 97 + i % 89}.", run_id=f"run-{i}",
                    score=None if i % 7 == 0 and i % 50 != 1 else round((i % 11) / 10, 2),
                    reviewer=alice if i % 50 == 1 else None,
                    source="import" if i % 10 in (3, 5) else "api",
                    policy_version=v2 if i % 10 == 5 else (v1 if i % 10 == 6 else None),
                )
                for i in range(start, min(start + chunk, records))
            ]
            Feedback.objects.bulk_create(rows)
            Review.objects.bulk_create(Review(feedback=row, reviewer=alice, score=row.score)
                                       for row in rows if row.reviewer_id)


def measure(records: int, repeat: int) -> None:
    """Runs inside the site's own settings (DJANGO_SETTINGS_MODULE and env of the site)."""
    import django  # noqa: PLC0415

    django.setup()
    from django.contrib.auth import get_user_model  # noqa: PLC0415
    from django.contrib.auth.models import Permission  # noqa: PLC0415
    from django.core.wsgi import get_wsgi_application  # noqa: PLC0415
    from django.db import connection  # noqa: PLC0415
    from django.utils import timezone  # noqa: PLC0415
    from rest_framework.authtoken.models import Token  # noqa: PLC0415

    from feedback.models import Feedback  # noqa: PLC0415

    began = time.perf_counter()
    fill(records)
    fill_s = time.perf_counter() - began
    user = get_user_model().objects.create_user("bench-reader")
    for app_label, codename in (("feedback", "view_feedback"), ("policies", "view_policyversion")):
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    token = Token.objects.create(user=user).key
    app = get_wsgi_application()

    def get(path: str, query: dict) -> dict:
        environ = {
            "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": urlencode(query), "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000", "HTTP_HOST": "127.0.0.1", "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http",
            "HTTP_AUTHORIZATION": f"Token {token}", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.errors": sys.stderr,
        }
        status = []
        response = app(environ, lambda s, h: status.append(s))
        body = b"".join(response)
        response.close()
        assert status[0].startswith("200"), (status, body[:300])
        return json.loads(body)

    ids = list(Feedback.objects.filter(agent__name="big").order_by("id").values_list("id", flat=True)[::1000])
    deep = b64encode(f"p={ids[int(len(ids) * 0.9)]}".encode()).decode()  # what a `next` link at 90 % holds
    recent = Feedback.objects.get(id=ids[int(len(ids) * 0.95)]).created_at
    future = timezone.now() + timezone.timedelta(days=1)
    big = "/api/policies/feedback/big"
    cases = [
        ("first page", big, {}),
        ("deep page (cursor at 90 %)", big, {"cursor": deep}),
        ("first page, scored=false (1 in 7)", big, {"scored": "false"}),
        ("first page, reviewer=alice (1 in 50)", big, {"reviewer": "alice"}),
        ("first page, policyVersion=v2 & source=import (1 in 10)", big, {"policyVersion": "v2", "source": "import"}),
        ("first page, since (the newest 5 %)", big, {"since": recent.isoformat()}),
        ("deep page, scored=true", big, {"cursor": deep, "scored": "true"}),
        ("empty page, reviewer=bob (no reviews)", big, {"reviewer": "bob"}),
        ("empty page, since tomorrow", big, {"since": future.isoformat()}),
        ("list of agents (counts every record)", "/api/policies/", {}),
    ]
    rows = []
    for label, path, query in cases:
        body = get(path, query)  # warm: code paths, the token and permission caches, SQLite's page cache
        shown = len(body) if isinstance(body, list) else len(body["results"])
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            get(path, query)
            times.append(time.perf_counter() - started)
        rows.append((label, statistics.median(times) * 1000, shown))
    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM feedback_feedback WHERE agent_id = %s AND id > %s ORDER BY id LIMIT 101",
            [Feedback.objects.filter(agent__name="big").values_list("agent_id", flat=True).first(), ids[-1]],
        )
        plan = " / ".join(row[-1] for row in cursor.fetchall())
    print(json.dumps({"fill_s": fill_s, "rows": rows, "plan": plan}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--in-site", action="store_true", help=argparse.SUPPRESS)  # the child run
    args = parser.parse_args()
    if args.in_site:
        measure(args.records, args.repeat)
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import Figure, print_table, throwaway_site  # noqa: PLC0415

    with throwaway_site("feedback-list") as site:
        env = {**site.env, "DB_CONN_MAX_AGE": "300", "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, __file__, "--in-site", "--records", str(args.records), "--repeat", str(args.repeat)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=7200,
        )
    if done.returncode:
        print(done.stdout, done.stderr[-3000:], file=sys.stderr)
        return 1
    result = json.loads(done.stdout.strip().splitlines()[-1])
    figures = []
    for label, ms, shown in result["rows"]:
        target = f"< {TARGET_MS}" if "page" in label else ""
        figures.append(Figure(f"{label} ({shown} shown)", ms, "ms", target, ms < TARGET_MS if target else None))
    print_table(
        f"Feedback list, one agent with {args.records:,} records, SQLite WAL, in-process WSGI, median of "
        f"{args.repeat}", figures,
        [f"filled in {result['fill_s']:.0f} s by bulk_create", f"deep page's plan: {result['plan']}"],
    )
    return 0 if all(figure.passed is not False for figure in figures) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
