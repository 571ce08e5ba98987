"""Writes for agents and the API's training requests.

``training`` is imported inside the functions that need it: it loads torch, which recording
feedback (the busiest endpoint) never needs.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser

from n3site.exceptions import ServiceError

from .models import Agent, PolicyVersion, agent_name_validator
from .selectors import get_agent, get_policy_version

if TYPE_CHECKING:
    from training.rlhf import TrainingConfig, TrainingEstimate

logger = logging.getLogger(__name__)

# A Hugging Face hub id: "name" or "org/name".
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def get_or_create_agent(*, name: str) -> Agent:
    """The agent called ``name``, created on first use; a name that is not a slug raises ValidationError."""
    agent = Agent.objects.filter(name=name).first()
    if agent is not None:
        return agent
    agent_name_validator(name)
    agent, _ = Agent.objects.get_or_create(name=name)  # get_or_create survives a concurrent create
    return agent


def check_base_model(name: str) -> None:
    """Refuse a base model that a web client should not be able to load.

    Allowed: a built-in model, a hub id ("gpt2", "org/name"), or a directory under MODELS_DIR or
    one of settings.N3_ALLOWED_MODEL_DIRS. Anything else (``../../etc``, ``/home/x``) raises ServiceError.
    """
    from training.rlhf.base_models import BUILTIN_MODELS  # noqa: PLC0415  (loads torch)

    if name in BUILTIN_MODELS:
        return
    try:
        # A hub id that is also a directory here would be loaded from the directory: check it as a path.
        if _HUB_ID.match(name) and ".." not in name and not Path(name).exists():
            return
        path = Path(name).expanduser().resolve()
        allowed = [Path(settings.MODELS_DIR), *settings.N3_ALLOWED_MODEL_DIRS]
        if any(path.is_relative_to(Path(root).resolve()) for root in allowed):
            return
    except (OSError, ValueError, RuntimeError):  # a name too long for a path, a NUL byte, a "~user" that does not exist
        pass
    raise ServiceError(
        f"Base model {name!r} is not allowed: use a built-in model ({', '.join(BUILTIN_MODELS)}), "
        "a Hugging Face hub id such as 'org/name', or a directory under MODELS_DIR or N3_ALLOWED_MODEL_DIRS."
    )


def _training_config(*, agent: Agent, overrides: dict[str, Any], preset: Optional[str]) -> "TrainingConfig":
    from training.services import resolve_training_config  # noqa: PLC0415  (loads torch)

    config = resolve_training_config(agent=agent, overrides=overrides, preset=preset)
    check_base_model(config.base_model)
    if config.reward_model_config.base_model:
        check_base_model(config.reward_model_config.base_model)
    return config


def estimate_policy_training(
    *, agent_name: str, overrides: dict[str, Any], preset: Optional[str] = None
) -> "TrainingEstimate":
    """The dry run: what training ``agent_name`` with this config would do and how long it would take.

    ``overrides`` are TrainingConfig fields (snake_case) applied over the preset and the agent's defaults.
    Raises NotFound, ConfigError, InsufficientFeedbackError or ServiceError (base model not allowed).
    """
    from training.rlhf import RLHFError  # noqa: PLC0415
    from training.services import estimate_training  # noqa: PLC0415

    agent = get_agent(name=agent_name)
    config = _training_config(agent=agent, overrides=overrides, preset=preset)
    try:
        return estimate_training(agent=agent, config=config)
    except RLHFError:
        raise  # the training core's own, explained errors
    except Exception as exc:
        # The estimate trains a miniature run with this config, so torch/peft/transformers errors that
        # the config provokes (target modules the model lacks, sequences longer than its context)
        # surface here untyped. The full run would fail the same way: tell the client why.
        logger.exception("Dry run failed for agent %s", agent_name)
        raise ServiceError(f"Training with this configuration fails: {type(exc).__name__}: {exc}") from exc


def queue_policy_training(
    *, agent_name: str, overrides: dict[str, Any], preset: Optional[str] = None,
    user: Optional[AbstractBaseUser] = None,
) -> PolicyVersion:
    """Create the agent's next version (queued) and enqueue its training job; same errors as the dry run."""
    from training.services import start_training  # noqa: PLC0415

    agent = get_agent(name=agent_name)
    config = _training_config(agent=agent, overrides=overrides, preset=preset)
    return start_training(agent=agent, config=config, user=user)


def cancel_policy_training(*, agent_name: str, version: str) -> PolicyVersion:
    """Cancel a queued or running version; raises NotFound, or Conflict if it already finished."""
    from training.services import cancel_training  # noqa: PLC0415

    return cancel_training(version=get_policy_version(agent_name=agent_name, version=version))
