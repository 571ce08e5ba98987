"""Several training processes (one per GPU) under a launcher: the little glue PPO and the trainer need.

    N3_TRAINING_LAUNCHER="accelerate launch --num_processes 2"      # or: torchrun --nproc_per_node 2

starts `manage.py train_policy --version-id N` once per process (accelerate turns on its multi-process launcher
by itself when it sees several GPUs; on a machine without, `--multi_gpu` forces it, and the processes use gloo on
the CPU: that is how tests/library/test_distributed.py runs). accelerate's ``PartialState`` reads the
launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), initialises torch.distributed (NCCL on
CUDA, gloo on CPU) and gives each process its rank and device. In a plain single process it is a no-op: every
helper below then returns at once and training is exactly what it is without a launcher.

What works (data-parallel PPO, ``algorithm="ppo"``):
- Each process is one replica of the policy + value head on its own device: ``cuda:LOCAL_RANK`` whenever CUDA is
  used (config.device "auto", "cuda" or "cuda:N" alike), the CPU with gloo otherwise (and with device="cpu").
- ``batch_size`` is per process: each rank samples its own prompts (seed + rank) and generates its own
  ``batch_size`` rollouts, so one PPO step learns from ``num_processes * batch_size`` rollouts. Advantages and
  rewards are whitened per process (as TRL does).
- Gradients are averaged across processes before every optimizer step (``average_gradients``), and the trainable
  weights are broadcast from rank 0 once at the start: the replicas stay identical, step after step.
- Logged metrics (scores mean/std, KL, rlhf reward, losses, response length, tokens/s) are over all processes'
  rollouts, and the adaptive KL controller sees that global KL on every rank, so kl_coef stays identical.
- The reward model: every process fits the same model on the same data (it is small and fast next to PPO),
  then takes rank 0's weights (see reward_model.fit_reward_model).
- Only rank 0 writes: training.log, policy/, reward_model/, training_results.json and the database rows
  (progress, heartbeat, outcome). Only rank 0 calls the progress callback; its answer (stop or go) is broadcast
  at every reward-model and PPO step (``should_stop``), so a cancel stops every process at the same step.
- bf16 autocast on GPUs as in a single process (float32 master weights).
- A process that fails makes the launcher (torch elastic: torchrun, ``accelerate launch``) stop the others and
  exit non-zero; rank 0 records the version failed, and the job supervisor (training/tasks.py) fails it anyway
  if no process could.

What does not:
- No model sharding (FSDP/DeepSpeed/ZeRO): every process holds the whole policy, its reference and the reward model.
- Several machines were not tried (the launcher's own multi-node options should work; MODELS_DIR must be shared).
- TRL's RLOO/GRPO (trl_algorithms.py) are accelerate-native and do their own data parallelism; for them only the
  "rank 0 writes" part of the trainer applies.
- The dry run's time estimate measures one process.
- Tested with real processes on the CPU (gloo) only; NCCL on real GPUs is the same code with other tensors'
  devices, but unverified here. A process that fails *alone* between collectives (e.g. rank 0 recording a NaN
  loss) leaves its partners blocked in the next collective: gloo notices the closed connection at once, NCCL
  only at its timeout, so there the job supervisor ends them (the version is decided: N3_CANCEL_GRACE later).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch
import torch.distributed as dist
from accelerate import PartialState

_state: Optional[PartialState] = None


def setup(device: str = "auto") -> PartialState:
    """The process's PartialState, created on first use (later calls return the same one).

    ``device`` is the run's config.device: "cpu", or no CUDA on this machine, means gloo on the CPU (accelerate
    would otherwise see a launcher on a GPU-less machine as a single process); anything else NCCL on the local GPU.
    """
    global _state
    if _state is None:
        _state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    return _state


def num_processes() -> int:
    return setup().num_processes


def process_index() -> int:
    return setup().process_index


def is_main_process() -> bool:
    return setup().is_main_process


def is_distributed() -> bool:
    return num_processes() > 1


def device() -> torch.device:
    """This process's device in a multi-process run (cuda:LOCAL_RANK, or the CPU with gloo)."""
    device = setup().device
    return torch.device("cpu") if device.type == "cpu" else device  # accelerate says cpu:0


def broadcast_parameters(params: Iterable[torch.nn.Parameter]) -> None:
    """Overwrite every process's ``params`` with rank 0's, in place."""
    if is_distributed():
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)


def average_gradients(params: Iterable[torch.nn.Parameter], bucket_bytes: int = 64 << 20) -> None:
    """Replace each parameter's .grad by its mean over all processes (call before clipping and optimizer.step()).

    By hand rather than DistributedDataParallel: PPO runs the policy several ways before one backward (generate()
    on the peft model, forward passes with the adapter disabled for the reference, the value head on the hidden
    states) and accumulates over mini-batches; DDP's wrapper hooks forward/backward and fits none of that cleanly.
    One all_reduce per optimizer step over flat buckets of the gradients is all that data parallelism needs here.
    A parameter without a gradient contributes zeros, so every process runs the same collectives.
    """
    if not is_distributed():
        return
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    world = num_processes()
    bucket: list[torch.Tensor] = []
    size = 0
    for i, p in enumerate(params):
        bucket.append(p.grad)
        size += p.grad.numel() * p.grad.element_size()
        last = i == len(params) - 1
        if (last or size >= bucket_bytes or params[i + 1].grad.dtype != p.grad.dtype
                or params[i + 1].grad.device != p.grad.device):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= world
            offset = 0
            for g in bucket:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket, size = [], 0


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """All processes' ``tensor`` (same shape everywhere) concatenated along dim 0, on every process."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(num_processes())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def mean(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over all processes (same keys on every process)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device())
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return {k: v / num_processes() for k, v in zip(keys, packed.tolist())}


def should_stop(ask: Callable[[], Any]) -> bool:
    """Rank 0's answer to ``ask()`` (the progress callback: truthy = stop), the same on every process.

    Only rank 0 asks. Its answer is broadcast, so the other processes stop at the same step instead of waiting
    forever in the next collective. If asking raises (the trainer's callback raises TrainingCancelled; a bug), the
    others are told to stop first and the exception is re-raised on rank 0. Single process: just ``bool(ask())``.
    """
    if not is_distributed():
        return bool(ask())
    stop, error = False, None
    if is_main_process():
        try:
            stop = bool(ask())
        except BaseException as exc:  # noqa: BLE001  (re-raised below, after the others know)
            stop, error = True, exc
    flag = torch.tensor([int(stop)], device=device())
    dist.broadcast(flag, src=0)
    if error is not None:
        raise error
    return bool(flag.item())
