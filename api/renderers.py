"""The feedback list as a file: ``?format=jsonl`` or ``csv`` (or the Accept header) picks one of these renderers,
and the view then streams the export's lines (feedback.importexport) instead of rendering a page. They render
nothing themselves: errors are answered in JSON whatever was asked (the view's finalize_response)."""
from rest_framework.renderers import BaseRenderer

from feedback.importexport import CONTENT_TYPES


class _ExportRenderer(BaseRenderer):
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        raise TypeError(f"{type(self).__name__} names a format; the view streams the file itself")


class JSONLinesRenderer(_ExportRenderer):
    media_type = CONTENT_TYPES["jsonl"].split(";")[0]
    format = "jsonl"


class CSVRenderer(_ExportRenderer):
    media_type = CONTENT_TYPES["csv"].split(";")[0]
    format = "csv"


EXPORT_RENDERERS = (JSONLinesRenderer, CSVRenderer)
