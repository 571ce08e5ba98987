"""manage.py train_policy: train an agent's next policy version from the command line.

It writes the same PolicyVersion rows as ``POST /api/policies/train_policy/<agent>``: the version shows in the
API and the admin while it trains, whichever way it was started.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from n3_server.rlhf import RLHFError
from n3_server.rlhf.threads import use_torch_threads
from n3site.exceptions import ServiceError
from policies.models import Agent, PolicyVersion
from training import files, services
from training.jobs import run, transitions


class Command(BaseCommand):
    help = (
        "Train AGENT's next policy version on its scored feedback (reward model + PPO), in this process with "
        "progress bars. The configuration is TrainingConfig's defaults (base model N3_DEFAULT_BASE_MODEL) < the "
        "agent's default_training_config < --preset < the options below. --dry-run prints the estimate; --async "
        "queues the job for `manage.py qcluster` instead."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent", nargs="?", help="Agent name, e.g. my_agent")
        parser.add_argument("--dry-run", action="store_true",
                            help="Print the estimate (steps, minutes, feedback statistics) and stop")
        parser.add_argument("--async", dest="run_async", action="store_true",
                            help="Queue the job for a django-q2 worker (manage.py qcluster) and print the version")
        parser.add_argument("--preset",
                            help="Configuration preset: quick_test, production, low_memory, high_performance")
        parser.add_argument("--max-steps", type=int, help="PPO steps")
        parser.add_argument("--learning-rate", type=float, help="Policy learning rate, e.g. 1e-5")
        parser.add_argument("--base-model", help='Base model: "n3-tiny" (built locally), a hub id or a local directory')
        parser.add_argument("--batch-size", type=int, help="Rollouts per PPO step")
        parser.add_argument(
            "--set", dest="set_fields", action="append", default=[], metavar="FIELD=VALUE",
            help="Any other TrainingConfig field, value in JSON (repeatable): --set max_new_tokens=16 "
                 "--set use_lora=false --set reward_model_config.num_epochs=1",
        )
        # Internal: how a django-q2 job runs a version it has claimed (training.jobs.processes.training_command).
        parser.add_argument("--version-id", type=int, help=argparse.SUPPRESS)

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["run_async"]:  # this process trains (or measures): N3_TRAINING_THREADS
            use_torch_threads("training")
        if options["version_id"] is not None:
            return self.run_claimed_version(options["version_id"])
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every process would start a version of its own
            raise CommandError(
                "Several processes (a launcher such as torchrun or accelerate launch) train a version only as a job: "
                "set N3_TRAINING_LAUNCHER and queue it with --async (or the API); see n3_server/rlhf/distributed.py."
            )
        if not options["agent"]:
            raise CommandError("Name the agent to train, e.g. `manage.py train_policy my_agent` (see --help).")
        if options["dry_run"] and options["run_async"]:
            raise CommandError("--dry-run and --async exclude each other.")

        agent = Agent.objects.filter(name=options["agent"]).first()
        if agent is None:
            raise CommandError(f"Agent '{options['agent']}' not found (agents are created by their first feedback).")

        try:
            config = services.resolve_training_config(
                agent=agent, overrides=self.overrides(options), preset=options["preset"]
            )
            if options["dry_run"]:
                return self.print_estimate(services.estimate_training(agent=agent, config=config, measure_here=True))
            version = services.queue_training(agent=agent, config=config, enqueue=options["run_async"])
        except (RLHFError, ServiceError) as exc:  # bad config, too little feedback, a base model that cannot load
            raise CommandError(str(exc)) from exc
        if options["run_async"]:
            self.stdout.write(
                f"Queued {agent.name} {version.version} (policy id {version.policy_id}, {version.feedback_count} "
                f"feedback samples, {version.max_steps} steps).\nA worker trains it: `python manage.py qcluster`. "
                f"Follow it at /api/policies/{agent.name}/{version.version} or in the admin."
            )
            return
        self.train_here(version)

    # -- modes --------------------------------------------------------------------------------------------------
    def train_here(self, version: PolicyVersion) -> None:
        transitions.claim_version(version_id=version.pk)
        self.stdout.write(
            f"Training {version.agent.name} {version.version} on {version.feedback_count} feedback samples "
            f"({version.config['base_model']}, {version.max_steps} steps) "
            f"into {files.version_dir(version.agent.name, version.number)}"
        )
        try:
            with transitions.keep_alive(version_id=version.pk):
                version = run.run_version(version_id=version.pk, progress=True)
        except KeyboardInterrupt as exc:
            raise CommandError(
                f"Interrupted: {version.agent.name} {version.version} is cancelled.", returncode=130
            ) from exc
        if version.status != PolicyVersion.Status.TRAINED:
            raise CommandError(f"{version.agent.name} {version.version} {version.status}: {version.error}")
        self.stdout.write(self.style.SUCCESS(
            f"{version.agent.name} {version.version} trained in {version.metrics.get('duration_seconds', 0):.0f} s: "
            f"reward {_num(version.reward_mean)} ± {_num(version.reward_std)}, KL {_num(version.kl)} "
            f"after {version.step} steps"
        ))
        evaluation = version.evaluation
        if evaluation and "skipped" in evaluation:
            self.stdout.write(f"Not evaluated: {evaluation['skipped']}")
        elif evaluation:
            low, high = evaluation["win_rate_ci"]
            verdict = "better than" if evaluation["better"] else "no evidence that it is better than"
            self.stdout.write(
                f"Evaluation: {verdict} its start ({evaluation['baseline']}): win rate {_num(evaluation['win_rate'])} "
                f"(95 % interval {_num(low)}-{_num(high)}) on {evaluation['n']} held-out samples, "
                f"reward {_num(evaluation['baseline_reward_mean'])} -> {_num(evaluation['reward_mean'])}, "
                f"KL {_num(evaluation['kl'])}"
            )
            if evaluation.get("verdict"):
                self.stdout.write(f"Verdict: {evaluation['verdict']}")
            if evaluation.get("advice"):
                self.stdout.write(f"Next time: {evaluation['advice']}")
        if version.promotion_note:
            self.stdout.write(f"Promotion: {version.promotion_note}")
        for warning in version.warnings:
            self.stdout.write(self.style.WARNING(f"Warning: {warning}"))
        self.stdout.write(f"Policy: {version.model_path}\nReward model: {version.reward_model_path}")

    def run_claimed_version(self, version_id: int) -> None:
        """The child process of a django-q2 job: train, record the outcome, exit 0 (the job reads the version).

        Under N3_TRAINING_LAUNCHER="accelerate launch ..." this runs once per process: rank 0 records everything,
        the other ranks train alongside it and write nothing (training.jobs.run.run_version); a rank that fails exits
        non-zero, and the launcher then stops the others and exits non-zero too.
        """
        # SIGTERM (the job stopping the run, or a shutdown) becomes KeyboardInterrupt: the trainer removes its partial
        # outputs and run_version records the version (cancelled if one was requested) before the process exits.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            run.run_version(version_id=version_id)
        except PolicyVersion.DoesNotExist as exc:
            raise CommandError(f"No policy version with id {version_id}.") from exc
        except ServiceError as exc:
            raise CommandError(str(exc)) from exc
        except KeyboardInterrupt as exc:
            raise CommandError("Interrupted; the version's status and error say how it ended.", returncode=130) from exc

    def print_estimate(self, estimate: Any) -> None:
        lines = [
            f"Feedback:        {estimate.feedback_count} scored samples, "
            f"score {estimate.score_mean:.3f} ± {estimate.score_std:.3f}",
            f"Steps:           {estimate.estimated_steps}",
            f"Estimated time:  {estimate.estimated_time_minutes:g} minutes on this machine",
            f"Model:           {json.dumps(estimate.model_config)}",
        ]
        lines += [f"Warning:         {warning}" for warning in estimate.warnings]
        self.stdout.write("\n".join(lines))

    # -- options ------------------------------------------------------------------------------------------------
    @staticmethod
    def overrides(options: dict[str, Any]) -> dict[str, Any]:
        named = {
            "max_steps": options["max_steps"], "learning_rate": options["learning_rate"],
            "base_model": options["base_model"], "batch_size": options["batch_size"],
        }
        overrides: dict[str, Any] = {}
        for assignment in options["set_fields"]:
            field, sep, raw = assignment.partition("=")
            if not sep or not field:
                raise CommandError(f"--set takes FIELD=VALUE, got {assignment!r}")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw  # a bare string: --set base_model=gpt2
            target = overrides
            *parents, leaf = field.split(".")
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = value
        overrides.update({key: value for key, value in named.items() if value is not None})
        return overrides


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"
