"""KTO's labelled examples and DPO's preference pairs, built from scored feedback without a reward model.

Torch-free on purpose (it imports only config, data and errors): the web process calls check_preference_data when a
training request arrives, so feedback that cannot train KTO or DPO is refused with a 400 before anything is queued.

KTO (unpaired)::

    score >= kto_desirable_threshold (0.6)     desirable, label True
    score <= kto_undesirable_threshold (0.4)   undesirable, label False
    in between                                 left out: too lukewarm to say which way to push

Both classes must be present. The smaller class is up-weighted so that weight x count is equal for both
(desirable_weight = n_undesirable / n_desirable when desirables are fewer, else undesirable_weight = n_desirable /
n_undesirable; the larger class keeps 1.0): the KTO paper's lambda_D n_D / (lambda_U n_U) in [1, 4/3] (its Eq. 8, the
range TRL's KTOTrainer checks), at its lower end. The examples are shuffled with the config's seed: TRL's KTOTrainer
reads them in order (its KL estimate pairs each example with its neighbour in the batch), so without our shuffle a
batch would hold whatever the feedback's order put together.

DPO (paired): two responses to the *same* prompt whose scores differ by at least dpo_pair_margin (0.2) make a pair,
the higher-scored one chosen. Every qualifying pair is kept, up to MAX_PAIRS_PER_PROMPT per prompt (a seeded sample
of them beyond that, so a prompt with many responses does not grow quadratically and drown out the others); pairs
whose two responses are the same text are skipped (they carry no preference). The pairs are shuffled with the seed.
Fewer than MIN_PREFERENCE_PAIRS pairs is a ConfigError naming the count and the margin.
"""
from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional

from .config import TrainingConfig
from .data import FeedbackRecord, heldout_split
from .errors import ConfigError

PREFERENCE_ALGORITHMS = ("kto", "dpo")
# Below this many pairs a DPO run would cycle over a handful of comparisons for every one of its steps.
MIN_PREFERENCE_PAIRS = 4
# The most pairs a prompt with 8 responses can give (4 good x 4 bad): typical feedback is kept whole, and only
# prompts sampled far more often than the others are cut down.
MAX_PAIRS_PER_PROMPT = 16


@dataclass(frozen=True)
class KTOExample:
    prompt: str
    completion: str
    label: bool  # True: desirable


@dataclass
class KTOData:
    examples: list[KTOExample]  # shuffled with the seed
    desirable_weight: float
    undesirable_weight: float
    n_desirable: int
    n_undesirable: int
    n_dropped: int  # scored between the thresholds


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    score_gap: float  # chosen's score - rejected's, >= the margin


def kto_data(
    records: Iterable[FeedbackRecord], *, desirable_threshold: float, undesirable_threshold: float, seed: int,
) -> KTOData:
    """Label, balance and shuffle `records` for KTO (the module docstring). Raises ConfigError when a class is empty."""
    examples, dropped = [], 0
    for record in records:
        if record.score >= desirable_threshold:
            examples.append(KTOExample(record.prompt, record.response, True))
        elif record.score <= undesirable_threshold:
            examples.append(KTOExample(record.prompt, record.response, False))
        else:
            dropped += 1
    n_desirable = sum(e.label for e in examples)
    n_undesirable = len(examples) - n_desirable
    if not n_desirable or not n_undesirable:
        raise ConfigError(
            f"KTO needs both desirable (score >= {desirable_threshold:g}) and undesirable "
            f"(score <= {undesirable_threshold:g}) examples; found {n_desirable} desirable and {n_undesirable} "
            "undesirable. Adjust kto_desirable_threshold / kto_undesirable_threshold, or collect more varied feedback."
        )
    random.Random(seed).shuffle(examples)
    return KTOData(
        examples=examples,
        desirable_weight=max(1.0, n_undesirable / n_desirable),
        undesirable_weight=max(1.0, n_desirable / n_undesirable),
        n_desirable=n_desirable, n_undesirable=n_undesirable, n_dropped=dropped,
    )


def dpo_pairs(
    records: Iterable[FeedbackRecord], *, margin: float, seed: int, max_per_prompt: int = MAX_PAIRS_PER_PROMPT,
) -> list[PreferencePair]:
    """Preference pairs within each prompt (the module docstring), shuffled; raises ConfigError below the minimum."""
    rng = random.Random(seed)
    by_prompt: dict[str, list[FeedbackRecord]] = {}
    for record in records:
        by_prompt.setdefault(record.prompt, []).append(record)
    pairs: list[PreferencePair] = []
    for prompt in sorted(by_prompt):  # the seed decides, not the records' order
        group = by_prompt[prompt]
        found = {}  # (chosen, rejected) text -> the largest gap seen: duplicate records give one pair
        for better in group:
            for worse in group:
                gap = better.score - worse.score
                if gap >= margin - 1e-9 and better.response != worse.response:  # 1e-9: 0.7 - 0.5 is 0.19999...
                    key = (better.response, worse.response)
                    found[key] = max(gap, found.get(key, gap))
        keys = sorted(found)  # independent of the records' order
        if len(keys) > max_per_prompt:
            keys = rng.sample(keys, max_per_prompt)
        pairs += [PreferencePair(prompt, chosen, rejected, found[chosen, rejected]) for chosen, rejected in keys]
    if len(pairs) < MIN_PREFERENCE_PAIRS:
        raise ConfigError(
            f"DPO needs at least {MIN_PREFERENCE_PAIRS} preference pairs (responses to the same prompt whose scores "
            f"differ by at least {margin:g}); this feedback yields {len(pairs)}. Collect several scored responses per "
            "prompt, or lower dpo_pair_margin."
        )
    rng.shuffle(pairs)
    return pairs


@dataclass(frozen=True)
class PreferenceCounts:
    """What KTO or DPO would train on (check_preference_data): the dry run shows it."""

    algorithm: str  # "kto" or "dpo"
    examples: int  # KTO: labelled examples (desirable + undesirable); DPO: preference pairs
    desirable: int = 0  # KTO only
    undesirable: int = 0  # KTO only
    left_out: int = 0  # KTO: scored between the thresholds
    heldout_prompts: int = 0  # the evaluation's prompts, set aside before counting

    def describe(self, config: TrainingConfig) -> str:
        """One sentence, e.g. "12 preference pairs (responses to one prompt whose scores differ by at least 0.2)"."""
        aside = ""
        if self.heldout_prompts:
            aside = f"; the feedback of {self.heldout_prompts} held-out prompts is set aside for the evaluation"
        if self.algorithm == "dpo":
            return (
                f"{self.examples} preference pairs (responses to the same prompt whose scores differ by at least "
                f"{config.dpo_pair_margin:g}){aside}"
            )
        return (
            f"{self.examples} labelled examples: {self.desirable} desirable (score >= "
            f"{config.kto_desirable_threshold:g}), {self.undesirable} undesirable (<= "
            f"{config.kto_undesirable_threshold:g}), {self.left_out} in between left out{aside}"
        )


def check_preference_data(records: list[FeedbackRecord], config: TrainingConfig) -> Optional[PreferenceCounts]:
    """Raise ConfigError when `config.algorithm` is KTO or DPO and `records` cannot train it, else say how many
    examples or pairs they give; other algorithms: None.

    The same construction the training runs, on the records it trains on (the evaluation's held-out prompts set
    aside), so a request accepted here does not fail on its data later, and the counts are the run's.
    """
    if config.algorithm not in PREFERENCE_ALGORITHMS:
        return None
    heldout, _ = heldout_split([r.prompt for r in records], config)
    records = [r for r in records if r.prompt not in heldout]
    if config.algorithm == "kto":
        kto = kto_data(
            records, desirable_threshold=config.kto_desirable_threshold,
            undesirable_threshold=config.kto_undesirable_threshold, seed=config.seed,
        )
        return PreferenceCounts(
            "kto", len(kto.examples), desirable=kto.n_desirable, undesirable=kto.n_undesirable,
            left_out=kto.n_dropped, heldout_prompts=len(heldout),
        )
    pairs = dpo_pairs(records, margin=config.dpo_pair_margin, seed=config.seed)
    return PreferenceCounts("dpo", len(pairs), heldout_prompts=len(heldout))


def preference_subset(records: list[FeedbackRecord], config: TrainingConfig, size: int) -> list[FeedbackRecord]:
    """A seeded sample of `size` of the records that still trains KTO or DPO (the dry run's miniature run).

    A plain random sample of mixed feedback may hold one KTO class only, or no two responses to one prompt: here
    KTO takes from each class in turn and DPO takes the records of whole pairs first; the rest is filled at random.
    """
    rng = random.Random(config.seed)
    if config.algorithm == "kto":
        good = [r for r in records if r.score >= config.kto_desirable_threshold]
        bad = [r for r in records if r.score <= config.kto_undesirable_threshold]
        rng.shuffle(good)
        rng.shuffle(bad)
        first = [r for both in zip(good, bad) for r in both]
    else:
        by_text: dict[tuple[str, str], list[FeedbackRecord]] = {}
        for record in records:
            by_text.setdefault((record.prompt, record.response), []).append(record)
        first = [
            r for pair in dpo_pairs(records, margin=config.dpo_pair_margin, seed=config.seed)
            for text in (pair.chosen, pair.rejected) for r in by_text[pair.prompt, text]
        ]
    taken = list(dict.fromkeys(first))[:size]  # in order, each record once
    seen = set(taken)
    rest = [r for r in records if r not in seen]
    return taken + rng.sample(rest, min(size - len(taken), len(rest)))
