"""The model work of the inference process: loaded versions (a bounded LRU) and a batcher per version.

    request coroutine -- submit() --> its version's asyncio queue; a process holds at most N3_SERVE_MAX_QUEUE
        requests waiting for a generate (loading their version and preparing included): one more raises Overloaded
    the preparation threads (two per process, beside the generation thread): the request's prompt tokenised alone,
        after a bound on its characters (no token is longer than the vocabulary's longest, so a prompt of more
        than context x longest characters is refused untokenised); a prompt that does not fit the model's context
        with its max_tokens raises ContextLengthExceeded (400). What fails here fails its request alone.
    the version's drain task: the first waiting request, then every other one waiting (at most N3_SERVE_MAX_BATCH),
        grouped by sampling settings (greedy, or temperature and top_p; a seeded sampling request alone), each
        group cut where its longest prompt and largest max_tokens would overflow the context. After a batch of k
        requests the next one waits up to N3_SERVE_BATCH_WAIT_MS for k before it starts: the k clients that were
        just answered ask again a moment later, and would otherwise split into a batch of the first and a batch of
        the rest. A lone client (k = 1) never waits.
    the generation thread (one per process: generates never compete for the cores or the device): one left-padded
        generate() per group, up to the group's largest max_tokens; each row stops by itself (its own max_tokens,
        EOS, a stop string) and the generate ends when every row has. A generate of several requests that raises is
        run again request by request (those that had sent nothing yet), so one bad row fails alone
    each row's text goes back to its request as events on the event loop: text deltas (streaming), then Finished

Only this module of the inference process imports torch.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
)

from n3_server.rlhf.base_models import load_causal_lm, load_tokenizer

logger = logging.getLogger(__name__)


class Overloaded(Exception):
    """Too many requests wait for a generate in this process: answered 503 with Retry-After."""


class ContextLengthExceeded(Exception):
    """The prompt and its max_tokens do not fit the model's context (400 context_length_exceeded).

    ``prompt_tokens`` is None when the prompt was refused by its characters alone (never tokenised)."""

    def __init__(self, *, context: int, prompt_tokens: Optional[int], prompt_chars: int, max_tokens: int):
        super().__init__(f"context {context}, prompt {prompt_tokens} tokens ({prompt_chars} characters), "
                         f"max_tokens {max_tokens}")
        self.context, self.prompt_tokens, self.prompt_chars, self.max_tokens = (
            context, prompt_tokens, prompt_chars, max_tokens)


class TokenNotInVocabulary(Exception):
    """A logit_bias names a token id the version's vocabulary does not have (400)."""


@dataclass(frozen=True)
class Generation:
    """What one request asks: ``prompt`` as the policy reads it (formatted), and the OpenAI sampling fields."""

    prompt: str
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    stream: bool = False
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever the model says (benchmarks)
    # max_tokens is the server's default, not the client's: cut to what the context leaves instead of refused
    max_tokens_default: bool = False
    seed: Optional[int] = None  # sampling: the same request with the same seed gives the same text
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    presence_penalty: float = 0.0  # subtracted from a token's logit once it is in the completion
    frequency_penalty: float = 0.0  # ... times the number of times it is

    @property
    def sampling(self) -> tuple:
        """Requests with equal sampling settings share a generate (greedy ignores top_p and seed)."""
        return ("greedy" if self.temperature == 0 else ("sample", self.temperature, self.top_p), self.ignore_eos)

    @property
    def adjusts_logits(self) -> bool:
        return bool(self.logit_bias) or self.presence_penalty != 0 or self.frequency_penalty != 0


@dataclass(frozen=True)
class Finished:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string), "length" (max_tokens), "cancelled" (its client left)
    prompt_tokens: int
    completion_tokens: int


class Pending:
    """A submitted request: its events (str deltas when streaming, then Finished, or an exception) on the loop."""

    def __init__(self, generation: Generation, ids: Optional[list[int]] = None, max_new: int = 0):
        self.generation = generation
        self.ids = ids or []  # the prompt's tokens (prepared)
        self.max_new = max_new or generation.max_tokens  # max_tokens, cut to the context when it was the default
        self.events: asyncio.Queue = asyncio.Queue()  # bounded by max_tokens deltas and one end
        self.cancelled = False  # its client left: the row ends at its next token ("cancelled")
        self.emitted = False  # an event went out (set in the generation thread): a failed generate is not rerun

    @property
    def group_key(self) -> tuple:
        """Which requests may share a generate: equal sampling settings; a seeded sampling request goes alone."""
        sampling = self.generation.sampling
        if self.generation.seed is not None and sampling[0] != "greedy":
            return ("seeded", id(self))
        return sampling

    async def stream(self) -> AsyncIterator[Union[str, Finished]]:
        while True:
            event = await self.events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, Finished):
                return

    async def result(self) -> Finished:
        async for event in self.stream():
            if isinstance(event, Finished):
                return event
        raise RuntimeError("the generation ended without a result")


@dataclass
class _Loaded:
    key: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    context: int  # the model's positions: prompt + completion must fit
    longest_token: int  # characters of the vocabulary's longest token: a bound on a prompt's characters
    identity: Any = None  # the version's row id: weights of a deleted version are not served under its name
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)  # Pending, or None: evicted, stop draining
    last_batch: int = 1  # how many clients the previous batch served: the next one waits for as many
    evicted: bool = False
    task: Optional[asyncio.Task] = None


def _rss_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pick_device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


class Engine:
    """Loaded versions by key ("agent:v3"), least recently used first; at most ``max_models`` stay loaded."""

    def __init__(self, *, max_models: int, max_queue: int, max_batch: int, batch_wait_s: float = 0.0,
                 device: str = "auto"):
        self.max_models, self.max_queue, self.max_batch = max(1, max_models), max(1, max_queue), max(1, max_batch)
        self.batch_wait_s, self.device = batch_wait_s, pick_device(device)
        self._models: OrderedDict[str, _Loaded] = OrderedDict()
        self._loading: dict[str, asyncio.Future] = {}
        self._waiting = 0  # admitted requests not yet taken into a generate
        self._generator = ThreadPoolExecutor(1, thread_name_prefix="n3-generate")
        # Tokenises beside the generates; two, so that a long prompt (bounded: see _prepare) does not hold a short
        # one back. Encoding releases the GIL and only reads the tokenizer (its settings never change after _read).
        self._preparer = ThreadPoolExecutor(2, thread_name_prefix="n3-prepare")
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="n3-load")  # loads beside running generates
        self.generates = 0
        self.running = 0  # requests in the generate running now
        self.batch_sizes: deque[int] = deque(maxlen=1000)
        self.evicted: list[str] = []

    # -- requests ------------------------------------------------------------------------------------------------
    async def submit(self, key: str, model_path: Path, generation: Generation, *, identity: Any = None) -> Pending:
        """Queue ``generation`` on version ``key`` (loaded from ``model_path`` if it is not); Overloaded when this
        process already holds max_queue waiting requests. ``identity`` (the version's row id) tells a version
        deleted and a new one of the same name apart: loaded weights of another identity are evicted, not served."""
        if self._waiting >= self.max_queue:
            raise Overloaded(f"{self._waiting} requests are waiting for a generate in this process")
        self._waiting += 1
        try:
            loaded = await self._get(key, model_path, identity)
            ids, max_new = await asyncio.get_running_loop().run_in_executor(
                self._preparer, self._prepare, loaded, generation)
            while loaded.evicted:  # evicted while this request waited: its drain task may be gone
                loaded = await self._get(key, model_path, identity)
        except BaseException:
            self._waiting -= 1
            raise
        pending = Pending(generation, ids, max_new)
        loaded.queue.put_nowait(pending)
        return pending

    @staticmethod
    def _prepare(loaded: _Loaded, generation: Generation) -> tuple[list[int], int]:
        """In the preparation thread: the prompt's tokens and the row's max new tokens; ContextLengthExceeded when
        they do not fit (by the characters alone first: each token covers at most ``longest_token`` of them)."""
        context, max_tokens, chars = loaded.context, generation.max_tokens, len(generation.prompt)
        if chars > context * loaded.longest_token:
            raise ContextLengthExceeded(context=context, prompt_tokens=None, prompt_chars=chars, max_tokens=max_tokens)
        # A list: the batch encoder releases the GIL while it works (the event loop and the generates go on)
        ids = loaded.tokenizer([generation.prompt], verbose=False)["input_ids"][0]
        too_long = len(ids) >= context if generation.max_tokens_default else len(ids) + max_tokens > context
        if too_long:
            raise ContextLengthExceeded(context=context, prompt_tokens=len(ids), prompt_chars=chars,
                                        max_tokens=max_tokens)
        vocabulary = loaded.model.get_output_embeddings().weight.shape[0]
        for token, _ in generation.logit_bias:
            if not 0 <= token < vocabulary:
                raise TokenNotInVocabulary(f"token id {token} is not in this model's vocabulary (0 to "
                                           f"{vocabulary - 1})")
        return ids, min(max_tokens, context - len(ids))

    def stats(self) -> dict[str, Any]:
        return {
            "loaded": list(self._models), "evicted": list(self.evicted[-100:]), "maxModels": self.max_models,
            "waiting": self._waiting, "maxQueue": self.max_queue, "maxBatch": self.max_batch,
            "generates": self.generates, "running": self.running, "batchSizes": list(self.batch_sizes),
            "device": self.device, "rssBytes": _rss_bytes(),
        }

    def close(self) -> None:
        self._preparer.shutdown(wait=True)
        self._generator.shutdown(wait=True)
        self._loader.shutdown(wait=True)

    # -- loading and the LRU --------------------------------------------------------------------------------------
    async def _get(self, key: str, model_path: Path, identity: Any = None) -> _Loaded:
        loaded = self._models.get(key)
        if loaded is not None and loaded.identity != identity:
            self._evict(key, "another version now has its name")
        elif loaded is not None:
            self._models.move_to_end(key)
            return loaded
        if key not in self._loading:  # the first request loads; the others wait on the same future
            loop = asyncio.get_running_loop()
            self._loading[key] = asyncio.ensure_future(self._load(key, model_path, loop, identity))
        try:
            return await asyncio.shield(self._loading[key])
        finally:
            if self._loading.get(key) is not None and self._loading[key].done():
                self._loading.pop(key, None)

    async def _load(self, key: str, model_path: Path, loop: asyncio.AbstractEventLoop, identity: Any) -> _Loaded:
        started = time.monotonic()
        model, tokenizer = await loop.run_in_executor(self._loader, self._read, model_path)
        loaded = _Loaded(key=key, model=model, tokenizer=tokenizer,
                         context=int(getattr(model.config, "max_position_embeddings", 0) or 1024),
                         longest_token=max(map(len, tokenizer.get_vocab()), default=1) or 1, identity=identity)
        loaded.task = asyncio.ensure_future(self._drain(loaded))
        if key in self._models:
            self._evict(key, "another version now has its name")
        self._models[key] = loaded
        while len(self._models) > self.max_models:
            self._evict(next(iter(self._models)), f"N3_SERVE_MAX_MODELS={self.max_models}")
        logger.info("Loaded %s from %s in %.2f s", key, model_path, time.monotonic() - started)
        return loaded

    def _evict(self, key: str, why: str) -> None:
        old = self._models.pop(key)
        old.evicted = True
        old.queue.put_nowait(None)  # its drain task serves what is queued, then ends; the weights go with it
        self.evicted.append(key)
        logger.info("Evicted %s (%s)", key, why)

    def _read(self, model_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """In the load thread: the policy (a plain HF directory) under the core's LOAD_LOCK, in eval mode."""
        dtype = torch.float32 if self.device == "cpu" else torch.bfloat16
        model = load_causal_lm(str(model_path), dtype=dtype, device=self.device).eval()
        # Each generate's config says everything (the request's fields): nothing from the directory's
        # generation_config.json (its sampling defaults, max_length, EOS) is merged into it.
        model.generation_config = GenerationConfig()
        tokenizer = load_tokenizer(str(model_path), padding_side="left")
        # Encoded once here: a tokenizer whose files set truncation or padding has them cleared by its first call
        # (a change that would race a decode in the generation thread), never by a later one.
        tokenizer(["warm-up"], verbose=False)
        return model, tokenizer

    # -- batching --------------------------------------------------------------------------------------------------
    async def _drain(self, loaded: _Loaded) -> None:
        loop = asyncio.get_running_loop()
        closing = False
        while not closing:
            first = await loaded.queue.get()
            if first is None:
                return
            batch = [first]
            deadline = loop.time() + self.batch_wait_s
            while len(batch) < self.max_batch:
                try:
                    item = loaded.queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or len(batch) >= loaded.last_batch:
                        break
                    try:
                        item = await asyncio.wait_for(loaded.queue.get(), remaining)
                    except TimeoutError:
                        break
                if item is None:
                    closing = True
                    break
                batch.append(item)
            self._waiting -= len(batch)
            loaded.last_batch = len(batch)
            groups: dict[tuple, list[Pending]] = {}
            for pending in batch:
                groups.setdefault(pending.group_key, []).append(pending)
            for group in groups.values():
                for part in _fitting(group, loaded.context):
                    await self._run(loaded, part, loop)

    async def _run(self, loaded: _Loaded, group: list[Pending], loop: asyncio.AbstractEventLoop) -> None:
        """One generate for ``group``; if it raises, each request that heard nothing yet is run again alone, so
        a request that fails makes only itself fail."""
        try:
            await loop.run_in_executor(self._generator, self._generate, loaded, group, loop)
        except Exception as exc:  # noqa: BLE001  (every request of the group hears of it, not the log alone)
            logger.exception("Generation failed on %s (%d request(s))", loaded.key, len(group))
            again = [pending for pending in group if not pending.emitted] if len(group) > 1 else []
            for pending in group:
                if pending not in again:
                    pending.events.put_nowait(exc)
            for pending in again:
                await self._run(loaded, [pending], loop)

    def _generate(self, loaded: _Loaded, group: list[Pending], loop: asyncio.AbstractEventLoop) -> None:
        """In the generation thread: one generate() for ``group`` (equal sampling settings; prompts prepared and
        fitting the context together with the largest max_tokens)."""
        tokenizer, model = loaded.tokenizer, loaded.model
        max_new = max(pending.max_new for pending in group)
        width = max(len(pending.ids) for pending in group)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p.ids)) + p.ids for p in group], device=model.device)
        attention = torch.tensor([[0] * (width - len(p.ids)) + [1] * len(p.ids) for p in group], device=model.device)
        rows = _Rows([_Row(pending, tokenizer, loop, len(pending.ids)) for pending in group],
                     eos_id=tokenizer.eos_token_id)
        first = group[0].generation
        config = GenerationConfig(
            max_new_tokens=max_new, do_sample=first.temperature > 0, pad_token_id=pad,
            eos_token_id=None if first.ignore_eos else tokenizer.eos_token_id,
            **({"temperature": first.temperature, "top_p": first.top_p, "top_k": 0} if first.temperature > 0 else {}),
        )
        processors = LogitsProcessorList([_Adjust(group, width)] if any(
            pending.generation.adjusts_logits for pending in group) else [])
        self.running = len(group)
        try:
            with torch.inference_mode(), _seeded(first.seed if first.temperature > 0 else None, model.device):
                model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config,
                               stopping_criteria=[rows], logits_processor=processors)
        finally:
            self.running = 0
        rows.finish_all()
        self.generates += 1
        self.batch_sizes.append(len(group))


def _fitting(group: list[Pending], context: int) -> list[list[Pending]]:
    """``group`` in arrival order, cut so that each part's longest prompt plus its largest max_new fits the context
    (each request fits alone: submit() checked it)."""
    parts: list[list[Pending]] = []
    width = new = 0
    for pending in group:
        if parts and max(width, len(pending.ids)) + max(new, pending.max_new) <= context:
            parts[-1].append(pending)
            width, new = max(width, len(pending.ids)), max(new, pending.max_new)
        else:
            parts.append([pending])
            width, new = len(pending.ids), pending.max_new
    return parts


@contextlib.contextmanager
def _seeded(seed: Optional[int], device: torch.device) -> Iterator[None]:
    """A seeded generate draws from its seed alone; the process's random state is as it was after it."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class _Adjust(LogitsProcessor):
    """OpenAI's logit_bias, presence_penalty and frequency_penalty, per row, on the completion's tokens so far."""

    def __init__(self, group: list[Pending], prompt_width: int):
        self.group, self.prompt_width = group, prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        completion = input_ids[:, self.prompt_width:]  # (rows, tokens generated so far)
        for index, pending in enumerate(self.group):
            generation = pending.generation
            for token, bias in generation.logit_bias:
                scores[index, token] += bias
            if completion.shape[1] and (generation.presence_penalty or generation.frequency_penalty):
                counts = torch.bincount(completion[index], minlength=scores.shape[1])[:scores.shape[1]]
                scores[index] -= (generation.frequency_penalty * counts
                                  + generation.presence_penalty * (counts > 0)).to(scores.dtype)
        return scores


class _Row:
    """One request's completion as its tokens come (in the generation thread)."""

    def __init__(self, pending: Pending, tokenizer: PreTrainedTokenizerBase, loop: asyncio.AbstractEventLoop,
                 prompt_tokens: int):
        self.pending, self.tokenizer, self.loop, self.prompt_tokens = pending, tokenizer, loop, prompt_tokens
        self.ids: list[int] = []
        self.sent = 0  # characters already sent as deltas
        self.done = False
        generation = pending.generation
        self.watch_text = generation.stream or bool(generation.stop)  # else the text is decoded once, at the end

    def add(self, token: int, eos_id: Optional[int]) -> None:
        if token == eos_id and not self.pending.generation.ignore_eos:
            self.finish("stop")
            return
        self.ids.append(token)
        if self.watch_text:
            text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            cut = _stop_at(text, self.pending.generation.stop)
            if cut is not None:
                self.finish("stop", text[:cut])
                return
            self._send(text[:len(text) - _held_back(text, self.pending.generation.stop)])
        if len(self.ids) >= self.pending.max_new:
            self.finish("length")

    def finish(self, reason: str, text: Optional[str] = None) -> None:
        if self.done:
            return
        self.done = True
        if text is None:
            text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            cut = _stop_at(text, self.pending.generation.stop)
            if cut is not None:
                text, reason = text[:cut], "stop"
        self._send(text, final=True)
        self._emit(Finished(text=text, finish_reason=reason, prompt_tokens=self.prompt_tokens,
                            completion_tokens=len(self.ids)))

    def _send(self, text: str, final: bool = False) -> None:
        if not self.pending.generation.stream:
            return
        if not final and text.endswith("\ufffd"):  # half of a character: wait for the rest of its bytes
            return
        if len(text) > self.sent:
            self._emit(text[self.sent:])
            self.sent = len(text)

    def _emit(self, event: Any) -> None:
        self.pending.emitted = True
        self.loop.call_soon_threadsafe(self.pending.events.put_nowait, event)


class _Rows(StoppingCriteria):
    """generate()'s stopping criterion: feeds each step's new tokens to the rows; a row is done when it says so."""

    def __init__(self, rows: list[_Row], *, eos_id: Optional[int]):
        self.rows, self.eos_id = rows, eos_id

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        for row, token in zip(self.rows, input_ids[:, -1].tolist()):
            if row.done:
                continue
            if row.pending.cancelled:
                row.finish("cancelled")
            else:
                row.add(token, self.eos_id)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)

    def finish_all(self) -> None:
        for row in self.rows:
            row.finish("length")


def _stop_at(text: str, stops: tuple[str, ...]) -> Optional[int]:
    """Where the first stop string starts in ``text`` (None: none does)."""
    found = [index for index in (text.find(stop) for stop in stops if stop) if index >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` could begin a stop string: not streamed until that is known."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
