"""OpenAI chat <-> Anthropic Messages, sans-I/O.

It owns the request translation (``build_request``), the whole-answer translation
(``translate_response``), the stream translation (``AnthropicStreamTranslator``: parsed SSE events
in, OpenAI ``chat.completion.chunk`` bytes out) and the error shapes. What cannot be honoured is a
400 naming the field; ``max_tokens`` (required by Anthropic) defaults to ``DEFAULT_MAX_TOKENS``.

The stream translator parses each event's data once (orjson) and splices the delta into bytes
prepared once per stream; it keeps no per-event objects beyond that parse and never buffers an
event it could already emit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from gwcore.errors import GatewayError
from gwcore.translate import (
    DONE,
    IGNORED_FIELDS,
    ChunkFormat,
    Dialect,
    bad_request,
    bad_upstream,
    completion,
    data_url,
    error_event,
    error_type,
    function_tools,
    integer,
    json_arguments,
    max_tokens,
    number,
    openai_usage,
    reasoning_effort,
    require_default,
    stop_sequences,
    text_of,
    tool_call_delta,
    unsupported,
)
from gwcore.usage import usage_from_anthropic

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DIALECT",
    "THINKING_BUDGETS",
    "AnthropicStreamTranslator",
    "build_request",
    "translate_response",
    "upstream_error",
]

PROVIDER = "Anthropic"
DEFAULT_MAX_TOKENS = 4096  # sent when the client gives neither max_tokens nor max_completion_tokens
# reasoning_effort -> thinking budget_tokens (Anthropic's minimum is 1024); "none": no thinking.
THINKING_BUDGETS: dict[str, int | None] = {
    "none": None,
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 16384,
}
_MIN_BUDGET = 1024
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_HANDLED = frozenset(
    {
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning_effort",
        "response_format",
        "user",
        "safety_identifier",
    }
)
# Fields Anthropic has no equivalent for: accepted at their OpenAI default only.
_DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "logit_bias": (None, {}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "seed": (None,),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "web_search_options": (None,),
    "functions": (None,),
    "function_call": (None,),
    "verbosity": (None,),
}
# Anthropic error type -> OpenAI error type, for error events inside a stream.
_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "request_too_large": "invalid_request_error",
    "rate_limit_error": "rate_limit_error",
    "api_error": "server_error",
    "overloaded_error": "server_error",
    "timeout_error": "timeout_error",
}

_loads = orjson.loads
_dumps = orjson.dumps


# ------------------------------------------------------------------------------------ request


def endpoint(upstream_model: str, stream: bool) -> str:
    return "/messages"


def build_request(body: Mapping[str, Any], upstream_model: str, stream: bool) -> bytes:
    """An OpenAI chat request -> Anthropic Messages request bytes; 400 for what cannot be done."""
    for key in body:
        if key in _HANDLED or key in IGNORED_FIELDS:
            continue
        if key in _DEFAULT_ONLY:
            require_default(body, key, PROVIDER, *_DEFAULT_ONLY[key])
        else:
            raise bad_request(f"unrecognized request argument: {key}", key)
    system, messages = _messages(body["messages"])
    out: dict[str, Any] = {"model": upstream_model}

    limit = max_tokens(body)
    limit_field = "max_completion_tokens" if body.get("max_completion_tokens") else "max_tokens"
    budget = reasoning_effort(body, THINKING_BUDGETS)
    if budget is not None:
        if limit is None:
            limit = budget + DEFAULT_MAX_TOKENS
        elif limit <= _MIN_BUDGET:
            raise bad_request(
                f"{limit_field} must be greater than {_MIN_BUDGET} with reasoning_effort: "
                "Anthropic's thinking budget (at least 1024 tokens) counts against it",
                limit_field,
            )
        out["max_tokens"] = limit
        out["thinking"] = {"type": "enabled", "budget_tokens": min(budget, limit - 1)}
    else:
        out["max_tokens"] = limit if limit is not None else DEFAULT_MAX_TOKENS
    out["messages"] = messages
    if system:
        out["system"] = system

    temperature = number(body, "temperature", 0, 1)  # Anthropic's range, narrower than OpenAI's
    if temperature is not None:
        out["temperature"] = temperature
    top_p = number(body, "top_p", 0, 1)
    if top_p is not None:
        out["top_p"] = top_p
    top_k = integer(body, "top_k")
    if top_k is not None:
        out["top_k"] = top_k
    stop = stop_sequences(body)
    if stop:
        out["stop_sequences"] = stop

    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise unsupported(
            "response_format",
            PROVIDER,
            "Anthropic has no JSON mode; describe the format in the prompt or use a tool",
        )

    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
    choice = _tool_choice(body)
    if choice is not None:
        out["tool_choice"] = choice

    user = body.get("safety_identifier") or body.get("user")
    if user is not None:
        if not isinstance(user, str):
            raise bad_request("user must be a string", "user")
        out["metadata"] = {"user_id": user}
    if stream:
        out["stream"] = True
    return _dumps(out)


def _messages(messages: Sequence[Any]) -> tuple[list[dict], list[dict]]:
    system: list[dict] = []
    out: list[dict] = []

    def push(role: str, blocks: list[dict]) -> None:
        # Anthropic alternates user/assistant: consecutive turns of one role become one turn.
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for i, msg in enumerate(messages):
        p = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_request("each message must be an object", p)
        role = msg.get("role")
        content = msg.get("content")
        if role in ("system", "developer"):
            text = text_of(content, p + ".content")
            if text:
                system.append({"type": "text", "text": text})
        elif role == "user":
            push("user", _user_blocks(content, p + ".content"))
        elif role == "assistant":
            blocks = []
            text = text_of(content, p + ".content", ("text", "refusal"))
            if text:
                blocks.append({"type": "text", "text": text})
            calls = msg.get("tool_calls")
            if calls:
                if not isinstance(calls, list):
                    raise bad_request("tool_calls must be an array", p + ".tool_calls")
                for j, call in enumerate(calls):
                    blocks.append(_tool_use(call, f"{p}.tool_calls[{j}]"))
            if blocks:
                push("assistant", blocks)
        elif role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise bad_request("a tool message needs its tool_call_id", p + ".tool_call_id")
            result = {
                "type": "tool_result",
                "tool_use_id": call_id,
                "content": text_of(content, p + ".content"),
            }
            push("user", [result])
        elif role == "function":
            raise unsupported(p + ".role", PROVIDER, "function messages are deprecated; use tools")
        else:
            raise bad_request(f"unknown message role {role!r}", p + ".role")
    return system, out


def _user_blocks(content: Any, p: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise bad_request("content must be a string or an array of content parts", p)
    blocks = []
    for j, part in enumerate(content):
        q = f"{p}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad_request("a text part needs a string text", q + ".text")
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), q + ".image_url"))
        elif kind == "file":
            blocks.append(_document(part.get("file"), q + ".file"))
        elif kind == "input_audio":
            raise unsupported(q, PROVIDER, "Anthropic models take no audio input")
        else:
            raise bad_request(f"unsupported content part type {kind!r}", q + ".type")
    return blocks


def _image(image: Any, p: str) -> dict:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise bad_request("image_url needs a url", p + ".url")
    if url.startswith("data:"):
        mime, data = data_url(url, p + ".url")
        if mime not in _IMAGE_TYPES:
            raise bad_request(
                f"Anthropic accepts images of type {', '.join(sorted(_IMAGE_TYPES))}, not {mime}",
                p + ".url",
            )
        return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}}
    if url.startswith("https://"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise bad_request("an image URL must be an https:// URL or a base64 data URL", p + ".url")


def _document(file: Any, p: str) -> dict:
    data = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data, str):
        raise unsupported(p, PROVIDER, "only inline file_data (a base64 data URL) can be sent")
    mime, payload = data_url(data, p + ".file_data")
    if mime != "application/pdf":
        raise bad_request(f"Anthropic accepts PDF documents, not {mime}", p + ".file_data")
    return {"type": "document", "source": {"type": "base64", "media_type": mime, "data": payload}}


def _tool_use(call: Any, p: str) -> dict:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise bad_request("a tool call needs function.name", p + ".function")
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise bad_request("a tool call needs its id", p + ".id")
    args = json_arguments(fn.get("arguments"), p + ".function.arguments")
    return {"type": "tool_use", "id": call_id, "name": fn["name"], "input": args}


def _tools(tools: Any) -> list[dict]:
    return [
        {
            "name": name,
            **({"description": description} if description is not None else {}),
            "input_schema": params or {"type": "object", "properties": {}},
        }
        for name, description, params in function_tools(tools, PROVIDER)
    ]


def _tool_choice(body: Mapping[str, Any]) -> dict | None:
    tc = body.get("tool_choice")
    if tc is None:
        choice = None
    elif tc == "auto":
        choice = {"type": "auto"}
    elif tc == "required":
        choice = {"type": "any"}
    elif tc == "none":
        choice = {"type": "none"}
    elif (
        isinstance(tc, dict)
        and tc.get("type") == "function"
        and isinstance(tc.get("function"), dict)
        and isinstance(tc["function"].get("name"), str)
    ):
        choice = {"type": "tool", "name": tc["function"]["name"]}
    else:
        raise bad_request(
            'tool_choice must be "auto", "required", "none" or a named function', "tool_choice"
        )
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad_request("parallel_tool_calls must be a boolean", "parallel_tool_calls")
    if parallel is False and (choice is None or choice["type"] != "none"):
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    return choice


# ----------------------------------------------------------------------------------- response


def translate_response(
    raw: bytes, model: str, *, created: int, fallback_id: str
) -> tuple[bytes, dict]:
    """A whole Anthropic message -> (OpenAI ``chat.completion`` bytes, token fields)."""
    try:
        msg = _loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_upstream(f"not JSON ({exc})") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("content"), list):
        raise bad_upstream("not an Anthropic message")
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict] = []
    for block in msg["content"]:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "thinking":
            thinking.append(block.get("thinking") or "")
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": _dumps(block.get("input") or {}).decode(),
                    },
                }
            )
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    tokens = usage_from_anthropic(msg)
    usage = _usage(tokens, msg.get("usage"), None)
    finish = STOP_REASONS.get(msg.get("stop_reason"), "stop")
    body = completion(msg.get("id") or fallback_id, created, model, message, finish, usage)
    return body, tokens


def _usage(tokens: Mapping[str, int | None], start: Any, delta: Any) -> dict:
    write = None
    for usage in (delta, start):
        if isinstance(usage, dict) and isinstance(usage.get("cache_creation_input_tokens"), int):
            write = usage["cache_creation_input_tokens"]
            break
    return openai_usage(tokens, cache_creation_tokens=write)


def upstream_error(status: int, raw: bytes) -> GatewayError:
    """An Anthropic error response (``{"type":"error","error":{"type","message"}}``)."""
    err = _error_object(raw)
    message = err.get("message") if err else None
    if not isinstance(message, str) or not message:
        text = raw[:200].decode("utf-8", "replace").strip()
        message = f"upstream returned HTTP {status}" + (f": {text}" if text else "")
    code = err.get("type") if err else None
    return GatewayError(
        status if 400 <= status <= 599 else 502,
        message,
        type=error_type(status),
        code=code if isinstance(code, str) else None,
    )


def _error_object(raw: bytes) -> dict | None:
    try:
        obj = _loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    err = obj.get("error") if isinstance(obj, dict) else None
    return err if isinstance(err, dict) else None


def _stream_error(err: Any) -> GatewayError:
    err = err if isinstance(err, dict) else {}
    kind = err.get("type") if isinstance(err.get("type"), str) else None
    message = err.get("message") if isinstance(err.get("message"), str) else None
    return GatewayError(
        502,
        message or "the upstream stream ended with an error",
        type=_ERROR_TYPES.get(kind or "", "server_error"),
        code=kind,
    )


# ------------------------------------------------------------------------------------- stream


class AnthropicStreamTranslator:
    """Anthropic stream events -> OpenAI chunk bytes, for one response.

    ``feed(events)`` takes the ``(event, data, id)`` tuples of ``EventParser.feed`` and returns the
    bytes to send (possibly ``b""``); ``close()`` is called when the upstream body ended and returns
    the last bytes; ``fail(exc)`` ends the stream with a terminal error event. After ``done`` the
    stream is over (``error`` says whether it failed). ``tokens()`` gives the usage fields seen.
    """

    __slots__ = (
        "_created",
        "_delta_usage",
        "_fallback_id",
        "_finished",
        "_fmt",
        "_include_usage",
        "_model",
        "_start_usage",
        "_tools",
        "done",
        "error",
        "id",
    )

    def __init__(self, model: str, *, created: int, include_usage: bool, fallback_id: str) -> None:
        self._model = model
        self._created = created
        self._include_usage = include_usage
        self._fallback_id = fallback_id
        self._fmt: ChunkFormat | None = None
        self._tools: dict[int, int] = {}  # Anthropic content block index -> OpenAI tool call index
        self._start_usage: Any = None
        self._delta_usage: Any = None
        self._finished = False
        self.id = fallback_id
        self.done = False
        self.error: GatewayError | None = None

    def tokens(self) -> dict[str, int | None]:
        return usage_from_anthropic(self._start_usage, self._delta_usage)

    def feed(self, events: list) -> bytes:
        if self.done or not events:
            return b""
        out: list[bytes] = []
        fmt = self._fmt
        for name, data, _ in events:
            try:
                if name == b"content_block_delta":  # the hot path: one loads, one dumps
                    obj = _loads(data)
                    delta = obj["delta"]
                    kind = delta["type"]
                    if fmt is None:
                        fmt = self._start(None, out)
                    if kind == "text_delta":
                        out.append(fmt.content_head + _dumps(delta["text"]) + fmt.value_tail)
                    elif kind == "thinking_delta":
                        out.append(fmt.reasoning_head + _dumps(delta["thinking"]) + fmt.value_tail)
                    elif kind == "input_json_delta":
                        index = self._tools.get(obj["index"])
                        partial = delta["partial_json"]
                        if index is not None and partial:
                            out.append(
                                fmt.head
                                + b'{"tool_calls":[{"index":%d,"function":{"arguments":%b}}]}'
                                % (index, _dumps(partial))
                                + fmt.tail
                            )
                    # signature_delta, citations_delta: nothing an OpenAI chunk can carry
                    continue
                if name == b"ping":
                    continue
                obj = _loads(data)
                if name is None:  # no event field: the data's own type says what it is
                    name = str(obj.get("type", "")).encode()
                if name == b"message_start":
                    fmt = self._start(obj.get("message"), out)
                elif name == b"content_block_start":
                    if fmt is None:
                        fmt = self._start(None, out)
                    self._block_start(obj, fmt, out)
                elif name == b"message_delta":
                    if fmt is None:
                        fmt = self._start(None, out)
                    usage = obj.get("usage")
                    if isinstance(usage, dict):
                        self._delta_usage = usage  # cumulative: replaces, never adds
                    reason = (obj.get("delta") or {}).get("stop_reason")
                    if reason and not self._finished:
                        self._finished = True
                        out.append(fmt.finish(STOP_REASONS.get(reason, "stop")))
                elif name == b"message_stop":
                    if fmt is None:
                        fmt = self._start(None, out)
                    out.append(self._end(fmt))
                    break
                elif name == b"error":
                    out.append(self.fail(_stream_error(obj.get("error"))))
                    break
                # content_block_stop and event types added later carry nothing to translate
            except (KeyError, TypeError, AttributeError, ValueError) as exc:
                out.append(self.fail(bad_upstream(f"unexpected {name!r} event ({exc!r})")))
                break
        return b"".join(out)

    def close(self) -> bytes:
        """The upstream body ended: a stream without ``message_stop`` was cut short."""
        if self.done:
            return b""
        return self.fail(
            GatewayError(
                502, "upstream ended the stream before message_stop", code="upstream_incomplete"
            )
        )

    def fail(self, exc: GatewayError) -> bytes:
        if self.done:
            return b""
        self.done = True
        self.error = exc
        return error_event(exc)

    # ---- helpers (once per stream or per block, not per delta)

    def _start(self, message: Any, out: list[bytes]) -> ChunkFormat:
        if self._fmt is not None:
            return self._fmt
        if isinstance(message, dict):
            if isinstance(message.get("id"), str) and message["id"]:
                self.id = message["id"]
            self._start_usage = message.get("usage")
        fmt = self._fmt = ChunkFormat(self.id, self._created, self._model, self._include_usage)
        out.append(fmt.role())
        return fmt

    def _block_start(self, obj: dict, fmt: ChunkFormat, out: list[bytes]) -> None:
        block = obj["content_block"]
        kind = block.get("type")
        if kind == "text":
            if block.get("text"):
                out.append(fmt.content(block["text"]))
        elif kind == "thinking":
            if block.get("thinking"):
                out.append(fmt.reasoning(block["thinking"]))
        elif kind == "tool_use":
            index = self._tools[obj["index"]] = len(self._tools)
            out.append(fmt.delta(tool_call_delta(index, block["id"], block["name"], "")))
            if block.get("input"):  # a block may start with its whole input
                args = _dumps(block["input"])
                out.append(
                    fmt.delta(
                        b'{"tool_calls":[{"index":%d,"function":{"arguments":%b}}]}'
                        % (index, _dumps(args.decode()))
                    )
                )
        # redacted_thinking, server tool blocks: nothing the client asked for or could use

    def _end(self, fmt: ChunkFormat) -> bytes:
        self.done = True
        parts = []
        if not self._finished:
            self._finished = True
            parts.append(fmt.finish("stop"))
        if self._include_usage:
            tokens = self.tokens()
            parts.append(fmt.usage(_usage(tokens, self._start_usage, self._delta_usage)))
        parts.append(DONE)
        return b"".join(parts)


DIALECT = Dialect(
    name="anthropic",
    endpoint=endpoint,
    build_request=build_request,
    translate_response=translate_response,
    stream_translator=AnthropicStreamTranslator,
    upstream_error=upstream_error,
    forward_headers=frozenset({"anthropic-beta"}),
)
