"""manage.py generate_samples DIRECTORY: greedy samples of a version for the compare page (the worker's child).

training.tasks.generate_version_samples starts it for the request that training.samples wrote into the version's
directory; it reads that request and writes samples.json there (no database).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from django.core.management.base import BaseCommand, CommandError, CommandParser
from transformers import AutoModelForCausalLM, AutoTokenizer

from n3_server.rlhf.data import format_query
from training import samples


class Command(BaseCommand):
    help = "Generate a version's greedy samples requested by the compare page (the worker runs it: training/samples.py)"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", type=Path, help="The version's directory, holding samples.request.json")

    def handle(self, *args: Any, **options: Any) -> None:
        directory = options["directory"]
        request = samples.read_request(directory)
        if request is None:
            raise CommandError(f"No samples requested in {directory}.")
        prompts, model_path = list(request["prompts"]), request["model_path"]
        try:
            outputs = generate(model_path, prompts, int(request["max_new_tokens"]))
        except (OSError, ValueError) as exc:
            samples.write_samples(directory, prompts=prompts, outputs=[],
                                  error=f"Cannot load the policy at {model_path}: {exc}")
            raise CommandError(f"Cannot load the policy at {model_path}: {exc}") from exc
        samples.write_samples(directory, prompts=prompts, outputs=outputs)
        self.stdout.write(f"{len(outputs)} samples written to {directory}")


def generate(model_path: str, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy completions, so that differences between versions come from the weights, not from sampling noise."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs = []
    with torch.no_grad():
        for prompt in prompts:
            inputs = tokenizer(format_query(prompt), return_tensors="pt", truncation=True, max_length=256)
            generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
            outputs.append(tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return outputs
