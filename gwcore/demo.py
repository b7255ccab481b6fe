"""The built-in demo model: a canned OpenAI chat answer, so a fresh install serves without any key.

It owns only the shape of the answer (OpenAI chat completion and chunk bytes, with usage). It never
does I/O: the front door writes what it returns. It is off as soon as a real provider is configured.
"""

from __future__ import annotations

import time
import uuid

import orjson

_ANSWER = (
    "Hello from gwcore's built-in demo model. No provider key is configured, so this canned "
    "answer is streamed by the gateway itself. Set OPENAI_API_KEY (or another provider's key) "
    "to talk to a real model."
)


def _prompt_tokens(body: dict) -> int:
    """A rough, deterministic token count: whitespace-separated words of every message's text."""
    words = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            words += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    words += len(part["text"].split())
    return words


def _pieces() -> list[str]:
    words = _ANSWER.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _usage(body: dict) -> dict:
    prompt = _prompt_tokens(body)
    completion = len(_pieces())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def demo_completion(body: dict, model: str) -> bytes:
    """A non-streaming ``chat.completion`` body."""
    return orjson.dumps(
        {
            "id": "chatcmpl-demo-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _ANSWER, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(body),
        }
    )


def demo_stream_events(body: dict, model: str, include_usage: bool) -> list[bytes]:
    """The SSE events (each ``data: ...\\n\\n``) of a streamed answer, ``[DONE]`` last."""
    cid = "chatcmpl-demo-" + uuid.uuid4().hex[:24]
    created = int(time.time())
    usage_field = {"usage": None} if include_usage else {}

    def chunk(delta: dict, finish: str | None) -> bytes:
        obj = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **usage_field,
        }
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""}, None)]
    events.extend(chunk({"content": piece}, None) for piece in _pieces())
    events.append(chunk({}, "stop"))
    if include_usage:
        final = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": _usage(body),
        }
        events.append(b"data: " + orjson.dumps(final) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def demo_usage(body: dict) -> dict:
    """The usage object the demo answer reports (also recorded when the client did not ask)."""
    return _usage(body)
