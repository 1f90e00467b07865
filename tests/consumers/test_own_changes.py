"""The consumers' own writes come back through the capture on the bulk lane, everyone else's live.

A nightly job's close of 100,000 chats makes the consumers clear 100,000 rows,
one transaction each.  Those clears come back as events that tell the consumers
nothing new (the handling that made each one observed its key again), so they
must not stand in the live lane in front of a user's change.  Against real
PostgreSQL and Redis: the relay alone, an outbox upgraded in place, and every
role of a deployment on a CRM's table.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from events import codec
from events.contract import RowChange
from events.settings import Settings
from events.sources.outbox import CONSUMERS_APPLICATION_NAME, outbox_names
from ops import capture_install
from tests.consumers.test_rows import FLOW, bot_fields_left, crm_table, insert, running, write_file
from tests.events.test_postgres_relay import relay
from tests.support import create_conversations_table, eventually


@pytest.fixture
async def as_consumers(database_url: str) -> AsyncIterator[Any]:
    """A connection named as the consumers' pool names its connections."""
    conn = await asyncpg.connect(database_url,
                                 server_settings={"application_name": CONSUMERS_APPLICATION_NAME})
    yield conn
    await conn.close()


async def lanes(redis: Redis, settings: Settings) -> dict[str, list[RowChange]]:
    """The row changes on each lane of the conversations stream."""
    live, bulk = settings.keys.lanes("conversations")
    out = {}
    for lane, stream in (("live", live), ("bulk", bulk)):
        events = [codec.decode(fields) for _, fields in await redis.xrange(stream)]
        out[lane] = [e for e in events if isinstance(e, RowChange)]
    return out


def flows(changes: list[RowChange]) -> list[str | None]:
    return [e.row.bot_flow_id if e.row else None for e in changes if e.previous is not None]


async def published(redis: Redis, settings: Settings, count: int) -> None:
    async def all_there() -> bool:
        return sum(len(c) for c in (await lanes(redis, settings)).values()) >= count
    await eventually(all_there, message=f"{count} row changes published")


async def test_the_consumers_single_changes_go_bulk_and_everyone_elses_live(
    pg: Any, as_consumers: Any, redis: Redis, settings: Settings, database_url: str
) -> None:
    await create_conversations_table(pg, settings.table)
    await capture_install.install(pg, settings)
    crm = await asyncpg.connect(database_url, server_settings={"application_name": "crm-api"})
    try:
        ids = [await pg.fetchval(f'INSERT INTO "{settings.table}" (phone, phone_number_id) '
                                 "VALUES ($1, 'chan') RETURNING id", f"55{i}") for i in range(3)]
        update = f'UPDATE "{settings.table}" SET bot_flow_id = $1 WHERE id = $2'
        for i in range(5):  # interleaved, one transaction each, as the consumers and a CRM write
            await crm.execute(update, f"crm-{i}", ids[0])
            await as_consumers.execute(update, f"ours-{i}", ids[1])
            await pg.execute(update, f"unnamed-{i}", ids[2])
        async with relay(settings, redis):
            await published(redis, settings, 3 + 15)
    finally:
        await crm.close()
    found = await lanes(redis, settings)
    assert flows(found["bulk"]) == [f"ours-{i}" for i in range(5)]
    assert flows(found["live"]) == [f"{who}-{i}" for i in range(5) for who in ("crm", "unnamed")]
    await capture_install.uninstall(pg, settings, force=True)


async def test_an_outbox_upgraded_to_version_6_marks_only_what_is_written_after(
    pg: Any, as_consumers: Any, redis: Redis, settings: Settings
) -> None:
    """Rows left by version 5 have no origin: the relay publishes them live, like a relay
    started before the upgrade publishes everything (it has no column to read)."""
    await create_conversations_table(pg, settings.table)
    await capture_install.install(pg, settings, up_to=5)
    row_id = await pg.fetchval(f'INSERT INTO "{settings.table}" (phone, phone_number_id) '
                               "VALUES ('5511', 'chan') RETURNING id")
    update = f'UPDATE "{settings.table}" SET bot_flow_id = $1 WHERE id = $2'
    await as_consumers.execute(update, "before", row_id)
    upgraded = await capture_install.install(pg, settings)
    assert upgraded.applied == ["0006_consumers_origin.sql"]
    await as_consumers.execute(update, "after", row_id)
    await pg.execute(update, "theirs", row_id)
    outbox = outbox_names(settings.table).qualified_outbox
    origins = [(json.loads(r["new_row"])["bot_flow_id"], r["origin"]) for r in await pg.fetch(
        f"SELECT new_row::text, origin FROM {outbox} WHERE op = 'UPDATE' ORDER BY id")]
    assert origins == [("before", None), ("after", "consumers"), ("theirs", None)]
    async with relay(settings, redis):
        await published(redis, settings, 4)
    found = await lanes(redis, settings)
    assert (flows(found["live"]), flows(found["bulk"])) == (["before", "theirs"], ["after"])
    await capture_install.uninstall(pg, settings, force=True)


async def test_a_deployments_own_clear_comes_back_on_the_bulk_lane(
    pg: Any, redis: Redis, settings: Settings
) -> None:
    """The CRM closes a bot chat; the consumers clear its bot fields and quarantine its file.
    The close was the CRM's (live), the clear the consumers' own (bulk)."""
    await crm_table(pg, settings, "bigserial")
    phone = "5521987650001"
    row_id = await insert(pg, settings, phone, "active", "bot", FLOW, True)
    file = write_file(settings, phone, FLOW)
    async with running(settings, redis):
        await pg.execute(f"UPDATE {settings.table} SET status = 'closed' WHERE id = $1", row_id)

        async def cleared_and_echoed() -> bool:
            return (await bot_fields_left(pg, settings) == 0 and not file.exists()
                    and bool(flows((await lanes(redis, settings))["bulk"])))
        await eventually(cleared_and_echoed, timeout=60, message="the clear and its echo")
    found = await lanes(redis, settings)
    assert [(e.previous.status, e.row.status) for e in found["live"] if e.previous and e.row] == [
        ("active", "closed")]
    (echo,) = [e for e in found["bulk"] if e.previous is not None]
    assert echo.previous and echo.previous.bot_flow_id == FLOW and echo.row
    assert (echo.row.status, echo.row.bot_flow_id, echo.row.assigned_to) == ("closed", None, None)
