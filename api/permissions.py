import re
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.permissions import SAFE_METHODS, BasePermission


class N3ModelPermissions(BasePermission):
    """Each API view names the Django model permission a method needs, e.g.::

        required_permissions = {"GET": "policies.view_policyversion", "POST": "policies.add_policyversion"}

    Reads (GET, HEAD, OPTIONS) are open to everyone when ``settings.N3_PUBLIC_READ`` is on, except the reads of a
    view with ``public_read = False`` (feedback: what end users asked and were answered is not public). Without
    credentials DRF answers 401 (TokenAuthentication, listed first, supplies the WWW-Authenticate
    header); with credentials but without the permission, 403. A method the view does not list is
    refused when the view handles it, so a new method cannot be left open by mistake.

    A user's permissions are cached for N3_PERMISSION_CACHE_SECONDS (see _has_perm).
    """

    def has_permission(self, request, view) -> bool:
        if request.method in SAFE_METHODS and settings.N3_PUBLIC_READ and (
            getattr(view, "public_read", True) or request.method == "OPTIONS"
        ):
            return True
        if not (request.user and request.user.is_authenticated):
            return False
        method = "GET" if request.method in ("HEAD", "OPTIONS") else request.method
        perm = getattr(view, "required_permissions", {}).get(method)
        if perm is None:
            # No handler either: let the view answer 405. A handler without a permission: refuse.
            return not hasattr(view, request.method.lower())
        if not _has_perm(request.user, perm):
            self.message = f"You do not have permission to do this (it needs '{perm}')."
            return False
        return True


def _has_perm(user, perm: str) -> bool:
    """``user.has_perm(perm)``, with the user's permission set cached for N3_PERMISSION_CACHE_SECONDS.

    Django reloads a token's user on every request and with it asks the database for its permissions
    (two queries, a third of a feedback POST's time). An agent posting feedback in a loop does not need
    that: a permission removed in the admin takes effect within the cache time. A deleted token or a
    deactivated user takes effect as api/authentication.py says (at once in the process that changed it, within
    N3_TOKEN_CACHE_SECONDS elsewhere).
    """
    if user.is_active and user.is_superuser:
        return True
    timeout = settings.N3_PERMISSION_CACHE_SECONDS
    if not timeout:
        return user.has_perm(perm)
    key = f"n3:permissions:{user.pk}"
    perms = cache.get(key)
    if perms is None:
        perms = user.get_all_permissions()
        cache.set(key, perms, timeout)
    return perm in perms


# An absolute path of at least two parts ("/srv/n3/models/bot/v1"), not the tail of a URL ("http://host/api/...").
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.-])/(?:[\w.~-]+/)+[\w.~-]*")


def shown_to(request, data: Any) -> Any:
    """Response data as the request's user may see it: an anonymous reader (N3_PUBLIC_READ) gets no server paths.

    Versions' errors, warnings and model paths can name directories of this machine (MODELS_DIR, a base model's
    directory); for anonymous readers MODELS_DIR becomes "MODELS_DIR" and any other absolute path "<path>".
    Links ("url") are kept.
    """
    if request.user and request.user.is_authenticated:
        return data
    roots = sorted({str(settings.MODELS_DIR), str(settings.BASE_DIR)}, key=len, reverse=True)

    def redact(value: Any, key: str = "") -> Any:
        if isinstance(value, str) and key != "url":
            for root in roots:
                value = value.replace(root, "MODELS_DIR" if root == str(settings.MODELS_DIR) else ".")
            return _ABSOLUTE_PATH.sub("<path>", value)
        if isinstance(value, Mapping):
            return {k: redact(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [redact(item) for item in value]
        return value

    return redact(data)
