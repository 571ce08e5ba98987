"""manage.py import_feedback FILE --agent NAME [--format jsonl|csv]"""
import sys
import time

from django.core.management.base import BaseCommand, CommandError

from feedback import importexport
from n3site.exceptions import ServiceError


class Command(BaseCommand):
    help = (
        "Import feedback from a JSONL or CSV file (fields: prompt, response, score, runId, notes, policyVersion; "
        "and what export_feedback writes: reviewer, reviewedAt, source). "
        "All or nothing: problems are listed by line number and nothing is stored."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="path to a .jsonl or .csv file ('-' reads JSONL/CSV from stdin with --format)")
        parser.add_argument("--agent", required=True, help="agent name (created if new)")
        parser.add_argument("--format", choices=importexport.FORMATS, help="default: from the file extension")

    def handle(self, *args, file, agent, format=None, **options):
        started = time.monotonic()
        try:
            if file == "-" and not format:
                raise CommandError("Reading from stdin needs --format jsonl or --format csv")
            fmt = format or importexport.format_for(file)
            if file == "-":
                result = importexport.import_feedback(agent_name=agent, stream=sys.stdin.buffer, fmt=fmt)
            else:
                with open(file, "rb") as stream:
                    result = importexport.import_feedback(agent_name=agent, stream=stream, fmt=fmt)
        except FileNotFoundError:
            raise CommandError(f"No such file: {file}") from None
        except importexport.ImportFailed as exc:
            for line, message in exc.errors[:50]:
                self.stderr.write(f"{file}:{line}: {message}")
            if len(exc.errors) > 50:
                self.stderr.write(f"... and {len(exc.errors) - 50} more")
            raise CommandError(f"Nothing imported: {len(exc.errors)} problem(s) in {file}") from None
        except ServiceError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"{result.summary()} ({time.monotonic() - started:.1f} s)"))
