"""The OpenAI protocol as n3 speaks it: request bodies read into a Generation, answers and stream chunks, errors.

Prompts: the policy was trained on ``format_query(prompt)`` of single-turn feedback, so
- a chat request's prompt is its last ``user`` message (text parts joined); system messages and earlier turns are
  not shown to the policy (n3's policies are trained on single prompts, not dialogues);
- a completion's ``prompt`` (a string, or a list holding one) goes through the same ``format_query``.
Each OpenAI field either works as OpenAI documents it or is refused with a 400 naming it (the README's table):
``n``/``best_of`` above 1, ``logprobs``, ``top_logprobs``, ``echo``, ``suffix``, tools and ``response_format``
other than text are refused; ``seed``, ``logit_bias`` and the penalties work (inference/engine.py). Fields OpenAI
does not define are ignored, as vLLM does, but for vLLM's ``ignore_eos`` (true: always generate ``max_tokens``;
what serving benchmarks use).
"""
from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional

from n3_server.rlhf import records
from n3_server.rlhf.data import format_query

from .engine import ContextLengthExceeded, Finished, Generation

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the server's bound
GREEDY_BELOW = 1e-5  # a smaller temperature is greedy decoding (vLLM's _SAMPLING_EPS)
SEED_MIN, SEED_MAX = -(2 ** 63), 2 ** 63 - 1  # torch.manual_seed's range
LOGIT_BIAS_MAX = 300  # OpenAI's bound on logit_bias entries
# Refused (400 naming the field) when set to anything but null/false/empty: what n3 cannot do. ``top_logprobs``
# needs ``logprobs``, which n3 does not give.
UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "suffix", "tools", "tool_choice", "functions", "function_call",
               "audio", "modalities", "prediction")


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: Optional[str] = None,
                 param: Optional[str] = None, headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: Optional[str] = None) -> OpenAIError:
    return OpenAIError(400, message, param=param)


@dataclass(frozen=True)
class Request:
    """A chat or completion request, read: the model asked for, the end user (for a sticky split), the text."""

    kind: str  # "chat" or "completion"
    model: str
    user: str
    prompt: str  # as the client wrote it (what a recorded Feedback stores)
    generation: Generation
    include_usage: bool


def read_request(body: Any, *, kind: str, max_tokens_bound: int) -> Request:
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' is required: an agent's name, or 'agent:vN' for one of its versions", "model")
    _storable(model, "model")
    for name in ("n", "best_of"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(f"'{name}' must be an integer, got {_shown(value)}", name)
        if value < 1:
            raise invalid(f"'{name}' must be at least 1, got {value}", name)
        if value > 1:
            raise invalid(f"'{name}' above 1 is not supported by n3 (one completion per request)", name)
    for name in UNSUPPORTED:
        value = body.get(name)
        none_chosen = name in ("tool_choice", "function_call") and value == "none"  # no tool: what n3 does
        if value not in (None, False, [], {}, "") and not none_chosen:
            raise invalid(f"'{name}' is not supported by n3", name)
    _response_format(body.get("response_format"))
    prompt = _chat_prompt(body.get("messages")) if kind == "chat" else _completion_prompt(body.get("prompt"))
    default_tokens = max_tokens_bound if kind == "chat" else min(COMPLETION_DEFAULT_MAX_TOKENS, max_tokens_bound)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens_default = max_tokens is None
    max_tokens = default_tokens if max_tokens is None else max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= max_tokens_bound:
        raise invalid(f"'max_tokens' must be an integer from 1 to {max_tokens_bound} (N3_SERVE_MAX_TOKENS)",
                      "max_tokens")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    if temperature < GREEDY_BELOW:  # logits divided by 1e-38 overflow to inf: what such a temperature means is greedy
        temperature = 0.0
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise invalid("'top_p' must be above 0", "top_p")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise invalid("'stop' is a string or a list of at most 4 strings", "stop")
    for text in stops:
        _storable(text, "stop")
    stream = _flag(body, "stream")
    ignore_eos = _flag(body, "ignore_eos")
    user = body.get("user")
    if user is None:
        user = ""
    if not isinstance(user, str):
        raise invalid(f"'user' must be a string, got {_shown(user)}", "user")
    _storable(user, "user")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise invalid("'stream_options' is only allowed when 'stream' is true", "stream_options")
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise invalid("'stream_options' must be an object such as {\"include_usage\": true}", "stream_options")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not SEED_MIN <= seed <= SEED_MAX):
        raise invalid(f"'seed' must be an integer from {SEED_MIN} to {SEED_MAX}", "seed")
    return Request(
        kind=kind, model=model, user=user, prompt=prompt,
        generation=Generation(prompt=format_query(prompt), max_tokens=max_tokens, temperature=temperature,
                              top_p=top_p, stop=tuple(s for s in stops if s), stream=stream,
                              ignore_eos=ignore_eos, max_tokens_default=max_tokens_default, seed=seed,
                              logit_bias=_logit_bias(body.get("logit_bias")),
                              presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
                              frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0)),
        include_usage=bool(options and options.get("include_usage")),
    )


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(f"'{name}' must be true or false", name)
    return value


def _storable(text: str, name: str) -> None:
    """Text the server passes on (to the database, the tokenizer) follows the feedback records' rule for stored
    text: no NUL, no lone surrogate (records.update_problems checks a note by that rule alone)."""
    for _, message in records.update_problems({"notes": text}):
        raise invalid(f"'{name}' {message}", name)


def _response_format(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or value.get("type") != "text" or len(value) != 1:
        raise invalid("'response_format' other than {\"type\": \"text\"} is not supported by n3 (no JSON mode "
                      "or schema)", "response_format")


def _logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    """OpenAI's map of token ids (as strings) to a bias from -100 to 100; checked against the vocabulary later."""
    if value is None:
        return ()
    message = "'logit_bias' must map token ids to numbers from -100 to 100, such as {\"50256\": -100}"
    if not isinstance(value, dict) or len(value) > LOGIT_BIAS_MAX:
        raise invalid(f"{message} (at most {LOGIT_BIAS_MAX} tokens)", "logit_bias")
    biases = []
    for token, bias in value.items():
        if not (token.isascii() and token.isdigit() and len(token) <= 9) or isinstance(bias, bool) \
                or not isinstance(bias, (int, float)) or not math.isfinite(bias) or not -100 <= bias <= 100:
            raise invalid(f"{message}; got {_shown(token)}: {_shown(bias)}", "logit_bias")
        biases.append((int(token), float(bias)))
    return tuple(biases)


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise invalid(f"'{name}' must be a number from {low:g} to {high:g}", name)
    return float(value)


def _text(content: Any) -> Optional[str]:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: the text ones, joined
        parts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"]
        if parts and all(isinstance(part, str) for part in parts):
            return "\n".join(parts)
    return None


def _chat_prompt(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty list", "messages")
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            text = _text(message.get("content"))
            if text is None or not text.strip():
                raise invalid("The last user message must have text content", "messages")
            return _prompt_text(text, "messages", "The last user message's content")
    raise invalid("'messages' holds no user message: the policy answers the last one", "messages")


def _completion_prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt.strip():
        raise invalid("'prompt' must be a non-empty string (one prompt per request)", "prompt")
    return _prompt_text(prompt, "prompt", "'prompt'")


def _prompt_text(text: str, param: str, named: str) -> str:
    """A prompt follows the rules of a feedback record's prompt (it may be stored as one): visible text, no NUL,
    no lone surrogate."""
    for field, message in records.record_problems({"prompt": text, "response": "-"}):
        if field == "prompt":
            raise invalid(f"{named} {message}", param)
    return text


# -- answers --------------------------------------------------------------------------------------------------------
def context_error(request: Request, exc: ContextLengthExceeded) -> OpenAIError:
    """vLLM's 400 for a prompt beyond the model's context (OpenAI says the same with code context_length_exceeded)."""
    where = "messages" if request.kind == "chat" else "prompt"
    if exc.prompt_tokens is None:
        asked = f"{exc.prompt_chars:,} characters in the {where}, more than {exc.context} tokens whatever they are"
    elif request.generation.max_tokens_default:
        asked = f"{exc.prompt_tokens} tokens in the {where}, leaving none for the completion"
    else:
        asked = (f"{exc.prompt_tokens + exc.max_tokens} tokens ({exc.prompt_tokens} in the {where}, "
                 f"{exc.max_tokens} in the completion)")
    return OpenAIError(400, f"This model's maximum context length is {exc.context} tokens. However, you requested "
                            f"{asked}. Please reduce the length of the {where} or completion.",
                       code="context_length_exceeded", param=where)


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex


def usage(finished: Finished) -> dict[str, int]:
    return {"prompt_tokens": finished.prompt_tokens, "completion_tokens": finished.completion_tokens,
            "total_tokens": finished.prompt_tokens + finished.completion_tokens}


def completion_body(request: Request, *, id: str, model: str, created: int, finished: Finished) -> dict[str, Any]:
    if request.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": finished.text},
                  "logprobs": None, "finish_reason": finished.finish_reason}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": finished.text, "logprobs": None, "finish_reason": finished.finish_reason}
        kind = "text_completion"
    return {"id": id, "object": kind, "created": created, "model": model, "choices": [choice],
            "usage": usage(finished)}


def chunk_body(request: Request, *, id: str, model: str, created: int, text: Optional[str] = None,
               finish_reason: Optional[str] = None, first: bool = False) -> dict[str, Any]:
    """One server-sent event's data: a text delta, or the end (``finish_reason``)."""
    if request.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        kind = "text_completion"
    return {"id": id, "object": kind, "created": created, "model": model, "choices": [choice]}


def usage_chunk(request: Request, *, id: str, model: str, created: int, finished: Finished) -> dict[str, Any]:
    kind = "chat.completion.chunk" if request.kind == "chat" else "text_completion"
    return {"id": id, "object": kind, "created": created, "model": model, "choices": [], "usage": usage(finished)}


def now() -> int:
    return int(time.time())
