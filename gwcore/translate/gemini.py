"""OpenAI chat <-> Gemini ``generateContent`` / ``streamGenerateContent?alt=sse``, sans-I/O.

The native Gemini API, not its OpenAI-compatible endpoint, so that thought parts, thought
signatures, finish reasons and the full ``usageMetadata`` reach the client and the ledger. It owns
the request translation (``build_request``; a field it cannot honour is a 400 naming it), the
whole-answer translation, the stream translation (``GeminiStreamTranslator``: one parsed
``GenerateContentResponse`` per SSE event in, OpenAI chunk bytes out) and the error shapes.

Tool calls: Gemini matches a function response to its call by function name, so the
translation of a ``tool`` message looks the name up from the assistant ``tool_calls`` before it.
A call's thought signature travels in the tool call's
``extra_content.google.thought_signature`` (the convention of Google's own OpenAI-compatible
endpoint) and is sent back when the client returns it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

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
from gwcore.usage import usage_from_gemini

__all__ = [
    "DIALECT",
    "THINKING_BUDGETS",
    "GeminiStreamTranslator",
    "build_request",
    "endpoint",
    "translate_response",
    "upstream_error",
]

PROVIDER = "Gemini"
# reasoning_effort -> thinkingConfig.thinkingBudget ("none": 0, thinking off where the model allows)
THINKING_BUDGETS: dict[str, int] = {
    "none": 0,
    "minimal": 512,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
}
FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
}
# URLs Gemini can read itself (fileData); any other https URL would have to be fetched by us.
_GOOGLE_HOSTED = (
    "https://generativelanguage.googleapis.com/",
    "https://www.youtube.com/",
    "https://youtube.com/",
    "https://youtu.be/",
)
_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}
_HANDLED = frozenset(
    {
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "tools",
        "tool_choice",
        "reasoning_effort",
        "response_format",
        # an end-user id for OpenAI's abuse monitoring: Gemini has no such field and nothing in
        # the answer depends on it
        "user",
        "safety_identifier",
    }
)
_DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "parallel_tool_calls": (None, True),
    "logit_bias": (None, {}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "web_search_options": (None,),
    "functions": (None,),
    "function_call": (None,),
    "verbosity": (None,),
}

_loads = orjson.loads
_dumps = orjson.dumps


# ------------------------------------------------------------------------------------ request


def endpoint(upstream_model: str, stream: bool) -> str:
    name = upstream_model
    if not name.startswith(("models/", "tunedModels/")):
        name = "models/" + name
    name = quote(name, safe="/-._~")
    return f"/{name}:streamGenerateContent?alt=sse" if stream else f"/{name}:generateContent"


def build_request(body: Mapping[str, Any], upstream_model: str, stream: bool) -> bytes:
    """An OpenAI chat request -> a Gemini ``GenerateContentRequest`` (the model is in the path)."""
    for key in body:
        if key in _HANDLED or key in IGNORED_FIELDS:
            continue
        if key in _DEFAULT_ONLY:
            require_default(body, key, PROVIDER, *_DEFAULT_ONLY[key])
        else:
            raise bad_request(f"unrecognized request argument: {key}", key)
    system, contents = _contents(body["messages"])
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = [{"functionDeclarations": tools}]
    choice = _tool_choice(body.get("tool_choice"))
    if choice is not None:
        out["toolConfig"] = {"functionCallingConfig": choice}

    config: dict[str, Any] = {}
    limit = max_tokens(body)
    if limit is not None:
        config["maxOutputTokens"] = limit
    for field, key, lo, hi in (
        ("temperature", "temperature", 0, 2),
        ("top_p", "topP", 0, 1),
        ("presence_penalty", "presencePenalty", -2, 2),
        ("frequency_penalty", "frequencyPenalty", -2, 2),
    ):
        value = number(body, field, lo, hi)
        if value is not None:
            config[key] = value
    top_k = integer(body, "top_k")
    if top_k is not None:
        config["topK"] = top_k
    seed = integer(body, "seed", -(2**31))
    if seed is not None:
        config["seed"] = seed
    stop = stop_sequences(body)
    if stop:
        config["stopSequences"] = stop
    config.update(_response_format(body.get("response_format")))
    budget = reasoning_effort(body, THINKING_BUDGETS)
    if budget is not None:
        config["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": budget != 0}
    if config:
        out["generationConfig"] = config
    return _dumps(out)


def _contents(messages: Sequence[Any]) -> tuple[list[dict], list[dict]]:
    system: list[dict] = []
    out: list[dict] = []
    names: dict[str, str] = {}  # tool call id -> function name (Gemini answers calls by name)

    def push(role: str, parts: list[dict]) -> None:
        if out and out[-1]["role"] == role:
            out[-1]["parts"].extend(parts)
        else:
            out.append({"role": role, "parts": parts})

    for i, msg in enumerate(messages):
        p = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_request("each message must be an object", p)
        role = msg.get("role")
        content = msg.get("content")
        if role in ("system", "developer"):
            text = text_of(content, p + ".content")
            if text:
                system.append({"text": text})
        elif role == "user":
            push("user", _user_parts(content, p + ".content"))
        elif role == "assistant":
            parts = []
            text = text_of(content, p + ".content", ("text", "refusal"))
            if text:
                parts.append({"text": text})
            calls = msg.get("tool_calls")
            if calls:
                if not isinstance(calls, list):
                    raise bad_request("tool_calls must be an array", p + ".tool_calls")
                for j, call in enumerate(calls):
                    parts.append(_function_call(call, f"{p}.tool_calls[{j}]", names))
            if parts:
                push("model", parts)
        elif role == "tool":
            call_id = msg.get("tool_call_id")
            name = names.get(call_id) if isinstance(call_id, str) else None
            if name is None:
                raise bad_request(
                    "a tool message must answer a tool call of an earlier assistant message "
                    "(Gemini matches results to calls by function name)",
                    p + ".tool_call_id",
                )
            text = text_of(content, p + ".content")
            try:
                value = _loads(text)
            except orjson.JSONDecodeError:
                value = text
            # Gemini wants an object: a JSON object result as is, anything else as "output"
            response = value if isinstance(value, dict) else {"output": value}
            push("user", [{"functionResponse": {"name": name, "response": response}}])
        elif role == "function":
            raise unsupported(p + ".role", PROVIDER, "function messages are deprecated; use tools")
        else:
            raise bad_request(f"unknown message role {role!r}", p + ".role")
    return system, out


def _user_parts(content: Any, p: str) -> list[dict]:
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise bad_request("content must be a string or an array of content parts", p)
    parts = []
    for j, part in enumerate(content):
        q = f"{p}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad_request("a text part needs a string text", q + ".text")
            parts.append({"text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(_media(url, q + ".image_url.url"))
        elif kind == "input_audio":
            audio = part.get("input_audio")
            fmt = audio.get("format") if isinstance(audio, dict) else None
            data = audio.get("data") if isinstance(audio, dict) else None
            if fmt not in _AUDIO_TYPES or not isinstance(data, str):
                raise bad_request(
                    "input_audio needs base64 data and a format of wav or mp3", q + ".input_audio"
                )
            parts.append({"inlineData": {"mimeType": _AUDIO_TYPES[fmt], "data": data}})
        elif kind == "file":
            file = part.get("file")
            data = file.get("file_data") if isinstance(file, dict) else None
            if not isinstance(data, str):
                raise unsupported(q + ".file", PROVIDER, "only inline file_data can be sent")
            parts.append(_media(data, q + ".file.file_data"))
        else:
            raise bad_request(f"unsupported content part type {kind!r}", q + ".type")
    return parts


def _media(url: Any, p: str) -> dict:
    if not isinstance(url, str):
        raise bad_request("a URL is required", p)
    if url.startswith("data:"):
        mime, data = data_url(url, p)
        return {"inlineData": {"mimeType": mime, "data": data}}
    if url.startswith(_GOOGLE_HOSTED):
        return {"fileData": {"fileUri": url}}
    raise bad_request(
        "Gemini reads only files it hosts (Files API URIs, YouTube); send other images as a "
        "base64 data URL",
        p,
    )


def _function_call(call: Any, p: str, names: dict[str, str]) -> dict:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise bad_request("a tool call needs function.name", p + ".function")
    call_id = call.get("id")
    if isinstance(call_id, str):
        names[call_id] = fn["name"]
    args = json_arguments(fn.get("arguments"), p + ".function.arguments")
    part: dict[str, Any] = {"functionCall": {"name": fn["name"], "args": args}}
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    if isinstance(signature, str):
        part["thoughtSignature"] = signature
    return part


def _tools(tools: Any) -> list[dict]:
    out = []
    for name, description, params in function_tools(tools, PROVIDER):
        entry: dict[str, Any] = {"name": name}
        if description is not None:
            entry["description"] = description
        if params:
            entry["parametersJsonSchema"] = params  # full JSON Schema, not the OpenAPI subset
        out.append(entry)
    return out


def _tool_choice(tc: Any) -> dict | None:
    if tc is None:
        return None
    if tc == "auto":
        return {"mode": "AUTO"}
    if tc == "required":
        return {"mode": "ANY"}
    if tc == "none":
        return {"mode": "NONE"}
    if (
        isinstance(tc, dict)
        and tc.get("type") == "function"
        and isinstance(tc.get("function"), dict)
        and isinstance(tc["function"].get("name"), str)
    ):
        return {"mode": "ANY", "allowedFunctionNames": [tc["function"]["name"]]}
    raise bad_request(
        'tool_choice must be "auto", "required", "none" or a named function', "tool_choice"
    )


def _response_format(fmt: Any) -> dict:
    if fmt is None:
        return {}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad_request(
                "response_format.json_schema.schema must be an object",
                "response_format.json_schema.schema",
            )
        return {"responseMimeType": "application/json", "responseJsonSchema": schema}
    raise bad_request(
        "response_format.type must be text, json_object or json_schema", "response_format.type"
    )


# ----------------------------------------------------------------------------------- response


def _finish(reason: Any, tool_calls: bool) -> str:
    finish = FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if tool_calls and finish == "stop" else finish


def _call(part: dict, index: int, prefix: str) -> tuple[str, str, str, Any]:
    """(id, name, arguments JSON, extra_content) of a functionCall part."""
    fc = part["functionCall"]
    call_id = fc.get("id") or f"{prefix}{index}"
    args = _dumps(fc.get("args") or {}).decode()
    signature = part.get("thoughtSignature")
    extra = {"google": {"thought_signature": signature}} if signature else None
    return call_id, fc["name"], args, extra


def _call_prefix(fallback_id: str) -> str:
    return "call_" + fallback_id.removeprefix("chatcmpl-") + "_"


def translate_response(
    raw: bytes, model: str, *, created: int, fallback_id: str
) -> tuple[bytes, dict]:
    """A whole ``GenerateContentResponse`` -> (OpenAI ``chat.completion`` bytes, token fields)."""
    try:
        obj = _loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_upstream(f"not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise bad_upstream("not a GenerateContentResponse")
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict] = []
    candidates = obj.get("candidates") or []
    prefix = _call_prefix(fallback_id)
    try:
        if candidates:
            cand = candidates[0]
            for part in (cand.get("content") or {}).get("parts") or ():
                if "text" in part:
                    (thoughts if part.get("thought") else texts).append(part["text"])
                elif "functionCall" in part:
                    call_id, name, args, extra = _call(part, len(calls), prefix)
                    call = {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": args},
                    }
                    if extra:
                        call["extra_content"] = extra
                    calls.append(call)
            finish = _finish(cand.get("finishReason"), bool(calls))
        else:  # the prompt itself was blocked
            finish = "content_filter"
    except (KeyError, TypeError, AttributeError) as exc:
        raise bad_upstream(f"unexpected candidate ({exc!r})") from None
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if calls:
        message["tool_calls"] = calls
    tokens = usage_from_gemini(obj.get("usageMetadata"))
    usage = openai_usage(tokens) if obj.get("usageMetadata") else None
    body = completion(obj.get("responseId") or fallback_id, created, model, message, finish, usage)
    return body, tokens


def upstream_error(status: int, raw: bytes) -> GatewayError:
    """A Gemini error response (``{"error":{"code","message","status"}}``, or a list of one)."""
    err = _error_object(raw)
    message = err.get("message") if err else None
    if not isinstance(message, str) or not message:
        text = raw[:200].decode("utf-8", "replace").strip()
        message = f"upstream returned HTTP {status}" + (f": {text}" if text else "")
    code = err.get("status") if err else None
    return GatewayError(
        status if 400 <= status <= 599 else 502,
        message,
        type=error_type(status),
        code=code if isinstance(code, str) else None,
    )


def _error_object(raw: Any) -> dict | None:
    try:
        obj = _loads(raw) if isinstance(raw, bytes) and raw else raw
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, list) and obj:
        obj = obj[0]
    err = obj.get("error") if isinstance(obj, dict) else None
    return err if isinstance(err, dict) else None


def _stream_error(obj: dict) -> GatewayError:
    err = _error_object(obj) or {}
    code = err.get("code")
    status = code if isinstance(code, int) and 400 <= code <= 599 else 502
    message = err.get("message") if isinstance(err.get("message"), str) else None
    return GatewayError(
        502,
        message or "the upstream stream ended with an error",
        type=error_type(status),
        code=err.get("status") if isinstance(err.get("status"), str) else None,
    )


# ------------------------------------------------------------------------------------- stream


class GeminiStreamTranslator:
    """Gemini ``alt=sse`` events (each a whole ``GenerateContentResponse``) -> OpenAI chunk bytes.

    Same interface as ``AnthropicStreamTranslator``: ``feed(events)``, ``close()`` at the end of
    the upstream body, ``fail(exc)``, ``done``, ``error``, ``tokens()``. A Gemini stream has no end
    event: the end of the body ends it (a last event without a finish reason finishes as "stop").
    """

    __slots__ = (
        "_call_prefix",
        "_calls",
        "_created",
        "_finished",
        "_fmt",
        "_include_usage",
        "_model",
        "_usage",
        "done",
        "error",
        "id",
    )

    def __init__(self, model: str, *, created: int, include_usage: bool, fallback_id: str) -> None:
        self._model = model
        self._created = created
        self._include_usage = include_usage
        self._call_prefix = _call_prefix(fallback_id)
        self._fmt: ChunkFormat | None = None
        self._calls = 0
        self._usage: Any = None
        self._finished = False
        self.id = fallback_id
        self.done = False
        self.error: GatewayError | None = None

    def tokens(self) -> dict[str, int | None]:
        return usage_from_gemini(self._usage)

    def feed(self, events: list) -> bytes:
        if self.done or not events:
            return b""
        out: list[bytes] = []
        for _name, data, _ in events:
            try:
                obj = _loads(data)
                if "error" in obj:
                    out.append(self.fail(_stream_error(obj)))
                    break
                fmt = self._fmt
                if fmt is None:
                    fmt = self._start(obj, out)
                usage = obj.get("usageMetadata")
                if usage is not None:
                    self._usage = usage  # cumulative: the last one counts
                candidates = obj.get("candidates")
                if not candidates:
                    feedback = obj.get("promptFeedback")
                    if feedback and feedback.get("blockReason") and not self._finished:
                        self._finished = True
                        out.append(fmt.finish("content_filter"))
                    continue
                cand = candidates[0]
                content = cand.get("content")
                if content:
                    for part in content.get("parts") or ():
                        if "text" in part:
                            text = part["text"]
                            if text:
                                if part.get("thought"):
                                    out.append(fmt.reasoning_head + _dumps(text) + fmt.value_tail)
                                else:
                                    out.append(fmt.content_head + _dumps(text) + fmt.value_tail)
                        elif "functionCall" in part:
                            call_id, name, args, extra = _call(part, self._calls, self._call_prefix)
                            out.append(
                                fmt.delta(tool_call_delta(self._calls, call_id, name, args, extra))
                            )
                            self._calls += 1
                        # executable code, inline media: no chat.completion.chunk field for them
                reason = cand.get("finishReason")
                if reason and not self._finished:
                    self._finished = True
                    out.append(fmt.finish(_finish(reason, self._calls > 0)))
            except (KeyError, TypeError, AttributeError, ValueError) as exc:
                out.append(self.fail(bad_upstream(f"unexpected event ({exc!r})")))
                break
        return b"".join(out)

    def close(self) -> bytes:
        """The upstream body ended: the stream is complete."""
        if self.done:
            return b""
        out: list[bytes] = []
        fmt = self._fmt if self._fmt is not None else self._start({}, out)
        self.done = True
        if not self._finished:
            self._finished = True
            out.append(fmt.finish(_finish("STOP", self._calls > 0)))
        if self._include_usage:
            out.append(fmt.usage(openai_usage(self.tokens())))
        out.append(DONE)
        return b"".join(out)

    def fail(self, exc: GatewayError) -> bytes:
        if self.done:
            return b""
        self.done = True
        self.error = exc
        return error_event(exc)

    def _start(self, obj: dict, out: list[bytes]) -> ChunkFormat:
        response_id = obj.get("responseId")
        if isinstance(response_id, str) and response_id:
            self.id = response_id
        fmt = self._fmt = ChunkFormat(self.id, self._created, self._model, self._include_usage)
        out.append(fmt.role())
        return fmt


DIALECT = Dialect(
    name="gemini",
    endpoint=endpoint,
    build_request=build_request,
    translate_response=translate_response,
    stream_translator=GeminiStreamTranslator,
    upstream_error=upstream_error,
)
