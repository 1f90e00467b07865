"""The codec: every event type round-trips; malformed entries are typed errors."""

from __future__ import annotations

import contextlib
import gc
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import codec
from events.contract import EVENT_TYPES, SessionStarted, tag_of
from events.errors import (
    EntryTooLarge,
    InvalidPayload,
    MalformedEntry,
    MissingField,
    UnknownEventType,
    UnsupportedVersion,
)
from events.ids import derived_id, id_time, new_event_id
from tests.events.strategies import events_of


def _decoded(fields: dict[str, bytes]) -> dict[bytes, bytes]:
    """As redis-py returns an entry: bytes keys and values."""
    return {k.encode(): v for k, v in fields.items()}


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=tag_of)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_event_type_round_trips(event_type: type, data: st.DataObject) -> None:
    event = data.draw(events_of(event_type))
    fields = codec.encode(event)
    assert fields["type"] == tag_of(event_type).encode()
    assert codec.decode(_decoded(fields)) == event


def _valid() -> dict[bytes, bytes]:
    event = SessionStarted(id=new_event_id(), occurred_at=datetime.now(UTC), source="gateway",
                           key="default")
    return _decoded(codec.encode(event))


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({b"type": b"session.exploded"}, UnknownEventType, "unknown event type"),
        ({b"v": b"99"}, UnsupportedVersion, "schema version"),
        ({b"data": b"{not json"}, InvalidPayload, "session.started"),
        ({b"data": b'{"type":"session.started"}'}, MissingField, "required field"),
        ({b"data": b"x" * (codec.MAX_ENTRY_BYTES + 1)}, EntryTooLarge, "over the"),
        ({b"type": b"session.stopped"}, InvalidPayload, "does not match"),
    ],
)
def test_malformed_entries_are_typed_errors(
    change: dict[bytes, bytes], error: type[MalformedEntry], words: str
) -> None:
    fields = {**_valid(), **change}
    with pytest.raises(error, match=words):
        codec.decode(fields)


@pytest.mark.parametrize("missing", [b"v", b"type", b"data"])
def test_missing_entry_fields_are_rejected(missing: bytes) -> None:
    fields = _valid()
    del fields[missing]
    with pytest.raises(MissingField):
        codec.decode(fields)


def test_naive_timestamps_are_rejected() -> None:
    fields = _valid()
    fields[b"data"] = fields[b"data"].replace(b"Z\"", b"\"")
    with pytest.raises(InvalidPayload):
        codec.decode(fields)


@given(st.binary(max_size=300), st.binary(max_size=40))
@settings(max_examples=200)
def test_arbitrary_bytes_never_escape_as_other_errors(data: bytes, type_tag: bytes) -> None:
    with contextlib.suppress(MalformedEntry):
        codec.decode({b"v": b"1", b"type": type_tag, b"data": data})


def test_ids_are_time_ordered_and_derived_ids_are_stable() -> None:
    early = datetime(2026, 1, 1, tzinfo=UTC)
    late = datetime(2026, 1, 2, tzinfo=UTC)
    assert new_event_id(early) < new_event_id(late)
    assert derived_id(early, "outbox:1") == derived_id(early, "outbox:1")
    assert derived_id(early, "outbox:1") != derived_id(early, "outbox:2")
    assert id_time(new_event_id(late)) == late.timestamp()


@given(st.data())
def test_decoded_events_are_not_tracked_by_the_garbage_collector(data: st.DataObject) -> None:
    # One event is built per entry read; none can be part of a reference cycle.
    event = data.draw(events_of(data.draw(st.sampled_from(EVENT_TYPES))))
    decoded = codec.decode(codec.encode(event))
    assert not gc.is_tracked(decoded)
    assert not gc.is_tracked(getattr(decoded, "row", None))
