"""Where ``/`` and the admin's "View site" lead, and the favicon (issue 13, defect 7)."""
import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

pytestmark = pytest.mark.django_db


def client_for(user=None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def user_with(name: str, *codenames: str, staff: bool = True) -> User:
    user = User.objects.create_user(name, password="pw", is_staff=staff)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return User.objects.get(pk=user.pk)


@pytest.mark.parametrize("who, expected", [
    (None, "/admin/login/?next=%2F"),
    ("engineer", "/admin/"),
    ("reviewer", "/review/"),
    ("api", "/api/docs/"),
])
def test_slash_sends_each_user_to_their_work(who, expected):
    users = {
        None: None,
        "engineer": lambda: User.objects.create_superuser("eng", password="pw"),
        "reviewer": lambda: user_with("rita", "view_feedback", "change_feedback"),
        "api": lambda: user_with("bot", "add_feedback", staff=False),
    }
    user = users[who]() if users[who] else None
    response = client_for(user).get("/")
    assert response.status_code == 302 and response["Location"] == expected


def test_the_admin_links_the_site_the_api_docs_and_an_icon():
    html = client_for(User.objects.create_superuser("eng", password="pw")).get("/admin/").content.decode()
    assert '<a href="/">View site</a>' in html
    assert '<a href="/api/docs/">API docs</a>' in html
    assert '<link rel="icon" type="image/svg+xml" href="/static/n3/favicon.svg">' in html
    assert "n3 administration" in html


def test_favicon_ico_leads_to_the_icon():
    response = Client().get("/favicon.ico")
    assert response.status_code == 302 and response["Location"] == "/static/n3/favicon.svg"
