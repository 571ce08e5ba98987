import logging

from django.apps import AppConfig, apps
from django.db import transaction
from django.db.models.signals import post_delete, post_migrate
from django.utils import timezone

logger = logging.getLogger(__name__)


class TrainingAppConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "training"
    verbose_name = "Training jobs"

    def ready(self) -> None:
        # Imported here: models (and django-q2's, which its signals import) cannot load before the app registry.
        from django_q.signals import post_spawn  # noqa: PLC0415

        from policies.models import Agent, PolicyVersion  # noqa: PLC0415

        # django_q's tables exist once its migrations ran (this app has no models: Django sends it no post_migrate).
        post_migrate.connect(_delete_old_sweep_schedule, sender=apps.get_app_config("django_q"),
                             dispatch_uid="n3-sweep-schedule")
        post_spawn.connect(_worker_started, dispatch_uid="n3-worker-started")
        # However a version or agent is deleted (admin, bulk action, shell, cascade), its files go with it.
        post_delete.connect(_version_deleted, sender=PolicyVersion, dispatch_uid="n3-version-files")
        post_delete.connect(_agent_deleted, sender=Agent, dispatch_uid="n3-agent-files")


def _delete_old_sweep_schedule(using: str = "default", **kwargs) -> None:
    from training.jobs.sweep import delete_old_sweep_schedule  # noqa: PLC0415  (this module loads before the models)

    delete_old_sweep_schedule(using=using)


def _worker_started(**kwargs) -> None:
    """A django-q2 worker starts: it releases the jobs a stopped cluster fetched and never ran, sweeps at once
    (jobs that died while no cluster ran end now) and then every N3_SWEEP_INTERVAL s in a thread, and learns how
    to tell that its cluster is stopping."""
    from training.jobs import sweep, worker  # noqa: PLC0415  (this module loads before the models)

    started = timezone.now()
    worker.started()
    try:
        sweep.release_stranded_jobs(locked_before=started)
        sweep.sweep_stale_versions()
    except Exception:  # a signal receiver that raises would stop the worker from starting
        logger.exception("Sweeping stale training jobs at worker start failed")
    sweep.SweepThread().start()


def _version_deleted(instance, using: str = "default", **kwargs) -> None:
    from training.files import remove_version_files  # noqa: PLC0415  (this module loads before the models)

    agent_name, number = instance.agent.name, instance.number
    transaction.on_commit(lambda: remove_version_files(agent_name=agent_name, number=number), using=using)


def _agent_deleted(instance, using: str = "default", **kwargs) -> None:
    from training.files import remove_agent_files  # noqa: PLC0415  (this module loads before the models)

    agent_name = instance.name
    transaction.on_commit(lambda: remove_agent_files(agent_name=agent_name), using=using)
