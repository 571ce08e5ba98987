"""manage.py export_feedback --agent NAME [--format jsonl|csv] [-o FILE]"""

from django.core.management.base import BaseCommand, CommandError

from feedback import importexport
from n3site.exceptions import ServiceError
from policies.models import Agent


class Command(BaseCommand):
    help = (
        "Export an agent's feedback as JSONL or CSV, oldest first: every stored field (prompt, response, score, "
        "runId, notes, policyVersion, reviewer, reviewedAt, source); import_feedback reads it back."
    )

    def add_arguments(self, parser):
        parser.add_argument("--agent", required=True, help="agent name")
        parser.add_argument("--format", choices=importexport.FORMATS, default=None,
                            help="default: from the -o file's extension, else jsonl")
        parser.add_argument("-o", "--output", help="file to write (default: standard output)")
        parser.add_argument("--scored-only", action="store_true", help="leave out responses awaiting review")

    def handle(self, *args, agent, format=None, output=None, scored_only=False, **options):
        if not Agent.objects.filter(name=agent).exists():
            raise CommandError(f"No agent named {agent!r}")
        fmt = format or "jsonl"
        if output and not format:
            try:
                fmt = importexport.format_for(output)
            except ServiceError:
                pass  # an unusual extension: JSONL, the default
        if output:
            with open(output, "w", encoding="utf-8", newline="") as out:
                count = importexport.export_feedback(agent_name=agent, fmt=fmt, out=out, scored_only=scored_only)
            self.stderr.write(f"Exported {count} feedback of {agent} to {output}")
        else:
            importexport.export_feedback(agent_name=agent, fmt=fmt, out=self.stdout, scored_only=scored_only)
