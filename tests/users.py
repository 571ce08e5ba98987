"""Staff users and logged-in clients for the tests of admin and reviewer pages."""
from django.contrib.auth.models import Permission, User
from django.test import Client


def staff(username: str, *perms: str) -> User:
    """A staff user holding exactly ``perms`` ("app.codename"), fetched fresh (no stale permission cache)."""
    user = User.objects.create_user(username, password="pw", is_staff=True)
    app_perms = [p.split(".") for p in perms]
    user.user_permissions.set(
        [Permission.objects.get(content_type__app_label=app, codename=codename) for app, codename in app_perms]
    )
    return User.objects.get(pk=user.pk)


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client
