"""Retention end to end: a bulk change larger than the cap, and entries lost by other hands.

Real PostgreSQL (capture trigger, outbox), the real relay and the real
consumers role, real Redis.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import REGISTRY
from redis.asyncio import Redis

from consumers.consumers_role import run_consumers
from events import codec
from events.contract import ReconcileRequested
from events.publisher import Publisher, Retention
from events.settings import Settings
from events.sources.outbox import outbox_names
from events.sources.postgres import RelayOptions, run_relay
from ops import capture_install
from tests.conftest import settings_with
from tests.support import create_conversations_table, eventually, request

CHANNEL = "940740243"
ROWS = 20_000
CAP = 5_000
FAST = RelayOptions(keepalive_s=0.5, backoff_s=0.05, backoff_max_s=0.5, query_timeout_s=30.0)


@asynccontextmanager
async def running(role: Any, settings: Settings, redis: Redis, *args: Any) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(role(settings, redis, stop, *args))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def with_bot_fields(pg: Any, settings: Settings) -> int:
    count: int = await pg.fetchval(
        f'SELECT count(*) FROM "{settings.table}" WHERE bot_flow_id IS NOT NULL '
        "OR bot_started_at IS NOT NULL OR assigned_to = 'bot'")
    return count


def gaps(group: str) -> float:
    return REGISTRY.get_sample_value(
        "reconciler_stream_gaps_total", {"stream": "conversations", "group": group}) or 0.0


async def stage(pg: Any, settings: Settings) -> None:
    """Active bot rows (bigserial ids, an index on the key, an old closed row beside some keys)."""
    table = settings.table
    await create_conversations_table(pg, table)
    await pg.execute(f'CREATE INDEX ON "{table}" (phone, phone_number_id)')
    await pg.execute(
        f'INSERT INTO "{table}" (phone, phone_number_id, status) '
        f"SELECT '55' || g, '{CHANNEL}', 'closed' FROM generate_series(1, $1, 7) g", ROWS)
    await pg.execute(
        f'INSERT INTO "{table}" (phone, phone_number_id, status, assigned_to, bot_flow_id, '
        f"bot_started_at) SELECT '55' || g, '{CHANNEL}', 'active', 'bot', 'flow-' || (g % 5), "
        "now() FROM generate_series(1, $1) g", ROWS)
    await capture_install.install(pg, settings)


async def test_a_bulk_change_larger_than_the_cap_is_reconciled_completely(
    pg: Any, redis: Redis, settings: Settings
) -> None:
    settings = settings_with(settings, stream_max_len=CAP)
    lanes = settings.keys.lanes("conversations")  # one statement's rows: the bulk lane
    await stage(pg, settings)
    for stream in lanes:
        await redis.xgroup_create(stream, "conversations", id="0", mkstream=True)
    gaps_before = gaps("conversations")
    # The nightly job: one statement closes every bot chat and leaves the bot fields behind.
    await pg.execute(f"UPDATE \"{settings.table}\" SET status = 'closed' WHERE status = 'active'")

    async with running(run_relay, settings, redis, FAST):
        outbox = outbox_names(settings.table).qualified_outbox

        async def drained() -> bool:
            return await pg.fetchval(f"SELECT count(*) FROM {outbox}") == 0
        await eventually(drained, timeout=300, message="the relay to publish the outbox")
        # four times the cap, unread: nothing trimmed
        assert sum([await redis.xlen(stream) for stream in lanes]) >= ROWS

        async with running(run_consumers, settings, redis):
            async def reconciled() -> bool:
                return await with_bot_fields(pg, settings) == 0
            await eventually(reconciled, timeout=600, interval=0.5,
                             message="every closed row to lose its bot fields")

            async def acked() -> bool:
                groups = [g for stream in lanes for g in await redis.xinfo_groups(stream)]
                return all(g["pending"] == 0 and g["lag"] == 0 for g in groups)
            await eventually(acked, timeout=120, message="every entry to be acked")
        # The next change (a live one) trims what was read and acked, back to about the cap,
        # on both lanes.
        await pg.execute(f"UPDATE \"{settings.table}\" SET status = 'active', "
                         "assigned_to = 'agent-1' WHERE id = (SELECT min(id) FROM "
                         f'"{settings.table}")')

        async def trimmed() -> bool:
            return all([await redis.xlen(stream) < CAP + 1000 for stream in lanes])
        await eventually(trimmed, timeout=60, message="the stream to be trimmed to its cap")
    assert gaps("conversations") == gaps_before


async def test_entries_trimmed_by_someone_else_are_re_listed(
    pg: Any, redis: Redis, settings: Settings
) -> None:
    stream = settings.keys.conversations_stream
    await create_conversations_table(pg, settings.table)
    await pg.execute(
        f'INSERT INTO "{settings.table}" (phone, phone_number_id, status, assigned_to) '
        f"VALUES ('5522', '{CHANNEL}', 'active', 'agent-2')")
    (settings.sessions_dir / f"whatsapp_5533_{CHANNEL}.json").write_text(json.dumps({"flowId": "f"}))
    publisher = Publisher(redis, settings.keys, Retention(max_len=0))
    before = gaps("conversations")
    listing = settings.keys.source_state(f"listing:{settings.table}")
    await redis.hset(listing, "listed_at", repr(time.time()))  # the table listing is not due
    async with running(run_consumers, settings, redis):
        await publisher.publish(request(f"5599:{CHANNEL}"))

        async def read_once() -> bool:
            groups = await redis.xinfo_groups(stream)
            return bool(groups) and groups[0]["lag"] == 0 and groups[0]["pending"] == 0
        await eventually(read_once, message="the first entry to be handled")
    # While the consumers are down (their table listing of the first start is done), a row
    # goes wrong with no capture installed, and changes are published and trimmed away unread.
    await pg.execute(
        f'INSERT INTO "{settings.table}" (phone, phone_number_id, status, assigned_to, '
        f"bot_flow_id, bot_started_at) VALUES ('5511', '{CHANNEL}', 'closed', 'bot', 'f', now())")
    await publisher.publish_many([request(f"55{n}:{CHANNEL}") for n in range(100, 400)])
    await redis.xtrim(stream, maxlen=0)
    async with running(run_consumers, settings, redis):
        async def cleared() -> bool:
            return await with_bot_fields(pg, settings) == 0
        await eventually(cleared, timeout=60, message="the re-listed row to be reconciled")
    assert gaps("conversations") == before + 1
    relisted = {e.key for _, fields in await redis.xrange(settings.keys.bulk_stream("conversations"))
                if isinstance(e := codec.decode(fields), ReconcileRequested) and e.source == "reconciler"}
    # The rows the table listing reads too (the agent's active row: a bot's file beside it
    # would be stale), and the file; not the keys of the trimmed requests, which have neither.
    assert relisted == {f"5511:{CHANNEL}", f"5522:{CHANNEL}", f"5533:{CHANNEL}"}
