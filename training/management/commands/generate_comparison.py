"""manage.py generate_comparison DIRECTORY: both versions' responses to a blind comparison's prompts (the worker's
child; no database, like generate_samples).

training.tasks.generate_comparison writes DIRECTORY/request.json ({"prompts", "model_paths": [A, B],
"max_new_tokens", "wanted"}), starts this command, and stores what it writes to DIRECTORY/responses.json:
{"responses": [A's, B's]} or {"error": why}. Each version's policy/ is loaded in turn (plain transformers, as the
compare page's samples) and answers the prompts greedily, in rounds: the prompts in order until "wanted" pairs
differ (identical responses are no question for a reviewer), all of them when "wanted" is null. A round takes as
many prompts as the share of differing pairs so far says are needed, so the rounds are few.
"""
from __future__ import annotations

import json
import math
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
        wanted = request.get("wanted") or len(prompts)
        responses: list[list[str]] = [[], []]
        differ = 0
        while len(responses[0]) < len(prompts) and differ < wanted:
            tried = len(responses[0])
            # The share of pairs that differed so far (at least a quarter), to reach ``wanted`` in one more round.
            share = max(differ / tried if tried else 1.0, 0.25)
            batch = prompts[tried:tried + math.ceil((wanted - differ) / share)]
            for i, path in enumerate(request["model_paths"]):
                try:
                    responses[i] += generate(path, batch, int(request["max_new_tokens"]))
                except (OSError, ValueError) as exc:
                    error = f"Cannot load the policy of {request['names'][i]} at {path}: {exc}"
                    _write(directory, {"error": error})
                    raise CommandError(error) from exc
            differ += sum(a != b for a, b in zip(responses[0][tried:], responses[1][tried:], strict=True))
            self.stdout.write(f"{len(batch)} prompts answered by both versions: {differ} pairs differ so far")
        _write(directory, {"responses": responses})


def _write(directory: Path, data: dict) -> None:
    tmp = directory / f".{RESPONSES_FILE}.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(directory / RESPONSES_FILE)
