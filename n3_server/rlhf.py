"""The documented import path (``from n3_server.rlhf import RLHFTrainer, TrainingConfig, TrainingResult``).

A re-export of training.rlhf; no logic lives here.
"""
from training.rlhf import *  # noqa: F401,F403
from training.rlhf import __all__  # noqa: F401
