"""The PostgreSQL relay against a real database and Redis, and the row classification."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from events import codec
from events.contract import (
    ConversationBotAssigned,
    ConversationBotFlowCleared,
    ConversationChanged,
    ConversationClosed,
    ConversationCreated,
    ConversationDeleted,
    ConversationLeftClosed,
    ConversationRow,
    RowChange,
    SourceResynced,
)
from events.ids import derived_id
from events.publisher import Publisher
from events.settings import Settings
from events.sources.outbox import BadOutboxRow, classify, event_from_row, outbox_names
from events.sources.postgres import APPLICATION_NAME, OutboxRelay, RelayOptions, run_relay
from projections import queries
from projections.runner import run_projections
from tests.support import eventually, lane_entries

FAST = RelayOptions(keepalive_s=0.5, backoff_s=0.05, backoff_max_s=0.5, query_timeout_s=5.0)


@contextlib.asynccontextmanager
async def relay(settings: Settings, redis: Redis) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_relay(settings, redis, stop, FAST))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def stream(redis: Redis, settings: Settings) -> list[Any]:
    entries = await lane_entries(redis, settings.keys, "conversations")
    return [codec.decode(fields) for _, fields in entries]


async def changes(redis: Redis, settings: Settings) -> list[RowChange]:
    return [e for e in await stream(redis, settings) if isinstance(e, RowChange)]


async def until_published(redis: Redis, settings: Settings, count: int) -> None:
    async def all_published() -> bool:
        return len(await changes(redis, settings)) == count
    await eventually(all_published, message=f"{count:,} changes on the stream")


async def outbox_count(pg: Any, table: str) -> int:
    count: int = await pg.fetchval(f"SELECT count(*) FROM {outbox_names(table).qualified_outbox}")
    return count


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def insert_rows(pg: Any, table: str, n: int) -> list[int]:
    rows = await pg.fetch(
        f'INSERT INTO "{table}" (phone, phone_number_id) '
        "SELECT '55' || g, 'chan' FROM generate_series(1, $1) g RETURNING id", n)
    return [r["id"] for r in rows]


async def test_backlog_written_while_stopped_is_published_in_commit_order(
    pg: Any, redis: Redis, settings: Settings, table: str
) -> None:
    ids = await insert_rows(pg, table, 10)
    for i in range(1000):
        await pg.execute(f'UPDATE "{table}" SET bot_flow_id = $1 WHERE id = $2', f"f{i}", ids[i % 10])
    async with relay(settings, redis):
        await until_published(redis, settings, 1010)
        await eventually(lambda: _zero(outbox_count(pg, table)), message="an empty outbox")
    published = await changes(redis, settings)
    outbox_ids = [e.outbox_id for e in published]
    assert outbox_ids == sorted(outbox_ids) and len(set(outbox_ids)) == 1010
    updates = [e for e in published if e.previous is not None]
    assert [e.row.bot_flow_id for e in updates if e.row] == [f"f{i}" for i in range(1000)]
    assert all(e.key == f"{e.row.phone}:chan" for e in updates if e.row)
    first = published[0]
    assert first.id == derived_id(first.occurred_at, f"outbox:{table}:{first.outbox_id}")
    markers = [e for e in await stream(redis, settings) if isinstance(e, SourceResynced)]
    assert [m.reason for m in markers] == ["start"]


async def lane_changes(redis: Redis, settings: Settings) -> dict[str, list[RowChange]]:
    """The row changes on each lane of the conversations stream, in stream order."""
    live, bulk = settings.keys.lanes("conversations")
    out: dict[str, list[RowChange]] = {}
    for lane, stream_key in (("live", live), ("bulk", bulk)):
        events = [codec.decode(fields) for _, fields in await redis.xrange(stream_key)]
        out[lane] = [e for e in events if isinstance(e, RowChange)]
    return out


async def test_a_change_committed_while_a_statement_drains_waits_one_batch_at_most(
    pg: Any, redis: Redis, settings: Settings, table: str
) -> None:
    """A 50,000-row statement, then a single change while the relay is on the statement:
    the single change is published with the relay's next batch (500 rows), ahead of the
    statement's rows still in the outbox, not after all of them."""
    await insert_rows(pg, table, 50_000)
    live, bulk = settings.keys.lanes("conversations")
    async with relay(settings, redis):
        async def statement_started() -> bool:
            return bool(await redis.xlen(bulk))
        await eventually(statement_started, message="the relay on the statement")
        row_id = await pg.fetchval(f'SELECT min(id) FROM "{table}"')
        await pg.execute(f'UPDATE "{table}" SET bot_flow_id = \'live\' WHERE id = $1', row_id)
        published_at_commit = await redis.xlen(bulk)
        assert published_at_commit < 40_000, "the relay was done before the change: no race"

        async def single_published() -> bool:
            return bool(await redis.xlen(live))
        await eventually(single_published, message="the single change on the live lane")
        (single_id, _), = await redis.xrange(live)
        # entries of the same millisecond on the two lanes do not say which came first
        ahead = len(await redis.xrange(bulk, max=b"(" + single_id.split(b"-")[0] + b"-0"))
    assert ahead <= published_at_commit + RelayOptions().batch, (
        f"{ahead:,} bulk rows were published before the single change, "
        f"{published_at_commit:,} of them before it committed")


async def test_the_projection_keeps_a_rows_newest_image_published_before_an_older_one(
    pg: Any, redis: Redis, settings: Settings, table: str
) -> None:
    """The nightly job closes 20,000 conversations; while the relay works through them an
    agent hands the last one back to the bot.  The relay publishes the agent's change
    first and the job's older image of that row after it; the conversations projection
    still shows the row as the agent left it."""
    ids = await insert_rows(pg, table, 20_000)
    bulk = settings.keys.lanes("conversations")[1]
    stop = asyncio.Event()
    projections = asyncio.create_task(run_projections(settings, redis, stop))
    try:
        async with relay(settings, redis):
            await until_published(redis, settings, 20_000)
            await pg.execute(f'UPDATE "{table}" SET status = \'closed\'')
            await eventually(lambda: _more(redis.xlen(bulk), 20_000), message="the job on the wire")
            await pg.execute(f'''UPDATE "{table}" SET status = 'active', assigned_to = 'bot',
                                  bot_flow_id = 'again' WHERE id = $1''', ids[-1])
            await until_published(redis, settings, 40_001)
            # one more change, after all of those on the wire: once it is folded, so are they
            await pg.execute(f'UPDATE "{table}" SET bot_flow_id = \'after\' WHERE id = $1', ids[0])
            await until_published(redis, settings, 40_002)
        flows = [e.row.bot_flow_id for e in await changes(redis, settings)
                 if e.row is not None and e.row.id == str(ids[-1])]
        assert flows == [None, "again", None]  # the agent's change ahead of the job's

        async def all_folded() -> bool:
            view = await queries.conversation(redis, settings.keys, "551:chan")
            return view is not None and view.row is not None and view.row.bot_flow_id == "after"
        await eventually(all_folded, message="the projection past the job")
        view = await queries.conversation(redis, settings.keys, "5520000:chan")
        assert view is not None and [(r.status, r.bot_flow_id) for r in view.rows] == [("active", "again")]
    finally:
        stop.set()
        await asyncio.wait_for(projections, 30)


async def _more(count: Any, than: int) -> bool:
    return bool(await count > than)


async def test_single_changes_left_while_the_relay_was_down_go_live_behind_a_statement(
    pg: Any, redis: Redis, settings: Settings, table: str
) -> None:
    """A 300-row statement, then 600 one-row transactions, all written while the relay was
    down (what piles up behind a bulk statement while the consumers clear its rows): the
    statement goes bulk, every single change live, in the order they were made."""
    ids = await insert_rows(pg, table, 300)
    for i in range(600):
        await pg.execute(f'UPDATE "{table}" SET bot_flow_id = $1 WHERE id = $2', f"f{i}", ids[i % 300])
    async with relay(settings, redis):
        await until_published(redis, settings, 900)
    lanes = await lane_changes(redis, settings)
    assert [e.row.bot_flow_id for e in lanes["live"] if e.row] == [f"f{i}" for i in range(600)]
    assert len(lanes["bulk"]) == 300 and all(e.previous is None for e in lanes["bulk"])


async def test_a_change_that_commits_after_larger_ids_were_published_is_published(
    pg: Any, redis: Redis, settings: Settings, table: str, database_url: str
) -> None:
    ids = await insert_rows(pg, table, 3)
    slow = await asyncpg.connect(database_url)
    try:
        async with relay(settings, redis):
            await eventually(lambda: _zero(outbox_count(pg, table)), message="an empty outbox")
            late = slow.transaction()
            await late.start()
            await slow.execute(f'UPDATE "{table}" SET bot_flow_id = \'late\' WHERE id = $1', ids[0])
            for n in range(1200):  # more than two batches with larger ids, committed first
                await pg.execute(f'UPDATE "{table}" SET bot_flow_id = $1 WHERE id = $2',
                                 f"f{n}", ids[1 + n % 2])

            async def early_published() -> bool:
                return len(await changes(redis, settings)) == 3 + 1200
            await eventually(early_published, message="the changes committed first")
            await late.commit()

            async def late_published() -> bool:
                return any(e.row is not None and e.row.bot_flow_id == "late"
                           for e in await changes(redis, settings))
            await eventually(late_published, message="the change that committed last")
    finally:
        await slow.close()
    assert await outbox_count(pg, table) == 0


async def _zero(count: Any) -> bool:
    return bool(await count == 0)


async def test_killed_connection_is_noticed_and_nothing_is_lost(
    pg: Any, redis: Redis, settings: Settings, table: str
) -> None:
    ids = await insert_rows(pg, table, 5)
    reconnects = metric("reconciler_source_reconnects_total", source="postgres")
    async with relay(settings, redis):
        async def write() -> None:
            writer_conn = await asyncpg.connect(settings.database_url)
            try:
                await _write(writer_conn)
            finally:
                await writer_conn.close()

        async def _write(conn: Any) -> None:
            for i in range(600):
                await conn.execute(f'UPDATE "{table}" SET bot_flow_id = $1 WHERE id = $2',
                                 f"f{i}", ids[i % 5])
                if i % 50 == 0:
                    await asyncio.sleep(0.01)

        async def resynced(times: int) -> bool:  # a reconnect's marker follows its catch-up
            markers = [e.reason for e in await stream(redis, settings)
                       if isinstance(e, SourceResynced)]
            return markers.count("reconnect") >= times

        writer = asyncio.create_task(write())
        killed: set[int] = set()
        for n in range(2):
            await eventually(lambda gone=frozenset(killed): _relay_connected(pg, besides=gone),
                             message="the relay's connection (a new one after a kill)")
            pids = await pg.fetch(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = $1 AND datname = current_database()", APPLICATION_NAME)
            assert pids
            killed |= {r["pid"] for r in pids}
            # kill again only once this reconnect has caught up: a kill during the catch-up
            # would fold two reconnects into one resync
            await eventually(lambda times=n + 1: resynced(times),
                             message="a resync marker after the reconnect")
        await writer

        async def all_published() -> bool:
            flows = {e.row.bot_flow_id for e in await changes(redis, settings) if e.row}
            return {f"f{i}" for i in range(600)} <= flows
        await eventually(all_published, message="every update on the stream")
        await eventually(lambda: _zero(outbox_count(pg, table)), message="an empty outbox")

    assert metric("reconciler_source_reconnects_total", source="postgres") >= reconnects + 2


async def _relay_connected(pg: Any, besides: frozenset[int] = frozenset()) -> bool:
    """A relay connection is open (other than those in ``besides``: killed already)."""
    return bool(await pg.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
        "AND datname = current_database() AND NOT pid = ANY($2::int[])", APPLICATION_NAME,
        list(besides)))


async def test_a_large_row_commits_and_a_notes_only_update_is_not_captured(
    pg: Any, redis: Redis, settings: Settings, table: str
) -> None:
    big = "x" * 1_000_000
    row_id = await pg.fetchval(
        f'INSERT INTO "{table}" (phone, phone_number_id, notes) VALUES ($1, $2, $3) RETURNING id',
        "5511", "chan", big)
    await pg.execute(f'UPDATE "{table}" SET assigned_to = $1, bot_flow_id = $2, notes = $3 '
                     "WHERE id = $4", "bot", "flow-" + "y" * 200, big + "z", row_id)
    assert await pg.fetchval(f'SELECT length(notes) FROM "{table}" WHERE id = $1', row_id) == 1_000_001
    assert await outbox_count(pg, table) == 2
    await pg.execute(f'UPDATE "{table}" SET notes = $1 WHERE id = $2', "short", row_id)
    assert await outbox_count(pg, table) == 2
    async with relay(settings, redis):
        async def published() -> bool:
            return len(await changes(redis, settings)) == 2
        await eventually(published, message="two changes on the stream")
    created, assigned = await changes(redis, settings)
    assert isinstance(created, ConversationCreated)
    assert isinstance(assigned, ConversationBotAssigned)
    assert assigned.key == "5511:chan" and assigned.row and assigned.row.assigned_to == "bot"


async def test_two_relays_publish_every_change(
    pg: Any, redis: Redis, settings: Settings, table: str
) -> None:
    ids = await insert_rows(pg, table, 20)
    for i in range(300):
        await pg.execute(f'UPDATE "{table}" SET bot_flow_id = $1 WHERE id = $2', f"a{i}", ids[i % 20])
    async with relay(settings, redis), relay(settings, redis):
        for i in range(700):
            await pg.execute(f'UPDATE "{table}" SET bot_flow_id = $1 WHERE id = $2',
                             f"b{i}", ids[i % 20])

        async def all_published() -> bool:
            return len({e.outbox_id for e in await changes(redis, settings)}) == 1020
        await eventually(all_published, message="1,020 distinct changes on the stream")
        await eventually(lambda: _zero(outbox_count(pg, table)), message="an empty outbox")
    by_outbox: dict[int, set[str]] = {}
    for event in await changes(redis, settings):
        by_outbox.setdefault(event.outbox_id, set()).add(event.id)
    assert all(len(event_ids) == 1 for event_ids in by_outbox.values())
    markers = [e for e in await stream(redis, settings) if isinstance(e, SourceResynced)]
    assert len(markers) == 2


async def test_a_bad_outbox_row_is_reported_and_skipped(
    pg: Any, redis: Redis, settings: Settings, table: str
) -> None:
    outbox = outbox_names(table).qualified_outbox
    await pg.execute(f"INSERT INTO {outbox} (op, old_row, new_row) VALUES "
                     """('UPDATE', '{"nope": 1}', '{"nope": 2}')""")
    await insert_rows(pg, table, 1)
    before = metric("reconciler_invalid_inputs_total", source="postgres", reason="invalid_row")
    async with relay(settings, redis):
        async def published() -> bool:
            return len(await changes(redis, settings)) == 1
        await eventually(published, message="the good row on the stream")
        await insert_rows(pg, table, 1)

        async def second() -> bool:
            return len(await changes(redis, settings)) == 2
        await eventually(second, message="the relay still publishing")
    assert metric("reconciler_invalid_inputs_total", source="postgres",
                  reason="invalid_row") == before + 1
    assert await pg.fetchval(f"SELECT failed FROM {outbox}") == "invalid_row"


# -- classification, on plain values ------------------------------------------

def row(**changes: Any) -> ConversationRow:
    base: dict[str, Any] = {"id": "1", "phone": "5511", "channel": "chan", "status": "active"}
    return ConversationRow(**{**base, **changes})


BOT = {"assigned_to": "bot", "bot_flow_id": "f1", "bot_started_at": datetime(2024, 1, 1, tzinfo=UTC)}


@pytest.mark.parametrize(("op", "old", "new", "expected"), [
    ("INSERT", None, row(), ConversationCreated),
    ("INSERT", None, row(**BOT), ConversationBotAssigned),
    ("INSERT", None, row(status="closed", **BOT), ConversationCreated),
    ("UPDATE", row(), row(**BOT), ConversationBotAssigned),
    ("UPDATE", row(assigned_to="agent"), row(assigned_to="bot"), ConversationBotAssigned),
    ("UPDATE", row(**BOT), row(**{**BOT, "bot_flow_id": None}), ConversationBotFlowCleared),
    ("UPDATE", row(**BOT), row(**{**BOT, "bot_flow_id": "f2"}), ConversationChanged),
    ("UPDATE", row(**BOT), row(**{**BOT, "assigned_to": "agent"}), ConversationChanged),
    ("UPDATE", row(**{**BOT, "bot_flow_id": None}), row(**BOT), ConversationChanged),
    ("UPDATE", row(**BOT), row(status="closed", **BOT), ConversationClosed),
    ("UPDATE", row(status="closed"), row(), ConversationLeftClosed),
    ("UPDATE", row(status="closed"), row(**BOT), ConversationLeftClosed),
    ("DELETE", row(**BOT), None, ConversationDeleted),
])
def test_classification(op: str, old: ConversationRow | None, new: ConversationRow | None,
                        expected: type) -> None:
    assert classify(op, old, new) is expected


def test_event_from_row_carries_both_images_and_a_derived_id() -> None:
    at = datetime(2024, 5, 1, 12, tzinfo=UTC)
    old, new = row(**BOT), row(**{**BOT, "bot_flow_id": None})
    event = event_from_row(table="t", outbox_id=7, op="UPDATE", old=msgspec.json.encode(old),
                           new=msgspec.json.encode(new), created_at=at)
    assert isinstance(event, ConversationBotFlowCleared)
    assert (event.row, event.previous, event.key) == (new, old, "5511:chan")
    assert event.id == derived_id(at, "outbox:t:7") and event.occurred_at == at
    deleted = event_from_row(table="t", outbox_id=8, op="DELETE", old=msgspec.json.encode(old),
                             new=None, created_at=at)
    assert isinstance(deleted, ConversationDeleted) and deleted.row is None and deleted.key == "5511:chan"


@pytest.mark.parametrize(("op", "old", "new", "reason"), [
    ("TRUNCATE", None, b"{}", "invalid_op"),
    ("UPDATE", b"not json", b"{}", "invalid_row"),
    ("INSERT", None, b'{"id": "1", "phone": null, "channel": "c", "status": "active"}', "invalid_row"),
    ("INSERT", None, b'{"id": "1", "phone": "", "channel": "c", "status": "active"}', "invalid_row"),
    ("INSERT", None, None, "missing_row"),
    ("INSERT", None, b'{"id": "1", "phone": "1", "channel": "c", "status": "active", "bot_flow_id": "'
     + b"f" * 300_000 + b'"}', "oversized"),
])
def test_bad_rows_raise_a_typed_error(op: str, old: bytes | None, new: bytes | None,
                                      reason: str) -> None:
    with pytest.raises(BadOutboxRow) as caught:
        event_from_row(table="t", outbox_id=1, op=op, old=old, new=new,
                       created_at=datetime.now(UTC))
    assert caught.value.reason == reason


async def test_the_relays_connection_plans_its_batch_reads_generically(
    redis: Redis, settings: Settings, table: str
) -> None:
    """The first five batch reads after a big statement, planned for their values, took
    340-600 ms each in the backlog bench; the relay's session plans generically."""
    conn = await OutboxRelay(settings, Publisher(redis, settings.keys)).connect()
    try:
        assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
        assert await conn.fetchval("SHOW application_name") == APPLICATION_NAME
    finally:
        await conn.close()
