"""Base models: the built-in offline ones (``n3-tiny``, ``n3-tiny-random``) and everything else via ``from_pretrained``.

The built-in models need no download: the first use builds them from ``corpus.py`` and caches them at
``<MODELS_DIR>/_base/<name>/``, a plain Hugging Face directory (``config.json``, weights, tokenizer,
``generation_config.json``) that ``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained`` read as they read ``gpt2``.

- ``n3-tiny``: a 4-layer GPT-2 briefly pretrained on the corpus, so ``generate()`` writes short readable answers.
  The demo and the training tests use it; it builds in about two minutes on two CPU cores.
- ``n3-tiny-random``: a 2-layer, 64-dim GPT-2 left at its random init; builds in seconds, for unit tests.

Both share one byte-level BPE tokenizer trained on the corpus with GPT-2's conventions: ``<|endoftext|>`` is the
BOS, EOS, UNK and padding token, no BOS is added when encoding.

Any other name (``gpt2``, a hub id, a local directory) is loaded with ``from_pretrained``. n3 runs offline unless an
operator sets ``N3_ALLOW_HUB=1``: importing this module sets ``HF_HUB_OFFLINE=1``, and loads pass
``local_files_only``, so a hub id that is not in the local cache fails at once with ``BaseModelUnavailable``
instead of retrying the network for most of a minute.

Loads from several threads of one process take turns (``LOAD_LOCK``).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

import huggingface_hub.constants
import torch
from filelock import FileLock, Timeout
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Tokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .corpus import corpus_examples
from .errors import BaseModelUnavailable, TrainingCancelled
from .layout import BASE_SUBDIR, BUILTIN_MODELS, BUILTIN_WIDTHS, N3_TINY, N3_TINY_RANDOM
from .progress import Progress, ProgressCallback

log = logging.getLogger(__name__)


# Bump when the corpus, the tokenizer or a recipe changes: cached builds of another version are rebuilt.
BUILD_VERSION = 2
# Written last into a build: a directory without it (or with another version) is not a usable build.
BUILD_MARKER = "n3_build.json"

EOS = "<|endoftext|>"
VOCAB_SIZE = 3072  # at most; see train_tokenizer
CONTEXT = 512  # n_positions: the reward model reads up to 512 tokens (RewardModelConfig.max_length)
GPT2_DROPOUT = {"resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1}
NO_DROPOUT = dict.fromkeys(GPT2_DROPOUT, 0.0)
# A waiting process gives up after this long (a build takes minutes; a hung builder should not hang everyone).
LOCK_TIMEOUT_S = 15 * 60


@dataclass(frozen=True)
class Recipe:
    """Architecture and pretraining schedule of one built-in model. ``steps=0``: random init, no pretraining."""

    n_layer: int
    n_embd: int
    n_head: int
    steps: int = 0
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    seed: int = 0


RECIPES = {
    N3_TINY: Recipe(n_layer=4, n_embd=BUILTIN_WIDTHS[N3_TINY], n_head=4, steps=800),
    N3_TINY_RANDOM: Recipe(n_layer=2, n_embd=BUILTIN_WIDTHS[N3_TINY_RANDOM], n_head=2),
}


# -- hub policy ------------------------------------------------------------------------------------------------------
def hub_allowed() -> bool:
    """Operators opt in to the Hugging Face hub with ``N3_ALLOW_HUB=1``; otherwise n3 never touches the network."""
    return os.environ.get("N3_ALLOW_HUB", "").strip().lower() in ("1", "true", "yes")


if not hub_allowed():
    # The environment variable reaches child processes; huggingface_hub reads it once, at its import, which has
    # already happened (transformers imports it), so its copy is switched too. Without this, lookups that ignore
    # local_files_only (transformers' adapter_config.json probe) retry an unreachable hub for about 47 seconds.
    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True


# -- one load at a time ----------------------------------------------------------------------------------------------
# transformers' from_pretrained is not thread-safe: while it loads, it replaces process-wide functions (torch's init
# functions, torch.linspace, PreTrainedModel.init_weights/tie_weights) and puts them back after. Two loads at once in
# one process put them back in the wrong order: both fail ("Cannot copy out of meta tensor; no data!") and so does
# every later load in that process (lm_head.weight missing), and a model built meanwhile keeps uninitialised weights.
# Every from_pretrained in the training core (models, tokenizers, adapters) runs under this lock, and so does building
# modules from a config (a model, LoRA layers, a head). Reentrant: a load may call another (an adapter around its base
# model). Other processes are unaffected (each has its own transformers); tests/library/test_concurrent_loads.py races
# it.
LOAD_LOCK = threading.RLock()


# -- public API ------------------------------------------------------------------------------------------------------
def default_models_dir() -> Path:
    return Path(os.environ.get("MODELS_DIR") or "models")


def resolve_base_model(
    name: str, *, models_dir: Union[str, Path, None] = None, callback: Optional[ProgressCallback] = None,
) -> str:
    """What to pass to ``from_pretrained``: a built-in name becomes its local directory (built on first use);
    any other string (hub id, local path) is returned unchanged."""
    if name not in BUILTIN_MODELS:
        return name
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    path = builtin_model_path(name, models_dir)
    if not is_complete_build(path):
        build_base_model(name, models_dir, callback=callback)
    return str(path)


def load_tokenizer(
    name: str, *, models_dir: Union[str, Path, None] = None, padding_side: str = "left",
) -> PreTrainedTokenizerBase:
    """The model's tokenizer, padded on ``padding_side``; it always has a pad token (EOS when the model has none)."""
    path = resolve_base_model(name, models_dir=models_dir)
    try:
        with LOAD_LOCK:
            tokenizer = AutoTokenizer.from_pretrained(
                path, padding_side=padding_side, local_files_only=not hub_allowed())
    except (OSError, ValueError) as exc:  # missing files, offline hub, malformed repo id
        raise BaseModelUnavailable(unavailable_message(name, exc)) from exc
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):  # transformers builds an empty one from config.json alone
        raise BaseModelUnavailable(
            unavailable_message(name, OSError("its tokenizer has no vocabulary (files missing)"))
        )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BaseModelUnavailable(f"Base model {name!r} has a tokenizer with neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name: str, *, models_dir: Union[str, Path, None] = None, dtype: torch.dtype = torch.float32,
    device: Union[str, torch.device] = "cpu",
) -> PreTrainedModel:
    path = resolve_base_model(name, models_dir=models_dir)
    try:
        with LOAD_LOCK:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=not hub_allowed())
    except (OSError, ValueError) as exc:
        raise BaseModelUnavailable(unavailable_message(name, exc)) from exc
    return model.to(device)


def build_base_model(
    name: str, models_dir: Union[str, Path], *, callback: Optional[ProgressCallback] = None,
) -> Path:
    """Build built-in model ``name`` into ``<models_dir>/_base/<name>/`` unless a complete build is there already.

    Safe with several processes sharing ``models_dir`` (web workers, qcluster workers): one builds under a file
    lock while the others wait and then find the finished build. The build happens in a temporary directory that
    is renamed into place only when complete, so a crash never leaves something that looks like a model.
    """
    if name not in RECIPES:
        raise ValueError(f"{name!r} is not a built-in model (built-in: {', '.join(BUILTIN_MODELS)})")
    base = Path(models_dir) / BASE_SUBDIR
    target = base / name
    try:
        base.mkdir(parents=True, exist_ok=True)
        with FileLock(str(base / f".{name}.lock"), timeout=LOCK_TIMEOUT_S):
            if is_complete_build(target):  # built by another process while we waited
                return target
            for leftover in base.glob(f".{name}.building-*"):  # from a builder that died: we hold the lock
                shutil.rmtree(leftover, ignore_errors=True)
            building = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=base))
            try:
                _build(name, building, callback)
                # mkdtemp and the weights writer make private files; workers running as other users read them too
                building.chmod(0o755)
                for file in building.iterdir():
                    file.chmod(0o644)
                if target.exists():  # an old version or a damaged directory: replace it
                    stale = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=base))
                    target.rename(stale / name)
                os.replace(building, target)
            finally:
                shutil.rmtree(building, ignore_errors=True)
                for leftover in base.glob(f".{name}.building-*"):
                    shutil.rmtree(leftover, ignore_errors=True)
    except Timeout as exc:
        raise BaseModelUnavailable(
            f"Waited {LOCK_TIMEOUT_S // 60} minutes for another process to build {name!r} in {base}; "
            f"remove {exc.lock_file} if no build is running") from exc
    except OSError as exc:  # read-only or full disk, wrong permissions on MODELS_DIR
        raise BaseModelUnavailable(f"Cannot build base model {name!r} in {base}: {exc}") from exc
    return target


# -- helpers ---------------------------------------------------------------------------------------------------------
def builtin_model_path(name: str, models_dir: Union[str, Path]) -> Path:
    return Path(models_dir) / BASE_SUBDIR / name


def is_complete_build(path: Path) -> bool:
    try:
        marker = json.loads((path / BUILD_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("build_version") == BUILD_VERSION


def unavailable_message(name: str, exc: Exception) -> str:
    """Says why ``name`` could not be loaded and what to use instead."""
    alternatives = f'Use base_model="{N3_TINY}" (built locally, no download) or the path of a local model directory.'
    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").exists():
        reason = f"{path} is not a model directory (it has no config.json)"
    elif path.exists():
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # transformers' messages run on for lines
        reason = f"{path} is not a loadable model directory ({detail})"
    elif name.startswith(("/", ".", "~")) or name.count("/") > 1:  # a hub id is "name" or "owner/name"
        reason = f"there is no directory {path}"
    elif hub_allowed():
        reason = f"it could not be loaded from the Hugging Face hub ({exc})"
    else:
        reason = ("there is no local directory of that name, and as a hub id it is not in the local Hugging Face "
                  "cache and downloads are off (an operator can set N3_ALLOW_HUB=1 to allow the hub)")
    return f"Base model {name!r} is unavailable: {reason}. {alternatives}"


def _notify(callback: Optional[ProgressCallback], step: int, total: int, message: str, **metrics: float) -> None:
    if callback is not None and callback(Progress("base_model", step, total, dict(metrics), message)):
        raise TrainingCancelled(f"Cancelled while building the base model ({message})")


def _dialogue(question: str, answer: str) -> str:
    """One pretraining text: the training core's format (``data.format_text``) plus the EOS that ends a response."""
    return f"{question}\n{answer}{EOS}"


def train_tokenizer() -> GPT2Tokenizer:
    """Byte-level BPE on the corpus (any text still encodes: every byte is in the vocabulary), GPT-2 conventions.

    The corpus has about two thousand distinct words: training stops below VOCAB_SIZE once every word is one token.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([_dialogue(q, a) for q, a in corpus_examples(split="train")], trainer)
    merges = json.loads(backend.to_str())["model"]["merges"]  # [[left, right], ...]
    return GPT2Tokenizer(
        vocab=backend.get_vocab(), merges=[tuple(pair) for pair in merges], pad_token=EOS, model_max_length=CONTEXT,
    )


def corpus_loss(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[tuple[str, str]], batch_size: int = 64,
) -> float:
    """Mean next-token loss (nats per token) of ``model`` on the dialogues ``examples``, EOS included.

    A model that learnt nothing scores about ``ln(vocab size)``: 7.6 for the built-in tokenizer.
    """
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            input_ids, attention_mask, labels = _batch(tokenizer, examples[start:start + batch_size], model.device)
            predicted = int((labels[:, 1:] != -100).sum())  # the model predicts every position but the first
            total += model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.item() * predicted
            count += predicted
    return total / count


def _batch(tokenizer, examples: list[tuple[str, str]], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels [B, T]; padding is not predicted (the real EOS is)."""
    batch = tokenizer([_dialogue(q, a) for q, a in examples], padding=True, padding_side="right", return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch["input_ids"].to(device), batch["attention_mask"].to(device), labels.to(device)


def _build(name: str, out: Path, callback: Optional[ProgressCallback]) -> None:
    recipe = RECIPES[name]
    started = time.perf_counter()
    total = recipe.steps + 1
    _notify(callback, 0, total, f"Building {name}: training the tokenizer")
    tokenizer = train_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=CONTEXT, n_embd=recipe.n_embd, n_layer=recipe.n_layer,
        n_head=recipe.n_head, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id, **NO_DROPOUT,
    )
    torch.manual_seed(recipe.seed)
    with LOAD_LOCK:  # a load in another thread would leave its weights uninitialised
        model = GPT2LMHeadModel(config)
    metrics = {}
    if recipe.steps:
        # One thread: the same floating-point results on every machine, and no OpenMP threads spinning against
        # each other when the cores are shared (two threads ran up to 4x slower than one on a busy 2-core box).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            metrics = _pretrain(model, tokenizer, recipe, name, callback)
        finally:
            torch.set_num_threads(threads)
    # Pretrained without dropout (a 1M-parameter model on this corpus underfits rather than overfits); ships with
    # GPT-2's dropout like every GPT-2 checkpoint, which the trainers switch off for RLHF.
    model.config.update(GPT2_DROPOUT)
    model.generation_config = GenerationConfig(
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id, max_new_tokens=64,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    marker = {
        "name": name, "build_version": BUILD_VERSION, "recipe": asdict(recipe),
        "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
        "build_seconds": round(time.perf_counter() - started, 1), **metrics,
    }
    (out / BUILD_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    _notify(callback, total, total, f"Built {name}", **metrics)
    log.info("Built base model %s in %.1fs (%d parameters)", name, marker["build_seconds"], marker["parameters"])


def _pretrain(
    model: GPT2LMHeadModel, tokenizer: GPT2Tokenizer, recipe: Recipe, name: str, callback: Optional[ProgressCallback],
) -> dict:
    """Next-token loss on whole dialogues (question, newline, answer, EOS), each starting at position 0 as a
    query does at inference; AdamW with linear warmup and cosine decay to a tenth. Returns the final metrics."""
    examples = corpus_examples(split="train")
    rng = random.Random(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.01)

    def lr_at(step: int) -> float:
        if step < recipe.warmup_steps:
            return recipe.learning_rate * (step + 1) / recipe.warmup_steps
        progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        return recipe.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    order: list[int] = []
    loss_value = float("nan")
    for step in range(recipe.steps):
        if len(order) < recipe.batch_size:
            order += rng.sample(range(len(examples)), len(examples))  # a fresh epoch, reshuffled
        batch = [examples[i] for i in order[: recipe.batch_size]]
        del order[: recipe.batch_size]
        input_ids, attention_mask, labels = _batch(tokenizer, batch, model.device)  # [B, T] each
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_value = loss.item()
        if step % 10 == 0 or step == recipe.steps - 1:
            _notify(callback, step + 1, recipe.steps + 1, f"Pretraining {name}", loss=loss_value)
    model.eval()
    heldout = corpus_loss(model, tokenizer, corpus_examples(split="heldout"))
    return {"final_loss": round(loss_value, 4), "heldout_loss": round(heldout, 4)}
