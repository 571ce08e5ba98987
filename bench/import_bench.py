"""Feedback import/export: how long `manage.py import_feedback` takes for a 100,000-row file (and export back).

    .venv/bin/python bench/import_bench.py [--rows 100000]

A throwaway installation (its own SQLite file in WAL mode, the default settings) under a temp dir; a JSONL and a
CSV file of ``--rows`` records each (prompt, response, score, runId, notes: the API's field names), imported into
two agents with the real command, timed wall-clock as a user sees it (process start and Django set-up included),
then exported back with ``export_feedback``. Target (issue "Reviewers and observers"): a 100k-row file imports in
well under a minute. Prints a table; not a test.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from _common import Figure, print_table, throwaway_site


def write_files(directory: Path, rows: int) -> tuple[Path, Path]:
    records = [
        {
            "prompt": f"What is {i % 97} plus {i % 89}? (ticket {i})",
            "response": f"{i % 97} plus {i % 89} is {i % 97 + i % 89}." if i % 3 else "I do not know, sorry.",
            "score": round((i % 11) / 10, 2) if i % 7 else None,  # every 7th row awaits review
            "runId": f"run-{i}",
            "notes": "imported by the benchmark" if i % 5 == 0 else "",
        }
        for i in range(rows)
    ]
    jsonl = directory / "feedback.jsonl"
    with jsonl.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    csv_path = directory / "feedback.csv"
    with csv_path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows({**r, "score": "" if r["score"] is None else r["score"]} for r in records)
    return jsonl, csv_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()

    with throwaway_site("import") as site:
        def timed(*command: str) -> float:
            started = time.perf_counter()
            site.manage(*command, timeout=600)
            return time.perf_counter() - started

        jsonl, csv_path = write_files(site.root, args.rows)
        out = site.root / "out.jsonl"
        seconds = {
            "import JSONL": timed("import_feedback", str(jsonl), "--agent", "bench_jsonl"),
            "import CSV": timed("import_feedback", str(csv_path), "--agent", "bench_csv"),
            "re-import JSONL (all runIds known)": timed("import_feedback", str(jsonl), "--agent", "bench_jsonl"),
            "export JSONL": timed("export_feedback", "--agent", "bench_jsonl", "-o", str(out)),
            "export CSV": timed("export_feedback", "--agent", "bench_csv", "-o", str(site.root / "out.csv")),
        }
        stored = dict(site.query(
            "SELECT a.name, count(*) FROM feedback_feedback f "
            "JOIN policies_agent a ON a.id = f.agent_id GROUP BY a.name"
        ))
        exported = sum(1 for _ in out.open())

    once = stored == {"bench_jsonl": args.rows, "bench_csv": args.rows} and exported == args.rows
    figures = [Figure(name, value, "s") for name, value in seconds.items()]
    figures[0] = Figure("import JSONL", seconds["import JSONL"], "s", "< 60", seconds["import JSONL"] < 60)
    figures.append(
        Figure("rows stored once, exported once", args.rows if once else 0, "rows", f"= {args.rows:,}", once)
    )
    print_table(
        f"Feedback import/export, {args.rows:,} rows, SQLite WAL, wall clock incl. process start", figures,
        [f"import JSONL {args.rows / seconds['import JSONL']:,.0f} rows/s; "
         f"stored {stored}, exported {exported:,} lines"],
    )
    if not once:
        sys.exit(1)


if __name__ == "__main__":
    main()
