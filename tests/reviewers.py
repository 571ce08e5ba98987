"""Simulated reviewers for n3-tiny's questions: the gold-reward set-up of Gao et al. 2022.

Each reviewer has a preference, written as a deterministic gold score of (prompt, response) in 0..1, and reviews
with noise: its feedback scores are the gold score plus Gaussian noise, clipped to 0..1, as a person's would wobble.
Training sees only the noisy feedback (through the reward model it fits); whether a policy got better is measured
with the gold score itself, on prompts that were in no feedback. bench/effect_bench.py runs every reviewer; the
effect test in tests/library/test_effect.py runs one. `short_correct` is the reviewer a person would be (right and
brief); the single-trait ones are diagnostics: `concise` rewards any short answer, nonsense included.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from n3_server.rlhf import TrainingConfig
from n3_server.rlhf.base_models import load_causal_lm, load_tokenizer
from n3_server.rlhf.corpus import corpus_examples
from n3_server.rlhf.evaluation import evaluate_policy, sample

ANSWERS = dict(corpus_examples())  # question -> the corpus's correct answer


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def correctness(prompt: str, response: str) -> float:
    """Factual: 1 for the corpus's answer (case and punctuation aside), else partial credit for shared words."""
    answer, said = words(ANSWERS[prompt]), words(response)
    if said == answer:
        return 1.0
    common = sum(min(said.count(w), answer.count(w)) for w in set(said))
    if not common:
        return 0.0
    precision, recall = common / len(said), common / len(answer)
    return 0.4 * 2 * precision * recall / (precision + recall)


def concise(prompt: str, response: str) -> float:
    """Style: short answers. 1 for 2 to 4 words, falling linearly to 0 at 10 words or more; no answer scores 0."""
    n = len(words(response))
    return 0.0 if n < 2 else min(max((10 - n) / 6, 0.0), 1.0)


def detailed(prompt: str, response: str) -> float:
    """Style: fuller answers, a sentence or two rather than a bare phrase. 0 up to 3 words, rising linearly to 1 at 15
    words or more (the corpus's answers average 6)."""
    n = len(words(response))
    return min(max((n - 3) / 12, 0.0), 1.0)


def short_and_correct(prompt: str, response: str) -> float:
    """What a person asking these questions wants: the right answer, without rambling. Correctness (as `correct`,
    partial credit included) times brevity: full up to 10 words (the corpus's answers average 6), none from 20 on.
    A short wrong answer scores 0, so unlike `concise` a gain here is a better answer, not just a shorter one."""
    n = len(words(response))
    return correctness(prompt, response) * min(max((20 - n) / 10, 0.0), 1.0)


STOPWORDS = {"what", "which", "does", "do", "is", "are", "the", "a", "an", "of", "in", "to", "how", "you", "i", "me",
             "tell", "about", "can", "for", "and", "or", "it", "my", "your", "who", "where", "there", "many", "much"}


def restates(prompt: str, response: str) -> float:
    """Wording: answers that restate the question's key words ("What colour is the sea?" -> "The sea is blue.")
    rather than a bare "Blue." or an answer about something else: the share of the prompt's content words said."""
    key = {w for w in words(prompt) if w not in STOPWORDS}
    said = set(words(response))
    return len(key & said) / len(key) if key else 0.0


@dataclass(frozen=True)
class Reviewer:
    name: str
    kind: str
    gold: Callable[[str, str], float]
    noise: float = 0.1  # standard deviation of a review around the gold score

    def review(self, prompt: str, response: str, rng: random.Random) -> float:
        return round(min(max(self.gold(prompt, response) + rng.gauss(0.0, self.noise), 0.0), 1.0), 3)


REVIEWERS = {
    r.name: r for r in (
        Reviewer("correct", "factual correctness", correctness),
        Reviewer("concise", "style: brevity", concise),
        Reviewer("detailed", "style: fuller answers", detailed),
        Reviewer("restates", "wording: restates the question", restates),
        Reviewer("short_correct", "a person: correct and short", short_and_correct),
    )
}


def prompt_sets(n_feedback: int, n_heldout: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Disjoint prompt lists from n3-tiny's own questions: feedback prompts and held-out evaluation prompts."""
    questions = [q for q, _ in corpus_examples(split="train", seed=seed)]
    if n_feedback + n_heldout > len(questions):
        raise ValueError(f"only {len(questions)} questions")
    return questions[:n_feedback], questions[n_feedback:n_feedback + n_heldout]


def feedback_for(reviewer: str, *, prompts: list[str], samples: int, config: TrainingConfig, seed: int) -> list[dict]:
    """Base-model responses to `prompts` (`samples` each, the run's sampling settings), scored by the reviewer."""
    cpu = torch.device("cpu")
    tokenizer = load_tokenizer(config.base_model, padding_side="left")
    model = load_causal_lm(config.base_model, dtype=torch.float32, device=cpu)
    repeated = [p for p in prompts for _ in range(samples)]
    responses = sample(model, tokenizer, repeated, config=config, device=cpu, seed=seed).responses
    rng = random.Random(seed)
    judge = REVIEWERS[reviewer]
    return [
        {"prompt": p, "response": r, "score": judge.review(p, r, rng), "run_id": f"{reviewer}-{i}"}
        for i, (p, r) in enumerate(zip(repeated, responses))
    ]


def gold_evaluation(reviewer: str, policy_dir: Path, heldout: list[str], config: TrainingConfig) -> dict[str, Any]:
    """A trained policy directory against its base model on `heldout`, judged by the reviewer's gold score."""
    cpu = torch.device("cpu")
    gold = REVIEWERS[reviewer].gold
    return evaluate_policy(
        policy=AutoModelForCausalLM.from_pretrained(policy_dir).eval(),
        tokenizer=AutoTokenizer.from_pretrained(policy_dir),
        reference=load_causal_lm(config.base_model, dtype=torch.float32, device=cpu), prompts=heldout, config=config,
        device=cpu, baseline=f"base model {config.base_model}", scored_by=f"gold: {reviewer}",
        score_fn=lambda ps, rs: [gold(p, r) for p, r in zip(ps, rs)],
    )
