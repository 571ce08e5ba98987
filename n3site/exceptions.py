"""Service errors and the one place where exceptions become HTTP responses.

Services raise plain Python exceptions (ServiceError subclasses, training-core errors, Django's
ValidationError); views never catch them. ``exception_handler`` turns each into a 4xx whose body
always has "detail". (Being completed by the service issue.)
"""
from rest_framework.views import exception_handler as drf_exception_handler


class ServiceError(Exception):
    """A request that cannot be carried out as asked; ``status_code`` says how to answer it."""

    status_code = 400


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    """The request clashes with the current state (e.g. cancelling a finished version)."""

    status_code = 409


def exception_handler(exc, context):
    return drf_exception_handler(exc, context)
