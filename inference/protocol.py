"""The OpenAI protocol as n3 speaks it: request bodies read into a Generation, answers and stream chunks, errors.

Prompts: the policy was trained on ``format_query(prompt)`` of single-turn feedback, so
- a chat request's prompt is its last ``user`` message (text parts joined); system messages and earlier turns are
  not shown to the policy (n3's policies are trained on single prompts, not dialogues);
- a completion's ``prompt`` (a string, or a list holding one) goes through the same ``format_query``.
Not supported (400): ``n`` above 1, ``logprobs``, ``echo``, ``best_of`` above 1, tools. Other fields are ignored,
but for vLLM's ``ignore_eos`` (true: always generate ``max_tokens``; what serving benchmarks use).
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional

from training.rlhf.data import format_query

from .engine import Finished, Generation

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the server's bound


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
    for name, allowed in (("n", 1), ("best_of", 1)):
        if body.get(name) not in (None, allowed):
            raise invalid(f"'{name}' above 1 is not supported by n3", name)
    for name in ("logprobs", "echo", "tools", "functions"):
        if body.get(name) not in (None, False, 0, [], {}):
            raise invalid(f"'{name}' is not supported by n3", name)
    prompt = _chat_prompt(body.get("messages")) if kind == "chat" else _completion_prompt(body.get("prompt"))
    default_tokens = max_tokens_bound if kind == "chat" else min(COMPLETION_DEFAULT_MAX_TOKENS, max_tokens_bound)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = default_tokens if max_tokens is None else max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= max_tokens_bound:
        raise invalid(f"'max_tokens' must be an integer from 1 to {max_tokens_bound} (N3_SERVE_MAX_TOKENS)",
                      "max_tokens")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise invalid("'top_p' must be above 0", "top_p")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise invalid("'stop' is a string or a list of at most 4 strings", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("'stream' must be true or false", "stream")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise invalid("'ignore_eos' must be true or false", "ignore_eos")
    user = body.get("user") or ""
    if not isinstance(user, str):
        raise invalid("'user' must be a string", "user")
    options = body.get("stream_options") or {}
    return Request(
        kind=kind, model=model, user=user, prompt=prompt,
        generation=Generation(prompt=format_query(prompt), max_tokens=max_tokens, temperature=temperature,
                              top_p=top_p, stop=tuple(s for s in stops if s), stream=stream,
                              ignore_eos=ignore_eos),
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
    )


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
            return text
    raise invalid("'messages' holds no user message: the policy answers the last one", "messages")


def _completion_prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt.strip():
        raise invalid("'prompt' must be a non-empty string (one prompt per request)", "prompt")
    return prompt


# -- answers --------------------------------------------------------------------------------------------------------
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
