"""Weird outbox rows and NOTIFY payloads: reported and skipped, never a stuck relay.

The pure part fuzzes :func:`event_from_row` with any operation, any JSON in
the old and new images and any time: it returns an event the codec reads back
or raises :class:`BadOutboxRow` with a reason.  The live part writes such rows
straight into the outbox table (as a broken trigger or a hand-made INSERT
would) and rings the doorbell with junk payloads while the relay runs: every
bad row is marked ``failed`` with its reason and counted, the good rows are
published, and a change made afterwards still reaches the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from events import codec
from events.contract import ConversationBotAssigned, EventBase, ReconcileRequested
from events.settings import Settings
from events.sources.outbox import BadOutboxRow, event_from_row, outbox_names
from events.sources.postgres import RelayOptions, run_relay
from ops import capture_install
from tests.support import create_conversations_table, eventually

pytestmark = pytest.mark.timeout(180)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAST = RelayOptions(keepalive_s=0.5, backoff_s=0.05, backoff_max_s=0.5, query_timeout_s=5.0)
GOOD = {"id": "1", "phone": "5215550101", "channel": "940740243", "status": "active"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=15,
)
row_images = st.one_of(
    st.none(),
    json_values.map(json.dumps),
    st.fixed_dictionaries({}, optional={
        "id": json_values, "phone": json_values | st.text(max_size=300), "channel": json_values,
        "status": json_values, "assigned_to": json_values, "bot_flow_id": json_values,
        "bot_started_at": json_values | st.datetimes().map(str)}).map(json.dumps),
    st.builds(lambda extra: json.dumps({**GOOD, **extra}),
              st.dictionaries(st.sampled_from([*sorted(GOOD), "bot_started_at", "x"]),
                              json_values, max_size=2)),
)
times = st.none() | st.datetimes() | st.datetimes(timezones=st.just(UTC))
"""What asyncpg hands the relay: UTC, naive for +-infinity, or NULL (out of range)."""


@FUZZ
@given(st.sampled_from(["INSERT", "UPDATE", "DELETE"]) | st.text(max_size=12), row_images,
       row_images, times, st.integers(-(2**63), 2**63 - 1))
@example("UPDATE", None, json.dumps(GOOD), datetime(1, 1, 1, tzinfo=UTC), 1)
@example("INSERT", None, json.dumps({**GOOD, "phone": "x" * 300}), datetime.now(UTC), 1)
@example("INSERT", None, json.dumps({**GOOD, "bot_started_at": "2024-01-01T00:00:00"}),
         datetime.now(UTC), 1)
@example("INSERT", None, json.dumps(GOOD), datetime(9999, 12, 31, 23, 59), 1)
@example("UPDATE", '{"x":' + "[" * 5000 + "]" * 5000 + "}", json.dumps(GOOD), datetime.now(UTC), 1)
def test_any_outbox_row_is_an_event_or_a_named_rejection(
    op: str, old: str | None, new: str | None, created_at: datetime | None, outbox_id: int,
) -> None:
    try:
        event = event_from_row(table="t", outbox_id=outbox_id, op=op, old=old, new=new,
                               created_at=created_at)
    except BadOutboxRow as e:
        assert e.reason and str(e)
        return
    assert codec.decode(codec.encode(event)) == event, "the relay publishes only readable events"


# --------------------------------------------------------------------------
# The running relay.

WEIRD_ROWS: list[tuple[str, str | None, str | None, str]] = [
    # (op, old_row, new_row, created_at) as SQL text; created_at '' means the default
    ("TRUNCATE", None, json.dumps(GOOD), ""),
    ("", None, None, ""),
    ("UPDATE", json.dumps(GOOD), None, ""),
    ("DELETE", None, None, ""),
    ("INSERT", None, '"just a string"', ""),
    ("INSERT", None, "[1, 2, 3]", ""),
    ("INSERT", None, "{}", ""),
    ("INSERT", None, json.dumps({**GOOD, "phone": 5215550101}), ""),
    ("INSERT", None, json.dumps({**GOOD, "phone": ""}), ""),
    ("INSERT", None, json.dumps({**GOOD, "phone": "9" * 400}), ""),
    ("INSERT", None, json.dumps({**GOOD, "bot_started_at": "not a time"}), ""),
    ("INSERT", None, json.dumps({**GOOD, "bot_started_at": "2024-01-01T00:00:00"}), ""),
    ("INSERT", None, '{"a":' * 500 + "1" + "}" * 500, ""),
    ("UPDATE", '{"x":' + "[" * 5000 + "]" * 5000 + "}", json.dumps(GOOD), ""),
    ("INSERT", None, json.dumps(GOOD), "infinity"),
    ("INSERT", None, json.dumps(GOOD), "-infinity"),
    ("INSERT", None, json.dumps(GOOD), "4713-01-01 BC"),
    ("INSERT", None, json.dumps(GOOD), "294276-01-01"),
]
TOO_LARGE = [  # counted as oversized, yet its key is woken (a key-only event), nothing kept
    ("INSERT", None, json.dumps({**GOOD, "phone": "5215550777", "bot_flow_id": "x" * 1_048_576}),
     ""),
]
ODD_BUT_VALID = [
    ("INSERT", None, json.dumps({**GOOD, "phone": "📱", "extra": [1]}), ""),
    ("INSERT", None, json.dumps({**GOOD, "phone": "a:b"}), "0001-01-03"),
]
NOTIFY_PAYLOADS = ["", "{", "x" * 7000, "\u00e9\u2603", json.dumps({"id": -1}), "\\x00"]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def relay(settings: Settings, redis: Redis) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_relay(settings, redis, stop, FAST))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def published(redis: Redis, settings: Settings) -> list[EventBase]:
    entries = await redis.xrange(settings.keys.conversations_stream)
    return [codec.decode(fields) for _, fields in entries]


async def test_weird_outbox_rows_are_marked_failed_counted_and_the_relay_goes_on(
    pg: Any, redis: Redis, settings: Settings
) -> None:
    await create_conversations_table(pg, settings.table)
    await capture_install.install(pg, settings)
    names = outbox_names(settings.table)
    outbox = names.qualified_outbox
    before = sum(metric("reconciler_invalid_inputs_total", source="postgres", reason=r)
                 for r in ("invalid_row", "invalid_op", "missing_row", "oversized"))
    async with relay(settings, redis) as task:
        for op, old, new, at in WEIRD_ROWS + TOO_LARGE + ODD_BUT_VALID:
            await pg.execute(
                f"INSERT INTO {outbox} (op, old_row, new_row, created_at) VALUES "
                "($1, $2::jsonb, $3::jsonb, COALESCE(NULLIF($4, '')::timestamptz, clock_timestamp()))",
                op, old, new, at)
        for payload in NOTIFY_PAYLOADS:
            await pg.execute("SELECT pg_notify($1, $2)", names.channel, payload)
        await pg.execute(f"INSERT INTO {settings.table} (phone, phone_number_id, status, assigned_to)"
                         " VALUES ('5215550199', '940740243', 'active', 'bot')")

        async def good_change_published() -> bool:
            return any(isinstance(e, ConversationBotAssigned) and e.key == "5215550199:940740243"
                       for e in await published(redis, settings))

        await eventually(good_change_published, timeout=60, message="the good change after the junk")
        assert not task.done(), "the relay is still running"
    failed = await pg.fetch(f"SELECT op, failed FROM {outbox} ORDER BY id")
    assert len(failed) == len(WEIRD_ROWS), failed
    assert all(r["failed"] for r in failed), "each rejection names its reason"
    after = sum(metric("reconciler_invalid_inputs_total", source="postgres", reason=r)
                for r in ("invalid_row", "invalid_op", "missing_row", "oversized"))
    assert after - before == len(WEIRD_ROWS) + len(TOO_LARGE)
    woken = [e for e in await published(redis, settings)
             if isinstance(e, ReconcileRequested) and "too large" in e.reason]
    assert [e.key for e in woken] == [f"5215550777:{GOOD['channel']}"]
    keys = {e.key for e in await published(redis, settings) if hasattr(e, "outbox_id")}
    assert {"📱:940740243", "a:b:940740243", "5215550199:940740243"} <= keys
