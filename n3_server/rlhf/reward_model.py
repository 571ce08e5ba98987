"""The reward model: base LM body + LoRA + a scalar head, regressed onto the reviewers' 0..1 scores.

It reads ``format_text(prompt, response)`` followed by the EOS token, right-padded, and the head (a Linear)
reads the last layer's hidden state at the last real token (the EOS): with causal attention that is the
only position that has seen the whole text, and always ending on the same token gives the head one place
to look. The fit is plain MSE on the scores (the feedback is absolute scores, not pairwise preferences).

Scores for PPO are the head's output clamped to [0, 1]: the head regresses the scores directly, so its output
is already on the reviewers' scale (a sigmoid would squash that scale and make 0 and 1 unreachable); the clamp
only trims overshoot, keeping the reward in the range the spec reads ("Target: > 0.7 after training").

Saved as the spec's File Structure::

    reward_model/
      base_model/        the peft adapter (adapter_config.json + adapter_model.safetensors)
      reward_head.pt     the head's state_dict
      config.json        base model, head shape, max_length, text format, fit metrics
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Optional, Union

import torch
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import AutoModel, PreTrainedModel

from . import distributed
from .base_models import LOAD_LOCK, hub_allowed, load_tokenizer, resolve_base_model, unavailable_message
from .config import RewardModelConfig
from .data import FeedbackRecord, format_text, train_val_split
from .errors import BaseModelUnavailable, RewardModelQualityError, TrainingCancelled
from .modeling import lora_config_for
from .progress import Progress, ProgressCallback

ADAPTER_DIR = "base_model"
HEAD_FILE = "reward_head.pt"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1

logger = logging.getLogger(__name__)


class RewardModel(nn.Module):
    def __init__(
        self, backbone: PeftModel, head: nn.Linear, tokenizer, *, base_model: str, max_length: int,
        autocast_dtype: Optional[torch.dtype] = None, batch_size: int = 8,
    ):
        super().__init__()
        self.backbone, self.head, self.tokenizer = backbone, head, tokenizer
        self.base_model, self.max_length, self.batch_size = base_model, max_length, batch_size
        self.base_model_path = getattr(backbone.peft_config["default"], "base_model_name_or_path", None)
        self.autocast_dtype = autocast_dtype  # bf16/fp16 on GPUs: weights stay float32, matmuls run in autocast
        self.metrics: dict[str, Any] = {}
        # (mean, std) of this model's scores over the feedback's responses: PPO's reward normalisation
        self.score_stats: Optional[tuple[float, float]] = None
        self.warnings: list[str] = []  # the fit's quality check (quality_warnings)
        self.judge: Optional[Judge] = None  # models the policy is not trained against (fit_reward_model)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def tokenize(self, prompts: list[str], responses: list[str]) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask [B, T], right-padded, cut from the left to max_length (the EOS stays)."""
        eos = self.tokenizer.eos_token or ""
        texts = [format_text(p, r) + eos for p, r in zip(prompts, responses)]
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {
            "input_ids": batch["input_ids"].to(self.device), "attention_mask": batch["attention_mask"].to(self.device)
        }

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unclamped scores [B]."""
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None else contextlib.nullcontext()
        )
        with autocast:
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
        last = attention_mask.sum(dim=1) - 1  # [B] index of the last real token (right padding)
        hidden = hidden[torch.arange(len(last), device=hidden.device), last]  # [B, H]
        return self.head(hidden.float()).squeeze(-1)  # [B]

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Scores in [0, 1], float32 on the CPU, one per (prompt, response); eval mode, in batches.

        This is the reward_fn PPO calls.
        """
        was_training = self.training
        self.eval()
        try:
            out = [
                self(**self.tokenize(prompts[i:i + self.batch_size], responses[i:i + self.batch_size])).clamp(0.0, 1.0)
                for i in range(0, len(prompts), self.batch_size)
            ]
        finally:
            self.train(was_training)
        return torch.cat(out).float().cpu() if out else torch.zeros(0)

    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(path / ADAPTER_DIR)
        torch.save(self.head.state_dict(), path / HEAD_FILE)
        lora = self.backbone.peft_config["default"]
        (path / CONFIG_FILE).write_text(json.dumps({
            "format_version": FORMAT_VERSION,
            "base_model": self.base_model,
            "base_model_path": self.base_model_path,  # where it was found when trained; loading resolves the name
            "head": {"in_features": self.head.in_features, "out_features": self.head.out_features},
            "max_length": self.max_length,
            "text_format": "prompt + '\\n' + response + eos_token, right-padded; head on the last real token",
            "output": "clamp(head, 0, 1)",
            "lora": {"r": lora.r, "lora_alpha": lora.lora_alpha, "lora_dropout": lora.lora_dropout},
            "metrics": self.metrics,
            "score_stats": self.score_stats,
        }, indent=2, allow_nan=False))
        return path


def build_reward_model(
    base_model: str, config: RewardModelConfig, *, device: torch.device, autocast_dtype: Optional[torch.dtype] = None,
    models_dir: Union[str, Path, None] = None, callback: Optional[ProgressCallback] = None, initial_score: float = 0.5,
) -> RewardModel:
    """A fresh reward model: base body + a new LoRA adapter + a head that predicts `initial_score` for everything.

    The head's weight starts at zero and its bias at `initial_score` (the mean training score): the fit starts
    from exactly the predict-the-mean baseline that `val_mse_baseline` measures.
    """
    # builds a built-in model, reporting progress
    resolve_base_model(base_model, models_dir=models_dir, callback=callback)
    tokenizer = load_tokenizer(base_model, models_dir=models_dir, padding_side="right")
    tokenizer.truncation_side = "left"  # keep the response and the EOS, drop the start of a long prompt
    body = _load_body(base_model, models_dir)
    with LOAD_LOCK:  # a load in another thread would leave the adapter's and the head's init undone
        body = get_peft_model(body, lora_config_for(
            body, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout, task_type="FEATURE_EXTRACTION",
        ))
        head = nn.Linear(body.config.get_text_config().hidden_size, 1)
        nn.init.zeros_(head.weight)
        nn.init.constant_(head.bias, initial_score)
    return RewardModel(
        body, head, tokenizer, base_model=base_model, max_length=config.max_length, autocast_dtype=autocast_dtype,
        batch_size=config.batch_size,
    ).to(device)


def load_reward_model(
    path: Union[str, Path], *, device: Union[str, torch.device] = "cpu", models_dir: Union[str, Path, None] = None,
    autocast_dtype: Optional[torch.dtype] = None,
) -> RewardModel:
    """Load a saved reward model; it scores exactly as the one that was saved."""
    path = Path(path)
    saved = json.loads((path / CONFIG_FILE).read_text())
    base_model = saved["base_model"]
    tokenizer = load_tokenizer(base_model, models_dir=models_dir, padding_side="right")
    tokenizer.truncation_side = "left"
    with LOAD_LOCK:
        body = PeftModel.from_pretrained(_load_body(base_model, models_dir), path / ADAPTER_DIR)
    head = nn.Linear(saved["head"]["in_features"], saved["head"]["out_features"])
    head.load_state_dict(torch.load(path / HEAD_FILE, map_location="cpu", weights_only=True))
    model = RewardModel(
        body, head, tokenizer, base_model=base_model, max_length=saved["max_length"], autocast_dtype=autocast_dtype,
    ).to(torch.device(device))
    model.metrics = saved.get("metrics", {})
    model.score_stats = tuple(saved["score_stats"]) if saved.get("score_stats") else None
    return model.eval()


def _load_body(base_model: str, models_dir: Union[str, Path, None]) -> PreTrainedModel:
    """The base model without its LM head (AutoModel), float32, offline unless the operator allows the hub."""
    path = resolve_base_model(base_model, models_dir=models_dir)
    try:
        with LOAD_LOCK:
            return AutoModel.from_pretrained(path, dtype=torch.float32, local_files_only=not hub_allowed())
    except (OSError, ValueError) as exc:
        raise BaseModelUnavailable(unavailable_message(base_model, exc)) from exc


def fit_reward_model(
    records: list[FeedbackRecord], *, base_model: str, config: RewardModelConfig, device: torch.device,
    autocast_dtype: Optional[torch.dtype] = None, seed: int = 42, models_dir: Union[str, Path, None] = None,
    callback: Optional[ProgressCallback] = None, log: Optional[logging.Logger] = None,
) -> RewardModel:
    """Fit a reward model to the scored feedback; its `metrics` hold the fit's figures and `warnings` its quality.

    Below `config.cross_validation_below` records: `cv_folds`-fold cross-validation measures the fit (every record
    predicted once by a model that did not see it, pooled) and picks the epoch count with the lowest pooled MSE; the
    kept model is then fitted on every record for that many epochs. Otherwise one stratified `validation_split` is
    held out and the weights of the epoch with the lowest validation MSE are kept (early stopping).

    metrics: validation ("5-fold cross-validation" or "holdout"), val_mse, val_mse_baseline (predicting the mean
    training score), val_pearson, val_spearman (None when undefined), best_epoch, train_loss, train_size, val_size
    (records predicted per epoch), epochs, steps (every optimizer step, folds included), fit_seconds, eval_seconds,
    history (per epoch). Raises TrainingCancelled when `callback` returns True, RewardModelQualityError for a poor
    fit when `config.on_poor_fit` is "fail".
    """
    log = log or logger
    started = time.perf_counter()
    fit = _Fit(config, base_model=base_model, device=device, autocast_dtype=autocast_dtype, seed=seed,
               models_dir=models_dir, callback=callback, log=log, n_records=len(records))
    if config.cross_validates(len(records)):
        folds = cv_folds(records, config.cv_folds, seed)
        predictions = [[0.0] * len(records) for _ in range(config.num_epochs)]  # [epoch][record]
        baseline_sq = []
        fold_states = []  # [fold][epoch]: each fold model's trainable weights after each epoch, for the judge
        for k, held_out in enumerate(folds, start=1):
            keep = set(held_out)
            train = [r for i, r in enumerate(records) if i not in keep]
            val = [records[i] for i in held_out]
            mean = sum(r.score for r in train) / len(train)
            baseline_sq += [(r.score - mean) ** 2 for r in val]
            _, per_epoch, states = fit.run(train, val, epochs=config.num_epochs, what=f"fold {k}/{len(folds)}")
            fold_states.append(states)
            for epoch, pred in enumerate(per_epoch):
                for i, p in zip(held_out, pred.tolist()):
                    predictions[epoch][i] = p
        target = torch.tensor([r.score for r in records])
        history = [{"epoch": e + 1, **_compare(torch.tensor(p), target)} for e, p in enumerate(predictions)]
        best = min(history, key=lambda h: h["val_mse"])
        model, _, _ = fit.run(records, [], epochs=best["epoch"], what="all records")
        validation, val_size = f"{len(folds)}-fold cross-validation", len(records)
        baseline = sum(baseline_sq) / len(records)
        judge = Judge([states[best["epoch"] - 1] for states in fold_states],
                      f"{len(folds)} cross-validation fold reward models (not the one the policy trained against)")
    else:
        train, val = train_val_split(records, config.validation_split, seed)
        mean = sum(r.score for r in train) / len(train)
        baseline = float(sum((r.score - mean) ** 2 for r in val) / len(val)) if val else None
        model, per_epoch, _ = fit.run(train, val, epochs=config.num_epochs, what="", keep_best=bool(val))
        target = torch.tensor([r.score for r in val])
        history = [{"epoch": e + 1, **_compare(p, target)} for e, p in enumerate(per_epoch)]
        best = min(history, key=lambda h: h["val_mse"]) if history else {"epoch": config.num_epochs}
        validation, val_size = "holdout", len(val)
        judge = None
        if val:  # the judge: a model of the validation records alone, disjoint from what the policy's model saw
            _, _, states = fit.run(val, [], epochs=best["epoch"], what="judge on the validation records")
            judge = Judge(states[-1:], "a reward model fitted on the validation records only (disjoint from the one "
                                       "the policy trained against)")
    # Several processes (a launcher): each one fitted this same model on the same data in the same order, which is
    # simpler than splitting the data and averaging gradients and costs no wall time (they run side by side; the
    # fit is small next to PPO). Same seed alone is not enough on GPUs, whose kernels are not bitwise
    # deterministic, so rank 0's weights, the ones it saves, are copied to all: every PPO replica scores alike.
    distributed.broadcast_parameters([p for p in model.parameters() if p.requires_grad])
    model.eval()
    scores = model.score([r.prompt for r in records], [r.response for r in records])
    model.score_stats = (float(scores.mean()), float(scores.std(correction=0)))
    model.metrics = {
        "validation": validation,
        "val_mse": best.get("val_mse"),
        "val_mse_baseline": baseline,
        "val_pearson": best.get("val_pearson"),
        "val_spearman": best.get("val_spearman"),
        "best_epoch": best["epoch"],
        "train_loss": fit.last_train_loss,
        "train_size": len(records) if validation != "holdout" else len(records) - val_size,
        "val_size": val_size,
        "epochs": config.num_epochs,
        "steps": fit.steps,
        "fit_seconds": time.perf_counter() - started,
        "eval_seconds": fit.eval_seconds,
        "history": history,
    }
    log.info(
        "reward model (%s): val_mse=%s (predict-the-mean %s), pearson=%s, spearman=%s, best epoch %d of %d",
        validation, *(_fmt(model.metrics[k]) for k in ("val_mse", "val_mse_baseline", "val_pearson", "val_spearman")),
        best["epoch"], config.num_epochs,
    )
    model.judge = judge
    model.warnings = quality_warnings(model.metrics, config)
    for warning in model.warnings:
        log.warning(warning)
    if model.warnings and config.on_poor_fit == "fail":
        raise RewardModelQualityError(" ".join(model.warnings) + " (reward_model_config.on_poor_fit is 'fail')")
    return model


def quality_warnings(metrics: dict[str, Any], config: RewardModelConfig) -> list[str]:
    """What is wrong with a fit, in words; empty when nothing is."""
    mse, baseline, r = metrics.get("val_mse"), metrics.get("val_mse_baseline"), metrics.get("val_pearson")
    how = metrics.get("validation", "validation")
    if mse is None:
        return ["Reward model not validated (no held-out records): its quality is unknown."]
    problems = []
    if baseline is not None and mse >= baseline:
        problems.append(
            f"Reward model is no better than predicting the mean score ({how} MSE {mse:.4f} vs {baseline:.4f}): "
            "a policy trained against it learns noise. Collect more varied feedback or check the scores."
        )
    if r is None or r < config.min_correlation:
        problems.append(
            f"Reward model's scores correlate weakly with the reviewers' ({how} Pearson "
            f"{'undefined' if r is None else f'{r:.2f}'}, below {config.min_correlation:g}): its preferences, and "
            "this version's evaluation, may not be the reviewers'."
        )
    return problems


def cv_folds(records: list[FeedbackRecord], k: int, seed: int) -> list[list[int]]:
    """k folds of record indices, stratified by score (ordered by score, dealt round-robin), seeded; none empty."""
    rng = random.Random(seed)
    order = sorted(range(len(records)), key=lambda i: (records[i].score, rng.random()))
    k = min(k, len(records))
    return [sorted(order[j::k]) for j in range(k)]


class _Fit:
    """One fitting loop, run for each fold and for the kept model: MSE on the scores, AdamW, clipped gradients."""

    def __init__(self, config: RewardModelConfig, *, base_model: str, device: torch.device,
                 autocast_dtype: Optional[torch.dtype], seed: int, models_dir: Union[str, Path, None],
                 callback: Optional[ProgressCallback], log: logging.Logger, n_records: int):
        self.config, self.base_model, self.device, self.autocast_dtype = config, base_model, device, autocast_dtype
        self.seed, self.models_dir, self.callback, self.log = seed, models_dir, callback, log
        folds = min(config.cv_folds, n_records) if config.cross_validates(n_records) else 0
        per_epoch = math.ceil(n_records / config.batch_size)
        # Progress: every fold's steps (each sees (k-1)/k of the records) plus the kept model's (at most num_epochs);
        # with a holdout split, the judge's fit on the validation records instead of the folds
        fold_steps = folds * math.ceil(n_records * (folds - 1) / folds / config.batch_size) if folds else 0
        judge_steps = 0 if folds else math.ceil(n_records * config.validation_split / config.batch_size) + 1
        self.total = config.num_epochs * (per_epoch + fold_steps + judge_steps)
        self.steps, self.eval_seconds, self.last_train_loss = 0, 0.0, None

    def run(self, train: list[FeedbackRecord], val: list[FeedbackRecord], *, epochs: int, what: str,
            keep_best: bool = False) -> tuple[RewardModel, list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        """A fresh model fitted on `train`; its predictions on `val` after each epoch ([len(val)] each), and its
        trainable weights after each epoch (adapter and head: small; the judge keeps the cross-validation folds')."""
        config = self.config
        train_mean = sum(r.score for r in train) / len(train)
        torch.manual_seed(self.seed)
        model = build_reward_model(
            self.base_model, config, device=self.device, autocast_dtype=self.autocast_dtype,
            models_dir=self.models_dir, callback=self.callback, initial_score=train_mean,
        )
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate)
        # float16 autocast needs loss scaling against gradient underflow; for float32/bfloat16 this is a no-op.
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        order_rng = torch.Generator().manual_seed(self.seed)
        self.log.info(
            "reward model%s: %s + LoRA r=%d, %d train / %d validation samples, %d epochs",
            f" ({what})" if what else "", self.base_model, config.lora_r, len(train), len(val), epochs,
        )
        per_epoch, states, best_mse, best_state = [], [], math.inf, None
        val_y = torch.tensor([r.score for r in val])
        for epoch in range(1, epochs + 1):
            model.train()  # lora_dropout and the body's dropout act as regularisers while fitting
            losses = []
            for batch_idx in torch.randperm(len(train), generator=order_rng).split(config.batch_size):
                batch = [train[i] for i in batch_idx]
                inputs = model.tokenize([r.prompt for r in batch], [r.response for r in batch])
                target = torch.tensor([r.score for r in batch], device=model.device)
                loss = nn.functional.mse_loss(model(**inputs), target)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                scaler.step(optimizer)
                scaler.update()
                losses.append(loss.item())
                self.steps += 1
                # Rank 0's callback decides for every process of a multi-process run (see distributed.should_stop).
                if distributed.should_stop(lambda loss=loss, epoch=epoch: self.callback is not None and self.callback(
                    Progress(
                        phase="reward_model", step=min(self.steps, self.total), total=self.total,
                        metrics={"loss": loss.item(), "epoch": epoch},
                    )
                )):
                    raise TrainingCancelled(f"Training cancelled during reward model step {self.steps} of {self.total}")
            self.last_train_loss = sum(losses) / len(losses)
            states.append(trainable_state(model))
            if not val:
                continue
            t0 = time.perf_counter()
            pred = model.score([r.prompt for r in val], [r.response for r in val])
            self.eval_seconds += time.perf_counter() - t0
            per_epoch.append(pred)
            mse = float(((pred - val_y) ** 2).mean())
            self.log.info(
                "reward model epoch %d/%d train_loss=%.4f val_mse=%.4f", epoch, epochs, self.last_train_loss, mse,
            )
            if keep_best and mse < best_mse:
                best_mse = mse
                best_state = states[-1]
        if best_state is not None:
            load_trainable_state(model, best_state)
        return model, per_epoch, states


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights that training changes (the LoRA adapter and the head), in CPU memory: the judge keeps
    one per fold and epoch until the best epoch is known, which must not cost GPU memory."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for name, param in model.named_parameters():
        if name in state:
            param.copy_(state[name])


class Judge:
    """Reward models the policy was NOT optimised against, for the verdict on a trained version.

    A policy trained against one reward model learns that model's quirks as well as the reviewers' preference, so
    the same model scoring its samples says "better" too readily (Gao et al. 2022). The judge is the fits n3 already
    makes to measure the reward model: the cross-validation fold models (each saw (k-1)/k of the training records,
    none the held-out prompts), or with a holdout split, a model of the validation records alone. They are kept as
    weights and swapped into the policy's reward model to score, so they cost no extra model in memory.
    """

    def __init__(self, states: list[dict[str, torch.Tensor]], description: str):
        self.states, self.description = states, description

    def __len__(self) -> int:
        return len(self.states)

    def scores(self, model: RewardModel, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """[judges, N]: each judge's scores in [0, 1]; `model` scores with its own weights again afterwards."""
        own = trainable_state(model)
        try:
            out = []
            for state in self.states:
                load_trainable_state(model, state)
                out.append(model.score(prompts, responses))
            return torch.stack(out)
        finally:
            load_trainable_state(model, own)


def _compare(pred: torch.Tensor, target: torch.Tensor) -> dict[str, Optional[float]]:
    return {
        "val_mse": float(((pred - target) ** 2).mean()),
        "val_pearson": pearson(pred, target),
        "val_spearman": spearman(pred, target),
    }


# Correlations by hand: scipy is not a dependency and these are a few lines of torch.
def pearson(x: torch.Tensor, y: torch.Tensor) -> Optional[float]:
    """Pearson correlation; None when undefined (fewer than 2 points or a constant input)."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    if len(x) < 2 or denom < 1e-12:
        return None
    return float((x * y).sum()) / denom


def spearman(x: torch.Tensor, y: torch.Tensor) -> Optional[float]:
    """Spearman rank correlation: Pearson on ranks, tied values sharing their average rank."""
    return pearson(_ranks(x), _ranks(y))


def _ranks(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    ranks = torch.empty_like(x)
    ranks[torch.argsort(x)] = torch.arange(len(x), dtype=torch.double)
    _, tie_group = torch.unique(x, return_inverse=True)
    mean_rank = torch.zeros(int(tie_group.max()) + 1 if len(x) else 0, dtype=torch.double).index_add_(
        0, tie_group, ranks
    )
    return (mean_rank / torch.bincount(tie_group).double())[tie_group]


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"
