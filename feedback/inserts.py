"""One Feedback row INSERTed with a statement built once per database vendor, not once per record.

``Model.save()`` compiles its INSERT anew for every record: Django's SQL compiler walks every field, quotes every
column and assembles the statement, about a third of a single-record feedback POST's CPU on SQLite
(bench/feedback_profile.py), for a statement that is the same every time. ``insert`` builds it once and runs it
with each field's own conversions (``pre_save``, ``get_db_prep_save``), as ``save()`` does, so the row and the
instance come out the same (tests/feedback/test_feedback_hot_path.py compares them); created_at and updated_at get the
same time (``save()`` reads the clock once for each). Django has no
prepared-statement cache of its own to use instead.

What ``save()`` does besides is kept: a ``pre_save``/``post_save`` receiver for Feedback (none is connected today)
sends the call to ``save()``; inside a transaction the INSERT gets its own savepoint, so a duplicate run id
(IntegrityError) leaves the outer transaction usable; outside one, the single statement is its own transaction
(autocommit), which spares the BEGIN/COMMIT round trips of ``transaction.atomic``.
"""
from __future__ import annotations

from django.db import connections, transaction
from django.db.models import Field, JSONField
from django.db.models.signals import post_save, pre_save
from django.utils import timezone

from .models import Feedback

# vendor -> (sql, fields in the statement's order, whether the statement returns the new id)
_statements: dict[str, tuple[str, list, bool]] = {}


def insert(feedback: Feedback, *, using: str = "default") -> None:
    """INSERT ``feedback`` (a new instance) and set its pk; IntegrityError as ``save(force_insert=True)`` raises."""
    if pre_save.has_listeners(Feedback) or post_save.has_listeners(Feedback):
        with transaction.atomic(using=using):
            feedback.save(force_insert=True, using=using)
        return
    connection = connections[using]
    if connection.in_atomic_block:
        with transaction.atomic(using=using):
            _execute(feedback, connection)
    else:
        _execute(feedback, connection)
    feedback._state.adding = False
    feedback._state.db = using


def _execute(feedback: Feedback, connection) -> None:
    statement = _statements.get(connection.vendor)
    if statement is None:
        statement = _statements[connection.vendor] = _statement(connection)
    sql, fields, returning = statement
    now, stamp = timezone.now(), None  # one time for created_at and updated_at (save() reads the clock for each)
    params = []
    for field, kind in fields:
        if kind is _STAMP:
            setattr(feedback, field.attname, now)
            if stamp is None:
                stamp = field.get_db_prep_save(now, connection)
            params.append(stamp)
            continue
        value = field.pre_save(feedback, True) if kind is _PRE_SAVE else getattr(feedback, field.attname)
        # None is NULL for every field of the table (no JSONField, whose None may be JSON null): no conversion.
        params.append(None if value is None else field.get_db_prep_save(value, connection))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        pk = cursor.fetchone()[0] if returning else cursor.lastrowid
    feedback.pk = pk


# How _execute gets a field's value: an auto_now(_add) timestamp, the field's own pre_save (a field that overrides
# it), or the attribute as it is (what Field.pre_save returns).
_STAMP, _PRE_SAVE, _PLAIN = "stamp", "pre_save", "plain"


def _kind(field) -> str:
    if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
        return _STAMP
    if isinstance(field, JSONField):
        raise TypeError(f"feedback/inserts.py does not convert a JSONField's None ({field.name}): use save()")
    return _PRE_SAVE if type(field).pre_save is not Field.pre_save else _PLAIN


def _statement(connection) -> tuple[str, list, bool]:
    """``INSERT INTO "feedback_feedback" (<every concrete column but the id>) VALUES (%s, ...) [RETURNING "id"]``."""
    meta, quote = Feedback._meta, connection.ops.quote_name
    fields = [field for field in meta.concrete_fields if field is not meta.pk and not field.generated]
    sql = (f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(field.column) for field in fields)}) "
           f"VALUES ({', '.join(['%s'] * len(fields))})")
    # SQLite: lastrowid, not RETURNING. A RETURNING statement holds the database's write lock until its row is
    # fetched, in Python, where another thread may hold the GIL for milliseconds meanwhile while the other writers
    # sleep in SQLite's busy handler; without it the INSERT and its commit end inside one C call.
    returning = connection.features.can_return_columns_from_insert and connection.vendor != "sqlite"
    if returning:
        sql += f" RETURNING {quote(meta.pk.column)}"
    return sql, [(field, _kind(field)) for field in fields], returning
