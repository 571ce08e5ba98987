"""manage.py build_base_model [NAME]: build a built-in base model now (once: a complete build is kept under
MODELS_DIR/_base), printing its progress, instead of in the first training that names it.

n3-tiny takes about 2 minutes on 2 cores: a line every ``--every`` pretraining steps says where it is and its loss.
bin/demo runs it before it starts the services."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Optional

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from n3_server.rlhf.base_models import build_base_model
from n3_server.rlhf.layout import BUILTIN_MODELS, N3_TINY
from n3_server.rlhf.progress import Progress


def progress_lines(write: Callable[[str], Any], every: int) -> Callable[[Progress], None]:
    """A build callback writing the first notice, then one at least ``every`` steps after the last it wrote (the
    build notifies every 10th step: 1, 11, 21, ..., so a multiple of 100 alone would print nothing until the end),
    a new phase's first notice, and the last one."""
    shown: dict[str, Optional[Any]] = {"step": None, "message": None}

    def show(progress: Progress) -> None:
        if (shown["step"] is None or progress.message != shown["message"] or progress.step == progress.total
                or progress.step - shown["step"] >= every):
            loss = progress.metrics.get("loss")
            write(f"  {progress.message}: step {progress.step} of {progress.total}"
                  + ("" if loss is None else f", loss {loss:.2f}"))
            shown.update(step=progress.step, message=progress.message)

    return show


class Command(BaseCommand):
    help = "Build a built-in base model (once; kept under MODELS_DIR/_base) and show its progress"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", nargs="?", default=N3_TINY, choices=BUILTIN_MODELS)
        parser.add_argument("--every", type=int, default=100, help="a progress line every this many steps (100)")

    def handle(self, *args: Any, **options: Any) -> None:
        def write(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        # Its own lines say what the build's INFO log line would ("Built n3-tiny in ..."), in the demo's words.
        logger = logging.getLogger("n3_server.rlhf.base_models")
        level = logger.level
        logger.setLevel(logging.WARNING)
        try:
            path = build_base_model(
                options["name"], settings.MODELS_DIR, callback=progress_lines(write, options["every"]),
            )
        finally:
            logger.setLevel(level)
        write(f"  ready at {path}")
