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
import time
from pathlib import Path
from typing import Any, Optional, Union

import torch
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import AutoModel, PreTrainedModel

from . import distributed
from .base_models import hub_allowed, load_tokenizer, resolve_base_model, unavailable_message
from .config import RewardModelConfig
from .data import FeedbackRecord, format_text, train_val_split
from .errors import BaseModelUnavailable, TrainingCancelled
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

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def tokenize(self, prompts: list[str], responses: list[str]) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask [B, T], right-padded, cut from the left to max_length (the EOS stays)."""
        eos = self.tokenizer.eos_token or ""
        texts = [format_text(p, r) + eos for p, r in zip(prompts, responses)]
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": batch["input_ids"].to(self.device), "attention_mask": batch["attention_mask"].to(self.device)}

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
    resolve_base_model(base_model, models_dir=models_dir, callback=callback)  # builds a built-in model, reporting progress
    tokenizer = load_tokenizer(base_model, models_dir=models_dir, padding_side="right")
    tokenizer.truncation_side = "left"  # keep the response and the EOS, drop the start of a long prompt
    body = _load_body(base_model, models_dir)
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
    body = PeftModel.from_pretrained(_load_body(base_model, models_dir), path / ADAPTER_DIR)
    head = nn.Linear(saved["head"]["in_features"], saved["head"]["out_features"])
    head.load_state_dict(torch.load(path / HEAD_FILE, map_location="cpu", weights_only=True))
    model = RewardModel(
        body, head, tokenizer, base_model=base_model, max_length=saved["max_length"], autocast_dtype=autocast_dtype,
    ).to(torch.device(device))
    model.metrics = saved.get("metrics", {})
    return model.eval()


def _load_body(base_model: str, models_dir: Union[str, Path, None]) -> PreTrainedModel:
    """The base model without its LM head (AutoModel), float32, offline unless the operator allows the hub."""
    path = resolve_base_model(base_model, models_dir=models_dir)
    try:
        return AutoModel.from_pretrained(path, dtype=torch.float32, local_files_only=not hub_allowed())
    except (OSError, ValueError) as exc:
        raise BaseModelUnavailable(unavailable_message(base_model, exc)) from exc


def fit_reward_model(
    records: list[FeedbackRecord], *, base_model: str, config: RewardModelConfig, device: torch.device,
    autocast_dtype: Optional[torch.dtype] = None, seed: int = 42, models_dir: Union[str, Path, None] = None,
    callback: Optional[ProgressCallback] = None, log: Optional[logging.Logger] = None,
) -> RewardModel:
    """Fit a reward model to the scored feedback; its `metrics` hold the fit's figures.

    metrics: train_loss (last epoch's mean MSE), val_mse, val_mse_baseline (the untrained head, i.e. predicting
    the mean training score), val_pearson, val_spearman (None when undefined: no validation set or a constant
    prediction), train_size, val_size, epochs, steps, fit_seconds, eval_seconds, history (per epoch).
    Raises TrainingCancelled when `callback` returns True.
    """
    log = log or logger
    train, val = train_val_split(records, config.validation_split, seed)
    train_mean = sum(r.score for r in train) / len(train)
    torch.manual_seed(seed)
    model = build_reward_model(
        base_model, config, device=device, autocast_dtype=autocast_dtype, models_dir=models_dir, callback=callback,
        initial_score=train_mean,
    )
    val_y = torch.tensor([r.score for r in val])
    baseline = float(((val_y - train_mean) ** 2).mean()) if val else None

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate)
    # float16 autocast needs loss scaling against gradient underflow; for float32/bfloat16 this is a no-op.
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = config.num_epochs * steps_per_epoch
    order_rng = torch.Generator().manual_seed(seed)
    log.info(
        "reward model: %s + LoRA r=%d, %d train / %d validation samples, %d epochs x %d steps",
        base_model, config.lora_r, len(train), len(val), config.num_epochs, steps_per_epoch,
    )

    history, step, eval_seconds = [], 0, 0.0
    started = time.perf_counter()
    for epoch in range(1, config.num_epochs + 1):
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
            step += 1
            # Rank 0's callback decides for every process of a multi-process run (see distributed.should_stop).
            if distributed.should_stop(lambda: callback is not None and callback(Progress(
                phase="reward_model", step=step, total=total, metrics={"loss": loss.item(), "epoch": epoch},
            ))):
                raise TrainingCancelled(f"Training cancelled during reward model step {step} of {total}")
        t0 = time.perf_counter()
        val_metrics = evaluate(model, val) if val else {}
        eval_seconds += time.perf_counter() - t0
        history.append({"epoch": epoch, "train_loss": sum(losses) / len(losses), **val_metrics})
        log.info(
            "reward model epoch %d/%d train_loss=%.4f val_mse=%s (baseline %s)", epoch, config.num_epochs,
            history[-1]["train_loss"], _fmt(val_metrics.get("val_mse")), _fmt(baseline),
        )
    # Several processes (a launcher): each one fitted this same model on the same data in the same order, which is
    # simpler than splitting the data and averaging gradients and costs no wall time (they run side by side; the
    # fit is small next to PPO). Same seed alone is not enough on GPUs, whose kernels are not bitwise
    # deterministic, so rank 0's weights, the ones it saves, are copied to all: every PPO replica scores alike.
    distributed.broadcast_parameters(trainable)
    model.eval()
    last = history[-1]
    model.metrics = {
        "train_loss": last["train_loss"],
        "val_mse": last.get("val_mse"),
        "val_mse_baseline": baseline,
        "val_pearson": last.get("val_pearson"),
        "val_spearman": last.get("val_spearman"),
        "train_size": len(train),
        "val_size": len(val),
        "epochs": config.num_epochs,
        "steps": step,
        "fit_seconds": time.perf_counter() - started,
        "eval_seconds": eval_seconds,
        "history": history,
    }
    return model


def evaluate(model: RewardModel, records: list[FeedbackRecord]) -> dict[str, Optional[float]]:
    """val_mse, val_pearson and val_spearman of the model's [0, 1] scores against the records' scores."""
    pred = model.score([r.prompt for r in records], [r.response for r in records])
    target = torch.tensor([r.score for r in records])
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
    mean_rank = torch.zeros(int(tie_group.max()) + 1 if len(x) else 0, dtype=torch.double).index_add_(0, tie_group, ranks)
    return (mean_rank / torch.bincount(tie_group).double())[tie_group]


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"
