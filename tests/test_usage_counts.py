"""``usage_counts``, the token counts of a plain OpenAI usage object read without orjson, over both
implementations: whenever it answers, the answer is exactly what orjson and ``usage_from_openai``
give (``reference``); what is plain is taken; the compiled function and its twin agree on every
input, plain or not.

The inputs come from ``usage_doc``, a generator of usage-like objects driven by a ``Random``
(hypothesis' own, which shrinks, or a seeded one for the fixed corpus): plain pieces (the real keys,
details objects, duplicates, other keys, integers up to 18 digits, literals, strings, fractions
where nothing reads them, blanks) mixed with odd ones (longer integers, exponents, signs, leading
zeros, fractions where a count is read, escapes, non-ASCII bytes, arrays, deeper objects, broken
syntax, trailing bytes, truncation). A document made of plain pieces only must be taken.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import re
import string

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gwcore.sse
from gwcore.usage import usage_from_openai

# GWCORE_HYPOTHESIS_EXAMPLES raises the example count for a soak run; the default keeps CI fast.
EXAMPLES = int(os.environ.get("GWCORE_HYPOTHESIS_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=3 * EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
CORPUS = 6000  # documents of the fixed corpus (seeds 0 .. CORPUS - 1)

EXAMPLE = (
    b'{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,'
    b'"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
    b'"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    b'"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}'
)


def reference(raw: bytes) -> tuple:
    """What the relay's general path makes of ``raw``: the spec ``usage_counts`` is held to."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        return (None,) * 5
    t = usage_from_openai(obj)
    return (
        t["prompt_tokens"],
        t["completion_tokens"],
        t["total_tokens"],
        t["cached_tokens"],
        t["reasoning_tokens"],
    )


# ---- the generator ------------------------------------------------------------------------------

COUNT_KEYS = ["prompt_tokens", "completion_tokens", "total_tokens"]
DETAILS = {
    "prompt_tokens_details": "cached_tokens",
    "completion_tokens_details": "reasoning_tokens",
}
OTHER_KEYS = [
    "audio_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "queue_time",
    "prompt_time",
    "",
    "prompt_tokens ",
    "Prompt_tokens",
    "prompt_token",
    "total_tokens_details",
    "prompt_tokens_detail",
    "completion_tokens_detail",
    "prompt_tokens_detailss",
]
INNER_KEYS = ["cached_tokens", "reasoning_tokens", "audio_tokens", "prompt_tokens", "x"]
BLANKS = [b"", b"", b"", b"", b" ", b"\n", b"\t", b"\r\n", b" \t\r\n "]
PRINTABLE = "".join(c for c in string.printable if c.isprintable() and c not in '"\\')
# Numbers that are never plain, wherever they are.
ODD_NUMBERS = [
    b"1e2",
    b"1E+2",
    b"12.0e0",
    b"1.5e999",  # too large for orjson
    b"-5",
    b"-0",
    b"01",
    b"00",
    b"1.",
    b".5",
    b"+1",
    b"0x10",
    b"1" + b"0" * 18,
    b"9" * 19,  # past a long long, but an int to orjson
    b"18446744073709551615",
    b"99999999999999999999",  # past 64 bits: a float to orjson, 1e20 to usage_from_openai
    b"18446744073709551616",
    b"1." + b"5" * 19,
    b"1" * 19 + b".5",
    b"NaN",
    b"Infinity",
]
# Other values that are never plain.
ODD_VALUES = [
    b"[]",
    b"[1, 2]",
    b'"\\n"',
    b'"a\\"b"',
    b'"\\u0041"',
    '"é"'.encode(),
    b'"\xff"',
    b'"\x01"',
    b'"\x7f"',
    b"True",
    b"nul",
    b"nulll",
    b"fals",
    b"'x'",
    b"",
]
# Keys that are never plain: the first decodes to "prompt_tokens".
ODD_KEYS = [b"prompt\\u005ftokens", b"prompt_tokens\\t", "prómpt".encode(), b"a\xffb", b"a\x00b"]
# What may be added at the end of a document, none of it plain.
TRAILERS = [b"x", b",", b"}", b"{}", b"\x00", b" 1", b"\xef\xbb\xbf", b"]"]


class Doc:
    """One document being drawn: ``plain`` stays True while only plain pieces are used."""

    def __init__(self, rnd: random.Random, odd_rate: float) -> None:
        self.rnd = rnd
        self.odd_rate = odd_rate  # a chance at each place, or 1.0: one odd piece at a random place
        self.countdown = rnd.randint(0, 20) if odd_rate == 1.0 else -1
        self.plain = True
        self.spaced = rnd.random() < 0.5  # else compact, as providers send it

    def odd(self) -> bool:
        if self.countdown >= 0:
            self.countdown -= 1
            hit = self.countdown < 0
        else:
            hit = self.rnd.random() < self.odd_rate
        if hit:
            self.plain = False
        return hit

    def blank(self) -> bytes:
        return self.rnd.choice(BLANKS) if self.spaced else b""

    def text(self) -> bytes:
        return "".join(self.rnd.choices(PRINTABLE, k=self.rnd.randint(0, 6))).encode()

    def integer(self) -> bytes:
        r = self.rnd.random()
        if r < 0.3:
            n = self.rnd.randint(0, 100)
        elif r < 0.4:
            n = 0
        elif r < 0.7:
            n = self.rnd.randint(0, 10**6)
        else:
            n = self.rnd.randint(10**16, 10**18 - 1)  # 17 and 18 digits, the most taken
        return b"%d" % n

    def fraction(self) -> bytes:
        whole = self.rnd.choice([b"0", b"12", b"%d" % self.rnd.randint(0, 10**18 - 1)])
        return whole + b"." + b"".join(b"%d" % self.rnd.randint(0, 9) for _ in range(9))

    def key(self, names: list[str]) -> bytes:
        if self.odd():
            return self.rnd.choice(ODD_KEYS)
        r = self.rnd.random()
        if r < 0.85:
            return self.rnd.choice(names).encode()
        return self.text()

    def scalar(self, read: bool) -> bytes:
        """A scalar value; ``read``: its key is one whose value the counts come from."""
        if self.odd():
            r = self.rnd.random()
            if r < 0.35 and read:
                return self.rnd.choice([b"12.0", b"0.0", b"3.5", b"7.00"])  # a fraction, read
            if r < 0.7:
                return self.rnd.choice(ODD_NUMBERS)
            return self.rnd.choice(ODD_VALUES)
        r = self.rnd.random()
        if r < 0.55:
            return self.integer()
        if r < 0.75:
            return self.rnd.choice([b"null", b"true", b"false"])
        if r < 0.88 or read:
            return b'"' + self.text() + b'"'
        return self.fraction()  # plain only where nothing reads it (Groq's timings)

    def obj(self, members: list[tuple[bytes, bytes]]) -> bytes:
        if not members:
            return b"{" + self.blank() + b"}"
        out = b","
        if self.odd():
            out = self.rnd.choice([b"", b";", b",,"])  # a missing or broken separator
        parts = [
            self.blank() + b'"' + k + b'"' + self.blank() + b":" + self.blank() + v + self.blank()
            for k, v in members
        ]
        if self.odd():
            parts.append(b"")  # a trailing comma
        return b"{" + out.join(parts) + b"}"

    def inner(self, target: str | None) -> bytes:
        members = []
        for _ in range(self.rnd.randint(0, 5)):
            key = self.key([target] * 3 + INNER_KEYS if target else INNER_KEYS)
            if self.odd():  # deeper nesting
                value = self.rnd.choice([b'{"a":1}', b"{}", b'{"cached_tokens":{}}'])
            else:
                value = self.scalar(read=target is not None and key == target.encode())
            members.append((key, value))
        return self.obj(members)

    def value(self, key: bytes) -> bytes:
        name = key.decode("latin-1")
        if self.rnd.random() < (0.6 if name in DETAILS else 0.15):
            return self.inner(DETAILS.get(name))
        return self.scalar(read=name in COUNT_KEYS or name in DETAILS)

    def document(self) -> bytes:
        names = COUNT_KEYS * 3 + list(DETAILS) * 2 + OTHER_KEYS
        members = []
        for _ in range(self.rnd.randint(0, 9)):  # often more than one of a key: duplicates
            key = self.key(names)
            members.append((key, self.value(key)))
        raw = self.blank() + self.obj(members) + self.blank()
        if self.odd():
            raw += self.rnd.choice(TRAILERS)
        if self.odd():
            raw = raw[: self.rnd.randint(0, len(raw))]
        if self.odd():
            raw = self.rnd.choice(
                [b"[" + raw + b"]", b"5", b"null", b'"{}"', b"\xef\xbb\xbf" + raw]
            )
        return raw


def usage_doc(rnd: random.Random) -> tuple[bytes, bool]:
    """``(raw, plain)``: a usage-like document, and whether only plain pieces went into it."""
    doc = Doc(rnd, odd_rate=rnd.choice([0.0, 0.0, 1.0, 1.0, 0.05, 0.15]))
    raw = doc.document()
    return raw, doc.plain


def corpus() -> list[tuple[bytes, bool]]:
    return [usage_doc(random.Random(seed)) for seed in range(CORPUS)]


# ---- properties ---------------------------------------------------------------------------------


def check(sse, raw: bytes, plain: bool) -> None:
    got = sse.usage_counts(raw)
    if plain:
        assert got is not None, raw
    if got is not None:
        assert got == reference(raw), raw
        assert all(v is None or type(v) is int for v in got), raw


@SETTINGS
@given(rnd=st.randoms(use_true_random=False))
def test_taken_means_the_reference_answer(sse, rnd):
    raw, plain = usage_doc(rnd)
    check(sse, raw, plain)


@SETTINGS
@given(rnd=st.randoms(use_true_random=False))
def test_compiled_and_twin_agree(sse_pair, rnd):
    compiled, twin = sse_pair
    raw, _ = usage_doc(rnd)
    assert compiled.usage_counts(raw) == twin.usage_counts(raw), raw


@SETTINGS
@given(raw=st.binary(max_size=64))
def test_any_bytes(sse_pair, raw):
    compiled, twin = sse_pair
    got = compiled.usage_counts(raw)
    assert got == twin.usage_counts(raw)
    if got is not None:
        assert got == reference(raw)


def test_fixed_corpus(sse):
    """The corpus holds many plain documents, every one taken, and many odd ones, few taken."""
    docs = corpus()
    taken = 0
    for raw, plain in docs:
        check(sse, raw, plain)
        taken += sse.usage_counts(raw) is not None
    plain = sum(p for _, p in docs)
    assert 0.35 * CORPUS < plain < 0.8 * CORPUS, plain  # the generator mixes both kinds
    assert taken > 0.4 * CORPUS, taken
    # Some odd documents are taken (an odd piece cut off by a truncation, or a broken separator
    # in an object of one member), but few.
    assert taken - plain < 0.1 * (CORPUS - plain), (taken, plain)


def test_fixed_corpus_compiled_and_twin_agree(sse_pair):
    compiled, twin = sse_pair
    for raw, _ in corpus():
        assert compiled.usage_counts(raw) == twin.usage_counts(raw), raw


# ---- examples -----------------------------------------------------------------------------------

TAKEN = [
    (EXAMPLE, (9, 12, 21, 0, 0)),
    (b"{}", (None,) * 5),
    (b' \r\n\t{ \n"prompt_tokens" :\t1 ,"completion_tokens": 2 }\n ', (1, 2, 3, None, None)),
    (b'{"prompt_tokens":5,"completion_tokens":7,"total_tokens":null}', (5, 7, 12, None, None)),
    (b'{"prompt_tokens":5,"completion_tokens":7,"total_tokens":"9"}', (5, 7, 12, None, None)),
    (b'{"prompt_tokens":5,"total_tokens":4}', (5, None, 4, None, None)),
    (b'{"prompt_tokens":true,"completion_tokens":false}', (None,) * 5),
    (b'{"prompt_tokens":1,"prompt_tokens":2}', (2, None, None, None, None)),
    (b'{"prompt_tokens":1,"prompt_tokens":null}', (None,) * 5),
    (b'{"prompt_tokens":{"prompt_tokens":3}}', (None,) * 5),
    (
        b'{"prompt_tokens_details":{"cached_tokens":4},"prompt_tokens_details":{"x":1}}',
        (None,) * 5,
    ),
    (
        b'{"prompt_tokens_details":{"cached_tokens":4,"cached_tokens":6}}',
        (None, None, None, 6, None),
    ),
    (b'{"prompt_tokens_details":{"cached_tokens":4},"prompt_tokens_details":0}', (None,) * 5),
    (b'{"completion_tokens_details":{"cached_tokens":4}}', (None,) * 5),
    (b'{"completion_tokens_details":{"reasoning_tokens":8}}', (None, None, None, None, 8)),
    (b'{"cached_tokens":4,"reasoning_tokens":8}', (None,) * 5),
    (b'{"prompt_tokens_detail":{"cached_tokens":4},"total_tokens_details":{}}', (None,) * 5),
    (
        b'{"prompt_tokens":999999999999999999,"completion_tokens":999999999999999999}',
        (
            999999999999999999,
            999999999999999999,
            1999999999999999998,
            None,
            None,
        ),
    ),
    (b'{"prompt_tokens":0,"completion_tokens":0}', (0, 0, 0, None, None)),
    (
        b'{"queue_time":0.090321431,"prompt_tokens":38,"total_time":0.5}',
        (38, None, None, None, None),
    ),
    (b'{"x":{"cached_tokens":1.5},"prompt_tokens_details":{"audio_s":2.5}}', (None,) * 5),
    (b'{"prompt tokens":1,"":2,"~":"{}[],:"}', (None,) * 5),
]
NOT_TAKEN = [
    b"",
    b"   ",
    b"null",
    b"[]",
    b"5",
    b'"x"',
    b"{",
    b'{"prompt_tokens":1',
    b'{"prompt_tokens":1,}',
    b'{"prompt_tokens" 1}',
    b'{"prompt_tokens":1}x',
    b'{"prompt_tokens":1}{}',
    b'{"prompt_tokens":1}\x00',
    b'\xef\xbb\xbf{"prompt_tokens":1}',
    b'{"prompt_tokens":01}',
    b'{"prompt_tokens":-1}',
    b'{"prompt_tokens":-0}',
    b'{"prompt_tokens":12.0}',
    b'{"prompt_tokens":1e2}',
    b'{"x":1e2}',
    b'{"x":1.5e2}',
    b'{"x":1.5e999}',
    b'{"x":-1.5}',
    b'{"x":1.}',
    b'{"prompt_tokens_details":12.5}',
    b'{"prompt_tokens_details":{"cached_tokens":1.0}}',
    b'{"prompt_tokens":1000000000000000000}',
    b'{"prompt_tokens":9999999999999999999}',
    b'{"prompt_tokens":99999999999999999999}',
    b'{"prompt\\u005ftokens":1}',
    b'{"x":"a\\"b"}',
    '{"x":"é"}'.encode(),
    b'{"x":"\t"}',
    b'{"x":[]}',
    b'{"x":{"y":{}}}',
    b'{"x":{"y":[1]}}',
    b'{"x":tru}',
    b'{"x":True}',
    b'{"x":nulls}',
    b"{'x':1}",
]


@pytest.mark.parametrize(("raw", "expected"), TAKEN)
def test_taken(sse, raw, expected):
    assert reference(raw) == expected  # the table itself says what orjson does
    assert sse.usage_counts(raw) == expected


@pytest.mark.parametrize("raw", NOT_TAKEN)
def test_not_taken(sse, raw):
    assert sse.usage_counts(raw) is None


def test_not_bytes(sse):
    for bad in (None, "{}"):
        with pytest.raises(TypeError):
            sse.usage_counts(bad)


def test_switch_exports_it():
    name = "gwcore._sse" if gwcore.sse.IMPLEMENTATION == "cython" else "gwcore._sse_py"
    assert gwcore.sse.usage_counts is importlib.import_module(name).usage_counts


# ---- recorded real responses --------------------------------------------------------------------


def usage_slices(raw: bytes) -> list[bytes]:
    """The bytes of each object value of a ``usage`` key in a recording, as they stand there."""
    text = raw.decode("latin-1")  # one character per byte: indices stay byte offsets
    found = []
    for m in re.finditer(r'"usage"\s*:\s*(?=\{)', text):
        _, end = json.JSONDecoder().raw_decode(text, m.end())
        found.append(raw[m.end() : end])
    return found


def check_taken(sse, raw: bytes) -> tuple:
    got = sse.usage_counts(raw)
    assert got is not None, raw
    assert got == reference(raw), raw
    assert None not in got[:3], raw  # the recordings all report the three counts
    return got


@pytest.mark.parametrize("provider", ["openai", "groq"])
def test_recorded_stream_usage_is_taken(sse, recorded_dir, provider):
    """The usage object the observer notes in a recorded stream (the bytes the relay hands over)."""
    path = recorded_dir / provider / "chat_completion_stream.txt"
    if not path.is_file():
        pytest.skip(f"{path} not recorded")
    raw = path.read_bytes()
    o = sse.StreamObserver(chunked=False)
    o.feed(raw)
    o.close()
    if not usage_slices(raw):
        assert o.usage is None
        pytest.skip(f"{path} was recorded without a usage object")
    assert o.usage is not None and o.first_usage is not None
    check_taken(sse, o.usage)
    check_taken(sse, o.first_usage)


def test_recorded_response_usage_is_taken(sse, recorded_dir):
    """The usage objects of the recorded non-streamed chat responses of the OpenAI dialect, as
    recorded (indented over lines) and as a stream sends them (compact), details objects too."""
    paths = sorted(
        p for d in ("openai", "groq", "gemini") for p in (recorded_dir / d).glob("chat_*.json")
    )
    if not paths:
        pytest.skip(f"no recorded chat_*.json under {recorded_dir}")
    details = 0
    for path in paths:
        found = usage_slices(path.read_bytes())
        assert len(found) == 1, path
        for raw in (found[0], orjson.dumps(orjson.loads(found[0]))):
            got = check_taken(sse, raw)
            details += got[3] is not None and got[4] is not None
    assert details >= 2  # the OpenAI recordings report cached and reasoning tokens
