"""PPO on a tiny GPT-2: it learns an easy reward, stays anchored to its reference, stops when told to.

No Django here: n3_server/rlhf/ is usable on its own. The tiny model is built offline in a few seconds: a
byte-level BPE tokenizer and a 2-layer GPT-2 briefly trained on n3-format texts ("prompt\\nresponse<eos>"),
so that, like a real base model, it has a peaked distribution that LoRA can move.
"""
import copy
import math
import statistics

import pytest
import torch
from peft import get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from n3_server.rlhf.config import PRESETS, TrainingConfig
from n3_server.rlhf.errors import ConfigError, NonFiniteError, TrainingCancelled
from n3_server.rlhf.modeling import lora_config_for
from n3_server.rlhf.ppo import (
    METRIC_KEYS,
    KLController,
    compute_advantages,
    compute_rewards,
    forward_response,
    mask_after_first_eos,
    tokenize_queries,
    train_ppo,
)

CPU = torch.device("cpu")
PROMPTS = ["how do I reset my password", "what is the weather today", "hello there", "can you help me",
           "where is my order", "tell me a joke"]
RESPONSES = ["click the link in the email we sent you", "it is sunny and warm", "hi, how can I help",
             "thanks for asking, happy to help", "your order ships tomorrow", "sorry, I do not know",
             "sure", "let me check that for you, thanks for waiting"]
EOS = "<|endoftext|>"


def thanks_reward(prompts, responses):
    """1 for a response that thanks the user: about a quarter of the base model's answers."""
    return torch.tensor([float("thank" in r) for r in responses])


@pytest.fixture(scope="module")
def tiny():
    """(tokenizer, trained tiny GPT-2). Deterministic; ~2 s on one core."""
    # Tiny matrices: one thread is as fast, and unlike two it does not slow down 40x when the CPU is shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    texts = [f"{p}\n{r}{EOS}" for p in PROMPTS for r in RESPONSES]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        [t.replace(EOS, "") for t in texts],
        trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                            show_progress=False),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS)
    model = GPT2LMHeadModel(GPT2Config(
        n_layer=2, n_embd=64, n_head=2, n_positions=128, vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    rows = [tokenizer(t)["input_ids"] for t in texts]
    width = max(map(len, rows))
    input_ids = torch.tensor([r + [tokenizer.eos_token_id] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):  # enough to learn the format and the answers' marginal distribution
        model(input_ids=input_ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    yield tokenizer, model.eval()
    torch.set_num_threads(threads)


def make_config(**overrides):
    fields = dict(base_model="tiny", max_steps=3, batch_size=8, mini_batch_size=4, max_new_tokens=12,
                  learning_rate=1e-3, seed=1)
    return TrainingConfig(**{**fields, **overrides})


def lora_policy(tiny, config):
    model = copy.deepcopy(tiny[1])
    return get_peft_model(model, lora_config_for(model, r=config.lora_r, alpha=config.lora_alpha, dropout=0.0))


def run(tiny, policy, config, reward_fn=thanks_reward, **kwargs):
    return train_ppo(policy=policy, tokenizer=tiny[0], prompts=PROMPTS, reward_fn=reward_fn, config=config,
                     device=CPU, **kwargs)


@pytest.mark.slow


def test_lora_ppo_raises_an_easy_reward_and_reports_every_metric(tiny):
    config = make_config(max_steps=40)
    history = run(tiny, lora_policy(tiny, config), config)

    assert [h["step"] for h in history] == list(range(1, 41))
    assert all(set(METRIC_KEYS) <= set(h) and all(math.isfinite(h[k]) for k in METRIC_KEYS) for h in history)
    first = statistics.mean(h["objective/scores"] for h in history[:3])
    last = statistics.mean(h["objective/scores"] for h in history[-3:])
    assert last > first + 0.2, (first, last)  # seeds 1-8 all gain 0.4-0.8 (about 0.3 -> 0.75)
    kls = [h["objective/kl"] for h in history]
    assert kls[0] == 0.0  # LoRA starts as the identity: policy == reference
    assert statistics.mean(kls) > 0  # the policy moved away from the reference, and the estimate is not negative
    assert all(h["response_length"] <= config.max_new_tokens for h in history)


@pytest.mark.slow


def test_first_update_starts_from_the_sampling_policy(tiny):
    # One epoch over one mini-batch: the only gradient step happens after the metrics are measured,
    # so the ratio new/old must be exactly 1 there, and the reference (adapter off) must agree.
    config = make_config(max_steps=1, ppo_epochs=1, mini_batch_size=8)
    stats = run(tiny, lora_policy(tiny, config), config)[0]
    assert stats["objective/kl"] == 0.0
    assert stats["policy/approxkl"] < 1e-10
    assert stats["policy/clipfrac"] == 0.0
    assert stats["objective/rlhf_reward"] == pytest.approx(stats["objective/scores"])


@pytest.mark.slow


def test_full_finetuning_uses_a_frozen_copy_as_reference(tiny):
    config = make_config(use_lora=False, max_steps=4)
    policy = copy.deepcopy(tiny[1])
    before = policy.transformer.wte.weight.detach().clone()
    history = run(tiny, policy, config)

    assert history[0]["objective/kl"] == 0.0
    assert history[-1]["objective/kl"] != 0.0  # measured against the untouched copy, not against itself
    assert not torch.equal(before, policy.transformer.wte.weight)  # trained in place
    assert all(p.requires_grad for p in policy.parameters())


@pytest.mark.slow


def test_missing_eos_penalty_lowers_the_rl_reward_but_not_the_reported_score(tiny):
    # One new token: the tiny model never answers with EOS straight away, so every response is cut short.
    config = make_config(max_steps=1, max_new_tokens=1, missing_eos_penalty=1.0)
    stats = run(tiny, lora_policy(tiny, config), config, reward_fn=lambda p, r: torch.full((len(r),), 0.5))[0]
    assert stats["objective/scores"] == 0.5
    assert stats["objective/rlhf_reward"] == pytest.approx(0.5 - 1.0)  # KL is 0 at step 1


@pytest.mark.slow


def test_options_whitened_rewards_fixed_kl_and_temperature(tiny):
    config = make_config(max_steps=3, whiten_rewards=True, adaptive_kl=False, temperature=0.7)
    history = run(tiny, lora_policy(tiny, config), config)
    assert [h["objective/kl_coef"] for h in history] == [config.init_kl_coef] * 3
    assert all(math.isfinite(h[k]) for h in history for k in METRIC_KEYS)


@pytest.mark.slow


def test_lora_requires_a_peft_model(tiny):
    with pytest.raises(ConfigError, match="PeftModel"):
        run(tiny, copy.deepcopy(tiny[1]), make_config(use_lora=True))


@pytest.mark.parametrize("accumulation, steps_per_epoch", [(4, 1), (1, 2)])
@pytest.mark.slow
def test_gradient_accumulation_steps_the_optimizer_once_per_group(tiny, accumulation, steps_per_epoch):
    # The low_memory preset: batch 4, mini-batch 2, accumulate 4 -> the epoch's 2 mini-batches share one step.
    low_memory = {k: PRESETS["low_memory"][k] for k in ("batch_size", "mini_batch_size", "lora_r")}
    config = make_config(**low_memory, gradient_accumulation_steps=accumulation, max_steps=2)
    optimizer_steps = []
    handle = register_optimizer_step_post_hook(lambda *args: optimizer_steps.append(1))
    try:
        history = run(tiny, lora_policy(tiny, config), config)
    finally:
        handle.remove()
    assert len(history) == 2
    assert len(optimizer_steps) == config.max_steps * config.ppo_epochs * steps_per_epoch


@pytest.mark.slow


def test_callback_returning_true_stops_after_that_step(tiny):
    config = make_config(max_steps=10)
    seen = []

    def callback(progress):
        seen.append((progress.phase, progress.step, progress.total, progress.metrics["step"]))
        return progress.step == 2

    with pytest.raises(TrainingCancelled, match="step 2") as excinfo:
        run(tiny, lora_policy(tiny, config), config, callback=callback)
    assert seen == [("policy", 1, 10, 1), ("policy", 2, 10, 2)]
    assert [h["step"] for h in excinfo.value.history] == [1, 2]


@pytest.mark.slow


def test_non_finite_reward_stops_training_with_a_clear_error(tiny):
    config = make_config()
    with pytest.raises(NonFiniteError, match="non-finite scores.*step 1"):
        run(tiny, lora_policy(tiny, config), config, reward_fn=lambda p, r: torch.full((len(r),), float("nan")))


@pytest.mark.slow


def test_reward_fn_must_return_one_score_per_response(tiny):
    config = make_config()
    with pytest.raises(ValueError, match="1 scores for 8 responses"):
        run(tiny, lora_policy(tiny, config), config, reward_fn=lambda p, r: torch.tensor([0.5]))


@pytest.mark.slow


def test_run_logs_one_line_per_step(tiny, caplog):
    config = make_config(max_steps=2)
    with caplog.at_level("INFO", logger="n3_server.rlhf.ppo"):
        run(tiny, lora_policy(tiny, config), config)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ppo step")]
    assert len(lines) == 2
    assert lines[1].startswith("ppo step 2/2 reward=") and "kl=" in lines[1] and "tokens/s=" in lines[1]


# -- the pieces ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_queries_are_left_padded_and_cut_from_the_left(tiny):
    tokenizer = tiny[0]
    long = tokenizer("how do I reset my password\n")["input_ids"]
    short = tokenizer("hello there\n")["input_ids"]
    width = len(short) + 2
    assert len(long) > width
    ids, mask = tokenize_queries(tokenizer, ["hello there", "how do I reset my password"], width, 0, CPU)
    assert ids.shape == mask.shape == (2, width)
    assert ids[1].tolist() == long[-width:] and mask[1].all()  # the end, next to the answer, is what survives
    assert ids[0].tolist() == [0, 0] + short and mask[0].tolist() == [0, 0] + [1] * len(short)


@pytest.mark.slow


def test_left_padding_does_not_change_logprobs(tiny):
    # Explicit position_ids: a query's logprobs are the same alone and next to a longer, padded-against query.
    tokenizer, model = tiny
    response = torch.tensor([tokenizer("sure, thanks")["input_ids"]])
    alone_q, alone_m = tokenize_queries(tokenizer, ["hello there"], 64, tokenizer.eos_token_id, CPU)
    batch_q, batch_m = tokenize_queries(tokenizer, ["hello there", "how do I reset my password"], 64,
                                        tokenizer.eos_token_id, CPU)
    assert batch_m[0, 0] == 0  # really padded
    with torch.no_grad():
        alone, _, _ = forward_response(model, None, alone_q, alone_m, response, 1.0)
        batched, _, _ = forward_response(model, None, batch_q, batch_m, response.repeat(2, 1), 1.0)
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=0)


def test_reward_lands_on_the_first_eos_and_later_tokens_are_masked():
    eos = 9
    response_ids = torch.tensor([[5, 6, eos, eos, eos], [5, 6, 7, 8, 7]])
    mask = mask_after_first_eos(response_ids, eos)
    assert mask.tolist() == [[True, True, True, False, False], [True] * 5]
    logprobs = torch.tensor([[-1.0, -1.0, -1.0, -5.0, -5.0], [-1.0] * 5])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -1.0, -1.0, -1.0], [-1.0] * 5])
    rewards, kl = compute_rewards(torch.tensor([1.0, 0.5]), logprobs, ref_logprobs, mask, kl_coef=0.1)
    assert kl.tolist() == [[0.5, 0.0, 0.0, 0.0, 0.0], [0.0] * 5]  # nothing counted after the EOS
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.5]]))


def test_gae_returns_are_rewards_to_go_and_advantages_are_whitened():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    mask = torch.tensor([[True, True, True, False], [True] * 4])
    advantages, returns = compute_advantages(rewards, torch.zeros_like(rewards), mask, gamma=1.0, lam=1.0)
    assert returns.tolist() == [[1.0, 1.0, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0]]
    valid = advantages[mask]
    assert valid.mean().abs() < 1e-6 and valid.std(correction=0) == pytest.approx(1.0, abs=1e-4)
    assert advantages[0, 3] == 0.0


def test_missing_eos_penalty_must_be_non_negative():
    with pytest.raises(ConfigError, match="missing_eos_penalty"):
        make_config(missing_eos_penalty=-1.0)


def test_adaptive_kl_controller_moves_towards_the_target():
    config = make_config(init_kl_coef=0.2, target_kl=6.0, kl_horizon=100)
    high, low, fixed = KLController(config), KLController(config), KLController(config.replace(adaptive_kl=False))
    high.update(60.0, n_steps=10)  # far above target: the +20% clip applies
    low.update(3.0, n_steps=10)
    fixed.update(60.0, n_steps=10)
    assert high.value == pytest.approx(0.2 * (1 + 0.2 * 10 / 100))
    assert low.value < 0.2
    assert fixed.value == 0.2
