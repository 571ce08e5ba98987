"""Greedy samples of policy versions for the compare page, generated in the worker, never in the web process.

    web:     request_samples() writes MODELS_DIR/<agent>/vN/samples.request.json and queues
             tasks.generate_version_samples (once per version while one is pending)
    worker:  child `manage.py generate_samples <directory>` writes samples.json (outputs or error), drops the request
    web:     samples_state() reads them: "none", "generating", "done" or "error"; the page polls it
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from django_q.tasks import async_task

from feedback.models import Feedback
from policies.models import Agent, PolicyVersion

from .files import absolute_path, version_dir

logger = logging.getLogger(__name__)

SAMPLE_PROMPTS = 3
SAMPLE_MAX_NEW_TOKENS = 32
SAMPLES_FILE = "samples.json"
REQUEST_FILE = "samples.request.json"
# A request older than this is taken for lost (its worker died): the page offers to generate again.
REQUEST_TTL_S = 1800.0


def sample_prompts(*, agent: Agent, count: int = SAMPLE_PROMPTS) -> list[str]:
    """The agent's most recent distinct prompts: what its users actually ask."""
    prompts: list[str] = []
    for prompt in Feedback.objects.filter(agent=agent).order_by("-created_at").values_list("prompt", flat=True)[:200]:
        if prompt not in prompts:
            prompts.append(prompt)
        if len(prompts) == count:
            break
    return prompts


def samples_state(*, version: PolicyVersion, prompts: list[str]) -> dict[str, Any]:
    """{"status", "outputs", "error"} of `version`'s samples for these prompts (outputs in their order)."""
    directory = _directory(version)
    saved = _read(directory / SAMPLES_FILE)
    if saved and saved.get("prompts") == prompts:
        if saved.get("error"):
            return {"status": "error", "outputs": [], "error": str(saved["error"])}
        return {"status": "done", "outputs": list(saved.get("outputs") or []), "error": ""}
    request = _read(directory / REQUEST_FILE)
    if request and time.time() - float(request.get("at", 0)) < REQUEST_TTL_S:
        return {"status": "generating", "outputs": [], "error": ""}
    return {"status": "none", "outputs": [], "error": ""}


def request_samples(*, version: PolicyVersion, prompts: list[str]) -> dict[str, Any]:
    """Queue the generation of `version`'s samples for `prompts` unless they exist or are being generated.
    Returns samples_state() after the request (an error at once when the version has no policy files)."""
    state = samples_state(version=version, prompts=prompts)
    if state["status"] in ("done", "generating"):
        return state
    if not prompts:
        return {"status": "error", "outputs": [], "error": "This agent has no feedback prompts to try."}
    if not version.model_path or not absolute_path(version.model_path).is_dir():
        return {"status": "error", "outputs": [],
                "error": f"No policy files at {version.model_path or '(no path recorded)'}."}
    path = _directory(version) / REQUEST_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink(missing_ok=True)  # a lost request (older than REQUEST_TTL_S): replaced
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # another request got here first
        return {"status": "generating", "outputs": [], "error": ""}
    with os.fdopen(fd, "w") as out:
        json.dump({
            "model_path": str(absolute_path(version.model_path)), "prompts": prompts,
            "max_new_tokens": SAMPLE_MAX_NEW_TOKENS, "at": time.time(),
        }, out)
    try:
        async_task("training.tasks.generate_version_samples", version.pk,
                   task_name=f"samples {version.agent.name} {version.version}", group="samples")
    except Exception as exc:
        logger.exception("Could not queue the samples of %s", version)
        path.unlink(missing_ok=True)
        return {"status": "error", "outputs": [], "error": f"Could not queue the generation: {exc}"}
    return {"status": "generating", "outputs": [], "error": ""}


def read_request(directory: Path) -> Optional[dict[str, Any]]:
    """The pending request in a version directory: {"model_path", "prompts", "max_new_tokens", "at"}."""
    return _read(directory / REQUEST_FILE)


def write_samples(directory: Path, *, prompts: list[str], outputs: list[str], error: str = "") -> Path:
    """samples.json (written whole, then renamed into place); the request is done."""
    path = directory / SAMPLES_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"prompts": prompts, "outputs": outputs, "error": error, "at": time.time()}, indent=2))
    os.replace(tmp, path)
    (directory / REQUEST_FILE).unlink(missing_ok=True)
    return path


def version_directory(version_id: int) -> Optional[Path]:
    version = PolicyVersion.objects.select_related("agent").filter(pk=version_id).first()
    return _directory(version) if version is not None else None


def end_request(directory: Path, *, returncode: int) -> None:
    """After the child: a request it left behind (it was killed, it crashed) becomes an error the page shows."""
    request = read_request(directory)
    if request is not None:
        write_samples(directory, prompts=list(request.get("prompts") or []), outputs=[],
                      error=f"The sample process ended without samples (exit code {returncode}); see the worker log.")


def _directory(version: PolicyVersion) -> Path:
    return version_dir(version.agent.name, version.number)


def _read(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
