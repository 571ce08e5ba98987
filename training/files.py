"""Where a version's files live: MODELS_DIR/<agent>/v<N>/ (the names inside it: n3_server.rlhf.layout).

Model paths are stored as the spec's responses show them: relative to the project directory
(``models/my_agent/v15/policy``) when MODELS_DIR lies inside it, absolute otherwise. ``absolute_path`` reads
them back (a relative one resolves against settings.BASE_DIR, whatever the current directory).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional

from django.conf import settings
from django.utils import timezone

from n3_server.rlhf.layout import RESULTS_FILE, UNFINISHED_OUTPUTS

logger = logging.getLogger(__name__)


def agent_dir(agent_name: str) -> Path:
    """MODELS_DIR/<agent>/: every version of the agent. (Agent names start with a letter or digit, so no agent's
    directory is one of MODELS_DIR's own, such as _base/.)"""
    return Path(settings.MODELS_DIR) / agent_name


def version_dir(agent_name: str, number: int) -> Path:
    """MODELS_DIR/<agent>/v<N>/: the one place that lays out where a version's files live."""
    return agent_dir(agent_name) / f"v{number}"


def remove_version_files(*, agent_name: str, number: int) -> bool:
    """Delete a version's directory and everything in it (the version was deleted); True if there was one."""
    return _remove_tree(version_dir(agent_name, number))


def remove_agent_files(*, agent_name: str) -> bool:
    """Delete an agent's directory, every version in it (the agent was deleted); True if there was one."""
    if not agent_name or agent_name.startswith((".", "_")) or "/" in agent_name:
        return False  # not an agent's name: never one of MODELS_DIR's own directories
    return _remove_tree(agent_dir(agent_name))


def _remove_tree(path: Path) -> bool:
    if not path.exists() and not path.is_symlink():
        return False
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
    logger.info("Removed %s", path)
    return True


def deleted_during_training(directory: Path) -> str:
    """Why a version whose directory vanished mid-training was stopped (one message, whoever notices)."""
    return (f"The version's directory {directory} was deleted during training, so the training was stopped "
            "(it could not have saved its model, and its training.log went with the directory).")


def set_aside_leftover(*, agent_name: str, number: int) -> Optional[Path]:
    """Before a version trains: a directory already at its place was left by an agent of the same name deleted
    before deletes removed files (or by a delete that could not remove them). It is renamed to
    ``v<N>.previous-<UTC time>`` beside it, not trained over; returns the new name, or None if there was none."""
    directory = version_dir(agent_name, number)
    if not directory.exists() and not directory.is_symlink():
        return None
    aside = directory.with_name(f"{directory.name}.previous-{timezone.now():%Y%m%dT%H%M%S%f}")
    directory.rename(aside)
    logger.warning("%s existed before %s v%s trained (left by a deleted agent?); moved to %s",
                   directory, agent_name, number, aside)
    return aside



def remove_unfinished_outputs(*, agent_name: str, number: int) -> list[str]:
    """Remove the model directories a training left when its process died (SIGKILL, OOM, power loss): a killed
    process cannot remove them itself, and no later run trains into this version's directory. Keeps training.log;
    never touches a directory that training_results.json marks finished. Returns the names removed."""
    directory = version_dir(agent_name, number)
    if (directory / RESULTS_FILE).exists():
        return []
    removed = []
    for name in UNFINISHED_OUTPUTS:
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    if removed:
        logger.info("Removed the unfinished outputs of %s v%s: %s", agent_name, number, ", ".join(removed))
    return removed


def stored_path(path: Path | str) -> str:
    """How a model path is stored and shown (see the module docstring)."""
    path = Path(path).resolve()
    base = Path(settings.BASE_DIR).resolve()
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def absolute_path(stored: str) -> Path:
    """A stored model path as an absolute path (relative ones are relative to the project directory)."""
    path = Path(stored)
    return path if path.is_absolute() else Path(settings.BASE_DIR) / path
