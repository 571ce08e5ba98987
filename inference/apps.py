from django.apps import AppConfig


class InferenceConfig(AppConfig):
    """Registered for its management command (serve_policies); it has no models."""

    name = "inference"
    verbose_name = "Inference"
