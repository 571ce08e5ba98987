"""manage.py generate_comparison DIRECTORY: both versions' responses to a blind comparison's prompts (the worker's
child; no database, like generate_samples).

training.tasks.generate_comparison writes DIRECTORY/request.json ({"prompts", "model_paths": [A, B],
"max_new_tokens"}), starts this command, and stores what it writes to DIRECTORY/responses.json: {"responses":
[A's, B's]} or {"error": why}. Each version's policy/ is loaded in turn (plain transformers, as the compare page's
samples) and answers every prompt greedily.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from training.comparisons import REQUEST_FILE, RESPONSES_FILE

from .generate_samples import generate


class Command(BaseCommand):
    help = "Generate both versions' responses for a blind comparison (the worker runs it: training/comparisons.py)"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", type=Path, help="Holds request.json; responses.json is written there")

    def handle(self, *args: Any, **options: Any) -> None:
        directory = options["directory"]
        try:
            request = json.loads((directory / REQUEST_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise CommandError(f"No comparison request in {directory}: {exc}") from exc
        prompts = list(request["prompts"])
        responses = []
        for name, path in zip(("A", "B"), request["model_paths"], strict=True):
            try:
                responses.append(generate(path, prompts, int(request["max_new_tokens"])))
            except (OSError, ValueError) as exc:
                error = f"Cannot load the policy of {request['names'][len(responses)]} at {path}: {exc}"
                _write(directory, {"error": error})
                raise CommandError(error) from exc
            self.stdout.write(f"{len(prompts)} responses of {name} generated")
        _write(directory, {"responses": responses})


def _write(directory: Path, data: dict) -> None:
    tmp = directory / f".{RESPONSES_FILE}.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(directory / RESPONSES_FILE)
