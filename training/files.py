"""Where a version's files live: MODELS_DIR/<agent>/v<N>/ (the names inside it: training.rlhf.layout).

Model paths are stored as the spec's responses show them: relative to the project directory
(``models/my_agent/v15/policy``) when MODELS_DIR lies inside it, absolute otherwise. ``absolute_path`` reads
them back (a relative one resolves against settings.BASE_DIR, whatever the current directory).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from django.conf import settings

from training.rlhf.layout import RESULTS_FILE, UNFINISHED_OUTPUTS

logger = logging.getLogger(__name__)


def version_dir(agent_name: str, number: int) -> Path:
    """MODELS_DIR/<agent>/v<N>/: the one place that lays out where a version's files live."""
    return Path(settings.MODELS_DIR) / agent_name / f"v{number}"




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
