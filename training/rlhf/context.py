"""Whether a run's sequences fit its base models' positions, read from config.json without loading a model.

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
from .layout import BUILTIN_CONTEXT, BUILTIN_MODELS

# Where architectures keep their number of positions (GPT-2: n_positions; Llama, Qwen, ...: max_position_embeddings).
POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length", "seq_length")

ContextFn = Callable[[str], Optional[int]]


def positions_in(config: dict) -> Optional[int]:
    """The number of positions a model's config.json (as a dict) declares; None if it names none."""
    for source in (config, config.get("text_config") or {}):
        for key in POSITION_KEYS:
            value = source.get(key) if isinstance(source, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def model_positions(name: str) -> Optional[int]:
    """A base model's positions: a built-in model's recipe figure, a local directory's config.json, a hub id's
    config.json in the local Hugging Face cache; None when unknown here."""
    if name in BUILTIN_MODELS:
        return BUILTIN_CONTEXT
    try:
        path = Path(name).expanduser()
        if path.is_dir():
            return _read_positions(path / "config.json")
        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # not a path and not a valid hub id: the base-model checks say why
        return None
    return _read_positions(Path(cached)) if isinstance(cached, str) else None


def _read_positions(path: Path) -> Optional[int]:
    try:
        return positions_in(json.loads(path.read_text()))
    except (OSError, ValueError, AttributeError):
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
