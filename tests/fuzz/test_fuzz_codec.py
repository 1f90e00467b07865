"""Random stream entries into the codec: an event or a named, typed rejection, nothing else.

Entries read from Redis are maps of bytes to bytes; the fuzz covers those,
maps with text names and values, and the near misses that matter most: a
right version and a known type with a random, huge, deeply nested or
wrongly typed payload.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from events import codec
from events.contract import TAGS, EventBase
from events.errors import MalformedEntry

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TAG_LIST = sorted(TAGS)
FIELD_NAMES = st.sampled_from([b"v", b"type", b"key", b"data", b"x", b""]) | st.binary(max_size=8)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@st.composite
def near_miss_payloads(draw: st.DrawFn) -> bytes:
    """A JSON object that looks like an event: the right ``type``, other fields random."""
    tag = draw(st.sampled_from(TAG_LIST))
    body: dict[str, Any] = draw(st.dictionaries(
        st.sampled_from(["id", "occurred_at", "source", "key", "cause_id", "name", "flow_id",
                         "row", "previous", "outbox_id", "reason", "deadline", "extra"]),
        json_values, max_size=8))
    body["type"] = draw(st.sampled_from([tag, tag.upper(), "", 7]))
    return json.dumps(body).encode()


def check(fields: Any) -> None:
    try:
        event = codec.decode(fields)
    except MalformedEntry as e:
        assert e.reason and str(e), "a rejection names what was wrong"
        return
    assert isinstance(event, EventBase)
    assert codec.decode(codec.encode(event)) == event


@FUZZ
@given(st.dictionaries(FIELD_NAMES, st.binary(max_size=64), max_size=6))
@example({b"v": b"1"})
@example({b"v": b"1", b"type": b"session.started", b"data": b"\xff\xfe"})
def test_random_bytes_entries_decode_or_are_rejected(fields: dict[bytes, bytes]) -> None:
    check(fields)


@FUZZ
@given(st.dictionaries(st.sampled_from(["v", "type", "key", "data", "other"]),
                       st.text(max_size=40), max_size=5))
def test_random_text_entries_decode_or_are_rejected(fields: dict[str, str]) -> None:
    check(fields)


@FUZZ
@given(st.sampled_from(TAG_LIST), near_miss_payloads() | st.binary(max_size=200)
       | json_values.map(lambda v: json.dumps(v).encode()))
@example("session.started", nested(100_000))
@example("session.started", b"[" * 200_000)
@example("session.started", nested(5000))
@example("session.started", b"1" * (codec.MAX_ENTRY_BYTES + 1))
@example("conversation.closed", b'{"type":"conversation.closed","outbox_id":"1e999"}')
def test_known_type_with_bad_payload_is_rejected(tag: str, data: bytes) -> None:
    check({b"v": b"1", b"type": tag.encode(), b"key": b"k", b"data": data})
