"""The OpenAI-compatible HTTP API of one model: /v1/models, /v1/completions, /v1/chat/completions.

Every request is checked in full (fields, model name, prompt length) before it joins the queue,
so a refusal costs no model time; then the one generation worker answers the requests in turn.
Streams are server-sent events of OpenAI's chunks, ended by `data: [DONE]`.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Header
from fastapi.responses import StreamingResponse

from groundup.errors import GroundupError
from groundup.serve import responses as r
from groundup.serve.engine import Engine, Options
from groundup.serve.errors import APIError, error_body, install_handlers
from groundup.serve.schemas import ChatRequest, CompletionRequest, SamplingRequest
from groundup.serve.worker import Ticket, Worker

MAX_STOPS = 4  # as OpenAI


def build_app(engine: Engine, api_key: str | None = None) -> FastAPI:
    """The app serving `engine`; with `api_key`, /v1 wants `Authorization: Bearer <api_key>`."""
    worker = Worker(engine)
    created = r.now()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        worker.close()

    app = FastAPI(title="groundup", lifespan=lifespan)
    app.state.worker = worker
    install_handlers(app)
    router = APIRouter(prefix="/v1", dependencies=[Depends(key_check(api_key))])

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.name, "waiting": worker.waiting}

    @router.get("/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [r.model_card(engine.name, created, engine.block_size)]}

    @router.get("/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        check_model(engine, model_id, param=None)
        return r.model_card(engine.name, created, engine.block_size)

    @router.post("/completions", response_model=None)
    async def completions(body: CompletionRequest) -> Any:
        check_model(engine, body.model)
        refuse_unsupported(body)
        if body.echo or body.logprobs is not None or body.suffix is not None:
            raise APIError(400, "echo, logprobs and suffix are not supported", "echo")
        if body.best_of not in (None, 1):
            raise APIError(400, "best_of must be 1 (one completion per request)", "best_of")
        ids = prompt_ids(engine, body.prompt)
        options = to_options(body, body.max_tokens, engine, ids)
        ticket = worker.submit(ids, options, chat=False)
        rid, stamp = r.new_id("cmpl"), r.now()
        if body.stream:
            return stream(ticket, rid, stamp, engine.name, body, chat=False)
        return r.completion(rid, stamp, engine.name, await answer(ticket))

    @router.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest) -> Any:
        check_model(engine, body.model)
        refuse_unsupported(body)
        if body.logprobs or body.top_logprobs is not None:
            raise APIError(400, "logprobs are not supported", "logprobs")
        ids = chat_ids(engine, body)
        wanted = body.max_completion_tokens or body.max_tokens
        options = to_options(body, wanted, engine, ids)
        ticket = worker.submit(ids, options, chat=True)
        rid, stamp = r.new_id("chatcmpl"), r.now()
        if body.stream:
            return stream(ticket, rid, stamp, engine.name, body, chat=True)
        return r.chat_completion(rid, stamp, engine.name, await answer(ticket))

    app.include_router(router)
    return app


def key_check(api_key: str | None) -> Callable[..., Any]:
    """A dependency that refuses requests without the key (none: lets everything through)."""

    async def check(authorization: str | None = Header(default=None)) -> None:
        if api_key is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            given.strip().encode(), api_key.encode()
        ):
            raise APIError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer KEY' with the key the "
                "server was started with (--api-key)",
                code="invalid_api_key",
            )

    return check


def check_model(engine: Engine, name: str, param: str | None = "model") -> None:
    if name != engine.name:
        raise APIError(
            404,
            f"The model '{name}' does not exist; this server serves '{engine.name}' "
            "(GET /v1/models)",
            param,
            "model_not_found",
        )


def refuse_unsupported(body: SamplingRequest) -> None:
    """Fields we would otherwise ignore, which would change the answer: refused by name."""
    if body.n != 1:
        raise APIError(400, f"n must be 1 (one choice per request), got {body.n}", "n")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) != 0:
            raise APIError(
                400,
                f"{name} is not supported; use repetition_penalty (1.1-1.3) instead",
                name,
            )
    if body.logit_bias:
        raise APIError(400, "logit_bias is not supported", "logit_bias")


def to_options(
    body: SamplingRequest, max_tokens: int | None, engine: Engine, ids: list[int]
) -> Options:
    """The sampling options of a request for prompt `ids`; no max_tokens: up to the context's
    end (where any reply is cut, finish_reason "length")."""
    room = engine.room(ids)
    if room < 1:
        raise APIError(
            400,
            f"the prompt is {len(ids)} tokens and the model's context is {engine.block_size}, "
            "which leaves no room for a reply: shorten it",
            "messages" if isinstance(body, ChatRequest) else "prompt",
            "context_length_exceeded",
        )
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > MAX_STOPS:
        raise APIError(400, f"stop takes up to {MAX_STOPS} strings, got {len(stops)}", "stop")
    try:
        return Options(
            max_new_tokens=room if max_tokens is None else max_tokens,
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=None if body.top_p == 1.0 else body.top_p,
            repetition_penalty=body.repetition_penalty,
            no_repeat_ngram_size=body.no_repeat_ngram_size,
            seed=body.seed,
            stop=tuple(stops),
        )
    except GroundupError as exc:
        raise APIError(400, str(exc)) from None


def prompt_ids(engine: Engine, prompt: str | list[int] | list[str]) -> list[int]:
    """A completion's prompt: text, or token ids of the model's tokenizer."""
    if isinstance(prompt, str):
        return engine.text_ids(prompt)
    if prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) != 1:
            raise APIError(400, "one prompt per request; send the others separately", "prompt")
        return engine.text_ids(str(prompt[0]))
    vocab = engine.tokenizer.vocab_size
    ids = [int(i) for i in prompt]
    if not ids:
        raise APIError(400, "the prompt is an empty list; send a string or token ids", "prompt")
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise APIError(400, f"token id {bad[0]} is outside the vocabulary 0..{vocab - 1}", "prompt")
    return ids


def chat_ids(engine: Engine, body: ChatRequest) -> list[int]:
    """The conversation in the model's chat template, up to the assistant's header."""
    from groundup.finetune.sft import Message

    if body.messages[-1].role == "assistant":
        raise APIError(
            400,
            "the last message is the assistant's; end with a user message (continuing an "
            "assistant message is not supported)",
            "messages",
        )
    roles = {"developer": "system"}  # OpenAI's newer name for the system role
    messages = [Message(roles.get(m.role, m.role), m.text()) for m in body.messages]
    try:
        return engine.chat_ids(messages)
    except GroundupError as exc:
        raise APIError(400, str(exc), "messages") from None


async def answer(ticket: Ticket) -> Any:
    try:
        return await ticket.result()
    except GroundupError as exc:
        raise APIError(400, str(exc)) from None


def stream(
    ticket: Ticket, rid: str, stamp: int, model: str, body: SamplingRequest, chat: bool
) -> StreamingResponse:
    """The reply as server-sent events, piece by piece as the worker makes them."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(text: str | None, finish: str | None = None) -> dict[str, Any]:
        if not chat:
            return r.completion_chunk(rid, stamp, model, text or "", finish)
        delta = {} if text is None else {"content": text}
        return r.chat_chunk(rid, stamp, model, delta, finish)

    async def events() -> AsyncIterator[str]:
        try:
            if chat:  # OpenAI's first chunk names the role
                yield r.sse(r.chat_chunk(rid, stamp, model, {"role": "assistant", "content": ""}))
            async for kind, value in ticket.stream():
                if kind == "text":
                    yield r.sse(chunk(value))
                elif kind == "done":
                    yield r.sse(chunk(None, value.finish_reason))
                    if include_usage:
                        obj = "chat.completion.chunk" if chat else "text_completion"
                        yield r.sse(r.usage_chunk(rid, stamp, model, obj, value))
                else:
                    kind_ = "invalid_request_error" if isinstance(value, GroundupError) else None
                    yield r.sse(error_body(str(value), kind_ or "server_error"))
            yield r.sse("[DONE]")
        finally:
            ticket.cancel()  # a client that left: the worker stops at its next token

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
