"""The HTTP server (`ortgen serve`, the `serve` extra): thin Starlette handlers that parse and
validate a request and hand it to the engine. OpenAI-style completions (SSE streaming), the
text-generation `/generate` shape, health, Prometheus metrics; `_error` maps errors to statuses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
import time
import typing
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ortgen.api_schema import (
    COMPLETION_TYPES,
    OPTION_TYPES,
    ApiError,
    check_value,
    completion_options,
    fields_of,
    prompt_ids,
    refuse_unsupported,
)
from ortgen.engine import Engine, EngineLimits, Piece
from ortgen.engine import Request as EngineRequest
from ortgen.errors import (
    EngineClosedError,
    OrtgenError,
    OverloadedError,
    RequestCancelledError,
    RequestTimeoutError,
    first_line,
)
from ortgen.generator import Generator
from ortgen.session import SHORT_SPIN_US

log = logging.getLogger("uvicorn.error.ortgen")  # shown with uvicorn's own lines
DRAIN_SECONDS = 10  # on SIGTERM / Ctrl-C: in-flight requests get this long, then are cancelled
RETRY_AFTER = "1"  # seconds a refused (429) client is asked to wait


def _error(request: Request, err: Exception) -> JSONResponse:
    """The one place errors become status codes, in OpenAI's error shape."""
    status, headers, param = 500, {}, getattr(err, "param", None)
    if isinstance(err, ApiError):
        status = err.status
    elif isinstance(err, EngineClosedError):
        status = 503
    elif isinstance(err, OverloadedError):
        status, headers = 429, {"Retry-After": RETRY_AFTER}
    elif isinstance(err, RequestTimeoutError):
        status = 504
    elif isinstance(err, OrtgenError):  # invalid options, prompt too long, bad input
        status = 400
    else:
        log.exception("internal error")
    kind = "invalid_request_error" if status < 500 else "server_error"
    message = str(err) if status != 500 else f"internal error: {first_line(err)}"
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def _error_event(err: Exception) -> dict:
    """An error after a stream began: one SSE event in the same shape."""
    return {"data": _error(None, err).body.decode()}  # type: ignore[arg-type]


class Service:
    """What the handlers share: the engine once the model has loaded (in the background)."""

    def __init__(
        self,
        folder: Path | None,
        limits: EngineLimits,
        threads: int | None,
        spin: bool | int = SHORT_SPIN_US,
        device: str = "cpu",
    ) -> None:
        self.folder, self.limits, self.threads, self.spin = folder, limits, threads, spin
        self.device = device
        self.engine: Engine | None = None
        self.load_error: Exception | None = None
        self.on_load_error = lambda: None  # the server's way to stop when loading fails
        self.model_id = folder.name if folder is not None else "ortgen-default"

    def load(self) -> None:
        try:
            generator = Generator.from_dir(
                self.folder, device=self.device, threads=self.threads, spin=self.spin
            )
            self.engine = Engine(generator, self.limits)
            log.info("model %s loaded: ready", self.model_id)
        except Exception as err:
            self.load_error = err
            log.error("cannot load the model: %s", first_line(err))
            self.on_load_error()

    def ready(self) -> Engine:
        if self.engine is None:
            raise ApiError(503, "the model is still loading: retry in a moment")
        return self.engine


async def _json_object(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


# ---- handlers ---------------------------------------------------------------------------------


def _submit_all(engine: Engine, prompts: list, options: dict) -> list[EngineRequest]:
    """Submit every prompt, or none: a refusal cancels those already queued."""
    requests: list[EngineRequest] = []
    try:
        for prompt in prompts:
            requests.append(engine.aio.submit(prompt, **options))
    except BaseException:
        for request in requests:
            request.cancel()
        raise
    return requests


async def _pieces(requests: list[EngineRequest]) -> AsyncIterator[tuple[int, Piece]]:
    """(request index, piece) from every request as they come; stopping cancels them all."""
    if len(requests) == 1:  # the common case, without a task and a queue per piece
        async with contextlib.aclosing(aiter(requests[0])) as pieces:  # closing it cancels
            async for piece in pieces:
                yield 0, piece
        return
    out: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, request: EngineRequest) -> None:
        try:
            async for piece in request:
                out.put_nowait((i, piece))
            out.put_nowait((i, None))
        except Exception as err:
            out.put_nowait((i, err))

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
    try:
        for _ in range(len(requests)):
            while (item := await out.get())[1] is not None:
                if isinstance(item[1], Exception):
                    raise item[1]
                yield item
    finally:
        for task in tasks:
            task.cancel()


async def _unless_disconnected(request: Request, work: typing.Awaitable) -> Any:
    """`work`'s result; cancelled (freeing its rows) if the client goes away first."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    watcher.cancel()
    if not task.done():
        task.cancel()
        raise RequestCancelledError("the client disconnected")
    return task.result()


async def _drain(requests: list[EngineRequest]) -> None:
    async for _ in _pieces(requests):
        pass


async def completions(request: Request) -> Response:
    service: Service = request.app.state.service
    engine = service.ready()
    f = fields_of(await _json_object(request), COMPLETION_TYPES)
    if "prompt" not in f or "model" not in f:
        raise ApiError(400, "model and prompt are required", "prompt")
    refuse_unsupported(f)
    options = completion_options(f)
    prompts = prompt_ids(f["prompt"], engine.generator)
    requests = _submit_all(engine, prompts, options)
    n, echo = options["num_return_sequences"], bool(f.get("echo"))
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion"}
    head |= {"created": int(time.time()), "model": service.model_id}
    prefix = [engine.generator.tokenizer.decode(p) if echo else "" for p in prompts]
    if f.get("stream"):
        usage = bool((f.get("stream_options") or {}).get("include_usage"))
        events = _stream_events(requests, head, n, prefix, usage)
        return EventSourceResponse(events, ping=15)
    await _unless_disconnected(request, _drain(requests))
    choices = [
        {"text": prefix[i] + c.text, "index": i * n + j, "logprobs": None}
        | {"finish_reason": c.finish_reason}
        for i, r in enumerate(requests)
        for j, c in enumerate(r.completion().choices)
    ]
    return JSONResponse(head | {"choices": choices, "usage": _usage(requests)})


def _usage(requests: list[EngineRequest]) -> dict:
    prompt = sum(len(r.prompt_ids) for r in requests)
    completion = sum(len(s.ids) for r in requests for s in r.sequences)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _stream_events(requests, head: dict, n: int, prefix: list[str], usage: bool):
    """SSE events: a chunk per piece, the usage chunk if asked, then [DONE]."""

    def chunk(index: int, text: str, reason: str | None) -> dict:
        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": reason}
        return {"data": json.dumps(head | {"choices": [choice]})}

    for i, text in enumerate(prefix):  # echo: the prompts come first
        for j in range(n if text else 0):
            yield chunk(i * n + j, text, None)
    try:
        async for i, piece in _pieces(requests):
            yield chunk(i * n + piece.index, piece.text, piece.finish_reason)
        if usage:
            yield {"data": json.dumps(head | {"choices": [], "usage": _usage(requests)})}
    except OrtgenError as err:  # a timeout or shutdown after the stream began
        yield _error_event(err)
    yield {"data": "[DONE]"}


async def generate(request: Request) -> Response:
    """`{"inputs": …, "parameters": {…}}` → `[{"generated_text": …}]` (prompt included unless
    parameters.return_full_text is false); the model folder's defaults apply."""
    service: Service = request.app.state.service
    engine = service.ready()
    body = fields_of(await _json_object(request), {"inputs": str | list, "parameters": dict | None})
    parameters = dict(body.get("parameters") or {})
    full_text = check_value("return_full_text", parameters.pop("return_full_text", True), bool)
    options = fields_of(parameters, OPTION_TYPES)
    inputs = body.get("inputs")
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "inputs must be text or a list of texts", "inputs")
    requests = _submit_all(engine, texts, options)
    await _unless_disconnected(request, _drain(requests))
    results = [
        [{"generated_text": (t if full_text else "") + c.text} for c in r.completion().choices]
        for t, r in zip(texts, requests, strict=True)
    ]
    return JSONResponse(results[0] if isinstance(inputs, str) else results)


async def models(request: Request) -> Response:
    service: Service = request.app.state.service
    model = {"id": service.model_id, "object": "model", "created": 0, "owned_by": "ortgen"}
    return JSONResponse({"object": "list", "data": [model]})


async def health(request: Request) -> Response:
    ready = request.app.state.service.engine is not None
    return JSONResponse({"status": "ok" if ready else "loading"}, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    engine = request.app.state.service.ready()
    body, content_type = engine.metrics.text()
    return Response(body, media_type=content_type)


def create_app(service: Service) -> Starlette:
    """The application; the model loads in a background thread once the server is up."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        threading.Thread(target=service.load, name="ortgen-load", daemon=True).start()
        yield
        if service.engine is not None:
            await asyncio.to_thread(service.engine.close, True)

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/generate", generate, methods=["POST"]),
        Route("/v1/models", models),
        Route("/health", health),
        Route("/metrics", metrics),
    ]
    handlers = {ApiError: _error, OrtgenError: _error, Exception: _error}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.service = service
    return app


def serve(
    folder: Path | None,
    host: str,
    port: int,
    limits: EngineLimits,
    threads: int | None,
    spin: bool | int = SHORT_SPIN_US,
    device: str = "cpu",
):
    """Run until SIGTERM / Ctrl-C: then stop accepting, let in-flight requests finish for up to
    DRAIN_SECONDS (cancel the rest), and return normally."""
    import uvicorn

    service = Service(folder, limits, threads, spin, device)
    config = uvicorn.Config(
        create_app(service), host=host, port=port, timeout_graceful_shutdown=DRAIN_SECONDS
    )
    server = uvicorn.Server(config)
    service.on_load_error = lambda: setattr(server, "should_exit", True)
    # uvicorn re-raises the signal that stopped it once it is done; a clean stop exits 0.
    handlers = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if service.load_error is not None:
        raise service.load_error
