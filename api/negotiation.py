"""DRF's content negotiation with a short way for the common request: no Accept header, ``*/*``, or exactly the
first renderer's media type, and no query string (no ``?format=``).

DRF parses the Accept header into media types and orders them by precedence on every request, a tenth of a
single-record feedback POST's CPU (bench/feedback_profile.py) for the answer it always gives such a request: the
view's first renderer and its media type. Any other request goes the whole way (DefaultContentNegotiation).
"""
from rest_framework.negotiation import DefaultContentNegotiation


class N3ContentNegotiation(DefaultContentNegotiation):
    def select_renderer(self, request, renderers, format_suffix=None):
        meta = request._request.META
        if renderers and not format_suffix and not meta.get("QUERY_STRING"):
            first = renderers[0]
            if meta.get("HTTP_ACCEPT", "*/*").strip() in ("*/*", first.media_type):
                return first, first.media_type
        return super().select_renderer(request, renderers, format_suffix)
