"""Shared fixtures: users with and without the API's permissions, API clients that use token auth, and the
session's throwaway PostgreSQL and Redis servers."""
import os

import pytest
from django.contrib.auth.models import Permission
from django.core.cache import cache
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.servers import DatabaseServer, postgres_server, redis_server

# The files whose tests take minutes each (real trainings of hundreds of steps, real servers restarted): they run
# first, so that bin/test's two workers (xdist --dist loadfile hands out files in collection order) do not start them
# last and leave one worker running them alone at the end (CI's wall time: 28 minutes of pytest with them last).
LONG_FILES = ("test_effect.py", "test_demo.py", "test_restarts.py", "test_scale_out.py")


@pytest.hookimpl(trylast=True)  # after pytest-django's own ordering, which the stable sort keeps within each group
def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in LONG_FILES)  # stable: each file's own order is kept


# Everything the REST API checks: feedback POST, train, cancel, reads.
API_PERMISSIONS = (
    "feedback.add_feedback",
    "policies.add_policyversion",
    "policies.change_policyversion",
    "policies.view_policyversion",
)


@pytest.fixture(autouse=True)
def _fresh_cache():
    """The API caches permission sets by user id, and a rolled-back test may hand the next one the same ids."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def make_user(db, django_user_model):
    """make_user("name", "app.codename", ...): a user holding exactly these model permissions."""

    def make(username: str, *perms: str):
        user = django_user_model.objects.create_user(username=username, password="unused-in-tests")
        for perm in perms:
            app_label, codename = perm.split(".")
            user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        return user

    return make


@pytest.fixture
def client_for(db):
    """client_for(user): an APIClient sending ``Authorization: Token <key>`` for that user."""

    def make(user) -> APIClient:
        token, _ = Token.objects.get_or_create(user=user)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return client

    return make


@pytest.fixture
def api_user(make_user):
    """An agent's service account: every API permission, not staff."""
    return make_user("agent-bot", *API_PERMISSIONS)


@pytest.fixture
def api(api_user, client_for) -> APIClient:
    return client_for(api_user)


@pytest.fixture
def user_without_permissions(make_user):
    return make_user("nobody")


@pytest.fixture
def api_without_permissions(user_without_permissions, client_for) -> APIClient:
    """Authenticated (a valid token) but holding no permission."""
    return client_for(user_without_permissions)


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient()


def _server_or_skip(server: DatabaseServer | None, package: str) -> DatabaseServer:
    if server is None:
        message = f"no {package} on this machine (apt-get install {package}; .ci/run does)"
        if os.environ.get("N3_REQUIRE_SERVERS") == "1":
            pytest.fail(message + " and N3_REQUIRE_SERVERS=1")
        pytest.skip(message)
    return server


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server for the session (tests/servers.py); make a database per test on it."""
    with postgres_server() as server:
        yield _server_or_skip(server, "postgresql")


@pytest.fixture(scope="session")
def redis():
    """A throwaway Redis server for the session (tests/servers.py)."""
    with redis_server() as server:
        yield _server_or_skip(server, "redis-server")
