"""Model loads from several threads of one process at once (n3_server.rlhf.base_models.LOAD_LOCK).

transformers' from_pretrained swaps process-wide functions while it loads; two unserialised loads at once failed
with "Cannot copy out of meta tensor; no data!" and left every later load in the process without lm_head.weight.
Here threads start the training core's loads together (causal LMs, reward-model bodies, tokenizers, a fresh reward
model's construction) and every result must be what a load on its own gives: the same weights, the same greedy
generation, lm_head still tied; and a load afterwards must still work. Without the lock every load of the race fails.
"""
import threading
from pathlib import Path

import pytest
import torch
from django.conf import settings

from n3_server.rlhf.base_models import load_causal_lm, load_tokenizer
from n3_server.rlhf.config import RewardModelConfig
from n3_server.rlhf.reward_model import _load_body, build_reward_model

MODEL = "n3-tiny"
THREADS = 8
PROMPT = "How do I reset my password?\n"


def generate(model, tokenizer) -> list[int]:
    batch = tokenizer([PROMPT], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0].tolist()


def assert_same_weights(model, reference) -> None:
    state, expected = model.state_dict(), reference.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert not state[name].is_meta, name
        assert torch.equal(state[name], tensor), name


@pytest.fixture
def models_dir() -> Path:
    return Path(settings.MODELS_DIR)  # the suite's, where the built base models are cached


def race(jobs: list) -> list:
    """Run every job in its own thread, all released together; their results (or exceptions) in order."""
    results: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = jobs[i]()
        except Exception as exc:  # noqa: BLE001  (the test reports every failure)
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


@pytest.mark.slow


def test_concurrent_loads_give_intact_models_and_later_loads_still_work(models_dir: Path):
    tokenizer = load_tokenizer(MODEL, models_dir=models_dir)
    reference = load_causal_lm(MODEL, models_dir=models_dir).eval()
    reference_body = _load_body(MODEL, models_dir)
    expected_tokens = generate(reference, tokenizer)
    linspace = torch.linspace

    rounds = 2
    for _ in range(rounds):
        jobs = (
            [lambda: load_causal_lm(MODEL, models_dir=models_dir)] * THREADS
            + [lambda: _load_body(MODEL, models_dir)] * 2
            + [lambda: load_tokenizer(MODEL, models_dir=models_dir)] * 2
            + [lambda: build_reward_model(MODEL, RewardModelConfig(), device=torch.device("cpu"),
                                          models_dir=models_dir, initial_score=0.25)]
        )
        results = race(jobs)
        failures = [repr(result) for result in results if isinstance(result, Exception)]
        assert failures == [], failures

        lms, bodies, tokenizers, reward_model = results[:THREADS], results[THREADS:-3], results[-3:-1], results[-1]
        for model in lms:
            assert_same_weights(model, reference)
            assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # still tied
            assert generate(model.eval(), tokenizer) == expected_tokens
        for body in bodies:
            assert_same_weights(body, reference_body)
        for loaded in tokenizers:
            assert loaded(PROMPT)["input_ids"] == tokenizer(PROMPT)["input_ids"]
        # Built beside the loads: its head and adapter initialised, not left as whatever memory held.
        assert torch.equal(reward_model.head.weight, torch.zeros_like(reward_model.head.weight))
        assert torch.equal(reward_model.head.bias, torch.tensor([0.25]))
        lora_a = [p for name, p in reward_model.backbone.named_parameters() if "lora_A" in name]
        assert lora_a and all(torch.isfinite(p).all() and p.abs().sum() > 0 for p in lora_a)

    assert torch.linspace is linspace  # transformers put back what it swapped
    later = load_causal_lm(MODEL, models_dir=models_dir).eval()
    assert_same_weights(later, reference)
    assert generate(later, tokenizer) == expected_tokens
