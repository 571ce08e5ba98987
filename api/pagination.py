"""The feedback list's pages: DRF's cursor pagination on the record's id.

A cursor holds the last id seen, so any page costs one index seek on (agent, id) and no COUNT: the thousandth
page is as fast as the first, and records stored meanwhile are neither skipped nor shown twice. A cursor this list
did not make is a 400 naming ``cursor`` (DRF answers 404 "Invalid cursor"; the position must also be an id, or the
database would be asked to compare an id with text).
"""
import re

from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination

from .feedback_serializers import MAX_PAGE_SIZE

_ID = re.compile(r"[0-9]{1,18}")  # within a 64-bit id


class FeedbackCursorPagination(CursorPagination):
    ordering = "id"  # unique and given in insertion order: a cursor on it needs no offset
    page_size = 100
    page_size_query_param = "pageSize"
    max_page_size = MAX_PAGE_SIZE

    def decode_cursor(self, request):
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            cursor = False
        if cursor is False or (cursor is not None and cursor.position is not None
                               and not _ID.fullmatch(cursor.position)):
            raise serializers.ValidationError(
                {"cursor": ["Not a cursor of this list: use the next and previous links as they are given."]})
        return cursor
