"""Index feedback on (agent, id) instead of on agent alone.

The API's feedback list pages by id within an agent: (agent, id) gives any page with a seek, on PostgreSQL too (a
plain agent_id index does so only on SQLite, where every index ends with the rowid). It also serves what the foreign
key's own index served, which goes after it, so inserts keep the same number of indexes. The foreign key's index is
dropped by name rather than by AlterField, which on SQLite would copy the whole table into a new one.
"""
import django.db.models.deletion
from django.db import migrations, models


def _agent_column_indexes(schema_editor, model) -> list[str]:
    column = model._meta.get_field("agent").column
    return schema_editor._constraint_names(model, [column], index=True, unique=False, primary_key=False)


def drop_agent_index(apps, schema_editor):
    model = apps.get_model("feedback", "Feedback")
    for name in _agent_column_indexes(schema_editor, model):
        schema_editor.execute(schema_editor._delete_index_sql(model, name))


def restore_agent_index(apps, schema_editor):
    model = apps.get_model("feedback", "Feedback")
    if not _agent_column_indexes(schema_editor, model):
        schema_editor.execute(schema_editor._create_index_sql(model, fields=[model._meta.get_field("agent")]))


class Migration(migrations.Migration):

    dependencies = [
        ('feedback', '0003_comparisons'),
        ('policies', '0006_agent_name_no_trailing_newline'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='feedback',
            index=models.Index(fields=['agent', 'id'], name='feedback_agent_id'),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='feedback',
                    name='agent',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                                            related_name='feedback', to='policies.agent'),
                ),
            ],
            database_operations=[migrations.RunPython(drop_agent_index, restore_agent_index)],
        ),
    ]
