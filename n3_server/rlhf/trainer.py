"""RLHFTrainer: feedback -> reward model -> PPO -> an evaluated, versioned policy directory.

    trainer = RLHFTrainer(TrainingConfig(base_model="n3-tiny", max_steps=50))
    trainer.estimate(feedbacks)                 # the dry run: steps, minutes, score statistics, warnings
    result = trainer.train(feedbacks, "models/my_agent/v1")

train() lays out the spec's File Structure under output_dir::

    training.log             written live from the start (one line per step: `tail -f` it)
    policy/                  plain Hugging Face model dir: LoRA merged, float32, tokenizer, generation_config
    reward_model/            base_model/ (peft adapter), reward_head.pt, config.json
    training_results.json    written last: its presence marks a complete version

policy/ and reward_model/ are written under temporary names and renamed into place; a run that fails or is
cancelled removes them and writes no training_results.json (training.log keeps the reason).

Before anything trains, a seeded share of the feedback's distinct prompts is held out (data.heldout_split); after
the policy has trained, it is compared with its base model on them (evaluation.py) and the comparison is
TrainingResult.evaluation: whether the version is better, by how much, with 95 % intervals.

Under a launcher (several processes, see distributed.py) every process trains and only rank 0 writes any of
these files or calls `callback`; the other processes return the same TrainingResult without writing anything.

Precision: weights (policy, reference and reward model) are float32 master weights everywhere; on a GPU the
forward and backward passes run under bf16 autocast when the run's dtype resolves to bfloat16. That keeps
small LoRA/full-fine-tuning updates from being rounded away and makes the saved policy exact float32.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Union

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoConfig, set_seed

from . import distributed, timing
from .base_models import default_models_dir, load_causal_lm, load_tokenizer, resolve_base_model
from .best_of_n import train_best_of_n
from .config import TrainingConfig
from .context import check_fits_context, model_positions, positions_in, with_learning_rate
from .data import FeedbackData, FeedbackRecord, heldout_split, prepare_feedback
from .errors import ConfigError, TrainingCancelled
from .evaluation import evaluate_policy
from .layout import LOG_FILE, POLICY_DIR, RESULTS_FILE, REWARD_MODEL_DIR, UNFINISHED_OUTPUTS
from .layout import tmp_name as _tmp
from .modeling import lora_config_for, resolve_device, resolve_dtype
from .ppo import train_ppo
from .preference_data import check_preference_data
from .progress import Progress, ProgressCallback
from .results import TrainingEstimate, TrainingResult
from .reward_model import fit_reward_model
from .trl_algorithms import train_grpo, train_rloo
from .trl_preference import train_dpo, train_kto

logger = logging.getLogger(__name__)


# One function per algorithm, all with train_ppo's signature:
#   (*, policy, tokenizer, prompts, reward_fn, config, device, callback, log, records) -> per-step metrics (dicts)
# The policy is trained in place. RLOO and GRPO run TRL's own trainers (trl_algorithms.py); KTO and DPO too, on the
# scored `records` themselves (trl_preference.py); best-of-n is ours (best_of_n.py); the others ignore `records`.
AlgorithmFn = Callable[..., list[dict]]
ALGORITHMS: dict[str, AlgorithmFn] = {
    "ppo": train_ppo, "rloo": train_rloo, "grpo": train_grpo, "kto": train_kto, "dpo": train_dpo,
    "best_of_n": train_best_of_n,
}


def algorithm_fn(name: str) -> AlgorithmFn:
    if name not in ALGORITHMS:
        raise ConfigError(f"algorithm '{name}' is not available yet")
    return ALGORITHMS[name]


class RLHFTrainer:
    def __init__(self, config: Optional[TrainingConfig] = None, *, models_dir: Union[str, Path, None] = None):
        """`models_dir` holds the built-in base models and the dry run's timing calibrations
        ($MODELS_DIR by default)."""
        self.config = with_learning_rate(config or TrainingConfig())  # the automatic rate made definite
        self.models_dir = Path(models_dir) if models_dir else None

    # -- dry run -------------------------------------------------------------------------------------------------
    def estimate(self, feedbacks: Iterable[dict], *, recalibrate: bool = False) -> TrainingEstimate:
        """What train() would do with this feedback and how long it would take here.

        The time is measured: the first estimate for a timing key (model, device, batch shapes, lengths: see
        timing.py) runs a miniature training in this process (seconds on the tiny models; five PPO steps plus
        model loading and saving on others) and caches the timings under MODELS_DIR/_calibration/, where the
        service's dry runs find them too; later estimates reuse them.
        """
        config = self.config
        algorithm_fn(config.algorithm)
        data = prepare_feedback(feedbacks)
        preference = check_preference_data(data.records, config)  # KTO/DPO: both classes, enough pairs
        self._device()  # a device this machine lacks is a ConfigError here, not after the calibration
        models_dir = self._models_dir()
        key = timing.timing_key(config, data.records, models_dir=models_dir)
        measured = None if recalibrate else timing.load_calibration(models_dir, key)
        if measured is None:
            logger.info("Measuring training speed for %s (once per timing key)", config.base_model)
            measured = self.calibrate(data.records)
            timing.store_calibration(models_dir, key, measured)
            # Building a built-in base model on first use changes its fingerprint: file the key as it is now too.
            now = {**key, **timing.fingerprints(config, models_dir=models_dir)}
            timing.store_calibration(models_dir, now, measured)
        estimate = timing.make_estimate(config, data, measured, source="measured")
        estimate.preference = preference
        return estimate

    def calibrate(self, records: list[FeedbackRecord]) -> timing.Calibration:
        """Train a miniature run of this config on a sample of `records` (in a scratch directory) and return its
        timings; timing.py says what it measures."""
        mini = RLHFTrainer(timing.calibration_config(self.config), models_dir=self.models_dir)
        scratch = self._models_dir() / timing.CALIBRATION_DIR
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            sample = timing.calibration_records(records, self.config)
            result = mini.train([dataclasses.asdict(r) for r in sample], Path(tmp) / "run")
        return timing.calibration_from_result(result)

    # -- training ------------------------------------------------------------------------------------------------
    def train(
        self, feedbacks: Iterable[dict], output_dir: Union[str, Path], callback: Optional[ProgressCallback] = None
    ) -> TrainingResult:
        """Fit the reward model, train the policy, save the version. See the module docstring for the layout.

        `callback(Progress)` is called at every step of every phase; returning True cancels the run
        (TrainingCancelled). Raises InsufficientFeedbackError / FeedbackFormatError / ConfigError before
        touching the disk, FileExistsError when output_dir already holds a finished run.
        """
        started = time.perf_counter()
        config = self.config
        run_algorithm = algorithm_fn(config.algorithm)
        data = prepare_feedback(feedbacks)
        check_preference_data(data.records, config)  # KTO/DPO: both classes, enough pairs
        check_fits_context(config, positions=_positions)  # before any model work (the service checks it too)
        output_dir = Path(output_dir)
        if (output_dir / RESULTS_FILE).exists():
            raise FileExistsError(
                f"{output_dir} already holds a finished training run ({RESULTS_FILE}); "
                "train into a new version directory"
            )
        device = self._device()
        main = distributed.is_main_process()  # rank 0 of a launcher, or a plain single process: the one that writes
        if main:
            output_dir.mkdir(parents=True, exist_ok=True)
        notify = _cancellable(callback if main else None)
        with _run_log(output_dir / LOG_FILE if main else None) as log:
            try:
                return self._train(data, output_dir, device, run_algorithm, notify, log, started)
            except TrainingCancelled as exc:
                log.warning("Training cancelled: %s", exc)
                if main:
                    _remove_outputs(output_dir)
                raise
            except BaseException as exc:
                log.error("Training failed: %s: %s", type(exc).__name__, exc, exc_info=True)
                if main:
                    _remove_outputs(output_dir)
                raise

    def _train(
        self, data: FeedbackData, output_dir: Path, device: torch.device, run_algorithm: AlgorithmFn,
        notify: ProgressCallback, log: logging.Logger, started: float,
    ) -> TrainingResult:
        config = self.config
        main = distributed.is_main_process()
        dtype = resolve_dtype(config.dtype, device)
        autocast_dtype = None if dtype == torch.float32 else dtype
        log.info(
            "Training %s with %s on %d feedback samples (score %.3f ± %.3f) on %s (%s) into %s",
            config.base_model, config.algorithm.upper(), len(data.records), data.score_mean, data.score_std,
            device, str(dtype).removeprefix("torch."), output_dir,
        )
        if distributed.is_distributed():
            log.info(
                "%d processes, data parallel: batch_size %d per process, %d rollouts per step",
                distributed.num_processes(), config.batch_size, distributed.num_processes() * config.batch_size,
            )
        log.info("config %s", json.dumps(config.to_dict(), sort_keys=True))
        for warning in data.warnings:
            log.warning(warning)
        if main:
            _remove_outputs(output_dir)  # leftovers of an earlier run into this directory that did not finish
        set_seed(config.seed)
        timings: dict[str, float] = {}

        # 0. held-out prompts: no step of training sees them; the evaluation (3) compares on them
        heldout, skipped = heldout_split([r.prompt for r in data.records], config)
        records = [r for r in data.records if r.prompt not in heldout]
        if heldout:
            log.info("evaluation: %d of %d distinct prompts held out of training (seed %d)",
                     len(heldout), len({r.prompt for r in data.records}), config.seed)
        else:
            log.info("evaluation skipped: %s", skipped)

        # 1. reward model
        t0 = time.perf_counter()
        reward_base = config.reward_model_config.base_model or config.base_model
        reward_model = fit_reward_model(
            records, base_model=reward_base, config=config.reward_model_config, device=device,
            autocast_dtype=autocast_dtype, seed=config.seed, models_dir=self.models_dir, callback=notify, log=log,
        )
        if main:
            reward_model.save(output_dir / _tmp(REWARD_MODEL_DIR))
        timings["reward_model_s"] = time.perf_counter() - t0

        # 2. policy
        t0 = time.perf_counter()
        tokenizer = load_tokenizer(config.base_model, models_dir=self.models_dir, padding_side="left")
        policy = self._load_policy(device, notify)
        log.info("%s: %s", config.algorithm, _describe_params(policy))
        history = run_algorithm(
            policy=policy, tokenizer=tokenizer, prompts=[r.prompt for r in records], reward_fn=reward_model.score,
            reward_stats=reward_model.score_stats, config=config, device=device, callback=notify, log=log,
            records=records,
        )
        timings["policy_s"] = time.perf_counter() - t0
        history = [_finite(h) for h in history]
        last = history[-1]

        # 3. evaluation, before the adapter is merged away: the version against its start on the held-out prompts
        t0 = time.perf_counter()
        evaluation: dict = {"skipped": skipped} if skipped else {}
        if heldout and main:
            notify(Progress(
                phase="evaluation", step=0, total=1, message=f"comparing on {len(heldout)} held-out prompts",
            ))
            evaluation = self._evaluate(policy, tokenizer, sorted(heldout), reward_model, device)
            log.info(
                "evaluation against %s on %d held-out samples, judged by %s: win rate %.3f [%.3f, %.3f], "
                "reward %.3f -> %.3f, KL %.3f", evaluation["baseline"], evaluation["n"], evaluation["scored_by"],
                evaluation["win_rate"], *evaluation["win_rate_ci"], evaluation["baseline_reward_mean"],
                evaluation["reward_mean"], evaluation["kl"],
            )
            log.info("verdict: %s", evaluation["verdict"])
            notify(Progress(phase="evaluation", step=1, total=1, message="evaluated"))
        kept_start = bool(evaluation.get("kept_start"))
        timings["evaluation_s"] = time.perf_counter() - t0

        # 4. save: temporary names, renamed into place, results last
        t0 = time.perf_counter()
        if main:  # the other processes hold the same weights (distributed.py) and are done
            notify(Progress(phase="saving", step=0, total=1, message="merging and saving the policy"))
            if kept_start:  # do no harm: policy/ holds the starting model's weights (a copy), not the trained ones
                # loaded afresh, not the adapter unloaded: generation merged and unmerged the adapter at every step,
                # which gives the base weights back only to within float32 rounding
                policy = load_causal_lm(config.base_model, models_dir=self.models_dir, dtype=torch.float32,
                                        device=device)
            _save_policy(policy, tokenizer, output_dir / _tmp(POLICY_DIR))
            os.replace(output_dir / _tmp(REWARD_MODEL_DIR), output_dir / REWARD_MODEL_DIR)
            os.replace(output_dir / _tmp(POLICY_DIR), output_dir / POLICY_DIR)
            notify(Progress(phase="saving", step=1, total=1, message="saved"))
        timings["save_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - started
        result = TrainingResult(
            model_path=output_dir / POLICY_DIR,
            reward_model_path=output_dir / REWARD_MODEL_DIR,
            final_reward_mean=last["objective/scores"],
            final_reward_std=last["objective/scores_std"],
            training_steps=len(history),
            final_kl=last["objective/kl"],
            final_loss=last["loss/total"],
            algorithm=config.algorithm,
            feedback_count=len(data.records),
            duration_seconds=timings["total_s"],
            history=history,
            reward_model_metrics=reward_model.metrics,
            config=config.to_dict(),
            warnings=list(data.warnings) + reward_model.warnings,
            timings=timings,
            evaluation=evaluation or None,
        )
        if main:
            result.save(output_dir / RESULTS_FILE)
        log.info(
            "Training complete in %.1fs: reward %.3f ± %.3f, KL %s after %d steps; policy at %s",
            timings["total_s"], result.final_reward_mean, result.final_reward_std, _fmt(result.final_kl),
            result.training_steps, result.model_path,
        )
        return result

    def _evaluate(
        self, policy: torch.nn.Module, tokenizer, heldout: list[str], reward_model, device: torch.device
    ) -> dict:
        """evaluation.evaluate_policy with this version's reward model; the reference is the model it started from
        (base_model, named after init_from "vN" when that is what it is; with LoRA, the policy's own adapter disabled;
        otherwise loaded again)."""
        config = self.config
        reference = None if isinstance(policy, PeftModel) else load_causal_lm(
            config.base_model, models_dir=self.models_dir, dtype=torch.float32, device=device,
        )
        judge = reward_model.judge
        block = evaluate_policy(
            policy=policy, reference=reference, tokenizer=tokenizer, prompts=heldout,
            score_fn=(lambda p, r: judge.scores(reward_model, p, r)) if judge else reward_model.score,
            also_scored_by={"policy_reward_model": reward_model.score} if judge else None,
            config=config, device=device,
            baseline=f"base model {config.base_model}" if config.init_from == "base" else config.init_from,
            scored_by=judge.description if judge else "this version's reward model",
        )
        return _verdict(block, judged=judge is not None, reward_model_warnings=reward_model.warnings,
                        fall_back=config.fall_back_to_start, max_kl=config.promote_max_kl)

    def _load_policy(self, device: torch.device, notify: ProgressCallback) -> torch.nn.Module:
        """The base causal LM in float32 on `device`, wrapped in a fresh LoRA adapter when use_lora."""
        config = self.config
        resolve_base_model(config.base_model, models_dir=self.models_dir, callback=notify)
        policy = load_causal_lm(config.base_model, models_dir=self.models_dir, dtype=torch.float32, device=device)
        if config.use_lora:
            policy = get_peft_model(policy, lora_config_for(
                policy, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                target_modules=config.lora_target_modules,
            ))
        return policy

    def _device(self) -> torch.device:
        try:
            device = resolve_device(self.config.device)
        except RuntimeError as exc:  # e.g. device="cuda" on a machine without CUDA
            raise ConfigError(str(exc)) from exc
        if distributed.setup(self.config.device).num_processes > 1:
            return distributed.device()  # one GPU per process (cuda:LOCAL_RANK), or the CPU with gloo
        return device

    def _models_dir(self) -> Path:
        return self.models_dir if self.models_dir is not None else default_models_dir()


# -- helpers ---------------------------------------------------------------------------------------------------------
def _verdict(block: dict, *, judged: bool, reward_model_warnings: list[str], fall_back: bool,
             max_kl: float) -> dict:
    """The evaluation block with the verdict: `better` only when the reward model passed its quality check, a judge
    other than the model the policy trained against scored it, the version stayed within `max_kl` of its start
    (promote_max_kl: reward models, judges included, are fitted on text near the start and cannot vouch for text far
    from it: best-of-n at KL 159 produced "dog dog dog ..." that every fold model scored 1.0 and gold 0.0), and that
    judge's win-rate interval (over prompts) lies above 0.5; `verdict` says why in one sentence; `kept_start` when
    the version falls back to its start; `advice`, when it is not better, what to change for the next one."""
    low, high = block["win_rate_ci"]
    figures = (f"win rate {block['win_rate']:.2f} [{low:.2f}, {high:.2f}] on {len(block['heldout_prompts'])} "
               f"held-out prompts")
    if "judge_agreement" in block:
        agree = round(block["judge_agreement"] * len(block["judge_win_rates"]))
        figures += f" ({agree} of {len(block['judge_win_rates'])} judges see a win)"
    block["reward_model_ok"] = not reward_model_warnings
    if reward_model_warnings:
        block["better"] = False
        reason = f"the reward model failed its quality check, so nothing can vouch for it ({figures})"
    elif not judged:
        block["better"] = False
        reason = f"no judge other than the reward model it trained against (validation_split is 0; {figures})"
    elif block["kl"] > max_kl:
        block["better"] = False
        reason = (f"it moved KL {block['kl']:.1f} nats from its start, beyond promote_max_kl ({max_kl:g}), where no "
                  f"reward model can vouch for its text ({figures})")
    elif block["better"]:
        reason = None
    else:
        reason = f"{figures}: the interval is not above 0.5"
    if reason is None:
        block["verdict"] = f"better than {block['baseline']}: {figures}, judged by {block['scored_by']}"
        return block
    if fall_back:
        block["kept_start"] = True
        block["verdict"] = f"kept the starting model ({block['baseline']}): the trained policy is not credibly " \
                           f"better, {reason}"
    else:
        block["verdict"] = f"not better than {block['baseline']}: {reason}"
    block["advice"] = _advice(block, judged=judged, max_kl=max_kl)
    return block


# Below this KL (nats per response) a version has barely left its start: too little training, not a bad preference.
BARELY_MOVED_KL = 0.1
# From this KL on, more steps mostly move it further from what the reward models know (the bench's regressions came
# at KL 2 and beyond): the advice asks for more feedback only.
MOVED_KL = 1.0


def _advice(block: dict, *, judged: bool, max_kl: float) -> str:
    """What to change so that the next version can be better, in one line, from why this one was not."""
    if not block["reward_model_ok"]:
        return ("the reward model could not predict the scores (its warning says how): more feedback, more "
                "consistent scores, or a preference the responses show")
    if not judged:
        return "set rewardModelConfig.validationSplit above 0 so that a judge other than the reward model can decide"
    if block["kl"] > max_kl:
        return "fewer steps (maxSteps), a lower learningRate or a lower targetKl keep the version near its start"
    if block["kl"] < BARELY_MOVED_KL:
        return (f"it barely moved (KL {block['kl']:.3f}): more steps (maxSteps) or a higher learningRate "
                "(null: chosen from the model)")
    low, high = block["win_rate_ci"]
    if high < 0.5:
        return ("the judges prefer its start: the reward model rewards something the held-out answers do not "
                "show; more feedback, on more distinct prompts, before training further")
    more_steps = " or more steps (maxSteps)" if block["kl"] < MOVED_KL else ""  # further from the start: no
    return (f"the interval spans 0.5 on {len(block['heldout_prompts'])} held-out prompts: more feedback on more "
            f"distinct prompts (a fifth of them are held out){more_steps}")


def _positions(name: str) -> Optional[int]:
    """model_positions, and for a hub id not in the local cache its config.json through transformers (the hub when
    allowed); None when that fails too: loading the model then says why."""
    found = model_positions(name)
    if found is not None:
        return found
    try:
        return positions_in(AutoConfig.from_pretrained(name).to_dict())
    except Exception:
        return None


def _save_policy(policy: torch.nn.Module, tokenizer, path: Path) -> None:
    """A plain Hugging Face directory: AutoModelForCausalLM/AutoTokenizer.from_pretrained(path) need nothing else.

    The tokenizer is saved left-padded (load_tokenizer(padding_side="left") records it in tokenizer_config.json),
    as the policy was trained: a decoder-only model continues from the last
    position, so a batch of prompts must be padded on the left for generate() to be right (a single prompt
    has no padding either way). generation_config carries the pad token, so generate() needs no extra argument.
    """
    model = policy.merge_and_unload() if isinstance(policy, PeftModel) else policy
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _cancellable(callback: Optional[ProgressCallback]) -> ProgressCallback:
    """The user's callback, raising TrainingCancelled when it returns True (the Progress contract)."""

    def notify(progress: Progress) -> bool:
        if callback is not None and callback(progress):
            raise TrainingCancelled(
                f"Training cancelled during the {progress.phase} phase (step {progress.step} of {progress.total})"
            )
        return False

    return notify


@contextmanager
def _run_log(path: Optional[Path]) -> Iterator[logging.Logger]:
    """A logger that writes this run's lines to `path` as they happen (FileHandler flushes every record).

    The logger is created outside the logging registry (one per run, never leaked) and hangs under
    ``n3_server.rlhf.trainer``, so LOG_LEVEL/handlers configured for the app also see the run's lines.
    No `path` (the other processes of a multi-process run): no file, and only warnings and errors go on.
    """
    parent = logging.getLogger(__name__)
    log = logging.Logger(f"{__name__}.run", level=logging.DEBUG if parent.isEnabledFor(logging.DEBUG) else logging.INFO)
    log.parent = parent
    if path is None:
        log.setLevel(logging.WARNING)
        yield log
        return
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        yield log
    finally:
        log.removeHandler(handler)
        handler.close()


def _remove_outputs(output_dir: Path) -> None:
    """Remove the model directories of an unfinished run (never training.log, never a finished version)."""
    if (output_dir / RESULTS_FILE).exists():
        return
    for name in UNFINISHED_OUTPUTS:
        shutil.rmtree(output_dir / name, ignore_errors=True)


def _finite(metrics: dict) -> dict:
    """JSON-safe metrics: plain floats, NaN/inf as None (training_results.json is strict JSON)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


def _describe_params(model: torch.nn.Module) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} trainable of {total:,} parameters"


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"
