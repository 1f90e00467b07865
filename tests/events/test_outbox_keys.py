"""Which keys an outbox row wakes: both keys of a phone change, the key of a change too large."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import msgspec

from events.contract import ConversationRow, ReconcileRequested, RowChange
from events.sources.outbox import events_from_row
from events.sources.table_listing import next_delay

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def image(phone: str, flow: str | None = "flow-a", channel: str = "940740243") -> bytes:
    return msgspec.json.encode(ConversationRow(id="7", phone=phone, channel=channel,
                                               status="active", assigned_to="bot", bot_flow_id=flow))


def test_a_phone_change_wakes_the_old_key_and_the_new_one() -> None:
    found = events_from_row(table="t", outbox_id=1, op="UPDATE", old=image("5215550001"),
                            new=image("5215550002"), created_at=AT)
    assert [e.key for e in found] == ["5215550002:940740243", "5215550001:940740243"]
    assert len({e.id for e in found}) == 2, "distinct, derived ids (a replay publishes the same)"
    assert all(isinstance(e, RowChange) and e.row is not None for e in found)


def test_a_channel_change_wakes_both_keys_too() -> None:
    found = events_from_row(table="t", outbox_id=1, op="UPDATE", old=image("1", channel="A"),
                            new=image("1", channel="B"), created_at=AT)
    assert [e.key for e in found] == ["1:B", "1:A"]


def test_an_unmoved_change_is_one_event() -> None:
    assert len(events_from_row(table="t", outbox_id=1, op="UPDATE", old=image("1"),
                               new=image("1", flow=None), created_at=AT)) == 1


def test_any_phone_the_database_holds_makes_a_key() -> None:
    found = events_from_row(table="t", outbox_id=1, op="INSERT", old=None,
                            new=image("+52 55 1234 5678"), created_at=AT)
    assert [e.key for e in found] == ["+52 55 1234 5678:940740243"]


def test_a_change_too_large_to_publish_still_wakes_its_key() -> None:
    found = events_from_row(table="t", outbox_id=9, op="UPDATE", old=image("1"),
                            new=image("1", flow="x" * 1_048_576), created_at=AT)
    assert len(found) == 1 and isinstance(found[0], ReconcileRequested)
    assert found[0].key == "1:940740243" and "too large" in found[0].reason


def test_the_listing_interval_is_jittered_within_a_fifth() -> None:
    delays = [next_delay(1000.0, random.Random(seed)) for seed in range(200)]
    assert min(delays) >= 800 and max(delays) <= 1200 and len(set(delays)) > 100
