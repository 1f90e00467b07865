"""The partition layout of the key space: one partition is today's layout; more
split the conversation and session streams by CRC-32 of the key, and keep what is
written with a partition's entries in its slot."""

from __future__ import annotations

import zlib

import pytest

from events.contract import CONVERSATIONS, SESSIONS
from events.keys import KeySpace, beside, by_slot, label_of, stream_label

ONE = KeySpace(prefix="r:")
SIX = KeySpace(prefix="r:", partitions=6)


def test_one_partition_is_the_layout_of_one_slot() -> None:
    assert ONE.lanes(CONVERSATIONS) == ("r:{events}:conversations", "r:{events}:conversations:bulk")
    assert ONE.stream_for(SESSIONS, "940740243", "bulk") == "r:{events}:sessions:bulk"
    assert ONE.deadletter_streams == ("r:{events}:deadletter",)
    assert ONE.deadlines() == "r:{events}:deadlines"
    assert list(by_slot(ONE.event_streams().values())) == ["events"]


def test_a_key_always_maps_to_one_partition_by_crc32() -> None:
    key = "5511999990000:940740243"
    partition = zlib.crc32(key.encode()) % 6
    assert SIX.partition_of(key) == partition
    assert SIX.stream_for(CONVERSATIONS, key) == f"r:{{events-{partition}}}:conversations"
    assert SIX.stream_for(CONVERSATIONS, key, "bulk") == \
        f"r:{{events-{partition}}}:conversations:bulk"
    assert SIX.stream_for("audit", key) == "r:{events}:audit"  # not partitioned


def test_a_partitioned_stream_has_no_single_key() -> None:
    with pytest.raises(ValueError, match="6 partitions"):
        SIX.stream(CONVERSATIONS)
    with pytest.raises(ValueError, match="6 partitions"):
        _ = SIX.sessions_stream
    with pytest.raises(ValueError, match="1 to 1024"):
        KeySpace(partitions=0)


def test_the_bookkeeping_of_a_stream_is_beside_it() -> None:
    stream = SIX.stream_for(CONVERSATIONS, "k:1", "bulk")
    partition = SIX.partition_of("k:1")
    assert beside(SIX.deadletter_stream, stream) == f"r:{{events-{partition}}}:deadletter"
    assert beside(SIX.stream_gaps, stream) == f"r:{{events-{partition}}}:gaps"
    assert beside(ONE.deadletter_stream, ONE.conversations_stream) == ONE.deadletter_stream
    assert label_of(stream) == f"@{partition}" and label_of(ONE.audit_stream) == ""
    assert stream_label(stream) == f"conversations:bulk@{partition}"
    assert stream_label(ONE.bulk_stream(CONVERSATIONS)) == "conversations:bulk"
    assert SIX.lanes_of(stream) == SIX.partition_lanes(CONVERSATIONS, partition)
    assert ONE.lanes_of(ONE.audit_stream) == (ONE.audit_stream,)


def test_every_stream_is_listed_once_by_slot() -> None:
    streams = SIX.event_streams()
    assert len(streams) == 6 * 4 + 2 + 7  # both lanes of two streams, audit, notifications,
    assert len(set(streams.values())) == len(streams)  # and 1 + 6 dead-letter streams
    slots = by_slot(streams.values())
    assert set(slots) == {"events", *(f"events-{p}" for p in range(6))}
    assert slots["events-2"] == (*SIX.partition_lanes(CONVERSATIONS, 2),
                                 *SIX.partition_lanes(SESSIONS, 2), "r:{events-2}:deadletter")
