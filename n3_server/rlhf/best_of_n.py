"""Best-of-n rejection-sampling fine-tuning (RAFT, Dong et al. 2023; ReST, Gulcehre et al. 2023): the policy
imitates its own best samples. One step:

    1. rollout    `batch_size` prompts, `best_of_n` responses each from the current policy (ppo.py's sampler)
    2. select     the reward model scores all of them; the best response of each prompt is kept
    3. update     one supervised step on the kept responses: mean negative log-likelihood of their tokens
    4. log        TRL-named metrics (objective/kl: k3 of the policy against its start, on one unselected sample
                  per prompt, an unbiased sample of the policy); progress callback

No critic and no KL term in the loss: the policy moves only as far as its best samples pull it, and the verdict
(trainer._verdict) and `max_steps` bound how far that goes. Per unit of KL it costs a fraction of PPO's compute
(no value head, no reference forward in the update, one pass), which matters on a CPU and for quick runs. The
reward model only ranks a prompt's samples, so its scale does not matter.

Shapes: B = prompts per step, n = samples per prompt, R = response tokens, Q = prompt tokens.
"""
from __future__ import annotations

import logging
import random
from typing import Optional

import torch
from peft import PeftModel

from . import distributed
from .config import TrainingConfig
from .errors import ConfigError, NonFiniteError, TrainingCancelled
from .metrics import STEP_METRICS
from .ppo import (
    RewardFn,
    _autocast,
    _cycle_shuffled,
    _now,
    _special_ids,
    checked_scores,
    forward_response,
    generate_responses,
    kl_k3,
    mask_after_first_eos,
    merged_adapter,
    tokenize_queries,
)
from .progress import Progress, ProgressCallback


def train_best_of_n(
    *, policy: torch.nn.Module, tokenizer, prompts: list[str], reward_fn: RewardFn, config: TrainingConfig,
    device: torch.device, callback: Optional[ProgressCallback] = None, log: Optional[logging.Logger] = None,
    **_: object,
) -> list[dict]:
    """Train `policy` in place for `config.max_steps` steps; one metrics dict per step (train_ppo's contract)."""
    log = log or logging.getLogger(__name__)
    if not prompts:
        raise ValueError("best-of-n needs at least one prompt")
    if not isinstance(policy, PeftModel):
        raise ConfigError("best_of_n trains a LoRA adapter: set use_lora (its KL reference is the adapter disabled)")
    eos_id, pad_id = _special_ids(tokenizer)
    n, B = config.best_of_n, config.batch_size
    rank_seed = config.seed + distributed.process_index()
    torch.manual_seed(rank_seed)
    prompt_order = _cycle_shuffled(len(prompts), random.Random(rank_seed))
    trainable = [p for p in policy.parameters() if p.requires_grad]
    distributed.broadcast_parameters(trainable)
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
    autocast = _autocast(config, device)
    was_training = policy.training
    policy.eval()  # dropout off, as in PPO
    history: list[dict] = []
    try:
        for step in range(1, config.max_steps + 1):
            t0 = _now(device)
            batch_prompts = [prompts[next(prompt_order)] for _ in range(B)]
            repeated = [p for p in batch_prompts for _ in range(n)]  # [B*n]

            # 1. rollout
            query_ids, query_mask = tokenize_queries(tokenizer, repeated, config.max_prompt_length, pad_id, device)
            with torch.no_grad(), autocast(), merged_adapter(policy):
                response_ids = generate_responses(policy, query_ids, query_mask, config, eos_id, pad_id)  # [B*n, R]
            response_mask = mask_after_first_eos(response_ids, eos_id)  # [B*n, R]
            responses = [tokenizer.decode(ids[m].tolist(), skip_special_tokens=True)
                         for ids, m in zip(response_ids, response_mask)]
            t1 = _now(device)

            # 2. select: the best of each prompt's n samples, and sample 0 of each as the policy's unbiased sample
            scores = checked_scores(reward_fn, repeated, responses, where=f"at best-of-n step {step}")  # [B*n]
            offsets = torch.arange(B) * n  # [B]
            best = (scores.view(B, n).argmax(dim=1) + offsets).to(device)  # [B]
            plain = offsets.to(device)  # [B]
            with torch.no_grad(), autocast():
                logprobs, _, _ = forward_response(policy, None, query_ids[plain], query_mask[plain],
                                                  response_ids[plain], config.temperature)  # [B, R]
                with policy.disable_adapter():
                    ref_logprobs, _, _ = forward_response(policy, None, query_ids[plain], query_mask[plain],
                                                          response_ids[plain], config.temperature)  # [B, R]
            kl = kl_k3(logprobs, ref_logprobs, response_mask[plain]).sum(dim=1)  # [B]
            t2 = _now(device)

            # 3. update: negative log-likelihood of the kept responses, per token, in mini-batches
            optimizer.zero_grad(set_to_none=True)
            kept_tokens = response_mask[best].sum().clamp(min=1)
            loss_sum = 0.0
            for rows in best.split(config.mini_batch_size):
                with autocast():
                    token_logprobs, _, _ = forward_response(policy, None, query_ids[rows], query_mask[rows],
                                                            response_ids[rows], 1.0)  # [b, R]
                loss = -(token_logprobs * response_mask[rows]).sum() / kept_tokens
                loss.backward()
                loss_sum += loss.item()
            if distributed.is_distributed():
                distributed.average_gradients(trainable)
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            if not torch.isfinite(torch.tensor(loss_sum)):
                raise NonFiniteError(f"The best-of-n loss became {loss_sum} at step {step}; training stopped. "
                                     f"{config.nonfinite_hint()}")
            t3 = _now(device)

            # 4. log
            all_scores, kept_scores = distributed.gather(scores.to(device)), distributed.gather(scores[best.cpu()])
            n_tokens = float(response_mask.sum())
            stats = dict.fromkeys(STEP_METRICS)
            stats.update({
                "step": step,
                "objective/scores": all_scores.mean().item(),
                "objective/scores_std": all_scores.std(correction=0).item(),
                "objective/kl": distributed.gather(kl).mean().item(),
                "objective/kl_coef": 0.0,
                "objective/rlhf_reward": kept_scores.float().mean().item(),  # what the update imitates
                "loss/policy": loss_sum,
                "loss/total": loss_sum,
                "timing/generate_s": t1 - t0,
                "timing/score_s": t2 - t1,
                "timing/update_s": t3 - t2,
                "tokens_per_s": n_tokens / max(t3 - t0, 1e-9),
                "response_length": n_tokens / len(responses),
            })
            history.append(stats)
            log.info("best-of-%d step %d/%d reward=%.4f kept=%.4f kl=%.4f loss=%.4f", n, step, config.max_steps,
                     stats["objective/scores"], stats["objective/rlhf_reward"], stats["objective/kl"], loss_sum)
            progress = Progress(phase="policy", step=step, total=config.max_steps, metrics=stats)
            if distributed.should_stop(lambda progress=progress: callback is not None and callback(progress)):
                raise TrainingCancelled(f"Training cancelled after best-of-n step {step} of {config.max_steps}")
    except (TrainingCancelled, NonFiniteError) as exc:
        exc.history = history
        raise
    finally:
        policy.train(was_training)
    return history
