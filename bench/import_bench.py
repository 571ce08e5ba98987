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
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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

    with tempfile.TemporaryDirectory(prefix="n3-import-bench-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "n3site.settings", "SECRET_KEY": "bench", "N3_VAR_DIR": str(tmp / "var"),
               "MODELS_DIR": str(tmp / "models"), "HF_HUB_OFFLINE": "1"}
        for name in ("DATABASE_URL", "REDIS_URL"):
            env.pop(name, None)

        def manage(*command: str) -> float:
            started = time.perf_counter()
            subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            return time.perf_counter() - started

        manage("migrate", "-v", "0")
        jsonl, csv_path = write_files(tmp, args.rows)
        figures = [
            ("import JSONL", manage("import_feedback", str(jsonl), "--agent", "bench_jsonl")),
            ("import CSV", manage("import_feedback", str(csv_path), "--agent", "bench_csv")),
            ("re-import JSONL (all runIds known)", manage("import_feedback", str(jsonl), "--agent", "bench_jsonl")),
            ("export JSONL", manage("export_feedback", "--agent", "bench_jsonl", "-o", str(tmp / "out.jsonl"))),
            ("export CSV", manage("export_feedback", "--agent", "bench_csv", "-o", str(tmp / "out.csv"))),
        ]
        with sqlite3.connect(tmp / "var" / "n3.sqlite3") as db:
            stored = dict(db.execute(
                "SELECT a.name, count(*) FROM feedback_feedback f JOIN policies_agent a ON a.id = f.agent_id GROUP BY a.name"
            ).fetchall())
        exported = sum(1 for _ in (tmp / "out.jsonl").open())

    print(f"\nFeedback import/export, {args.rows:,} rows, SQLite WAL, wall clock incl. process start")
    print(f"{'operation':<36} {'seconds':>8} {'rows/s':>10}")
    for name, seconds in figures:
        print(f"{name:<36} {seconds:8.2f} {args.rows / seconds:10,.0f}")
    ok = stored == {"bench_jsonl": args.rows, "bench_csv": args.rows} and exported == args.rows
    print(f"stored {stored}, exported {exported:,} lines: {'all rows exactly once' if ok else 'MISMATCH'}")
    target = figures[0][1] < 60
    print(f"target: 100k-row import well under 60 s -> {'pass' if target else 'MISS'} ({figures[0][1]:.1f} s)")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
