import logging

from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate

logger = logging.getLogger(__name__)


class TrainingAppConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "training"
    verbose_name = "Training jobs"

    def ready(self) -> None:
        from django_q.signals import post_spawn

        # The Schedule row lives in django_q's tables: create it once they exist (this app has no models of its
        # own, so Django sends it no post_migrate).
        post_migrate.connect(_ensure_sweep_schedule, sender=apps.get_app_config("django_q"), dispatch_uid="n3-sweep-schedule")
        # Each django-q2 worker sweeps when it starts: jobs that died while no cluster was running end at once.
        post_spawn.connect(_sweep_at_worker_start, dispatch_uid="n3-sweep-at-start")


def _ensure_sweep_schedule(using: str = "default", **kwargs) -> None:
    from training.sweep import ensure_sweep_schedule

    ensure_sweep_schedule(using=using)


def _sweep_at_worker_start(**kwargs) -> None:
    from training.sweep import sweep_stale_versions

    try:
        sweep_stale_versions()
    except Exception:  # a signal receiver that raises would stop the worker from starting
        logger.exception("Sweeping stale training jobs at worker start failed")
