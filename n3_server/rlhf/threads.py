"""How many CPU threads each of n3's torch processes uses, so that the processes sharing a machine do not fight over
its cores. Left alone, torch gives every process one thread per core: a training process, the inference process
and a test run on 2 cores made 3x2 busy threads, and a 2-minute test took 36 minutes (threads waiting on each other,
not work).

    N3_TRAINING_THREADS    a training or a dry run's measurement (the worker's child): half the cores
    N3_INFERENCE_THREADS   the inference process (manage.py serve_policies): a quarter of the cores
    N3_TORCH_THREADS       every role at once, where its own setting is unset

At least 1 each. A machine that runs only the worker (or only inference) can give that role every core.
"""
import os

DEFAULT_SHARE = {"training": 2, "inference": 4, "tests": 2}  # cores // share


def torch_threads(role: str) -> int:
    """The thread count for ``role`` ("training", "inference", "tests") on this machine."""
    for name in (f"N3_{role.upper()}_THREADS", "N3_TORCH_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{name} must be a whole number of threads, at least 1, not {value!r}")
            return int(value)
    return max(1, (os.cpu_count() or 1) // DEFAULT_SHARE[role])


def use_torch_threads(role: str) -> int:
    """Set this process's torch thread count for ``role``; returns it. Imports torch (call it in a torch process)."""
    import torch  # noqa: PLC0415  (the web process, which imports this module's neighbours, never loads torch)

    threads = torch_threads(role)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # and what this process starts (a launcher's processes)
    return threads
