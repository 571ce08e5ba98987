"""manage.py serve_policies: the inference process (OpenAI protocol), one gunicorn asgi worker.

One worker process holds the loaded versions and batches every request to a version into one generate(); run more
such processes (each its own port or behind a balancer) to use more machines or GPUs.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from gunicorn.app.base import BaseApplication

from inference.server import make_application
from n3_server.rlhf.threads import use_torch_threads


class Command(BaseCommand):
    help = "Serve the agents' trained policies over the OpenAI protocol (/v1/chat/completions, /v1/completions)"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default=settings.N3_SERVE_BIND, help="host:port (N3_SERVE_BIND)")

    def handle(self, *args: Any, **options: Any) -> None:
        _Gunicorn(options["bind"]).run()


class _Gunicorn(BaseApplication):
    def __init__(self, bind: str):
        self.bind = bind
        super().__init__()

    def load_config(self) -> None:
        for name, value in {
            "bind": self.bind, "workers": 1, "worker_class": "asgi", "timeout": 60, "graceful_timeout": 30,
            "keepalive": 5, "errorlog": "-", "loglevel": settings.LOG_LEVEL.lower(), "control_socket_disable": True,
        }.items():
            if name in self.cfg.settings:
                self.cfg.set(name, value)

    def load(self) -> Any:
        use_torch_threads("inference")  # in the worker, before it loads a model: N3_INFERENCE_THREADS
        return make_application()
