"""manage.py calibrate_timing DIGEST: measure a queued dry-run timing key (the worker's child process).

training.tasks.calibrate_timing starts it for a key that training.calibration queued; see that module. The request
file holds the config and the records to train on: no database.
"""
from __future__ import annotations

import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from n3_server.rlhf import RLHFTrainer, TrainingConfig, timing
from n3_server.rlhf.data import prepare_feedback
from n3_server.rlhf.threads import use_torch_threads


class Command(BaseCommand):
    help = "Measure the training speed of a queued dry-run configuration (the worker runs it: training/calibration.py)"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("digest", help="The timing key's digest: MODELS_DIR/_calibration/<digest>.pending.json")

    def handle(self, *args: Any, **options: Any) -> None:
        use_torch_threads("training")  # measured as trainings run: N3_TRAINING_THREADS
        models_dir, digest = settings.MODELS_DIR, options["digest"]
        # The worker stops a measurement when a training is queued (training.tasks.calibrate_timing): SIGTERM becomes
        # KeyboardInterrupt, so the miniature run's scratch directory is removed and the key released on the way out.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        request = timing.read_pending(models_dir, digest)
        if request is None or timing.load_calibration(models_dir, request["key"]) is not None:
            # Measured already (a request re-queued after PENDING_TTL_S while the first one waited): nothing to do.
            timing.release_pending(models_dir, digest)
            self.stdout.write(f"Nothing to measure for {digest}")
            return
        try:
            config = TrainingConfig.from_dict(request["config"])
            records = prepare_feedback(request["records"]).records
            try:
                measured = RLHFTrainer(config, models_dir=models_dir).calibrate(records)
            except Exception as exc:  # the config cannot train here: dry runs with this key say why (a 400)
                timing.store_failure(models_dir, request["key"], f"{type(exc).__name__}: {exc}")
                raise CommandError(f"Measuring {digest} failed: {type(exc).__name__}: {exc}") from exc
            timing.store_calibration(models_dir, request["key"], measured)
            # And under the key as it is now: a built-in base model this run built has a fingerprint now.
            current = {**request["key"], **timing.fingerprints(config, models_dir=models_dir)}
            timing.store_calibration(models_dir, current, measured)
        finally:
            timing.release_pending(models_dir, digest)
        self.stdout.write(f"Measured {digest}: {measured.ppo_step_s:.3f} s per step, {measured.fixed_s:.1f} s fixed")
