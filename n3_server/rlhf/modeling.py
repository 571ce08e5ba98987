"""Small shared pieces for putting models on devices and wrapping them in LoRA."""
from __future__ import annotations

import torch
from peft import LoraConfig
from transformers import PreTrainedModel

# Adapters on every linear layer, the MLP's included: "LoRA Without Regret" (Thinking Machines, 2025) found
# attention-only LoRA clearly behind full fine-tuning and all-layer LoRA level with it, in RL too.
# Conv1D-based architectures (GPT-2 family) store weights transposed: LoRA needs fan_in_fan_out. GPT-2's c_proj
# names both the attention output and the MLP's down projection; c_fc is the MLP's up projection.
_CONV1D_TARGETS = {"gpt2": ["c_attn", "c_proj", "c_fc"]}
_LINEAR_TARGETS = "all-linear"  # peft: every nn.Linear but the output layer


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for but CUDA is not available on this machine")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def lora_config_for(
    model: PreTrainedModel, *, r: int, alpha: int, dropout: float, target_modules: list[str] | str | None = None,
    task_type: str | None = "CAUSAL_LM",
) -> LoraConfig:
    model_type = getattr(model.config, "model_type", "")
    conv1d = model_type in _CONV1D_TARGETS
    targets = target_modules or _CONV1D_TARGETS.get(model_type) or _LINEAR_TARGETS
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, fan_in_fan_out=conv1d,
        bias="none", task_type=task_type,
    )
