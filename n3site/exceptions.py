from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc, context):
    """Placeholder: the service issue makes every error body carry "detail"."""
    return drf_exception_handler(exc, context)
