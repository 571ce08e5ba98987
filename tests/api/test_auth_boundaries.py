"""Auth boundaries that tests/api/test_auth.py does not already walk: every write endpoint the schema lists (both URL
forms), CSRF on each of them for session auth, the user admin out of reviewers' reach, and the production
settings path (no SECRET_KEY, DEBUG off by default)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from feedback.models import Feedback
from policies.models import Agent, PolicyVersion
from tests.api.test_auth import WRITES

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
# Each write in both URL forms the API answers: the spec's, and with a trailing slash.
EVERY_WRITE = [(method, path + slash, body, perm) for method, path, body, perm in WRITES for slash in ("", "/")]
IDS = [f"{path}" for _, path, _, _ in EVERY_WRITE]


@pytest.fixture(autouse=True)
def queued_version(db):
    return PolicyVersion.objects.create(agent=Agent.objects.create(name="bot"), number=1, status="queued")


def test_the_write_list_covers_every_write_operation_in_the_schema(anonymous):
    schema = json.loads(anonymous.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").content)
    documented = {(method, path) for path, ops in schema["paths"].items() for method in ops
                  if method in ("post", "put", "patch", "delete")}
    concrete = {(method, path.replace("{agent}", "bot").replace("{version}", "v1").replace("{run_id}", "run_1"))
                for method, path in documented}

    assert concrete == {(method, path) for method, path, _, _ in WRITES}


def send(client, method, path, body):
    return getattr(client, method)(path, body, format="json") if body is not None else getattr(client, method)(path)


def assert_nothing_written():
    assert not Feedback.objects.exists()
    assert list(PolicyVersion.objects.values_list("number", "status", "cancel_requested")) == [(1, "queued", False)]


@pytest.mark.parametrize("method, path, body, perm", EVERY_WRITE, ids=IDS)
def test_every_write_refuses_no_token_with_401_and_a_user_without_the_permission_with_403(
    anonymous, api_without_permissions, method, path, body, perm,
):
    unauthenticated = send(anonymous, method, path, body)
    assert unauthenticated.status_code == 401
    assert isinstance(unauthenticated.json()["detail"], str)

    forbidden = send(api_without_permissions, method, path, body)
    assert forbidden.status_code == 403
    assert perm in forbidden.json()["detail"]
    assert_nothing_written()


@pytest.mark.parametrize("method, path, body, perm", EVERY_WRITE, ids=IDS)
def test_every_write_enforces_csrf_for_session_auth(make_user, method, path, body, perm):
    user = make_user("browser-user", perm)
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(user)

    refused = send(browser, method, path, body)
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    assert_nothing_written()

    # The same request with the token from the cookie goes through: CSRF, not the permission, refused it.
    browser.get("/admin/login/")
    token = browser.cookies["csrftoken"].value
    with_token = {"HTTP_X_CSRFTOKEN": token}
    call = getattr(browser, method)
    allowed = call(path, body, format="json", **with_token) if body is not None else call(path, **with_token)
    assert allowed.status_code not in (401, 403), allowed.content


# --- the admin -------------------------------------------------------------------------------------------------


@pytest.fixture
def reviewer():
    """Staff with every feedback and policy permission, none over users or groups."""
    perms = Permission.objects.filter(content_type__app_label__in=["feedback", "policies"])
    user = User.objects.create_user("rita", password="pw", is_staff=True)
    user.user_permissions.set(perms)
    return User.objects.get(pk=user.pk)


def test_reviewers_cannot_see_change_or_escalate_users_and_groups(reviewer):
    client = Client()
    client.force_login(reviewer)
    other = User.objects.create_user("someone", password="pw")

    for url in (reverse("admin:auth_user_add"), reverse("admin:auth_user_change", args=[reviewer.pk]),
                reverse("admin:auth_user_change", args=[other.pk]),
                reverse("admin:auth_user_password_change", args=[other.pk]),
                reverse("admin:auth_group_changelist"), reverse("admin:auth_group_add"),
                reverse("admin:authtoken_tokenproxy_changelist")):
        assert client.get(url).status_code == 403, url
    # Making themselves superuser through the change form is refused, and nothing changes.
    response = client.post(reverse("admin:auth_user_change", args=[reviewer.pk]), {
        "username": "rita", "is_active": "on", "is_staff": "on", "is_superuser": "on",
        "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00",
    })
    assert response.status_code == 403
    reviewer.refresh_from_db()
    assert not reviewer.is_superuser
    # The admin index does not offer the Users or Groups sections either.
    index = client.get(reverse("admin:index")).content.decode()
    assert "/admin/auth/user/" not in index and "/admin/auth/group/" not in index


def test_only_a_superuser_reaches_the_user_admin(reviewer):
    boss = User.objects.create_superuser("boss", password="pw")
    client = Client()
    client.force_login(boss)
    assert client.get(reverse("admin:auth_user_changelist")).status_code == 200
    assert client.get(reverse("admin:auth_user_change", args=[reviewer.pk])).status_code == 200


def test_an_admin_post_without_the_csrf_token_is_refused(reviewer):
    client = Client(enforce_csrf_checks=True)
    client.force_login(reviewer)
    feedback = Feedback.objects.create(agent=Agent.objects.get(name="bot"), prompt="p", response="r")

    response = client.post(reverse("admin:feedback_feedback_delete", args=[feedback.pk]), {"post": "yes"})

    assert response.status_code == 403
    assert Feedback.objects.filter(pk=feedback.pk).exists()


# --- production settings ----------------------------------------------------------------------------------------


def import_settings(**env: str) -> subprocess.CompletedProcess:
    """Import n3site.settings in a fresh Python with exactly these n3 variables (nothing inherited)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG", "DJANGO_SETTINGS_MODULE")}
    code = ("import n3site.settings as s; "
            "print(repr(s.DEBUG), len(s.SECRET_KEY), getattr(s, 'SESSION_COOKIE_HTTPONLY', None))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True,
                          timeout=60)


def test_without_secret_key_and_debug_unset_the_settings_refuse_to_load():
    result = import_settings(N3_VAR_DIR=str(ROOT / "var"))

    assert result.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY must be set when DEBUG is off" in result.stderr


@pytest.mark.parametrize("debug", ["0", "false", "no", "", "off"])
def test_debug_is_off_unless_asked_for_and_then_a_secret_key_is_required(debug):
    result = import_settings(DEBUG=debug)
    assert result.returncode != 0 and "SECRET_KEY must be set" in result.stderr


def test_debug_defaults_to_false_with_a_secret_key():
    result = import_settings(SECRET_KEY="k" * 50)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "50", "True"]


def test_debug_on_runs_without_a_secret_key_for_local_development():
    result = import_settings(DEBUG="1")

    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "True"
