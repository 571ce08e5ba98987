"""What a run needs to know of its base model before loading it, read from config.json: whether its sequences fit
the model's positions, and the automatic learning rate from the model's width.

Torch-free: the web process refuses such a request before it is queued (training.services), and the trainer
checks the same before any model work. Where the positions cannot be known here (a hub id not in the local cache)
the check passes, and the trainer asks transformers for the config when it loads the model.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Optional, Union

from huggingface_hub import try_to_load_from_cache

from .config import TrainingConfig
from .errors import ConfigError
from .layout import BUILTIN_CONTEXT, BUILTIN_MODELS, BUILTIN_WIDTHS

# Where architectures keep their number of positions (GPT-2: n_positions; Llama, Qwen, ...: max_position_embeddings).
POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length", "seq_length")

# Where architectures keep their hidden size (GPT-2: n_embd; most others: hidden_size; T5 and friends: d_model).
WIDTH_KEYS = ("n_embd", "hidden_size", "d_model")
# The automatic learning rate (learning_rate None): LoRA's best rate for RL on GPT-2 small (width 768), about 10x a
# full fine-tuning's ("LoRA Without Regret", Thinking Machines 2025), scaled by 1/width as Adam's best rate for hidden
# matrices scales (muP): n3-tiny (128) gets 1.2e-3, gpt2-medium 1.5e-4, gpt2-large 1.2e-4. Without LoRA a tenth.
AUTO_LR_WIDTH, AUTO_LR_LORA, AUTO_LR_RANGE = 768, 2e-4, (1e-5, 2e-3)

ContextFn = Callable[[str], Optional[int]]


def positions_in(config: dict) -> Optional[int]:
    """The number of positions a model's config.json (as a dict) declares; None if it names none."""
    return _first_int(config, POSITION_KEYS)


def model_positions(name: str) -> Optional[int]:
    """A base model's positions: a built-in model's recipe figure, a local directory's config.json, a hub id's
    config.json in the local Hugging Face cache; None when unknown here."""
    if name in BUILTIN_MODELS:
        return BUILTIN_CONTEXT
    return _from_config(name, positions_in)


def model_width(name: str) -> Optional[int]:
    """A base model's hidden size, found as model_positions finds its positions; None when unknown here."""
    if name in BUILTIN_MODELS:
        return BUILTIN_WIDTHS[name]
    return _from_config(name, lambda config: _first_int(config, WIDTH_KEYS))


def auto_learning_rate(config: TrainingConfig) -> float:
    """The learning rate a run with learning_rate None trains at (see AUTO_LR_*); GPT-2 small's when the model's
    width is unknown here."""
    width = model_width(config.base_model) or AUTO_LR_WIDTH
    rate = AUTO_LR_LORA * AUTO_LR_WIDTH / width * (1.0 if config.use_lora else 0.1)
    low, high = AUTO_LR_RANGE
    return float(f"{min(max(rate, low), high):.2g}")


def with_learning_rate(config: TrainingConfig) -> TrainingConfig:
    """`config` with its learning rate made definite: the automatic one when it is None (the default)."""
    return config if config.learning_rate is not None else config.replace(learning_rate=auto_learning_rate(config))


def slow_rate_warning(config: TrainingConfig) -> Optional[str]:
    """A sentence for the dry run when a rate set on purpose is a tenth of the automatic one or less (with LoRA):
    such a run barely moves the adapter (issue 19: 1e-5 on n3-tiny, KL 0.004 after 1,000 steps)."""
    if config.learning_rate is None or not config.use_lora:
        return None
    auto = auto_learning_rate(config)
    if config.learning_rate > auto / 10:
        return None
    return (f"learning_rate {config.learning_rate:g} is a tenth or less of the rate n3 would choose for this model's "
            f"LoRA adapter ({auto:g}): expect the policy to barely move from its start (KL near 0, a version no better "
            "than its start). Leave learning_rate out for the automatic rate.")


def _from_config(name: str, read: Callable[[dict], Optional[int]]) -> Optional[int]:
    """`read` of a local directory's config.json or a hub id's in the local Hugging Face cache; None if neither."""
    try:
        path = Path(name).expanduser()
        if not path.is_dir():
            cached = try_to_load_from_cache(name, "config.json")
            if not isinstance(cached, str):
                return None
            path = Path(cached).parent
        return read(json.loads((path / "config.json").read_text()))
    except Exception:  # not a path, not a valid hub id, unreadable: the base-model checks say why
        return None


def _first_int(config: dict, keys: tuple[str, ...]) -> Optional[int]:
    for source in (config, config.get("text_config") or {}):
        for key in keys:
            value = source.get(key) if isinstance(source, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def check_fits_context(config: TrainingConfig, *, positions: ContextFn = model_positions) -> None:
    """Raise ConfigError naming the fields when a prompt plus its response (max_prompt_length + max_new_tokens)
    exceed the policy's base model's positions, or reward_model_config.max_length the reward model's."""
    errors: dict[str, list[str]] = {}
    parts = []
    total = config.max_prompt_length + config.max_new_tokens
    available = positions(config.base_model)
    if available is not None and total > available:
        reason = (f"a prompt ({config.max_prompt_length}) plus a response ({config.max_new_tokens}) = {total} tokens, "
                  f"more than the {available} positions of base model {_shown(config.base_model)}")
        errors["max_prompt_length"] = errors["max_new_tokens"] = [reason]
        parts.append(f"max_prompt_length + max_new_tokens: {reason}")
    reward_base = config.reward_model_config.base_model or config.base_model
    available = positions(reward_base)
    if available is not None and config.reward_model_config.max_length > available:
        reason = (f"{config.reward_model_config.max_length} tokens, more than the {available} positions of base model "
                  f"{_shown(reward_base)}")
        errors["reward_model_config.max_length"] = [reason]
        parts.append(f"reward_model_config.max_length: {reason}")
    if errors:
        raise ConfigError(f"The sequences do not fit the model: {'; '.join(parts)}", errors=errors)


def _shown(name: Union[str, Path]) -> str:
    """A base model as an error names it: a local directory by its last part only (no server paths)."""
    text = str(name)
    return repr(Path(text).name) if "/" in text and Path(text).expanduser().is_absolute() else repr(text)
