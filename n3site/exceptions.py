"""Service errors and the one place where exceptions become HTTP responses.

Services raise plain Python exceptions (ServiceError subclasses, training-core errors, Django's
ValidationError); views never catch them. ``exception_handler`` turns each into a 4xx whose body
always has "detail", a sentence for a person; validation errors add "errors", a flat map from the
field as the client wrote it (``score``, ``rewardModelConfig.numEpochs``, ``[3].score`` for the
fourth record of a list) to its messages::

    {"detail": "Invalid input: [3].score: Ensure this value is less than or equal to 1.",
     "errors": {"[3].score": ["Ensure this value is less than or equal to 1."]}}
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Optional

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from rest_framework import exceptions, serializers, status
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler

from n3_server.rlhf.errors import RLHFError

logger = logging.getLogger(__name__)

DATABASE_UNAVAILABLE = "The database is unavailable right now (restarting or overloaded); retry in a few seconds."

# At most this many field errors are spelled out in "detail"; "errors" always has them all.
DETAIL_MAX_ERRORS = 5


class ServiceError(Exception):
    """A request that cannot be carried out as asked; ``status_code`` says how to answer it."""

    status_code = 400

    def error_fields(self) -> Optional[dict[str, list[str]]]:
        """Per-field messages for the response's "errors", when the error has them."""
        return None


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    """The request clashes with the current state (e.g. cancelling a finished version)."""

    status_code = 409


class Unavailable(ServiceError):
    """Something the request needs is away for now (the job queue's broker): the client may retry shortly."""

    status_code = 503


class _Status(exceptions.APIException):
    """An APIException with a status and detail chosen per instance."""

    def __init__(self, detail: str, status_code: int, errors: Optional[dict] = None):
        super().__init__(detail)
        self.status_code = status_code
        self.errors = errors


def _translate(exc: Exception) -> Exception:
    """Our own and Django's exceptions as DRF APIExceptions; anything else unchanged (a 500)."""
    if isinstance(exc, ServiceError):
        translated = _Status(str(exc), exc.status_code, exc.error_fields())
        if exc.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
            translated.wait = 5  # DRF's handler sends it as Retry-After
        return translated
    if isinstance(exc, DjangoValidationError):
        return exceptions.ValidationError(serializers.as_serializer_error(exc))
    if isinstance(exc, RLHFError):
        # ConfigError, InsufficientFeedbackError, FeedbackFormatError, BaseModelUnavailable, and a
        # dry run's calibration that went non-finite: all caused by what the request asked for.
        return _Status(str(exc), status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return _Status(
            f"Request body too large: the limit is {limit} bytes (N3_MAX_BODY_BYTES); "
            "send large feedback sets in several requests.",
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, (OperationalError, InterfaceError)):
        # The database is away (PostgreSQL restarting, SQLite busy past its timeout): the client may retry. The
        # request's connection is closed at its end, and the next request opens a new one.
        logger.warning("Database unavailable: %s", str(exc).strip())
        unavailable = _Status(DATABASE_UNAVAILABLE, status.HTTP_503_SERVICE_UNAVAILABLE)
        unavailable.wait = 5  # DRF's handler sends it as Retry-After
        return unavailable
    if isinstance(exc, RecursionError):
        # Python's JSON parser recurses once per nesting level; no n3 request nests deeper than 3.
        return _Status("JSON parse error - the body is nested too deeply.", status.HTTP_400_BAD_REQUEST)
    return exc


def flatten_errors(detail: Any) -> dict[str, list[str]]:
    """DRF's nested error structure as {"field.sub": [messages]}; list items become "[i]"."""
    flat: dict[str, list[str]] = {}
    non_field = api_settings.NON_FIELD_ERRORS_KEY

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if isinstance(key, int):  # an item of a list (DRF keys list errors by index)
                    walk(value, f"{path}[{key}]")
                    continue
                key = "" if key == non_field else str(key)
                walk(value, f"{path}.{key}" if path and key else path or key)
        elif isinstance(node, list) and any(isinstance(item, (Mapping, list)) for item in node):
            for index, item in enumerate(node):  # a valid record of a list has an empty error dict
                walk(item, f"{path}[{index}]")
        else:
            flat.setdefault(path or non_field, []).extend(str(m) for m in (node if isinstance(node, list) else [node]))

    walk(detail, "")
    return flat


def summarize(errors: dict[str, list[str]]) -> str:
    """One sentence naming every field (up to DETAIL_MAX_ERRORS messages)."""
    parts = []
    for path, messages in errors.items():
        for message in messages:
            parts.append(message if path == api_settings.NON_FIELD_ERRORS_KEY else f"{path}: {message}")
    shown = "; ".join(parts[:DETAIL_MAX_ERRORS])
    more = f" (and {len(parts) - DETAIL_MAX_ERRORS} more)" if len(parts) > DETAIL_MAX_ERRORS else ""
    return f"Invalid input: {shown}{more}"


def exception_handler(exc, context):
    """DRF's handler, plus our exceptions, plus the body shape {"detail": ..., "errors"?: ...}."""
    exc = _translate(exc)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a bug: DRF re-raises it and Django answers 500 (logged with its traceback)
    if isinstance(exc, exceptions.ValidationError):
        errors = flatten_errors(exc.detail)
        response.data = {"detail": summarize(errors), "errors": errors}
    elif isinstance(exc, _Status) and exc.errors:
        response.data = {"detail": str(exc.detail), "errors": exc.errors}
    response.data = _encodable(response.data)
    return response


def _encodable(data: Any) -> Any:
    """Messages may quote the client's input, which JSON can carry but UTF-8 cannot (a lone surrogate
    such as "\\ud800"): escape those characters instead of failing to render the error."""
    if isinstance(data, str):
        return data.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(data, Mapping):
        return {_encodable(key): _encodable(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_encodable(item) for item in data]
    return data
