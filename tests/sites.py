"""A throwaway n3 installation for tests that need several processes (a django-q2 cluster, a job's child).

pytest-django's test database is in memory: another process cannot see it. A Site has its own SQLite file in a
tmp dir, migrated by ``manage.py migrate``; the test drives it through manage.py and reads it with sqlite3.
Built-in base models are shared with the rest of the suite (a symlink to the test MODELS_DIR's ``_base``).
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent

# A run of a few seconds on n3-tiny-random (the training core's own tests cover bigger ones).
LEAN_CONFIG = {
    "base_model": "n3-tiny-random", "batch_size": 2, "mini_batch_size": 2, "ppo_epochs": 1, "max_new_tokens": 8,
    "reward_model_config": {"num_epochs": 1, "batch_size": 4},
}


def feedback_records(n: int = 12) -> list[dict]:
    """Helpful answers scored high, unhelpful ones low."""
    return [
        {"prompt": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}." if i % 2 else "I don't know.",
         "score": 0.9 if i % 2 else 0.1, "run_id": f"run-{i}"}
        for i in range(n)
    ]


@dataclass
class Site:
    root: Path
    env: dict[str, str]

    @property
    def db_path(self) -> Path:
        return self.root / "var" / "n3.sqlite3"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def manage(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=self.env, capture_output=True,
            text=True, timeout=timeout, check=check,
        )

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, **kwargs,
        )

    def shell(self, code: str) -> str:
        return self.manage("shell", "-v", "0", "-c", code).stdout

    def queue_version(self, *, agent: str = "bot", max_steps: int = 2) -> int:
        """An agent with 12 scored feedback records and a queued version (its job row waits in the ORM queue)."""
        code = f"""
from feedback.services import record_feedback_batch
from policies.models import Agent
from training import services
record_feedback_batch(agent_name={agent!r}, records={feedback_records()!r})
agent = Agent.objects.get(name={agent!r})
config = services.resolve_training_config(agent=agent, overrides={{**{LEAN_CONFIG!r}, "max_steps": {max_steps}}})
print(services.start_training(agent=agent, config=config).pk)
"""
        return int(self.shell(code).strip().splitlines()[-1])

    def version(self, pk: int) -> dict:
        with sqlite3.connect(self.db_path, timeout=20) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM policies_policyversion WHERE id = ?", (pk,)).fetchone()
        data = dict(row)
        data["metrics"] = json.loads(data["metrics"] or "{}")
        return data

    def wait_for(self, pk: int, predicate: Callable[[dict], bool], *, timeout: float, poll: float = 0.2,
                 seen: Optional[list] = None) -> dict:
        """Poll the version until ``predicate(row)``; ``seen`` collects each status observed, in order."""
        deadline = time.monotonic() + timeout
        while True:
            row = self.version(pk)
            if seen is not None and (not seen or seen[-1] != row["status"]):
                seen.append(row["status"])
            if predicate(row):
                return row
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting on version {pk}: {row['status']} {row['error']}")
            time.sleep(poll)


def tmp_models_dir(tmp_path: Path) -> Path:
    """``tmp_path/models``: a MODELS_DIR where versions start afresh, sharing the suite's built base models."""
    shared_base = Path(settings.MODELS_DIR) / "_base"
    shared_base.mkdir(parents=True, exist_ok=True)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "_base").symlink_to(shared_base, target_is_directory=True)
    return tmp_path / "models"


def make_site(tmp_path: Path, **env: str) -> Site:
    tmp_models_dir(tmp_path)
    site = Site(root=tmp_path, env={
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "n3site.settings",
        "SECRET_KEY": "test-site-secret-key",
        "N3_VAR_DIR": str(tmp_path / "var"),
        "MODELS_DIR": str(tmp_path / "models"),
        "HF_HUB_OFFLINE": "1",
        "N3_METRICS_INTERVAL": "0.2",
        "N3_Q_POLL": "0.2",
        "LOG_LEVEL": "INFO",
        **env,
    })
    for name in ("DATABASE_URL", "REDIS_URL", "N3_Q_SYNC", "N3_TRAINING_LAUNCHER"):
        if name not in env:
            site.env.pop(name, None)
    site.manage("migrate", "-v", "0")
    return site


def children_of(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
