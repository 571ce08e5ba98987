"""Blind comparisons of two versions, the training side: which prompts, starting one (the worker generates the
responses), and what the compare page shows. The queue and the result live in feedback.comparisons.

    web:     start_comparison() picks the prompts, makes the Comparison (generating) and its items (sides drawn),
             and queues tasks.generate_comparison
    worker:  tasks.generate_comparison writes the request to a temporary directory (write_request); its child
             `manage.py generate_comparison <dir>` loads each version's policy/, answers every prompt and writes the
             responses there (no database); the task stores them (store_responses): the comparison is ready, or
             failed with the reason
    web:     reviewers vote at /review/compare/<id>/; the compare page shows the tally

Prompts: ones neither version trained on. A version trained on its feedback snapshot minus the prompts its
evaluation held out; that split is recomputed here from the stored feedback with the version's own settings
(n3_server.rlhf.data.heldout_split: seed, eval_fraction, eval_max_prompts), and a version that started from another
(init_from "vN") also counts what that one trained on. The prompts held out of both versions come first (the ones
their evaluations used), then the agent's most recent other prompts that are in neither training set (feedback
newer than both snapshots). The recomputed split is the trained one as long as the snapshot's scored rows are
unchanged (a row deleted, unscored or first scored since can move it).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.urls import reverse
from django_q.tasks import async_task

from feedback import comparisons
from feedback.models import Comparison, Feedback
from feedback.selectors import latest_comparison_of
from n3_server.rlhf import RLHFError, TrainingConfig
from n3_server.rlhf.data import heldout_split
from n3site.exceptions import ServiceError
from policies.models import PolicyVersion

from .files import absolute_path
from .selectors import snapshot_feedback

logger = logging.getLogger(__name__)

DEFAULT_PROMPTS = 20
MAX_PROMPTS = 200
MAX_NEW_TOKENS = 64
# Prompts drawn per pair asked for: two versions often answer a prompt with the same text (a pair with nothing to
# judge), so a comparison gets up to this many times the pairs it asks for, and the worker answers them in order
# until that many pairs differ. The bound: versions that answer nearly everything alike stop there, saying so.
DRAWS_PER_PAIR = 4
# Recent feedback rows read when looking for prompts neither version trained on.
RECENT_ROWS = 5000
PROMPT_COUNT_CACHE_S = 300
# The files the worker's task and its child exchange.
REQUEST_FILE = "request.json"
RESPONSES_FILE = "responses.json"


def training_split(version: PolicyVersion) -> tuple[set[str], set[str]]:
    """(prompts ``version`` trained on, prompts its evaluation held out), recomputed from its feedback snapshot."""
    prompts = list(snapshot_feedback(version=version).values_list("prompt", flat=True).iterator(chunk_size=10_000))
    config = version.config or {}
    try:
        split_settings = {k: config[k] for k in ("seed", "eval_fraction", "eval_max_prompts") if k in config}
        heldout, _ = heldout_split(prompts, TrainingConfig(**split_settings))
    except (RLHFError, TypeError, ValueError):  # settings this release cannot read: count every prompt as trained
        heldout = set()
    return set(prompts) - heldout, heldout


def trained_prompts(version: PolicyVersion, splits: Optional[dict] = None) -> set[str]:
    """Every prompt that went into ``version``'s weights: its own training set and, along init_from, its ancestors'.
    ``splits`` keeps the training_split of each version read (by pk) for the caller's next question."""
    splits = {} if splits is None else splits
    trained: set[str] = set()
    current: Optional[PolicyVersion] = version
    seen: set[int] = set()
    while current is not None and current.pk not in seen:
        seen.add(current.pk)
        if current.pk not in splits:
            splits[current.pk] = training_split(current)
        trained |= splits[current.pk][0]
        start = str((current.config or {}).get("init_from") or "base")
        current = (
            PolicyVersion.objects.filter(agent_id=current.agent_id, number=int(start[1:])).first()
            if start[:1] == "v" and start[1:].isdigit() else None
        )
    return trained


def comparison_prompts(*, version_a: PolicyVersion, version_b: PolicyVersion, count: int) -> tuple[list[str], str]:
    """Up to ``count`` prompts neither version trained on, and how they were chosen (in words)."""
    splits: dict[int, tuple[set[str], set[str]]] = {}  # each version's snapshot read once
    trained = trained_prompts(version_a, splits) | trained_prompts(version_b, splits)
    both_heldout = (splits[version_a.pk][1] & splits[version_b.pk][1]) - trained
    heldout = sorted(both_heldout)[:count]
    newer: list[str] = []
    recent = Feedback.objects.filter(agent_id=version_a.agent_id).order_by("-created_at", "-id")
    for prompt in recent.values_list("prompt", flat=True)[:RECENT_ROWS]:
        if len(heldout) + len(newer) >= count:
            break
        if prompt.strip() and prompt not in trained and prompt not in both_heldout and prompt not in newer:
            newer.append(prompt)
    parts = []
    if heldout:
        parts.append(f"{len(heldout)} held out of both versions' training (their evaluations' split)")
    if newer:
        parts.append(f"{len(newer)} of the agent's most recent prompts that neither version trained on")
    return heldout + newer, " and ".join(parts) or "none: every prompt of this agent went into one of the versions"


def ordered_pair(version: PolicyVersion, other: PolicyVersion) -> tuple[PolicyVersion, PolicyVersion]:
    """(A, B): the older version first, so that the result is always "the newer one's win rate over the older"."""
    return (version, other) if version.number < other.number else (other, version)


def start_comparison(
    *, version: PolicyVersion, other: PolicyVersion, count: int = DEFAULT_PROMPTS,
    max_new_tokens: int = MAX_NEW_TOKENS, user: Optional[AbstractBaseUser] = None,
) -> Comparison:
    """Make a blind comparison of two trained versions for ``count`` pairs whose responses differ, on prompts neither
    trained on (up to ``DRAWS_PER_PAIR`` times ``count`` drawn: pairs with identical responses are ties without a
    vote, and more prompts are answered until ``count`` pairs differ), and queue the generation of its responses.
    ServiceError when a version cannot answer or there are no such prompts."""
    if not 1 <= count <= MAX_PROMPTS:
        raise ServiceError(f"Number of prompts must be between 1 and {MAX_PROMPTS}, got {count}")
    version_a, version_b = ordered_pair(version, other)
    for v in (version_a, version_b):
        if v.status != PolicyVersion.Status.TRAINED:
            raise ServiceError(f"{v} is {v.status}, not trained: it has no policy to answer with")
        if not v.model_path or not absolute_path(v.model_path).is_dir():
            raise ServiceError(f"{v}: no policy files at {v.model_path or '(no path recorded)'}")
    prompts, source = comparison_prompts(version_a=version_a, version_b=version_b, count=count * DRAWS_PER_PAIR)
    if not prompts:
        raise ServiceError(f"No prompts to compare on: {source}. New feedback brings new prompts.")
    comparison = comparisons.create_comparison(
        version_a=version_a, version_b=version_b, prompts=prompts, prompt_source=source,
        max_new_tokens=max_new_tokens, user=user, requested=count,
    )
    try:
        async_task("training.tasks.generate_comparison", comparison.pk,
                   task_name=f"comparison {comparison.pk}", group="comparisons")
    except Exception as exc:
        logger.exception("Could not queue comparison %s", comparison.pk)
        comparisons.fail_comparison(comparison_id=comparison.pk, error=f"Could not queue the generation: {exc}")
        comparison.refresh_from_db()
    return comparison


def comparison_panel(*, version: PolicyVersion, other: PolicyVersion) -> dict:
    """The compare page's blind-comparison panel: the pair's latest comparison with its tally in words, and how
    many prompts a new one would get."""
    version_a, version_b = ordered_pair(version, other)
    result = latest_comparison_of(version_a=version_a, version_b=version_b)
    comparison = result.comparison if result else None
    panel: dict = {"a": version_a, "b": version_b, "comparison": comparison}
    panel["trained"] = trained = all(v.status == PolicyVersion.Status.TRAINED for v in (version_a, version_b))
    if trained and (comparison is None or comparison.status != Comparison.Status.GENERATING):
        # What a new comparison would get: the button says how many prompts. Reading both snapshots takes about
        # 0.5 s per 100,000 feedback rows, so the answer is kept until the agent's feedback changes (or 5 minutes).
        newest = Feedback.objects.filter(agent_id=version_a.agent_id).order_by("-id").values_list("id", flat=True)
        key = f"n3:comparison-prompts:{version_a.pk}:{version_b.pk}:{newest.first()}"
        available = cache.get(key)
        if available is None:
            prompts, source = comparison_prompts(version_a=version_a, version_b=version_b, count=DEFAULT_PROMPTS)
            available = (len(prompts), source)
            cache.set(key, available, PROMPT_COUNT_CACHE_S)
        panel["available"], panel["source"] = available
    if result is not None:
        # Versions of an old comparison in the other order: say which is which as stored.
        panel["a"], panel["b"] = comparison.version_a, comparison.version_b
        tally = result.tally
        panel["tally"] = tally
        panel["queue_url"] = reverse("review:compare", args=[comparison.pk])
        if tally.n:
            low, high = tally.ci
            a, b = panel["a"].version, panel["b"].version
            preferred = result.preferred  # the API's "preferred" too: one rule for both
            verdict = f"reviewers prefer {preferred.version}" if preferred else "no evidence either way yet"
            panel["sentence"] = (
                f"Win rate of {b} over {a}: {100 * tally.win_rate:.0f} % (95 % interval {100 * low:.0f}–"
                f"{100 * high:.0f} %) on {tally.n} judged pair{'s' if tally.n != 1 else ''}: {verdict}"
            )
            panel["better"] = preferred == comparison.version_b
        if comparison.status == Comparison.Status.READY:
            panel["identical_sentence"] = identical_sentence(comparison=comparison, tally=tally)
    return panel


def identical_sentence(*, comparison: Comparison, tally: comparisons.Tally) -> str:
    """How many of the prompts answered gave pairs to judge, in words ("" when every pair differs as asked)."""
    if not tally.identical and (comparison.requested is None or tally.total >= comparison.requested):
        return ""
    alike = ("the 1 with identical responses is a tie" if tally.identical == 1
             else f"the {tally.identical} with identical responses are ties")
    sentence = (f"{tally.total} informative pair{'s' if tally.total != 1 else ''} (responses that differ) of "
                f"{tally.drawn} prompt{'s' if tally.drawn != 1 else ''} answered; {alike} recorded without a vote "
                f"and left out of the win rate.")
    if comparison.requested and tally.total < comparison.requested:
        sentence += (f" {comparison.requested} were asked for: the versions answered the other prompts alike, up to "
                     f"{DRAWS_PER_PAIR} prompts drawn per pair" if tally.drawn >= DRAWS_PER_PAIR * comparison.requested
                     else f" {comparison.requested} were asked for: no more prompts that neither version trained on")
        sentence += "."
    return sentence


# --- the worker's side -------------------------------------------------------------------------------------------


def write_request(*, comparison_id: int, directory: Path) -> bool:
    """What the child needs (prompts in item order, both policies, max tokens) as ``directory``/request.json;
    False when the comparison is gone or not generating any more."""
    comparison = Comparison.objects.select_related("version_a", "version_b").filter(
        pk=comparison_id, status=Comparison.Status.GENERATING).first()
    if comparison is None:
        return False
    versions = (comparison.version_a, comparison.version_b)
    (directory / REQUEST_FILE).write_text(json.dumps({
        "prompts": list(comparison.items.order_by("position").values_list("prompt", flat=True)),
        "model_paths": [str(absolute_path(v.model_path)) if v.model_path else "(no path recorded)" for v in versions],
        "names": [v.version for v in versions],
        "max_new_tokens": comparison.max_new_tokens,
        # Answer the prompts in order until this many pairs differ (null: answer them all).
        "wanted": comparison.requested,
    }))
    return True


def store_responses(*, comparison_id: int, directory: Path, returncode: int) -> None:
    """The child's responses.json into the comparison's items (it is ready), or the comparison failed with why."""
    try:
        result = json.loads((directory / RESPONSES_FILE).read_text())
    except (OSError, ValueError):
        result = {"error": f"The generating process ended without responses (exit code {returncode}); "
                           "see the worker log."}
    if result.get("responses"):
        responses_a, responses_b = result["responses"]
        try:
            comparisons.set_responses(comparison_id=comparison_id, responses_a=responses_a, responses_b=responses_b)
        except ServiceError as exc:  # the comparison was deleted (or its items) while the child generated
            logger.warning("Responses of comparison %s not stored: %s", comparison_id, exc)
    else:
        comparisons.fail_comparison(comparison_id=comparison_id, error=str(result.get("error") or "no responses"))
