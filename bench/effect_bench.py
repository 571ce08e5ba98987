"""Does training make the policy better, and does n3 say so truthfully? The gold-reward set-up (Gao et al. 2022) on
the built-in n3-tiny.

Run (2 to 5 CPU minutes per row; rows run side by side with --jobs)::

    .venv/bin/python bench/effect_bench.py                                  # the default configuration, seed 0
    .venv/bin/python bench/effect_bench.py --configs default quick_test --seeds 0 1 2 --jobs 2 --json out.json
    .venv/bin/python bench/effect_bench.py --algorithms ppo best_of_n rloo grpo kto dpo --reviewers short_correct
    .venv/bin/python bench/effect_bench.py --reviewers concise --set learning_rate=3e-4 --records 600

For each simulated reviewer (tests/reviewers.py: a person who wants short and correct answers, and single traits as
diagnostics: factual correctness, brevity, restating the question; noisy 0..1 scores) the bench makes feedback the
way an agent's would be made: responses sampled from the base model for n3-tiny's questions, scored by the reviewer
(`--records` of them, 3 per prompt). Then the product's whole chain trains on it (RLHFTrainer.train: reward model,
policy, the version's own evaluation and verdict) with the named configuration ("default": TrainingConfig's
defaults, no overrides; or a preset) on n3-tiny, and the trained policy is measured with the reviewer's own gold
score -- never a learned model -- on `--heldout` other questions that were in no feedback, against the base model.

Columns: gold mean of the base and of the trained policy; the gold win rate of the trained policy over its base
(ties half) with its 95 % interval (bootstrap over prompts); KL(trained || base) per response (k3); CPU minutes of
the whole train() call; the reward model's cross-validated r; the version's own verdict (better / not) and its
judge's win rate; whether `promote: "if_better"` would promote it; and what the user gets: the trained policy when
the verdict says better, else the starting model (fall_back_to_start), whose gold win rate over the base is 0.5.
The run itself keeps the trained weights (fall_back_to_start off) so that every verdict can be checked against gold.

Targets (issue 19): no row where the verdict says better while gold's interval lies below 0.5 (a promoted
regression); the verdict says better in most rows where gold's interval lies above 0.5; the default configuration
within 5 CPU minutes, quick_test within 2. The confusion table at the end counts verdict against gold.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import _common  # noqa: F401  (repository root on sys.path, Django set up)
import torch

from n3_server.rlhf import RLHFError, RLHFTrainer, TrainingConfig
from n3_server.rlhf.base_models import default_models_dir
from n3_server.rlhf.config import PRESETS
from tests.reviewers import REVIEWERS, feedback_for, gold_evaluation, prompt_sets
from training.jobs.run import promotion

CPU_BUDGET_MIN = {"default": 5.0, "quick_test": 2.0}  # issue 19's targets; other configurations have none
SAMPLES_PER_PROMPT = 3


def make_config(name: str, algorithm: str, seed: int, overrides: list[str]) -> TrainingConfig:
    """The named configuration on n3-tiny and the CPU; the run keeps its trained weights so gold can judge them."""
    fields = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in overrides)}
    fixed = dict(base_model="n3-tiny", algorithm=algorithm, device="cpu", seed=seed, fall_back_to_start=False)
    if name == "default":
        return TrainingConfig(**fixed, **fields)
    return TrainingConfig.from_preset(name, **fixed, **fields)


def run_one(case: tuple[str, str, str, int], args: argparse.Namespace) -> dict:
    reviewer, algorithm, config_name, seed = case
    torch.set_num_threads(args.threads)
    row = {"reviewer": reviewer, "algorithm": algorithm, "config": config_name, "seed": seed}
    config = make_config(config_name, algorithm, seed, args.set)
    prompts = args.records // SAMPLES_PER_PROMPT
    feedback_prompts, heldout = prompt_sets(prompts, args.heldout, seed=seed)
    records = feedback_for(reviewer, prompts=feedback_prompts, samples=SAMPLES_PER_PROMPT, config=config, seed=seed)
    with tempfile.TemporaryDirectory(prefix="n3-effect-") as tmp:
        cpu0, wall0 = _cpu_s(), time.perf_counter()
        try:
            result = RLHFTrainer(config).train(records, Path(tmp) / "v1")
        except RLHFError as exc:  # e.g. DPO finding too few pairs: a row that says so
            return {**row, "error": f"{type(exc).__name__}: {exc}"}
        cpu_min, wall_min = (_cpu_s() - cpu0) / 60, (time.perf_counter() - wall0) / 60
        block = gold_evaluation(reviewer, result.model_path, heldout, config)
    own = result.evaluation or {}
    rm = result.reward_model_metrics
    better = bool(own.get("better"))
    return {
        **row, "records": len(records),
        "record_score_mean": sum(r["score"] for r in records) / len(records),
        "gold_base": block["baseline_reward_mean"], "gold_trained": block["reward_mean"],
        "win_rate": block["win_rate"], "win_rate_ci": block["win_rate_ci"], "kl": block["kl"], "n": block["n"],
        "length_base": block["baseline_response_length"], "length_trained": block["response_length"],
        "cpu_min": cpu_min, "wall_min": wall_min,
        "rm_pearson": rm.get("val_pearson"), "rm_mse": rm.get("val_mse"), "rm_mse_baseline": rm.get("val_mse_baseline"),
        "better": better, "verdict": own.get("verdict") or own.get("skipped"),
        "own_win_rate": own.get("win_rate"), "own_win_rate_ci": own.get("win_rate_ci"),
        "promoted": promotion(config.replace(promote="if_better"), own or None)[0],
        # What the user gets: the trained policy when the verdict says better, else the starting model (win 0.5)
        "delivered_win_rate": block["win_rate"] if better else 0.5,
        "delivered_win_rate_ci": block["win_rate_ci"] if better else [0.5, 0.5],
        "train_reward_first": result.history[0].get("objective/scores"),
        "train_reward_last": result.final_reward_mean, "warnings": result.warnings,
        "samples": [(s["prompt"], s["baseline_response"], s["response"]) for s in block["samples"][:4]],
    }


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def gold_side(row: dict) -> str:
    """Where gold's interval lies: "above" 0.5, "below" it, or "spans" it."""
    low, high = row["win_rate_ci"]
    return "above" if low > 0.5 else "below" if high < 0.5 else "spans"


def misses(row: dict) -> list[str]:
    if "error" in row:
        return [row["error"]]
    out = []
    if row["promoted"] and gold_side(row) == "below":
        out.append("promoted regression")
    if row["delivered_win_rate_ci"][1] < 0.5:
        out.append("delivered regression")
    budget = CPU_BUDGET_MIN.get(row["config"])
    if budget is not None and row["cpu_min"] > budget:
        out.append(f"> {budget:g} CPU min")
    return out


def _interval(rate: float | None, ci: list[float] | None) -> str:
    return "n/a" if rate is None else "{:.2f} [{:.2f}, {:.2f}]".format(rate, *ci)


def print_table(header: tuple[str, ...], lines: list[tuple[str, ...]], title: str) -> None:
    lines = [header, *lines]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print(f"\n{title}")
    for n, line in enumerate(lines):
        print(" | ".join(cell.ljust(w) for cell, w in zip(line, widths)))
        if n == 0:
            print("-+-".join("-" * w for w in widths))
    sys.stdout.flush()


def print_rows(rows: list[dict], title: str) -> None:
    header = ("reviewer", "algorithm", "config", "seed", "gold base -> trained", "gold win [95% CI]", "KL", "CPU min",
              "RM r", "verdict (judge win)", "if_better", "delivered win", "result")
    lines = []
    for r in rows:
        if "error" in r:
            lines.append((r["reviewer"], r["algorithm"], r["config"], str(r["seed"]), "", "", "", "", "", "", "", "",
                          "MISS: " + r["error"][:90]))
            continue
        miss = misses(r)
        lines.append((
            r["reviewer"], r["algorithm"], r["config"], str(r["seed"]),
            f"{r['gold_base']:.3f} -> {r['gold_trained']:.3f}", _interval(r["win_rate"], r["win_rate_ci"]),
            f"{r['kl']:.2f}", f"{r['cpu_min']:.1f}", "n/a" if r["rm_pearson"] is None else f"{r['rm_pearson']:.2f}",
            ("better " if r["better"] else "not ") + _interval(r["own_win_rate"], r["own_win_rate_ci"]),
            "promoted" if r["promoted"] else "-", _interval(r["delivered_win_rate"], r["delivered_win_rate_ci"]),
            "MISS: " + ", ".join(miss) if miss else "pass",
        ))
    print_table(header, lines, title)


def print_confusion(rows: list[dict]) -> None:
    """Verdict against gold: how often "better" is said where gold's interval lies above, spans or is below 0.5."""
    done = [r for r in rows if "error" not in r]
    lines = []
    for side in ("above", "spans", "below"):
        in_side = [r for r in done if gold_side(r) == side]
        said = sum(r["better"] for r in in_side)
        lines.append((f"gold interval {side} 0.5", str(len(in_side)), str(said), str(len(in_side) - said),
                      str(sum(r["promoted"] for r in in_side))))
    print_table(("gold", "rows", "verdict better", "verdict not better", "if_better promoted"), lines,
                "Verdict against gold (a better verdict or promotion where gold lies below 0.5 is a harm)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviewers", nargs="+", default=list(REVIEWERS), choices=list(REVIEWERS))
    parser.add_argument("--algorithms", nargs="+", default=["ppo"])
    parser.add_argument("--configs", nargs="+", default=["default"], choices=["default", *PRESETS],
                        help="'default' (TrainingConfig's defaults) or presets; the base model is always n3-tiny")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="config override, repeatable")
    parser.add_argument("--records", type=int, default=180, help=f"feedback records ({SAMPLES_PER_PROMPT} per prompt)")
    parser.add_argument("--heldout", type=int, default=64, help="held-out prompts the gold evaluation uses")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (each in its own process)")
    parser.add_argument("--json", type=Path, help="also write every row as JSON here")
    args = parser.parse_args()
    default_models_dir()  # fail early, before forking, when MODELS_DIR is unusable
    cases = [(r, a, c, s) for c in args.configs for a in args.algorithms for r in args.reviewers for s in args.seeds]
    started = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            rows = list(pool.map(run_one, cases, [args] * len(cases)))
    else:
        rows = [run_one(case, args) for case in cases]
    for row in (r for r in rows if "error" not in r):
        print(f"\n{row['reviewer']} x {row['algorithm']} x {row['config']} seed {row['seed']}: feedback mean "
              f"{_f(row['record_score_mean'])} over {row['records']} records; reward model r={_f(row['rm_pearson'])}, "
              f"MSE {_f(row['rm_mse'])} (mean {_f(row['rm_mse_baseline'])}); training reward "
              f"{_f(row['train_reward_first'])} -> {_f(row['train_reward_last'])}; length {_f(row['length_base'])} "
              f"-> {_f(row['length_trained'])}\n    verdict: {row['verdict']}")
        for prompt, before, after in row["samples"]:
            print(f"    {prompt!r}: {before!r} -> {after!r}")
    print_rows(rows, f"Effect on held-out prompts, judged by the simulated reviewers' gold scores (n3-tiny, "
                     f"{args.records} feedback records, {time.perf_counter() - started:.0f} s wall)")
    print_confusion(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if not any(misses(r) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
