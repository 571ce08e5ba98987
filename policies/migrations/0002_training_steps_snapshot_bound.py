"""Per-step figures move from metrics["history"] into TrainingStep rows; the feedback snapshot becomes an id bound;
agents count the version numbers they gave out; versions record when their training last made progress."""
import django.db.models.deletion
from django.db import migrations, models
from django.db.models import Max

# The spec's names each history entry carried besides the training core's own (they are derived at the API edge).
SPEC_DUPLICATES = ("rewardMean", "rewardStd", "kl", "loss")


def forwards(apps, schema_editor):
    Agent = apps.get_model("policies", "Agent")
    PolicyVersion = apps.get_model("policies", "PolicyVersion")
    TrainingStep = apps.get_model("policies", "TrainingStep")
    for agent in Agent.objects.annotate(last=Max("versions__number")):
        Agent.objects.filter(pk=agent.pk).update(version_counter=agent.last or 0)
    for version in PolicyVersion.objects.all().iterator():
        snapshot = version.feedback_snapshot or []
        version.feedback_through_id = max(snapshot) if snapshot else None
        metrics = dict(version.metrics or {})
        history = metrics.pop("history", None) or []
        version.metrics = metrics
        version.save(update_fields=["feedback_through_id", "metrics"])
        steps = {}
        for index, entry in enumerate(history):
            if isinstance(entry, dict):
                step = entry.get("step") if isinstance(entry.get("step"), int) else index + 1
                steps[step] = {k: v for k, v in entry.items() if k not in SPEC_DUPLICATES}
        TrainingStep.objects.bulk_create(
            TrainingStep(version=version, step=step, metrics=metrics) for step, metrics in steps.items()
        )


def backwards(apps, schema_editor):
    PolicyVersion = apps.get_model("policies", "PolicyVersion")
    Feedback = apps.get_model("feedback", "Feedback")
    for version in PolicyVersion.objects.all().iterator():
        metrics = dict(version.metrics or {})
        metrics["history"] = [{"step": s.step, **s.metrics} for s in version.steps.order_by("step")]
        version.metrics = metrics
        version.feedback_snapshot = list(
            Feedback.objects.filter(agent_id=version.agent_id, id__lte=version.feedback_through_id or 0, score__isnull=False)
            .values_list("id", flat=True)
        )
        version.save(update_fields=["metrics", "feedback_snapshot"])


class Migration(migrations.Migration):

    dependencies = [
        ('policies', '0001_initial'),
        ('feedback', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='agent',
            name='version_counter',
            field=models.PositiveIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name='policyversion',
            name='feedback_through_id',
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='policyversion',
            name='progress_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name='TrainingStep',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('step', models.PositiveIntegerField()),
                ('metrics', models.JSONField(default=dict)),
                ('version', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='steps', to='policies.policyversion')),
            ],
            options={
                'ordering': ['version', 'step'],
                'constraints': [models.UniqueConstraint(fields=('version', 'step'), name='unique_step_per_version')],
            },
        ),
        migrations.RunPython(forwards, backwards),
        migrations.RemoveField(
            model_name='policyversion',
            name='feedback_snapshot',
        ),
    ]
