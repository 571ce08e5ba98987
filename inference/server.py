"""The inference process's ASGI application (``manage.py serve_policies`` serves it with gunicorn's asgi worker).

    GET  /v1/models              the agents and versions a client may name
    GET  /v1/models/<id>         one of them (404 model_not_found otherwise)
    POST /v1/chat/completions    model "agent" (traffic split, sticky by ``user``) or "agent:vN" (pinned)
    POST /v1/completions
    GET  /n3/stats               loaded versions, generates and their batch sizes, resident memory
    GET  /health                 200 once the process serves (no token)

Authorization: ``Bearer <n3 API token>`` (what OpenAI clients send) or ``Token <key>`` as the REST API takes it.
Requests are read and answered on the event loop; database work runs in a small thread pool, generation in the
engine's thread (inference/engine.py). Errors are OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, TypeVar

from django.conf import settings
from django.db import close_old_connections

from n3site.exceptions import NotFound

from . import protocol, services
from .engine import ContextLengthExceeded, Engine, Overloaded, Pending, TokenNotInVocabulary
from .protocol import OpenAIError

logger = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_AFTER_S = 1


class InferenceApp:
    def __init__(self, engine: Engine, *, max_body_bytes: int, max_tokens: int):
        self.engine, self.max_body_bytes, self.max_tokens = engine, max_body_bytes, max_tokens
        self._db: Optional[ThreadPoolExecutor] = None  # made in the worker, after gunicorn's fork

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":  # the running generate ends first
                    await asyncio.get_running_loop().run_in_executor(None, self.engine.close)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            raise ValueError(f"n3's inference process serves HTTP only, not {scope['type']!r}")
        try:
            await self._route(scope, receive, send)
        except OpenAIError as exc:
            await respond(send, exc.status, exc.body(), exc.headers)
        except Exception as exc:  # noqa: BLE001  (a load or a generate failed: OpenAI's shape, not a bare 500)
            logger.exception("%s %s failed", scope["method"], scope["path"])
            await respond(send, 500, OpenAIError(500, f"{type(exc).__name__}: {exc}", type="server_error").body())

    async def _route(self, scope: dict, receive: Callable, send: Callable) -> None:
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        routes = {"/v1/chat/completions": ("POST", "chat"), "/v1/completions": ("POST", "completion"),
                  "/v1/models": ("GET", "models"), "/n3/stats": ("GET", "stats"), "/health": ("GET", "health")}
        model_id = path[len("/v1/models/"):] if path.startswith("/v1/models/") else None
        if model_id:
            routes[path] = ("GET", "model")
        if path not in routes:
            raise OpenAIError(404, f"No route {method} {path}", code="not_found")
        allowed, name = routes[path]
        if method != allowed:
            raise OpenAIError(405, f"{path} answers {allowed} only", code="method_not_allowed",
                              headers={"allow": allowed})
        if name == "health":
            await respond(send, 200, {"status": "ok"})
            return
        user = await self._authenticate(scope)
        if name == "models":
            names = await self._in_db(services.served_models)
            created = protocol.now()
            await respond(send, 200, {"object": "list", "data": [
                {"id": model, "object": "model", "created": created, "owned_by": "n3"} for model in names]})
        elif name == "model":
            if model_id not in await self._in_db(services.served_models):
                raise OpenAIError(404, f"The model '{model_id}' does not exist", code="model_not_found",
                                  param="model")
            await respond(send, 200, {"id": model_id, "object": "model", "created": protocol.now(), "owned_by": "n3"})
        elif name == "stats":
            await respond(send, 200, self.engine.stats())
        else:
            body = await read_json(receive, self.max_body_bytes)
            request = protocol.read_request(body, kind=name, max_tokens_bound=self.max_tokens)
            await self._complete(request, user, receive, send)

    async def _authenticate(self, scope: dict) -> Any:
        header = next((v.decode("latin1") for k, v in scope["headers"] if k.lower() == b"authorization"), "")
        scheme, _, key = header.strip().partition(" ")
        if scheme.lower() not in ("bearer", "token") or not key.strip():
            raise OpenAIError(401, "Send your n3 API token: 'Authorization: Bearer <token>'", code="invalid_api_key")
        try:
            found, user = services.cached_user(key=key.strip())
            if not found:
                user = await self._in_db(services.authenticate, key=key.strip())
        except services.Forbidden as exc:
            raise OpenAIError(403, str(exc), type="permission_error", code="permission_denied") from exc
        if user is None:
            raise OpenAIError(401, "Invalid API token", code="invalid_api_key")
        return user

    async def _complete(self, request: protocol.Request, user: Any, receive: Callable, send: Callable) -> None:
        try:
            served = services.cached_model(model=request.model, user=request.user) or await self._in_db(
                services.resolve_model, model=request.model, user=request.user)
        except NotFound as exc:
            raise OpenAIError(404, f"The model '{request.model}' does not exist: {exc}", code="model_not_found",
                              param="model") from exc
        try:
            pending = await self.engine.submit(served.key, served.policy_dir, request.generation,
                                               identity=served.version.pk if served.version is not None else None)
        except Overloaded as exc:
            raise OpenAIError(503, f"The server is overloaded ({exc}); retry after {RETRY_AFTER_S} s",
                              type="server_error", code="overloaded",
                              headers={"retry-after": str(RETRY_AFTER_S)}) from exc
        except ContextLengthExceeded as exc:
            raise protocol.context_error(request, exc) from exc
        except TokenNotInVocabulary as exc:
            raise protocol.invalid(f"'logit_bias': {exc}", "logit_bias") from exc
        completion_id, created = protocol.new_id(request.kind), protocol.now()
        ids = {"id": completion_id, "model": served.key, "created": created}
        watcher = asyncio.ensure_future(watch_disconnect(receive, pending))
        if not request.generation.stream:
            try:
                finished = await pending.result()
            finally:
                watcher.cancel()
            if pending.cancelled:  # nobody to answer, nothing to record
                logger.info("The client of %s left before its answer: its generation stopped after %d tokens",
                            completion_id, finished.completion_tokens)
                return
            await self._record(served, request, finished.text, completion_id, user)
            await respond(send, 200, protocol.completion_body(request, finished=finished, **ids))
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        try:
            if request.kind == "chat":
                await send_event(send, protocol.chunk_body(request, first=True, **ids))
            async for event in pending.stream():
                if isinstance(event, str):
                    await send_event(send, protocol.chunk_body(request, text=event, **ids))
                    continue
                if pending.cancelled:
                    logger.info("The client of %s left during its stream: its generation stopped", completion_id)
                    return
                await send_event(send, protocol.chunk_body(request, finish_reason=event.finish_reason, **ids))
                if request.include_usage:
                    await send_event(send, protocol.usage_chunk(request, finished=event, **ids))
                await self._record(served, request, event.text, completion_id, user)
        except Exception as exc:  # noqa: BLE001  (the status is sent: the error travels as an event)
            logger.exception("Streaming %s failed", completion_id)
            await send_event(send, OpenAIError(500, str(exc), type="server_error").body())
        finally:
            watcher.cancel()
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    async def _record(self, served: services.Served, request: protocol.Request, text: str, completion_id: str,
                      user: Any) -> None:
        """Stored before the answer ends, so a client may score the completion id as soon as it has it."""
        if served.record:
            await self._in_db(services.record_served, served=served, prompt=request.prompt, response=text,
                              completion_id=completion_id, user=user)

    async def _in_db(self, function: Callable[..., T], **kwargs: Any) -> T:
        if self._db is None:
            self._db = ThreadPoolExecutor(4, thread_name_prefix="n3-db")

        def call() -> T:
            close_old_connections()  # a kept connection is checked (and a broken one replaced) before use
            return function(**kwargs)

        return await asyncio.get_running_loop().run_in_executor(self._db, call)


async def watch_disconnect(receive: Callable, pending: Pending) -> None:
    """While a request generates (streaming or not): its body is read, so the next message is the client leaving."""
    while (await receive())["type"] != "http.disconnect":
        pass
    pending.cancelled = True


async def read_json(receive: Callable, limit: int) -> Any:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise OpenAIError(400, "The client went away before its request ended")
        body += message.get("body", b"")
        if len(body) > limit:
            raise OpenAIError(413, f"Request body above {limit} bytes (N3_MAX_BODY_BYTES)", code="too_large")
        if not message.get("more_body", False):
            break
    try:
        return json.loads(body)
    except RecursionError as exc:
        raise OpenAIError(400, "The body's JSON is nested too deeply") from exc
    except ValueError as exc:  # not JSON, not UTF-8, an integer of more than 4,300 digits
        raise OpenAIError(400, f"The body is not JSON: {exc}") from exc


async def respond(send: Callable, status: int, body: Any, headers: Optional[dict[str, str]] = None) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    extra = [(name.encode("latin1"), value.encode("latin1")) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *extra]})
    await send({"type": "http.response.body", "body": data, "more_body": False})


async def send_event(send: Callable, data: Any) -> None:
    payload = b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
    await send({"type": "http.response.body", "body": payload, "more_body": True})


def make_application() -> InferenceApp:
    engine = Engine(max_models=settings.N3_SERVE_MAX_MODELS, max_queue=settings.N3_SERVE_MAX_QUEUE,
                    max_batch=settings.N3_SERVE_MAX_BATCH, batch_wait_s=settings.N3_SERVE_BATCH_WAIT_MS / 1000,
                    device=settings.N3_SERVE_DEVICE)
    return InferenceApp(engine, max_body_bytes=settings.DATA_UPLOAD_MAX_MEMORY_SIZE,
                        max_tokens=settings.N3_SERVE_MAX_TOKENS)
