"""Training benchmark: our PPO against TRL's RLOO on the built-in n3-tiny, plus memory and the dry-run estimate.

Run (about 2.5 minutes on 2 CPU cores, more when the CPU is shared; the first run also builds n3-tiny, ~2 min)::

    .venv/bin/python bench/train_bench.py                  # MODELS_DIR defaults to the tests' /tmp/n3-test-models
    .venv/bin/python bench/train_bench.py --quick          # fewer steps and rounds
    .venv/bin/python bench/train_bench.py --json out.json  # also every figure as JSON; see --help

Not a test: it prints figures, one table at the end with each figure's target and pass/miss. Both algorithms get
the same base model (n3-tiny, LoRA r=8), the same prompts, batch (8 completions, micro-batches of 4), generation
length (max_new_tokens 48, sampling at temperature 1, top_k 0) and seed. TRL's RLOO is run through our own
n3_server/rlhf/trl_algorithms.py glue (that is, TRL's RLOOTrainer with 4 completions per prompt). One torch thread
by default (--threads): the matrices are tiny, and one thread does not collapse when neighbours share the CPU.

Figures
- step s (equal work): median seconds of one RL step (pooled over 3 seeds, runs interleaved, each run's first
  step left out), as CPU seconds of this process (robust on a shared machine, where wall-clock partly measures
  the neighbours; with 1 thread it equals wall-clock on an idle one) and as wall-clock seconds. Ours = PPO with
  ppo_epochs=1 and gradient_accumulation_steps=2 (every rollout gets one forward+backward and the batch one
  optimizer step, as in RLOO), TRL = RLOO. Target: ours <= 0.8x TRL's.
- step s (defaults): the same with our default ppo_epochs=4 (four passes over each batch), for scale; no target.
- tokens/s: generated response tokens / seconds of the steps (whole steps, not generation only).
- phase split: generate / score (reward fn + policy and reference log-probs, + values for PPO) / update seconds,
  from ppo.py's timing/* metrics; TRL's from timing its _generate and _generate_and_score_completions.
- time-to-target: CPU and wall-clock seconds from calling the algorithm (set-up included) until the mean toy
  reward over the last 5 steps reaches 0.6. The toy reward is deterministic and cheap: 1.0 when the response
  contains the word "season" (about a quarter of n3-tiny's answers to these prompts do), else 0.0. Same learning
  rate (3e-3) and seed for both; ours at ppo_epochs=4 (its default), TRL's RLOO as TRL runs it (one gradient step
  per batch). Target: ours <= 0.8x TRL's.
- peak RSS: VmHWM (the peak resident set, what ru_maxrss reports) of a fresh subprocess per case, same imports in
  each, the peak reset after them so the imports' transient peak does not hide the case: inference (load
  n3-tiny, generate one batch), PPO with LoRA (reference = the adapter disabled), PPO with full fine-tuning
  (reference = a frozen copy). "above imports" subtracts the RSS right after the imports. Target: LoRA peak <=
  1.5x the inference peak.
- estimate: RLHFTrainer.estimate() vs the measured wall-clock of train() (reward model + 40 PPO steps + saving)
  for the same config and feedback, recalibrated first (--no-recalibrate reuses MODELS_DIR/_calibration).
  Target: within +-25 %. The calibration measures a few seconds of this machine's pace: when a neighbour's load
  changes between the calibration and the run, the estimate misses by that change.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MODELS_DIR", "/tmp/n3-test-models")  # the test suite's: n3-tiny is usually built there

import torch  # noqa: E402
from peft import get_peft_model  # noqa: E402

from n3_server.rlhf import RLHFTrainer, TrainingCancelled, TrainingConfig  # noqa: E402
from n3_server.rlhf.base_models import load_causal_lm, load_tokenizer  # noqa: E402
from n3_server.rlhf.modeling import lora_config_for  # noqa: E402
from n3_server.rlhf.ppo import generate_responses, tokenize_queries  # noqa: E402
from n3_server.rlhf.trainer import ALGORITHMS  # noqa: E402

BASE = "n3-tiny"
CPU = torch.device("cpu")
TOPICS = [
    "the weather", "python", "paris", "cats", "music", "the sea", "trains", "coffee", "maths", "history",
    "rain", "books", "bread", "rivers", "chess", "gardens", "the moon", "bicycles", "tea", "painting",
]
PROMPTS = [f"Tell me about {t}." for t in TOPICS]
WORD = "season"
TARGET_REWARD = 0.6  # mean over the last WINDOW steps; n3-tiny starts at about 0.3
WINDOW = 5


def season_reward(prompts: list[str], responses: list[str]) -> torch.Tensor:
    """The toy reward: 1.0 for a response that mentions the word, else 0.0."""
    return torch.tensor([float(WORD in r.lower()) for r in responses])


def bench_config(**overrides: Any) -> TrainingConfig:
    values = dict(base_model=BASE, batch_size=8, mini_batch_size=4, max_new_tokens=48, learning_rate=1e-5, seed=0)
    return TrainingConfig(**{**values, **overrides})


def load_policy(config: TrainingConfig) -> torch.nn.Module:
    """As RLHFTrainer._load_policy: float32 n3-tiny, LoRA-wrapped when use_lora."""
    model = load_causal_lm(config.base_model, dtype=torch.float32, device=CPU)
    if config.use_lora:
        model = get_peft_model(model, lora_config_for(model, r=config.lora_r, alpha=config.lora_alpha, dropout=0.0))
    return model


def run(algorithm: str, config: TrainingConfig, stop: Optional[Callable] = None) -> tuple[list[dict], float]:
    """One algorithm on a fresh policy with the toy reward; (per-step history, wall seconds of the call).

    Each step's dict gets "cpu_s": this process's CPU seconds between two progress callbacks (one step).
    """
    torch.manual_seed(config.seed)
    policy, tokenizer = load_policy(config), load_tokenizer(config.base_model, padding_side="left")
    cpu_marks = [time.process_time()]

    def callback(progress) -> bool:
        cpu_marks.append(time.process_time())
        return bool(stop and stop(progress))

    t0 = time.perf_counter()
    try:
        history = ALGORITHMS[algorithm](
            policy=policy, tokenizer=tokenizer, prompts=PROMPTS, reward_fn=season_reward, config=config, device=CPU,
            callback=callback,
        )
    except TrainingCancelled as exc:  # the time-to-target callback stops the run
        history = exc.history
    for step, start, end in zip(history, cpu_marks, cpu_marks[1:]):
        step["cpu_s"] = end - start
    return history, time.perf_counter() - t0


def step_seconds(step: dict) -> float:
    return step["timing/generate_s"] + step["timing/score_s"] + step["timing/update_s"]


def pace(history: list[dict], batch_size: int) -> dict[str, float]:
    """Median step seconds (wall and CPU), tokens/s and phase split over the steps after the first (one-time costs)."""
    later = history[1:] or history
    tokens = sum(h["response_length"] for h in later) * batch_size
    seconds = sum(step_seconds(h) for h in later)
    return {
        "step_s": statistics.median(step_seconds(h) for h in later),
        "cpu_s": statistics.median(h["cpu_s"] for h in later),
        "tokens_per_s": tokens / seconds,
        **{phase: statistics.median(h[f"timing/{phase}_s"] for h in later)
           for phase in ("generate", "score", "update")},
        "response_length": statistics.mean(h["response_length"] for h in later),
    }


# -- 1. speed at equal work and at our defaults ----------------------------------------------------------------------
def speed(steps: int, rounds: int) -> dict[str, dict[str, float]]:
    """Each case `rounds` times with seeds 0, 1, ..., interleaved (PPO, RLOO, PPO, RLOO, ...); figures are medians
    over the pooled steps (each run's first step left out). Other seeds draw other responses, so a batch that
    happens to run to max_new_tokens (generation runs until the longest response ends) weighs on both sides alike;
    medians keep a step slowed down by a neighbour on a shared CPU from counting."""
    cases = (("ppo_equal", "ppo", {"ppo_epochs": 1, "gradient_accumulation_steps": 2}), ("rloo", "rloo", {}),
             ("ppo_default", "ppo", {}))
    later: dict[str, list[dict]] = {}
    for seed in range(rounds):
        for label, algorithm, overrides in cases[:2] if seed else cases:  # defaults once: no target on them
            config = bench_config(max_steps=steps, seed=seed, **overrides)
            history, _ = run(algorithm, config)
            later.setdefault(label, []).extend(history[1:])
            print(f"  {label:12s} seed {seed}: " + "  ".join(f"{k}={v:.3f}" for k, v in pace(history, 8).items()),
                  flush=True)
    return {label: pace([{}] + steps_, 8) for label, steps_ in later.items()}


# -- 2. time to a target reward --------------------------------------------------------------------------------------
def time_to_target(max_steps: int, learning_rate: float) -> dict[str, dict[str, Any]]:
    out = {}
    for label, algorithm in (("ppo", "ppo"), ("rloo", "rloo")):
        started, cpu_started = time.perf_counter(), time.process_time()
        reached: dict[str, float] = {}
        scores: list[float] = []

        # B023: run() below calls this only during this iteration, so the loop variables it reads are this iteration's.
        def stop_at_target(progress) -> bool:
            scores.append(progress.metrics["objective/scores"])  # noqa: B023  (called within this iteration)
            if len(scores) >= WINDOW and statistics.mean(scores[-WINDOW:]) >= TARGET_REWARD:  # noqa: B023
                reached.update(  # noqa: B023  (called within this iteration)
                    seconds=time.perf_counter() - started,  # noqa: B023
                    cpu_seconds=time.process_time() - cpu_started,  # noqa: B023
                    step=progress.step,
                )
                return True
            return False

        config = bench_config(max_steps=max_steps, learning_rate=learning_rate)
        history, wall = run(algorithm, config, stop=stop_at_target)
        out[label] = {
            "seconds": reached.get("seconds"), "cpu_seconds": reached.get("cpu_seconds"), "step": reached.get("step"),
            "steps_run": len(history),
            "wall_s": wall, "scores": [round(s, 2) for s in scores],
        }
        print(f"  {label:5s} reached={reached or 'no'} after {len(history)} steps, {wall:.1f}s; "
              f"scores {out[label]['scores']}", flush=True)
    return out


# -- 3. peak memory, each case in a fresh process --------------------------------------------------------------------
def child(case: str) -> dict[str, float]:
    """Runs in the subprocess: the imports are done (module level). Importing has a transient peak higher than
    what stays resident, so the peak is reset (/proc/self/clear_refs, Linux >= 4.0) before the case runs."""
    Path("/proc/self/clear_refs").write_text("5")
    baseline = _status_mb("VmHWM")
    if case == "inference":
        model, tokenizer = load_causal_lm(BASE).eval(), load_tokenizer(BASE, padding_side="left")
        config = bench_config()
        ids, mask = tokenize_queries(tokenizer, PROMPTS[:config.batch_size], config.max_prompt_length,
                                     tokenizer.pad_token_id, CPU)
        with torch.no_grad():
            generate_responses(model, ids, mask, config, tokenizer.eos_token_id, tokenizer.pad_token_id)
    else:
        run("ppo", bench_config(max_steps=3, ppo_epochs=1, use_lora=case == "lora"))
    return {"baseline_mb": baseline, "peak_mb": _status_mb("VmHWM")}


def _status_mb(field: str) -> float:
    """A /proc/self/status figure in MB: VmHWM is the peak resident set (what ru_maxrss reports, but resettable)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def memory() -> dict[str, dict[str, float]]:
    out = {}
    for case in ("inference", "lora", "full"):
        proc = subprocess.run(
            [sys.executable, __file__, "--child", case, "--threads", str(torch.get_num_threads())],
            capture_output=True, text=True, check=True,
        )
        out[case] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {case:9s} peak {out[case]['peak_mb']:.0f} MB (after imports {out[case]['baseline_mb']:.0f} MB)",
              flush=True)
    return out


# -- 4. dry-run estimate against the real run ------------------------------------------------------------------------
def toy_feedback() -> list[dict]:
    """As the tests': a helpful answer scored high, a shrug scored low, for every prompt."""
    records = []
    for topic in TOPICS:
        prompt = f"Tell me about {topic}."
        records.append({"prompt": prompt, "response": f"Sure! Here is a clear answer about {topic}.", "score": 0.9})
        records.append({"prompt": prompt, "response": "I don't know, sorry.", "score": 0.1})
    return records


def estimate_vs_measured(steps: int, recalibrate: bool) -> dict[str, float]:
    trainer = RLHFTrainer(bench_config(max_steps=steps, ppo_epochs=1))
    t0 = time.perf_counter()
    estimate = trainer.estimate(toy_feedback(), recalibrate=recalibrate)
    estimate_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="n3-train-bench-") as tmp:
        t0 = time.perf_counter()
        result = trainer.train(toy_feedback(), Path(tmp) / "v1")
        measured = time.perf_counter() - t0
    steps_s = [step_seconds(h) for h in result.history]
    out = {"estimated_s": estimate.estimated_time_minutes * 60, "measured_s": measured, "estimate_call_s": estimate_s,
           "timings": result.timings, "estimated_step_s": estimate.seconds_per_step,
           "measured_step_s": statistics.median(steps_s[1:])}
    print(f"  estimated {out['estimated_s']:.1f}s, measured {measured:.1f}s "
          f"(the estimate itself took {estimate_s:.1f}s); "
          f"PPO step: calibrated {estimate.seconds_per_step:.3f}s, measured median {out['measured_step_s']:.3f}s "
          f"(first 5 {statistics.median(steps_s[1:6]):.3f}s, last 5 {statistics.median(steps_s[-5:]):.3f}s)",
          flush=True)
    return out


# -- the table -------------------------------------------------------------------------------------------------------
def table(speed_: dict, target: dict, mem: dict, est: dict) -> list[tuple]:
    ppo, rloo, default = speed_["ppo_equal"], speed_["rloo"], speed_["ppo_default"]
    rows = [
        ("step CPU s, equal work (PPO 1 epoch vs RLOO)", ppo["cpu_s"], rloo["cpu_s"], "<= 0.8x",
         ppo["cpu_s"] <= 0.8 * rloo["cpu_s"]),
        ("step wall s, equal work (PPO 1 epoch vs RLOO)", ppo["step_s"], rloo["step_s"], "<= 0.8x",
         ppo["step_s"] <= 0.8 * rloo["step_s"]),
        ("step CPU s, our defaults (PPO 4 epochs vs RLOO)", default["cpu_s"], rloo["cpu_s"], "-", None),
        ("step wall s, our defaults (PPO 4 epochs vs RLOO)", default["step_s"], rloo["step_s"], "-", None),
        ("tokens/s, equal work", ppo["tokens_per_s"], rloo["tokens_per_s"], "-", None),
        ("tokens/s, our defaults", default["tokens_per_s"], rloo["tokens_per_s"], "-", None),
        ("  generate s (PPO 1 epoch | RLOO)", ppo["generate"], rloo["generate"], "-", None),
        ("  score s    (PPO 1 epoch | RLOO)", ppo["score"], rloo["score"], "-", None),
        ("  update s   (PPO 1 epoch | RLOO)", ppo["update"], rloo["update"], "-", None),
        ("  update s   (PPO 4 epochs)", default["update"], None, "-", None),
        ("  mean response tokens (PPO 1 epoch | RLOO)", ppo["response_length"], rloo["response_length"], "-", None),
    ]
    for clock, key in (("CPU", "cpu_seconds"), ("wall", "seconds")):
        ours, theirs = target["ppo"][key], target["rloo"][key]
        ok = ours is not None and (theirs is None or ours <= 0.8 * theirs)
        name = f"time-to-target {clock} s (mean '{WORD}' reward >= {TARGET_REWARD})"
        rows.append((name, ours, theirs, "<= 0.8x", ok))
    rows.append(("  steps to target", target["ppo"]["step"], target["rloo"]["step"], "-", None))
    inference, lora, full = mem["inference"]["peak_mb"], mem["lora"]["peak_mb"], mem["full"]["peak_mb"]
    rows.append(("peak RSS MB, LoRA PPO | inference", lora, inference, "<= 1.5x", lora <= 1.5 * inference))
    rows.append(("peak RSS MB, full fine-tuning PPO | inference", full, inference, "-", None))
    above = {k: mem[k]["peak_mb"] - mem[k]["baseline_mb"] for k in mem}
    rows.append(("  MB above imports: LoRA | inference", above["lora"], above["inference"], "-", None))
    rows.append(("  MB above imports: full FT | inference", above["full"], above["inference"], "-", None))
    within = abs(est["estimated_s"] / est["measured_s"] - 1) <= 0.25
    rows.append(("dry-run estimate s | measured s", est["estimated_s"], est["measured_s"], "+-25 %", within))
    rows.append(("  PPO step s: calibrated | measured median", est["estimated_step_s"], est["measured_step_s"], "-",
                 None))
    return rows


def print_table(rows: list[tuple]) -> None:
    def fmt(v: Any) -> str:
        if not isinstance(v, float):
            return "-" if v is None else str(v)
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"

    print(f"\n{'figure':50s} {'ours':>9s} {'TRL/ref':>9s} {'ratio':>7s}  {'target':8s} result")
    for name, ours, ref, target, ok in rows:
        ratio = f"{ours / ref:.2f}" if isinstance(ours, (int, float)) and isinstance(ref, (int, float)) and ref else "-"
        result = "" if ok is None else ("pass" if ok else "MISS")
        print(f"{name:50s} {fmt(ours):>9s} {fmt(ref):>9s} {ratio:>7s}  {target:8s} {result}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps everywhere (about half the time)")
    parser.add_argument("--steps", type=int, help="RL steps per speed run (default 10, --quick 5)")
    parser.add_argument("--target-steps", type=int, help="step cap of the time-to-target runs (default 60, --quick 40)")
    parser.add_argument("--target-lr", type=float, default=3e-3, help="learning rate of the time-to-target runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared CPU)")
    parser.add_argument("--no-recalibrate", action="store_true", help="reuse a cached dry-run calibration")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child)))
        return
    steps = args.steps or (5 if args.quick else 10)
    target_steps = args.target_steps or (40 if args.quick else 60)
    print(f"n3 train bench: {BASE}, batch 8 (micro 4), max_new_tokens 48, LoRA r=8, {args.threads} torch thread(s), "
          f"MODELS_DIR={os.environ['MODELS_DIR']}", flush=True)
    started = time.perf_counter()
    rounds = 2 if args.quick else 3
    print(f"1. speed ({steps} steps each, {rounds} interleaved rounds)", flush=True)
    speed_ = speed(steps, rounds)
    print(f"2. time to target (lr {args.target_lr:g}, at most {target_steps} steps)", flush=True)
    target = time_to_target(target_steps, args.target_lr)
    print("3. peak RSS (fresh process each)", flush=True)
    mem = memory()
    print("4. dry-run estimate vs measured", flush=True)
    est = estimate_vs_measured(4 * steps, recalibrate=not args.no_recalibrate)
    rows = table(speed_, target, mem, est)
    print_table(rows)
    print(f"\n(bench took {time.perf_counter() - started:.0f}s)")
    if args.json:
        figures = {"speed": speed_, "time_to_target": target, "memory": mem, "estimate": est}
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
