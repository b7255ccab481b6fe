"""``chat_request_fields``, the three members of a chat request body the gateway reads (model,
stream, whether stream_options asks for usage) with the whole body checked as JSON, without
orjson, over both implementations. The contract: whenever it answers, orjson reads the same body
as a JSON object with exactly these values (``reference``); when it does not (None), the gateway
reads the body with orjson, whose errors the client gets. What is plain must be taken (the
generated documents below, SDK-shaped bodies); the compiled function and its twin agree on every
input, plain or not.
"""

from __future__ import annotations

import json
import os
import random

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("GWCORE_HYPOTHESIS_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=3 * EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

SDK_BODY = (
    b'{"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", '
    b'"content": "Say hello in one word. \\u00e9t\\u00e9 \\"quoted\\" \\\\ \\/ \\n\\t"}], '
    b'"model": "gpt-4o-mini", "max_tokens": 16, "temperature": 0.7, "top_p": 1e-05, '
    b'"stop": null, "logprobs": false, "stream": true, "n": -1, "metadata": {}, "tools": []}'
)


def reference(raw: bytes) -> tuple[str, bool, bool] | None:
    """What the gateway's orjson path reads from ``raw``: None where it answers an error or must
    rewrite the body (stream_options without ``include_usage: true``)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    model = body.get("model")
    messages = body.get("messages")
    stream = body.get("stream", False)
    if not isinstance(model, str) or not model or not isinstance(messages, list) or not messages:
        return None
    if stream is not None and not isinstance(stream, bool):
        return None
    asked = False
    if "stream_options" in body:
        options = body["stream_options"]
        if not (isinstance(options, dict) and options.get("include_usage") is True):
            return None
        asked = True
    return model, bool(stream), asked


def check(sse, raw: bytes) -> tuple | None:
    got = sse.chat_request_fields(raw)
    if got is not None:
        assert got == reference(raw), raw
        assert type(got[0]) is str and type(got[1]) is bool and type(got[2]) is bool
    return got


# ---- fixed cases -----------------------------------------------------------------------------

BASE = b'{"model":"m","messages":[{"role":"user","content":"hi"}]'

TAKEN = [
    (BASE + b"}", ("m", False, False)),
    (BASE + b',"stream":true}', ("m", True, False)),
    (BASE + b',"stream":false}', ("m", False, False)),
    (BASE + b',"stream":null}', ("m", False, False)),
    (BASE + b',"stream":true,"stream_options":{"include_usage":true}}', ("m", True, True)),
    (BASE + b',"stream_options":{"include_usage":false,"include_usage":true}}', ("m", False, True)),
    (b' \t\r\n{ "messages" : [ 1 ] , "model" : "a/b:c" } \n', ("a/b:c", False, False)),
    (BASE + b',"model":"second","stream":true,"stream":false}', ("second", False, False)),
    (BASE + b',"x":"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"}', ("m", False, False)),
    (BASE + b',"x":"\\u00e9\\u20ac\\uFFFF\\u0000"}', ("m", False, False)),
    (BASE + b',"n":[0,-0,1.5,-2.25e-3,1E+10,12345678901234567890123]}', ("m", False, False)),
    (BASE + b',"d":' + b"[" * 30 + b"]" * 30 + b"}", ("m", False, False)),
    (SDK_BODY, ("gpt-4o-mini", True, False)),
]

REFUSED = [
    b"",
    b"[]",
    b"null",
    b"\xef\xbb\xbf" + BASE + b"}",  # a byte order mark (orjson refuses it)
    BASE,  # unfinished
    BASE + b"}x",
    BASE + b",}",
    BASE + b"}}",
    b'{"messages":[1]}',  # no model
    b'{"model":"","messages":[1]}',
    b'{"model":1,"messages":[1]}',
    b'{"model":"m"}',  # no messages
    b'{"model":"m","messages":[]}',
    b'{"model":"m","messages":{}}',
    BASE + b',"stream":"yes"}',
    BASE + b',"stream":1}',
    BASE + b',"stream_options":null}',  # the gateway rewrites these
    BASE + b',"stream_options":{}}',
    BASE + b',"stream_options":{"include_usage":1}}',
    BASE + b',"stream_options":{"include_usage":true,"include_usage":false}}',
    b'{"mod\\u0065l":"m","messages":[1]}',  # an escaped key could spell "model"
    BASE + b',"\xc3\xa9":1}',  # a key beyond ASCII: not plain
    BASE + b',"stream_options":{"include\\u005fusage":true}}',
    b'{"model":"\\u006d","messages":[1]}',  # an escaped model: left to orjson
    b'{"model":"caf\xc3\xa9","messages":[1]}',
    BASE + b',"x":"\\ud83d\\ude00"}',  # a surrogate pair: left to orjson
    BASE + b',"x":"\\ud800"}',
    BASE + b',"x":"\\udc00"}',
    BASE + b',"x":"\\u12"}',
    BASE + b',"x":"\\x"}',
    BASE + b',"x":"\xed\xa0\x80"}',  # a UTF-8 surrogate
    BASE + b',"x":"\xc0\xaf"}',  # overlong
    BASE + b',"x":"\xe0\x80\xaf"}',
    BASE + b',"x":"\xf4\x90\x80\x80"}',  # above U+10FFFF
    BASE + b',"x":"\xc3"}',
    BASE + b',"x":"\xff"}',
    BASE + b',"x":"a\x1fb"}',  # a control character
    BASE + b',"x":"a\x7fb"}',  # DEL (orjson takes it; not plain)
    BASE + b',"x":"a\x00b"}',
    BASE + b',"x":1e400}',  # infinite for orjson
    BASE + b',"x":1e100}',  # a three-digit exponent: not plain
    BASE + b',"x":1234567890123456789012345}',  # longer than 24 bytes
    BASE + b',"x":01}',
    BASE + b',"x":1.}',
    BASE + b',"x":.5}',
    BASE + b',"x":-}',
    BASE + b',"x":1e}',
    BASE + b',"x":+1}',
    BASE + b',"x":NaN}',
    BASE + b',"x":tru}',
    BASE + b',"x":nul}',
    BASE + b',"x":fals}',
    BASE + b',"x":[1,]}',
    BASE + b',"x":{"a"}}',
    BASE + b',"x":{"a":1,}}',
    BASE + b',"x":{1:2}}',
    BASE + b',"d":' + b"[" * 32 + b"]" * 32 + b"}",  # deeper than plain
    BASE + b"\x00}",
    b'{"model":"m","messages":[1]}\x00',
]


@pytest.mark.parametrize("raw,expected", TAKEN)
def test_taken(sse, raw, expected):
    assert check(sse, raw) == expected


@pytest.mark.parametrize("raw", REFUSED)
def test_refused(sse, raw):
    assert sse.chat_request_fields(raw) is None


def test_every_prefix_of_a_body(sse_pair):
    """Truncated anywhere, a body is refused (only the whole one is an object), by both."""
    compiled, twin = sse_pair
    for raw in (SDK_BODY, TAKEN[8][0], TAKEN[9][0]):
        for end in range(len(raw)):
            assert compiled.chat_request_fields(raw[:end]) is None
            assert twin.chat_request_fields(raw[:end]) is None


# ---- generated documents -----------------------------------------------------------------------

# Text plain in either encoding: no DEL (not plain, though orjson takes it), no surrogate
# (json.dumps writes an astral character as a surrogate pair when ensure_ascii); a control
# character is escaped by json.dumps, plain too.
TEXT = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x7f", max_codepoint=0xFFFF),
    max_size=40,
)
NUMBERS = st.integers(-(10**18), 10**18) | st.floats(
    -1e15, 1e15, allow_nan=False, allow_infinity=False
).filter(lambda f: f == 0 or abs(f) > 1e-90)
# Keys of the top level and of stream_options: printable ASCII that json.dumps does not escape.
KEYS = st.text(st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters='"\\\x7f'))
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def plain_bodies(draw) -> bytes:
    """A chat body of plain pieces only (the three members in any order among others), written
    by json.dumps in one of its manners."""
    members = draw(st.dictionaries(KEYS.filter(lambda k: k not in FIELDS), VALUES, max_size=5))
    members["model"] = draw(KEYS.filter(bool))
    members["messages"] = draw(st.lists(VALUES, min_size=1, max_size=3))
    stream = draw(st.sampled_from(["absent", True, False, None]))
    if stream != "absent":
        members["stream"] = stream
    if draw(st.booleans()):
        members["stream_options"] = {
            **draw(st.dictionaries(KEYS, VALUES, max_size=2)),
            "include_usage": True,
        }
    keys = list(members)
    random.Random(draw(st.integers(0, 2**32))).shuffle(keys)
    doc = {k: members[k] for k in keys}
    manner = draw(st.sampled_from(["compact", "spaced", "indented", "ascii"]))
    if manner == "compact":
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    if manner == "spaced":
        return json.dumps(doc, ensure_ascii=False).encode()
    if manner == "indented":
        return json.dumps(doc, indent="\t", ensure_ascii=False).encode()
    return json.dumps(doc).encode()


FIELDS = {"model", "messages", "stream", "stream_options"}


@SETTINGS
@given(raw=plain_bodies())
def test_plain_bodies_are_taken(sse_pair, raw):
    compiled, twin = sse_pair
    expected = reference(raw)
    assert expected is not None
    assert compiled.chat_request_fields(raw) == expected
    assert twin.chat_request_fields(raw) == expected


@SETTINGS
@given(raw=plain_bodies(), data=st.data())
def test_damaged_bodies_keep_the_contract(sse_pair, raw, data):
    """A plain body with bytes changed, inserted or cut anywhere: an answer is orjson's, and the
    two implementations give the same one."""
    compiled, twin = sse_pair
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(buf)))
        kind = data.draw(st.sampled_from(["set", "insert", "cut"]))
        byte = data.draw(
            st.sampled_from(b'"\\{}[],:0123456789-+.eEtrufalsn \t\r\n\x00\x1f\x7f\x80\xc3\xed\xff')
            | st.integers(0, 255)
        )
        if kind == "set" and at < len(buf):
            buf[at] = byte
        elif kind == "insert":
            buf.insert(at, byte)
        else:
            del buf[at : at + data.draw(st.integers(1, 4))]
    damaged = bytes(buf)
    assert check(compiled, damaged) == check(twin, damaged)


@SETTINGS
@given(raw=st.binary(max_size=200))
def test_any_bytes(sse_pair, raw):
    compiled, twin = sse_pair
    assert check(compiled, raw) == check(twin, raw)


@SETTINGS
@given(value=VALUES)
def test_any_document_as_the_body(sse_pair, value):
    """Any JSON document (not only chat bodies) keeps the contract, in both."""
    compiled, twin = sse_pair
    for raw in (json.dumps(value).encode(), json.dumps(value, ensure_ascii=False).encode()):
        assert check(compiled, raw) == check(twin, raw)


def test_a_large_body(sse_pair):
    """A long conversation (the SIMD run over long strings, and their ends at every offset)."""
    compiled, twin = sse_pair
    for size in range(1000, 1040):
        text = "x" * size + "\u00e9" + "y" * (size % 17) + '"\\'
        raw = json.dumps(
            {"model": "m", "messages": [{"role": "user", "content": text}] * 3, "stream": True},
            ensure_ascii=False,
        ).encode()
        assert compiled.chat_request_fields(raw) == ("m", True, False)
        assert twin.chat_request_fields(raw) == ("m", True, False)
