"""The rows of the keys handled at the same time are read by one query.

Against a real PostgreSQL and a CRM's own table (uuid ids, several rows per
number, extra columns, a trigger of its own), through a real pool as the
consumers role reads it; the pool only counts the queries it is sent
(the ``row-reads`` bench's :class:`~ops.bench.row_reads.CountingPool`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from consumers.errors import PermanentError
from consumers.stores.conversations_sql import ConversationsSql
from consumers.stores.read_batches import ReadBatches
from events.settings import Settings
from ops.bench.row_reads import CountingPool
from tests.consumers.test_rows import CHANNEL, crm_table, insert
from tests.support import eventually


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[CountingPool]:
    async with asyncpg.create_pool(database_url, min_size=2, max_size=4) as real:
        yield CountingPool(real)


async def test_keys_read_at_once_go_out_in_one_query_each_with_its_own_rows(
    pg: Any, settings: Settings, pool: CountingPool,
) -> None:
    await crm_table(pg, settings, "uuid", install=False)
    expected: dict[str, list[Any]] = {}
    for n in range(30):
        phone = f"52155{n:05d}"
        active = await insert(pg, settings, phone, "active", "bot", "flow", True)
        closed = [await insert(pg, settings, phone, "closed", None, None, False)
                  for _ in range(n % 3)]
        expected[phone] = [active, *closed[::-1]]  # the row that can matter, then latest first
    expected["5215599999"] = []  # a number with no row
    store = ConversationsSql(pool, settings)
    await store.read_all("5215500000", CHANNEL)  # settles the ordering and the key types
    pool.queries = 0

    found = await asyncio.gather(*(store.read_all(phone, CHANNEL) for phone in expected))

    assert {p: [r.id for r in rows] for p, rows in zip(expected, found, strict=True)} == expected
    # The first read goes out alone, before the others are asked; the 30 others wait for it
    # and go out together (one query each would be 31).
    assert pool.queries <= 2, f"{pool.queries} queries for {len(expected)} keys read at once"


async def test_a_failed_read_is_raised_in_every_handling_that_waited_for_it(
    pg: Any, settings: Settings, pool: CountingPool,
) -> None:
    await crm_table(pg, settings, "uuid", install=False)
    store = ConversationsSql(pool, replace(settings, order_column="opened_at"))

    found = await asyncio.gather(*(store.read_all(f"52166{n:05d}", CHANNEL) for n in range(5)),
                                 return_exceptions=True)

    assert all(isinstance(e, PermanentError) and "RECONCILER_ORDER_COLUMN" in str(e)
               for e in found), found


async def test_a_reading_handling_cancelled_hands_the_others_keys_to_the_next_read(
    pg: Any, settings: Settings, pool: CountingPool, database_url: str,
) -> None:
    await crm_table(pg, settings, "bigserial", install=False)
    rows = {p: await insert(pg, settings, p, "active", "bot", "flow", True)
            for p in ("5217700001", "5217700002", "5217700003")}
    store = ConversationsSql(pool, settings)
    await store.read_all("5217700001", CHANNEL)
    locker = await asyncpg.connect(database_url)
    try:
        lock = locker.transaction()
        await lock.start()
        await locker.execute(f"LOCK TABLE {settings.table} IN ACCESS EXCLUSIVE MODE")
        reading = asyncio.create_task(store.read_all("5217700001", CHANNEL))

        async def blocked() -> bool:
            return bool(await pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%reconciler_keys%'"))
        await eventually(blocked, timeout=30, message="the first read to wait on the lock")
        waiting = [asyncio.create_task(store.read_all(p, CHANNEL)) for p in rows]
        await asyncio.sleep(0)  # they are asked while the first read is in flight
        reading.cancel()
        await lock.rollback()
        answers = await asyncio.wait_for(asyncio.gather(*waiting), timeout=30)
    finally:
        await locker.close()

    assert reading.cancelled()
    assert [[r.id for r in found] for found in answers] == [[i] for i in rows.values()]


async def test_the_keys_are_compared_as_the_columns_own_types(
    pg: Any, settings: Settings, pool: CountingPool,
) -> None:
    await pg.execute(f"CREATE TABLE {settings.table} (id bigserial PRIMARY KEY,"
                     " phone varchar(20) NOT NULL, phone_number_id bigint NOT NULL,"
                     " status text NOT NULL, assigned_to text, bot_flow_id text,"
                     " bot_started_at timestamp)")
    await pg.execute(f"CREATE INDEX ON {settings.table} (phone, phone_number_id)")
    row = await pg.fetchval(
        f"INSERT INTO {settings.table} (phone, phone_number_id, status, assigned_to, bot_flow_id,"
        " bot_started_at) VALUES ('5218800001', $1, 'active', 'bot', 'flow', now()) RETURNING id",
        int(CHANNEL))

    found = await ConversationsSql(pool, settings).read_all("5218800001", CHANNEL)

    assert [(r.id, r.bot_flow_id) for r in found] == [(row, "flow")]
    assert found[0].bot_started_at is not None and found[0].bot_started_at.tzinfo is not None


async def test_a_waiter_cancelled_as_the_turn_reaches_it_passes_the_turn_on() -> None:
    """The batching itself, with a read that the test releases: the handling handed the next
    read is cancelled before it runs, and the one after it still gets its answer."""
    release = asyncio.Event()
    reads: list[list[str]] = []

    async def read_many(keys: Sequence[str]) -> dict[str, str]:
        reads.append(list(keys))
        if len(reads) == 1:
            await release.wait()
            # Runs after this read has passed the turn to "b", before "b" wakes to take it.
            asyncio.get_running_loop().call_soon(waiters["b"].cancel)
        return {k: k.upper() for k in keys}

    batches: ReadBatches[str, str] = ReadBatches(read_many, max_keys=10)
    first = asyncio.create_task(batches.get("a"))
    await asyncio.sleep(0)  # "a" is reading
    waiters = {k: asyncio.create_task(batches.get(k)) for k in ("b", "c")}
    await asyncio.sleep(0)  # "b" and "c" wait for it
    release.set()

    assert await asyncio.wait_for(first, timeout=30) == "A"
    assert await asyncio.wait_for(waiters["c"], timeout=30) == "C"
    assert waiters["b"].cancelled()
    assert reads == [["a"], ["c"]]
