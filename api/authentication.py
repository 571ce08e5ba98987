"""Token authentication with the token -> user lookup cached per process for N3_TOKEN_CACHE_SECONDS.

DRF's TokenAuthentication reads the token and its user (one SELECT with a join) on every request. An agent that
posts feedback in a loop presents the same token thousands of times a minute; this keeps the answer for
N3_TOKEN_CACHE_SECONDS (0: no cache, every request asks the database), the trade-off the permission cache
(N3_PERMISSION_CACHE_SECONDS) already makes:

- in the process that deletes a token, deletes a user or saves one (deactivates it), the change takes effect at
  once: the signals below drop that process's entries;
- in every other process (the other gunicorn workers, other web machines) it takes effect within
  N3_TOKEN_CACHE_SECONDS, counted from the request that filled the entry. So does a change made without signals
  (``QuerySet.update(is_active=False)``, SQL).

A plain dict per process, not Django's cache framework: its local-memory backend would pickle the user on every
``set`` and unpickle it on every ``get`` (as costly as the SELECT it saves), a shared backend (Redis, memcached)
adds a network round trip per request, and the signals need to drop every entry of a user, which a dict with the
user in its values does in one pass. Only valid tokens are stored (an invalid one is asked of the database each
time), so its size is bounded by the tokens in use.
"""
from __future__ import annotations

import copy
import threading
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save
from django.utils.translation import gettext_lazy as _
from rest_framework import HTTP_HEADER_ENCODING
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed

# token key -> (monotonic expiry, user, token)
_entries: dict[str, tuple[float, object, Token]] = {}
_lock = threading.Lock()


class CachedTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <key>`` as DRF's TokenAuthentication (same 401 bodies, same WWW-Authenticate), with
    the key's user reused for N3_TOKEN_CACHE_SECONDS (module docstring)."""

    def authenticate(self, request):
        """DRF's TokenAuthentication.authenticate, reading the header from META: DRF's get_authorization_header
        builds ``request.headers`` (a dict of every header of the request) to read this one."""
        auth = request._request.META.get("HTTP_AUTHORIZATION", b"")
        if isinstance(auth, str):
            auth = auth.encode(HTTP_HEADER_ENCODING)
        auth = auth.split()
        if not auth or auth[0].lower() != self.keyword.lower().encode():
            return None
        if len(auth) == 1:
            raise AuthenticationFailed(_("Invalid token header. No credentials provided."))
        if len(auth) > 2:
            raise AuthenticationFailed(_("Invalid token header. Token string should not contain spaces."))
        try:
            token = auth[1].decode()
        except UnicodeError:
            raise AuthenticationFailed(
                _("Invalid token header. Token string should not contain invalid characters.")) from None
        return self.authenticate_credentials(token)

    def authenticate_credentials(self, key: str):
        seconds = settings.N3_TOKEN_CACHE_SECONDS
        if seconds <= 0:
            return super().authenticate_credentials(key)
        entry = _entries.get(key)
        if entry is not None and entry[0] > time.monotonic():
            return _copy(entry[1]), entry[2]
        user, token = super().authenticate_credentials(key)  # raises AuthenticationFailed: nothing is stored
        with _lock:
            _entries[key] = (time.monotonic() + seconds, user, token)
        return _copy(user), token


def _copy(user):
    """A copy per request: what a request sets on its user (the permission backend's _perm_cache, say) stays with
    that request, as with a user read from the database. (copy.copy goes through Model.__reduce__: 5x slower.)"""
    clone = object.__new__(type(user))
    clone.__dict__.update(user.__dict__)
    clone._state = copy.copy(user._state)
    return clone


def forget_user(user_pk) -> None:
    """Drop this process's cached tokens of one user."""
    with _lock:
        for key in [key for key, (_, user, _token) in _entries.items() if user.pk == user_pk]:
            del _entries[key]


def forget_all() -> None:
    with _lock:
        _entries.clear()


def _token_deleted(sender, instance: Token, **kwargs) -> None:
    with _lock:
        _entries.pop(instance.key, None)


def _user_changed(sender, instance, **kwargs) -> None:
    forget_user(instance.pk)


# Connected when this module is first imported (DRF imports it with its settings): before that the process has
# cached nothing it would need to forget. A deleted user's tokens are deleted by cascade (post_delete each).
post_delete.connect(_token_deleted, sender=Token, dispatch_uid="n3-token-cache-token")
post_save.connect(_user_changed, sender=get_user_model(), dispatch_uid="n3-token-cache-user-save")
post_delete.connect(_user_changed, sender=get_user_model(), dispatch_uid="n3-token-cache-user-delete")
