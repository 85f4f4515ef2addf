"""The JSON bodies `groundup serve` answers with, in OpenAI's shapes: whole responses, the
chunks of a stream, and server-sent events."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from groundup.serve.engine import Generation


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(gen: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


def completion(rid: str, created: int, model: str, gen: Generation) -> dict[str, Any]:
    choice = {"text": gen.text, "index": 0, "logprobs": None, "finish_reason": gen.finish_reason}
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(gen),
    }


def chat_completion(rid: str, created: int, model: str, gen: Generation) -> dict[str, Any]:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": gen.text},
        "logprobs": None,
        "finish_reason": gen.finish_reason,
    }
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(gen),
    }


def completion_chunk(
    rid: str, created: int, model: str, text: str, finish: str | None = None
) -> dict[str, Any]:
    choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
    }


def chat_chunk(
    rid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None
) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [choice],
    }


def usage_chunk(rid: str, created: int, model: str, obj: str, gen: Generation) -> dict[str, Any]:
    """The last chunk when the client asked for `stream_options: {include_usage: true}`."""
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(gen),
    }


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event: `data: ...` and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


def model_card(name: str, created: int, context: int) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "groundup",
        "context_length": context,
    }
