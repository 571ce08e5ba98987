"""One way to report progress for every long operation.

The trainer calls ``callback(Progress(...))`` at each step of each phase. The CLI turns these into
a progress bar, the django-q2 job into database rows. A callback that returns ``True`` asks the
trainer to stop: it stops cleanly before the next step and raises ``TrainingCancelled``.
"""
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

PHASES = ("base_model", "reward_model", "policy", "saving")


@dataclass
class Progress:
    phase: str  # one of PHASES
    step: int  # steps done in this phase
    total: int  # steps this phase will take
    metrics: dict = field(default_factory=dict)  # e.g. {"objective/scores": 0.61, "objective/kl": 1.2}
    message: str = ""


ProgressCallback = Callable[[Progress], Optional[bool]]
