"""The inference process's OpenAI protocol in this process (no server, no database): what each field accepts and
refuses, and a fuzz of the whole ASGI application over the request schema with 0 server errors.

The application runs with the real engine on n3-tiny-random (max_tokens bounded to 4, so a generate is a few
milliseconds); only the database work (who is asking, which version answers) is replaced by fixed answers, which
tests/inference/test_inference.py covers against a real server.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from inference import protocol, services
from inference.engine import Engine
from inference.protocol import OpenAIError
from inference.server import InferenceApp, read_json
from n3_server.rlhf.base_models import resolve_base_model
from n3site.exceptions import NotFound

MODELS = ["bot", "bot:v1"]


def read(body: dict, kind: str = "chat") -> protocol.Request:
    base = {"model": "bot", "messages": [{"role": "user", "content": "Hi"}]} if kind == "chat" else \
        {"model": "bot", "prompt": "Hi"}
    return protocol.read_request({**base, **body}, kind=kind, max_tokens_bound=256)


def refused(body: dict, kind: str = "chat") -> OpenAIError:
    with pytest.raises(OpenAIError) as caught:
        read(body, kind)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize("content", ["\ud800", "What is 1 plus 1?\udfff", "nul \x00 inside", "\u200b"])
def test_chat_text_follows_the_feedback_rules(content: str):
    error = refused({"messages": [{"role": "user", "content": content}]})
    assert error.param == "messages" and error.body()["error"]["type"] == "invalid_request_error"
    assert "surrogate" in error.message or "NUL" in error.message or "visible" in error.message
    assert refused({"prompt": content}, "completion").param == "prompt"


@pytest.mark.parametrize(("field", "value"), [("user", "\ud800"), ("model", "bot\x00"), ("stop", ["\udc00"])])
def test_other_text_fields_must_be_storable(field: str, value: Any):
    assert refused({field: value}).param == field


@pytest.mark.parametrize(("value", "says"), [
    (0, "'n' must be at least 1, got 0"), (-3, "at least 1"), ("1", "'n' must be an integer, got \"1\""),
    (True, "must be an integer"), (1.0, "must be an integer"), (2, "'n' above 1 is not supported"),
])
def test_n_says_what_is_wrong(value: Any, says: str):
    error = refused({"n": value})
    assert error.param == "n" and says in error.message
    assert read({"n": 1}).generation.max_tokens == 256


def test_user_must_be_a_string():
    for value in (0, 1, True, ["a"], {"id": 1}):
        assert refused({"user": value}).param == "user"
    assert read({"user": "user-42"}).user == "user-42" and read({"user": None}).user == ""


@pytest.mark.parametrize(("body", "param"), [
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream, as OpenAI refuses it
    ({"stream": True, "stream_options": ["include_usage"]}, "stream_options"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
    ({"response_format": "text"}, "response_format"),
    ({"suffix": " and so on"}, "suffix"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"12": 101}}, "logit_bias"),
    ({"logit_bias": {"12": True}}, "logit_bias"),
    ({"logit_bias": [1, 2]}, "logit_bias"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": "1"}, "frequency_penalty"),
    ({"seed": 1.5}, "seed"),
    ({"seed": True}, "seed"),
    ({"seed": 2 ** 64}, "seed"),
    ({"stream": "true"}, "stream"),
    ({"temperature": 2.1}, "temperature"),
])
def test_openai_fields_n3_cannot_honour_are_refused_naming_them(body: dict, param: str):
    assert refused(body).param == param
    assert refused(body, "completion").param == param


def test_openai_fields_that_work_are_read():
    generation = read({"seed": 7, "temperature": 0.7, "logit_bias": {"50": -100, "7": 2.5},
                       "presence_penalty": 0.5, "frequency_penalty": -0.25, "response_format": {"type": "text"},
                       "stream": True, "stream_options": {"include_usage": True}, "tool_choice": "none",
                       "max_tokens": 9}).generation
    assert (generation.seed, generation.logit_bias, generation.presence_penalty, generation.frequency_penalty) == (
        7, ((50, -100.0), (7, 2.5)), 0.5, -0.25)
    assert generation.max_tokens == 9 and not generation.max_tokens_default
    assert read({}).generation.max_tokens_default and read({}, "completion").generation.max_tokens == 16
    assert read({"temperature": 1e-38}).generation.temperature == 0.0  # greedy: 1/1e-38 overflows the logits
    assert read({"temperature": 1e-5}).generation.temperature == 1e-5


def receive_of(body: bytes):
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the client never leaves
        return {"type": "http.disconnect"}

    return receive


@pytest.mark.parametrize("body", [b"[" * 200_000 + b"]" * 200_000, b'{"a":' * 200_000 + b"1" + b"}" * 200_000,
                                  b'{"max_tokens": 1' + b"0" * 5000 + b"}", b"\xff\xfe", b'{"a": NaN'],
                         ids=["200000 deep list", "200000 deep object", "5000 digits", "not UTF-8", "unfinished"])
def test_bodies_that_json_cannot_read_are_400(body: bytes):
    with pytest.raises(OpenAIError) as caught:
        asyncio.run(read_json(receive_of(body), 10 * 1024 * 1024))
    assert caught.value.status == 400


# -- the fuzz -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app():
    """(loop, InferenceApp) with the real engine; the database answers replaced (see the module's docstring)."""
    policy = Path(resolve_base_model("n3-tiny-random", models_dir=settings.MODELS_DIR))
    served = services.Served(key="bot:v1", version=None, policy_dir=policy, record=False)

    def resolve_model(*, model: str, user: str = "") -> services.Served:
        if model in MODELS:
            return served
        raise NotFound(f"no agent {model!r}")

    loop = asyncio.new_event_loop()
    engine = Engine(max_models=1, max_queue=16, max_batch=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(services, "cached_user", lambda *, key: (True, object()))
        patch.setattr(services, "cached_model", lambda *, model, user="": None)
        patch.setattr(services, "resolve_model", resolve_model)
        patch.setattr(services, "served_models", lambda: list(MODELS))
        yield loop, InferenceApp(engine, max_body_bytes=1024 * 1024, max_tokens=4)
    for loaded in engine._models.values():
        loaded.task.cancel()
    engine.close()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


def call(app, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    loop, application = app
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [(b"authorization", b"Bearer t")]}
    loop.run_until_complete(asyncio.wait_for(application(scope, receive_of(body), send), 60))
    payload = b"".join(message.get("body", b"") for message in sent[1:])
    return sent[0]["status"], payload


TEXT = st.text(alphabet=st.characters(codec=None, categories=None), max_size=12)  # surrogates and NUL included
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                    max_leaves=6)
PART = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]) | JSON, "text": TEXT | JSON})
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]) | JSON,
                                 "content": TEXT | st.lists(PART, max_size=2) | JSON})
FIELDS = {  # each OpenAI field: a value of the right shape, or anything
    "model": st.sampled_from(MODELS + ["nobody", "bot:v9", ""]) | JSON,
    "messages": st.lists(MESSAGE, max_size=3) | JSON,
    "prompt": TEXT | st.lists(TEXT, max_size=2) | JSON,
    "max_tokens": st.integers(-2, 6) | JSON, "max_completion_tokens": st.integers(0, 5) | JSON,
    "temperature": st.floats(0, 2) | JSON,
    "top_p": st.floats(0, 1) | JSON, "n": st.integers(-1, 2) | JSON, "best_of": st.integers(0, 2) | JSON,
    "stop": TEXT | st.lists(TEXT, max_size=5) | JSON, "stream": st.booleans() | JSON,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | JSON,
    "user": TEXT | JSON, "seed": st.integers() | JSON, "ignore_eos": st.booleans() | JSON,
    "logit_bias": st.dictionaries(st.integers(-5, 3000).map(str) | TEXT, st.floats(-120, 120) | JSON,
                                  max_size=3) | JSON,
    "presence_penalty": st.floats(-3, 3) | JSON, "frequency_penalty": st.floats(-3, 3) | JSON,
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}) | JSON,
    "logprobs": st.booleans() | JSON, "top_logprobs": st.integers(0, 5) | JSON, "echo": st.booleans() | JSON,
    "suffix": TEXT | JSON, "tools": JSON, "tool_choice": st.just("none") | JSON,
}
WORDS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cc", "Cf", "Cs", "Zs", "Zl", "Zp"]),
                min_size=1, max_size=12)
VALID = {  # values a client of the documentation sends
    "messages": st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": WORDS}), min_size=1, max_size=2),
    "prompt": WORDS, "max_tokens": st.integers(1, 4), "temperature": st.sampled_from([0, 1e-39, 0.7, 1.0, 2]),
    "top_p": st.floats(0.01, 1), "stop": st.lists(WORDS, max_size=2), "stream": st.booleans(),
    "user": WORDS, "seed": st.integers(0, 2 ** 32), "ignore_eos": st.booleans(),
    "logit_bias": st.dictionaries(st.integers(0, 2100).map(str), st.floats(-100, 100), max_size=2),
    "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
    "response_format": st.just({"type": "text"}), "n": st.just(1),
}
PATHS = st.sampled_from(["/v1/chat/completions", "/v1/completions"])
REQUEST = st.one_of(
    st.tuples(PATHS, st.fixed_dictionaries({"model": st.sampled_from(MODELS)}, optional=VALID)),
    st.tuples(PATHS, st.fixed_dictionaries({"model": FIELDS["model"]},
                                           optional={k: v for k, v in FIELDS.items() if k != "model"})))
CASES = {"count": 0, "statuses": {}}
# The fast loop's share; N3_FUZZ_EXAMPLES=2000 for a longer run
EXAMPLES = int(os.environ.get("N3_FUZZ_EXAMPLES", 150))


@hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(request=REQUEST, raw=st.none() | st.binary(max_size=40))
def fuzz_once(app, request: tuple[str, dict], raw: bytes | None):
    path, body = request
    data = raw if raw is not None else json.dumps(body).encode()  # ensure_ascii: surrogates travel as \\ud800
    started = time.perf_counter()
    status, payload = call(app, "POST", path, data)
    CASES["seconds"] = CASES.get("seconds", 0) + time.perf_counter() - started
    CASES["count"] += 1
    CASES["statuses"][status] = CASES["statuses"].get(status, 0) + 1
    assert status < 500, (body, payload)
    if status != 200:
        error = json.loads(payload)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    elif not body.get("stream"):
        assert json.loads(payload)["choices"][0]["finish_reason"] in ("stop", "length")


def test_fuzzed_requests_never_get_a_server_error(app):
    fuzz_once(app)
    # Figures for the record (pytest -s prints them): how many cases, and their statuses.
    print(f"inference fuzz: {CASES['count']} cases, statuses {dict(sorted(CASES['statuses'].items()))}, "
          f"{CASES['seconds']:.1f} s in the application")
    assert CASES["count"] >= EXAMPLES
    assert not any(status >= 500 for status in CASES["statuses"])
    statuses = CASES["statuses"]
    assert statuses.get(200, 0) >= EXAMPLES // 20 and statuses.get(400, 0) >= EXAMPLES // 2  # both paths walked


def test_models_and_one_model(app):
    status, payload = call(app, "GET", "/v1/models")
    assert status == 200 and [m["id"] for m in json.loads(payload)["data"]] == MODELS
    status, payload = call(app, "GET", "/v1/models/bot:v1")
    assert status == 200 and json.loads(payload)["id"] == "bot:v1" and json.loads(payload)["object"] == "model"
    status, payload = call(app, "GET", "/v1/models/bot:v9")
    assert status == 404 and json.loads(payload)["error"]["code"] == "model_not_found"
    assert call(app, "POST", "/v1/models/bot:v1")[0] == 405
