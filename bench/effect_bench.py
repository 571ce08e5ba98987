"""Does training make the policy better? The gold-reward set-up (Gao et al. 2022) on the built-in n3-tiny.

Run (about 2 to 5 CPU minutes per reviewer x algorithm; two at a time with --jobs 2)::

    .venv/bin/python bench/effect_bench.py                              # every reviewer x ppo, the quick_test preset
    .venv/bin/python bench/effect_bench.py --algorithms ppo rloo grpo kto dpo --jobs 2
    .venv/bin/python bench/effect_bench.py --reviewers concise --set learning_rate=3e-4 --json out.json

For each simulated reviewer (tests/reviewers.py: factual correctness, a style preference, a wording preference,
each with noise in its 0..1 scores) the bench makes feedback the way an agent's would be made: responses sampled
from the base model for `--prompts` of n3-tiny's questions (`--samples` each), scored by the reviewer. Then the
product's whole chain trains on it (RLHFTrainer.train: reward model fit on those scores, then the policy), with
the preset's configuration on n3-tiny, and the trained policy is measured with the reviewer's own gold score --
never the learned reward model -- on `--heldout` other questions that were in no feedback, against the base model
it started from (evaluation.evaluate_policy, `eval_samples_per_prompt` samples per prompt at the run's sampling
settings).

Columns: gold mean of the base and of the trained policy on the held-out prompts, win rate of trained over base
(ties half) with its 95 % bootstrap interval, KL(trained || base) in nats per response (k3), CPU minutes of the
whole train() call, the reward model's cross-validated Pearson correlation, and the product's own verdict (its
evaluation block: win rate judged by its reward model on the prompts it held out). Target per row: interval's
lower bound > 0.5, gold up by >= 0.15, <= 5 CPU minutes. A missed target prints MISS (bench/run counts it).
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

from tests.reviewers import REVIEWERS, feedback_for, gold_evaluation, prompt_sets
from training.rlhf import RLHFError, RLHFTrainer, TrainingConfig
from training.rlhf.base_models import default_models_dir

TARGET_GAIN, TARGET_CPU_MIN = 0.15, 5.0


def run_one(reviewer: str, algorithm: str, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    config = TrainingConfig.from_preset(
        args.preset, base_model="n3-tiny", algorithm=algorithm, device="cpu", seed=args.seed,
        **{k: json.loads(v) for k, v in overrides.items()},
    )
    feedback_prompts, heldout = prompt_sets(args.prompts, args.heldout, seed=args.seed)
    records = feedback_for(reviewer, prompts=feedback_prompts, samples=args.samples, config=config, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="n3-effect-") as tmp:
        cpu0, wall0 = _cpu_s(), time.perf_counter()
        try:
            result = RLHFTrainer(config).train(records, Path(tmp) / "v1")
        except RLHFError as exc:  # e.g. DPO finding too few pairs: a row that says so
            return {"reviewer": reviewer, "algorithm": algorithm, "error": f"{type(exc).__name__}: {exc}"}
        cpu_min, wall_min = (_cpu_s() - cpu0) / 60, (time.perf_counter() - wall0) / 60
        block = gold_evaluation(reviewer, result.model_path, heldout, config)
    own = result.evaluation or {}
    rm = result.reward_model_metrics
    return {
        "reviewer": reviewer, "algorithm": algorithm, "records": len(records),
        "record_score_mean": sum(r["score"] for r in records) / len(records),
        "gold_base": block["baseline_reward_mean"], "gold_trained": block["reward_mean"],
        "win_rate": block["win_rate"], "win_rate_ci": block["win_rate_ci"], "kl": block["kl"], "n": block["n"],
        "length_base": block["baseline_response_length"], "length_trained": block["response_length"],
        "cpu_min": cpu_min, "wall_min": wall_min,
        "rm_pearson": rm.get("val_pearson"), "rm_mse": rm.get("val_mse"), "rm_mse_baseline": rm.get("val_mse_baseline"),
        "own_win_rate": own.get("win_rate"), "own_win_rate_ci": own.get("win_rate_ci"),
        "train_reward_first": result.history[0].get("objective/scores"),
        "train_reward_last": result.final_reward_mean, "warnings": result.warnings,
        "samples": [(s["prompt"], s["baseline_response"], s["response"]) for s in block["samples"][:4]],
    }


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def verdict(row: dict) -> str:
    if "error" in row:
        return "MISS: " + row["error"]
    misses = []
    if not row["win_rate_ci"][0] > 0.5:
        misses.append("win-rate interval not above 0.5")
    if not row["gold_trained"] - row["gold_base"] >= TARGET_GAIN:
        misses.append(f"gold gain < {TARGET_GAIN}")
    if not row["cpu_min"] <= TARGET_CPU_MIN:
        misses.append(f"> {TARGET_CPU_MIN:g} CPU min")
    return "pass" if not misses else "MISS: " + ", ".join(misses)


def print_rows(rows: list[dict], title: str) -> None:
    header = ("reviewer", "algorithm", "gold base -> trained", "win rate [95% CI]", "KL", "CPU min", "RM r",
              "own eval win [CI]", "result")
    lines = [header]
    for r in rows:
        if "error" in r:
            lines.append((r["reviewer"], r["algorithm"], "", "", "", "", "", "", verdict(r)[:100]))
            continue
        own = "n/a" if r["own_win_rate"] is None else "{:.2f} [{:.2f}, {:.2f}]".format(
            r["own_win_rate"], *r["own_win_rate_ci"]
        )
        lines.append((
            r["reviewer"], r["algorithm"], f"{r['gold_base']:.3f} -> {r['gold_trained']:.3f}",
            "{:.2f} [{:.2f}, {:.2f}]".format(r["win_rate"], *r["win_rate_ci"]), f"{r['kl']:.2f}",
            f"{r['cpu_min']:.1f}", "n/a" if r["rm_pearson"] is None else f"{r['rm_pearson']:.2f}", own, verdict(r),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print(f"\n{title}")
    for n, line in enumerate(lines):
        print(" | ".join(cell.ljust(w) for cell, w in zip(line, widths)))
        if n == 0:
            print("-+-".join("-" * w for w in widths))
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviewers", nargs="+", default=list(REVIEWERS), choices=list(REVIEWERS))
    parser.add_argument("--algorithms", nargs="+", default=["ppo"])
    parser.add_argument("--preset", default="quick_test", help="TrainingConfig preset (base model set to n3-tiny)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="config override, repeatable")
    parser.add_argument("--prompts", type=int, default=60, help="feedback prompts")
    parser.add_argument("--samples", type=int, default=3, help="base-model responses per feedback prompt")
    parser.add_argument("--heldout", type=int, default=64, help="held-out prompts the gold evaluation uses")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (each in its own process)")
    parser.add_argument("--json", type=Path, help="also write every row as JSON here")
    args = parser.parse_args()
    default_models_dir()  # fail early, before forking, when MODELS_DIR is unusable
    cases = [(r, a) for a in args.algorithms for r in args.reviewers]
    started = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            rows = list(pool.map(run_one, *zip(*cases), [args] * len(cases)))
    else:
        rows = [run_one(r, a, args) for r, a in cases]
    for row in (r for r in rows if "error" not in r):
        print(f"\n{row['reviewer']} x {row['algorithm']}: feedback mean {_f(row['record_score_mean'])} over "
              f"{row['records']} records; reward model r={_f(row['rm_pearson'])}, MSE {_f(row['rm_mse'])} "
              f"(mean {_f(row['rm_mse_baseline'])}); training reward {_f(row['train_reward_first'])} -> "
              f"{_f(row['train_reward_last'])}; length {_f(row['length_base'])} -> {_f(row['length_trained'])}")
        for prompt, before, after in row["samples"]:
            print(f"    {prompt!r}: {before!r} -> {after!r}")
    print_rows(rows, f"Effect on held-out prompts, judged by the simulated reviewers' gold scores "
                     f"(preset {args.preset}, n3-tiny, {args.prompts}x{args.samples} feedback records, "
                     f"{time.perf_counter() - started:.0f} s wall)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(verdict(r) == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
