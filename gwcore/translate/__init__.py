"""Sans-I/O translators between the OpenAI chat dialect and the providers that speak another one.

Each dialect module (``anthropic``, ``gemini``) has the same four parts: ``build_request`` (an
OpenAI chat request dict -> the provider's request bytes, or a 400 ``GatewayError`` that names the
field it cannot honour), ``translate_response`` (a whole provider answer -> OpenAI
``chat.completion`` bytes), a stream translator (parsed SSE events -> OpenAI
``chat.completion.chunk`` SSE bytes) and ``upstream_error`` (a provider error response -> the
client's ``GatewayError``). ``DIALECTS`` maps a provider dialect to them.

This package owns what the dialects share: the chunk framing (``ChunkFormat``: the bytes around a
delta are built once per stream, each event only splices its delta in), the OpenAI usage object,
request field helpers (data URLs, numbers, stop sequences) and the list of request fields every
dialect ignores. It never touches a socket, the event loop or a clock it was not given, and it
never drops a request field silently: a field is translated, listed as a no-op here, or refused.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gwcore.errors import GatewayError

__all__ = [
    "DIALECTS",
    "IGNORED_FIELDS",
    "ChunkFormat",
    "Dialect",
    "bad_request",
    "data_url",
    "dialect",
    "openai_usage",
]

# Request fields that change nothing a provider could be asked for (decided per field, documented
# in the README): OpenAI's own storage/dashboard and routing hints. ``stream_options`` is read for
# ``include_usage`` by the caller and otherwise has no provider equivalent.
IGNORED_FIELDS = frozenset(
    {"model", "stream", "stream_options", "store", "metadata", "service_tier", "prompt_cache_key"}
)

_dumps = orjson.dumps


def bad_request(message: str, param: str | None) -> GatewayError:
    """The 400 a client gets for a field the provider cannot honour (``param`` names it)."""
    return GatewayError(400, message, type="invalid_request_error", param=param)


def unsupported(field: str, provider: str, detail: str = "") -> GatewayError:
    return bad_request(
        f"{field} is not supported when the model is served by {provider}"
        + (f": {detail}" if detail else ""),
        field,
    )


def function_tools(tools: Any, provider: str) -> list[tuple[str, str | None, dict | None]]:
    """OpenAI ``tools`` checked once for every dialect: ``(name, description, parameters)``
    of each function tool; anything a provider cannot honour is a 400 naming the field."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise bad_request("tools must be an array", "tools")
    out = []
    for k, tool in enumerate(tools):
        p = f"tools[{k}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise unsupported(p + ".type", provider, "only function tools can be translated")
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad_request("a function tool needs function.name", p + ".function.name")
        if fn.get("strict"):
            raise unsupported(p + ".function.strict", provider, "schema adherence is not enforced")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise bad_request("function.parameters must be an object", p + ".function.parameters")
        description = fn.get("description")
        out.append((fn["name"], description if isinstance(description, str) else None, params))
    return out


def data_url(url: str, param: str) -> tuple[str, str]:
    """``data:<mime>;base64,<data>`` -> (mime, data). Anything else is a 400 naming ``param``."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise bad_request("a data URL must look like data:<media type>;base64,<data>", param)
    mime = head[5:-7].split(";", 1)[0].strip().lower()
    if not mime or "/" not in mime:
        raise bad_request("the data URL has no media type", param)
    try:  # validate once here rather than let the provider answer with an opaque error
        base64.b64decode(payload[:4096] + "=" * (-len(payload[:4096]) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("the data URL is not valid base64", param) from None
    return mime, payload


def number(body: Mapping[str, Any], field: str, lo: float, hi: float) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise bad_request(f"{field} must be a number from {lo:g} to {hi:g}", field)
    return value


def integer(body: Mapping[str, Any], field: str, lo: int = 1) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise bad_request(f"{field} must be an integer >= {lo}", field)
    return value


def max_tokens(body: Mapping[str, Any]) -> int | None:
    """``max_completion_tokens`` (the current name) or ``max_tokens`` (the deprecated one)."""
    value = integer(body, "max_completion_tokens")
    return value if value is not None else integer(body, "max_tokens")


def stop_sequences(body: Mapping[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop) or None
    raise bad_request("stop must be a string or an array of strings", "stop")


def require_default(body: Mapping[str, Any], field: str, provider: str, *defaults: Any) -> None:
    """A field the provider has no equivalent for: fine at its OpenAI default, else refused."""
    if field in body and body[field] not in defaults:
        raise unsupported(field, provider)


def text_of(content: Any, param: str, allowed: tuple[str, ...] = ("text",)) -> str:
    """The text of a message whose content may only hold text (system, developer, tool)."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise bad_request("content must be a string or an array of content parts", param)
    out = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            raise bad_request(
                f"content parts of this message may only be of type {' or '.join(allowed)}",
                f"{param}[{j}].type",
            )
        value = part.get("text" if kind == "text" else kind)
        if not isinstance(value, str):
            raise bad_request(f"a {kind} part needs a string {kind}", f"{param}[{j}].{kind}")
        out.append(value)
    return "".join(out)


def reasoning_effort(body: Mapping[str, Any], levels: Mapping[str, Any]) -> Any:
    """The dialect's setting for ``reasoning_effort`` (None when absent)."""
    effort = body.get("reasoning_effort")
    if effort is None:
        return None
    if effort not in levels:
        raise bad_request(
            f"reasoning_effort must be one of {', '.join(sorted(levels))}", "reasoning_effort"
        )
    return levels[effort]


def json_arguments(raw: Any, param: str) -> Any:
    """An assistant tool call's ``function.arguments`` (a JSON string) as a value."""
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        raise bad_request("function.arguments must be a JSON string", param)
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("function.arguments is not valid JSON", param) from None
    if not isinstance(value, dict):
        raise bad_request("function.arguments must be a JSON object", param)
    return value


def openai_usage(tokens: Mapping[str, int | None], **prompt_details: int | None) -> dict:
    """OpenAI's ``usage`` object from ``usage_from_*`` token fields. Details the provider did not
    report are left out rather than reported as 0."""
    prompt = tokens.get("prompt_tokens") or 0
    completion = tokens.get("completion_tokens") or 0
    total = tokens.get("total_tokens")
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total if total is not None else prompt + completion,
    }
    cached = tokens.get("cached_tokens")
    details = {} if cached is None else {"cached_tokens": cached}
    details.update({k: v for k, v in prompt_details.items() if v is not None})
    if details:
        usage["prompt_tokens_details"] = details
    if tokens.get("reasoning_tokens") is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": tokens["reasoning_tokens"]}
    return usage


def error_event(exc: GatewayError) -> bytes:
    """The terminal event of a stream that cannot go on (no ``[DONE]`` follows it)."""
    return b"data: " + _dumps(exc.to_dict()) + b"\n\n"


DONE = b"data: [DONE]\n\n"


class ChunkFormat:
    """The bytes of one stream's ``chat.completion.chunk`` events, built around the deltas.

    Everything but the delta (id, object, created, model, choice index, logprobs, finish reason,
    ``"usage":null`` when the client asked for usage) is encoded once per stream; an event is then
    ``head + delta JSON + tail``: one ``orjson.dumps`` of the delta's value per event, no dict.
    """

    __slots__ = (
        "common",
        "content_head",
        "head",
        "reasoning_head",
        "tail",
        "usage_null",
        "value_tail",
    )

    def __init__(self, chunk_id: str, created: int, model: str, include_usage: bool) -> None:
        self.common = (
            b'{"id":'
            + _dumps(chunk_id)
            + b',"object":"chat.completion.chunk","created":'
            + str(int(created)).encode()
            + b',"model":'
            + _dumps(model)
            + b","
        )
        self.usage_null = b',"usage":null' if include_usage else b""
        self.head = b"data: " + self.common + b'"choices":[{"index":0,"delta":'
        self.tail = b',"logprobs":null,"finish_reason":null}]' + self.usage_null + b"}\n\n"
        self.content_head = self.head + b'{"content":'
        self.reasoning_head = self.head + b'{"reasoning_content":'
        self.value_tail = b"}" + self.tail

    def delta(self, delta_json: bytes) -> bytes:
        return self.head + delta_json + self.tail

    def content(self, text: str) -> bytes:
        return self.content_head + _dumps(text) + self.value_tail

    def reasoning(self, text: str) -> bytes:
        return self.reasoning_head + _dumps(text) + self.value_tail

    def role(self) -> bytes:
        return self.head + b'{"role":"assistant","content":""}' + self.tail

    def finish(self, reason: str) -> bytes:
        return (
            self.head
            + b'{},"logprobs":null,"finish_reason":"'
            + reason.encode()
            + b'"}]'
            + self.usage_null
            + b"}\n\n"
        )

    def usage(self, usage: Mapping[str, Any]) -> bytes:
        return b"data: " + self.common + b'"choices":[],"usage":' + _dumps(usage) + b"}\n\n"


def tool_call_delta(
    index: int, call_id: str, name: str, arguments: str, extra: Any = None
) -> bytes:
    call: dict[str, Any] = {
        "index": index,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
    if extra is not None:
        call["extra_content"] = extra
    return _dumps({"tool_calls": [call]})


def completion(
    completion_id: str,
    created: int,
    model: str,
    message: dict[str, Any],
    finish_reason: str,
    usage: Mapping[str, Any] | None,
) -> bytes:
    """A whole OpenAI ``chat.completion`` answer."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(created),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return _dumps(body)


def error_type(status: int) -> str:
    """The OpenAI error type of an upstream error status (the relay's mapping)."""
    if status >= 500:
        return "server_error"
    return {
        401: "authentication_error",
        403: "authentication_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }.get(status, "invalid_request_error")


def bad_upstream(detail: str) -> GatewayError:
    return GatewayError(
        502, f"upstream sent a malformed answer: {detail}", code="upstream_bad_response"
    )


@dataclass(frozen=True, slots=True)
class Dialect:
    """What the gateway needs of one dialect's translation."""

    name: str
    endpoint: Callable[[str, bool], str]  # (upstream model, stream) -> path under the base URL
    build_request: Callable[..., bytes]  # (body, upstream_model, stream) -> request bytes
    translate_response: Callable[..., tuple[bytes, dict]]  # -> (chat.completion bytes, tokens)
    stream_translator: Callable[..., Any]  # (model, *, created, include_usage, fallback_id)
    upstream_error: Callable[[int, bytes], GatewayError]
    forward_headers: frozenset[str] = frozenset()  # client headers passed on to the provider


def _load() -> dict[str, Dialect]:
    from gwcore.translate import anthropic, gemini

    return {"anthropic": anthropic.DIALECT, "gemini": gemini.DIALECT}


DIALECTS: dict[str, Dialect] = {}


def dialect(name: str) -> Dialect | None:
    """The translation for a provider dialect, or None when there is none."""
    if not DIALECTS:
        DIALECTS.update(_load())
    return DIALECTS.get(name)
