"""n3's middleware: Django's MessageMiddleware with the storage made on first use, and a 503 for pages whose
database is away.

LazyMessageMiddleware: Django's MessageMiddleware with the request's message storage made on first use.

Django builds every request's message storage up front: the FallbackStorage, its cookie storage (with a signer) and
its session storage. An API request never adds or reads a message, and a single-record feedback POST spent about
0.012 ms of its 0.32 ms of CPU on it (in-process through Django's WSGI handler, four interleaved runs of 5 x 2,000
POSTs against the previous code: 0.321 -> 0.306 ms). Here the storage is made when a view or template first
touches ``request._messages`` (``messages.success``, ``get_messages``, ``{% for message in messages %}``), as
AuthenticationMiddleware already makes ``request.user``.

Nothing else changes: a storage that nobody touched has nothing to store (``BaseStorage.update`` does nothing when
it was neither read nor added to), so skipping it in process_response answers exactly as Django's middleware does.
The admin's system check accepts this class (it looks for MessageMiddleware or a subclass).
"""
import logging
from functools import partial

from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.messages.storage import default_storage
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse
from django.utils.functional import SimpleLazyObject, empty

from .exceptions import DATABASE_UNAVAILABLE

logger = logging.getLogger(__name__)


class LazyMessageMiddleware(MessageMiddleware):
    def process_request(self, request):
        request._messages = SimpleLazyObject(partial(default_storage, request))

    def process_response(self, request, response):
        storage = getattr(request, "_messages", None)
        if isinstance(storage, SimpleLazyObject) and storage._wrapped is empty:
            return response  # never made: no message was added or read in this request
        return super().process_response(request, response)


class DatabaseUnavailableMiddleware:
    """A page whose database is away (PostgreSQL restarting or failing over, SQLite busy past its timeout) answers
    503 with ``Retry-After: 5`` and a sentence, not Django's 500: the operator's and the reviewer's cue to wait a
    moment. The API answers the same as JSON (n3site.exceptions). Django closes the broken connection at the end of
    the request (``close_old_connections``), so the next request opens a new one."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        logger.warning("Database unavailable for %s: %s", request.path, str(exception).strip())
        response = HttpResponse(DATABASE_UNAVAILABLE, status=503, content_type="text/plain; charset=utf-8")
        response["Retry-After"] = "5"
        return response
