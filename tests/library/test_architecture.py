"""The house's layout, checked: imports between the apps run one way, the training core is Django-free, and its
torch-free modules stay torch-free (the web process imports them)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Lowest first: a module may import its own layer and the ones before it, never one after it.
LAYERS = ["n3_server.rlhf", "n3site.exceptions", "policies", "feedback", "training", "api", "inference", "n3site"]
# The training core's modules that the web process imports; none of them may load torch, transformers, peft or trl.
TORCH_FREE = ["config", "context", "data", "errors", "layout", "metrics", "preference_data", "progress",
              "records", "results", "stats", "timing"]
HEAVY = ("torch", "transformers", "peft", "trl", "accelerate")


def layer_of(module: str) -> str | None:
    """The longest layer name that ``module`` lies in ("n3_server.rlhf.config" -> "n3_server.rlhf")."""
    matches = [layer for layer in LAYERS if module == layer or module.startswith(layer + ".")]
    return max(matches, key=len) if matches else None


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (function-local imports count too)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def source_files() -> list[Path]:
    return [
        path for app in ("api", "feedback", "inference", "n3_server", "n3site", "policies", "training")
        for path in (ROOT / app).rglob("*.py") if "migrations" not in path.parts
    ]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_imports_between_the_apps_run_one_way():
    backwards = []
    for path in source_files():
        here = layer_of(module_name(path))
        for imported in imports_of(path):
            there = layer_of(imported)
            if there is not None and LAYERS.index(there) > LAYERS.index(here):
                backwards.append(f"{module_name(path)} imports {imported} ({here} must not import {there})")
    assert not backwards, "\n".join(sorted(set(backwards)))


def test_the_training_core_imports_neither_django_nor_an_app():
    offending = []
    for path in (ROOT / "n3_server").rglob("*.py"):
        for imported in imports_of(path):
            top = imported.split(".")[0]
            if top in ("django", "rest_framework", "django_q", "api", "feedback", "inference", "policies", "training",
                       "n3site"):
                offending.append(f"{module_name(path)} imports {imported}")
    assert not offending, "\n".join(sorted(set(offending)))


@pytest.mark.parametrize("name", ["", *TORCH_FREE])
def test_the_torch_free_modules_of_the_core_load_no_deep_learning_library(name):
    """"" is the package itself: a web-only install (no torch) imports the documented ``n3_server.rlhf``."""
    module = f"n3_server.rlhf.{name}".rstrip(".")
    code = (
        f"import sys, {module}; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} loads {out.stdout.strip()}"


@pytest.mark.slow  # loads torch, transformers, peft and trl in a fresh interpreter: about 10 s
def test_the_documented_python_api_still_imports():
    code = "from n3_server.rlhf import RLHFTrainer, TrainingConfig, TrainingResult; print(RLHFTrainer.__name__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "RLHFTrainer"


def test_every_task_path_the_code_queues_imports():
    """django-q2 stores a queued task as its dotted path ("training.tasks.run_policy_version"): rows queued before a
    module moved must still find their function, so every path the code queues names a function that imports."""
    import importlib

    queued = set()
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
                "async_task", "schedule",
            ) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                queued.add(node.args[0].value)
    assert len(queued) >= 4, queued  # the training job, the timing measurement, samples, a blind comparison
    for dotted in sorted(queued):
        module, _, name = dotted.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), dotted
