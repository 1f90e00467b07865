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
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from consumers.conversation_group import STILL_CHANGING
from consumers.keyqueue import Delivery
from consumers.own_echoes import OwnEchoes
from events import codec
from events.contract import ReconcileRequested, RowChange, SessionFileRemoved, SessionFileWritten
from events.envelope import new_event
from events.settings import Settings
from events.sources.outbox import CONSUMERS_APPLICATION_NAME, outbox_names
from ops import capture_install
from tests.consumers.test_rows import (
    FLOW,
    audit_actions,
    bot_fields_left,
    crm_table,
    drained,
    insert,
    running,
    write_file,
)
from tests.events.test_postgres_relay import lane_changes as lanes
from tests.events.test_postgres_relay import relay
from tests.support import create_conversations_table, eventually, group_caught_up, lane_entries


@pytest.fixture
async def as_consumers(database_url: str) -> AsyncIterator[Any]:
    """A connection named as the consumers' pool names its connections."""
    conn = await asyncpg.connect(database_url,
                                 server_settings={"application_name": CONSUMERS_APPLICATION_NAME})
    yield conn
    await conn.close()


async def started(redis: Redis, settings: Settings) -> bool:
    """The first start's listing and folder snapshot are on the bulk lane and handled, so
    nothing of theirs is in a batch with what comes next."""
    lanes = settings.keys.lanes("conversations")
    if await redis.xlen(lanes[1]) < 2:
        return False
    return all([await group_caught_up(redis, stream, "conversations") for stream in lanes])


OLDER_CAPTURE = "older than version 6: the consumers' own changes are published live"


def skipped(kind: str) -> float:
    return REGISTRY.get_sample_value("reconciler_echoes_skipped_total", {"kind": kind}) or 0.0


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
    pg: Any, as_consumers: Any, redis: Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A relay on a version 5 outbox publishes the consumers' changes live and says why;
    rows left by version 5 have no origin after the upgrade, and are published live too."""
    await create_conversations_table(pg, settings.table)
    await capture_install.install(pg, settings, up_to=5)
    row_id = await pg.fetchval(f'INSERT INTO "{settings.table}" (phone, phone_number_id) '
                               "VALUES ('5511', 'chan') RETURNING id")
    update = f'UPDATE "{settings.table}" SET bot_flow_id = $1 WHERE id = $2'
    await as_consumers.execute(update, "old", row_id)
    async with relay(settings, redis):
        await published(redis, settings, 2)
    assert flows((await lanes(redis, settings))["live"]) == ["old"]
    assert OLDER_CAPTURE in caplog.text
    caplog.clear()
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
        await published(redis, settings, 5)
    found = await lanes(redis, settings)
    assert (flows(found["live"]), flows(found["bulk"])) == (["old", "before", "theirs"], ["after"])
    assert OLDER_CAPTURE not in caplog.text
    await capture_install.uninstall(pg, settings, force=True)


async def test_a_deployments_own_clear_comes_back_on_the_bulk_lane(
    pg: Any, redis: Redis, settings: Settings
) -> None:
    """The CRM closes a bot chat; the consumers clear its bot fields and quarantine its file.
    The close was the CRM's (live), the clear the consumers' own (bulk)."""
    await crm_table(pg, settings, "bigserial")
    phone = "5521987650001"
    row_id = await insert(pg, settings, phone, "active", "bot", FLOW, True)
    file = write_file(settings, phone, FLOW, age_s=600)  # the bot run began ten minutes ago
    before = {kind: skipped(kind) for kind in ("row", "file")}
    async with running(settings, redis):
        await eventually(lambda: started(redis, settings), message="the listing and snapshot handled")
        await pg.execute(f"UPDATE {settings.table} SET status = 'closed' WHERE id = $1", row_id)

        async def cleared_and_echoes_skipped() -> bool:
            return (await bot_fields_left(pg, settings) == 0 and not file.exists()
                    and all(skipped(kind) == before[kind] + 1 for kind in before))
        await eventually(cleared_and_echoes_skipped, timeout=60,
                         message="the clear, the quarantine, and both echoes skipped")
        await eventually(lambda: drained(redis, settings), message="the live lane handled")
    assert all(skipped(kind) == before[kind] + 1 for kind in before)
    found = await lanes(redis, settings)
    assert [(e.previous.status, e.row.status) for e in found["live"] if e.previous and e.row] == [
        ("active", "closed")]
    (echo,) = [e for e in found["bulk"] if e.previous is not None]
    assert echo.previous and echo.previous.bot_flow_id == FLOW and echo.row
    assert (echo.row.status, echo.row.bot_flow_id, echo.row.assigned_to) == ("closed", None, None)


UNDOES_CLEARS = """
CREATE FUNCTION {table}_keep_bot() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
  IF NEW.bot_flow_id IS NULL AND OLD.bot_flow_id IS NOT NULL THEN
    NEW.assigned_to := OLD.assigned_to; NEW.bot_flow_id := OLD.bot_flow_id;
    NEW.bot_started_at := OLD.bot_started_at;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER {table}_keep_bot BEFORE UPDATE ON {table}
  FOR EACH ROW EXECUTE FUNCTION {table}_keep_bot();
"""


async def test_a_crm_trigger_that_undoes_every_clear_is_judged_again_once_not_forever(
    pg: Any, redis: Redis, settings: Settings
) -> None:
    """Each clear takes (one row updated) and the CRM's trigger puts the bot fields back:
    the handling runs out of rounds.  Its last change's echo would be skipped, so it asks
    for one more look; that one runs out too and asks for nothing more."""
    await crm_table(pg, settings, "uuid")
    await pg.execute(UNDOES_CLEARS.format(table=settings.table))
    await insert(pg, settings, "5521987650002", "closed", "bot", FLOW, True)
    async with running(settings, redis):
        async def judged_twice() -> bool:
            causes = {a.cause_id for a in await audit_actions(redis, settings)
                      if a.action == "clear_bot_fields" and a.outcome == "done"}
            return len(causes) == 2 and await drained(redis, settings)
        await eventually(judged_twice, timeout=60, message="the clear made for two causes")
        requests = [e for _, fields in await lane_entries(redis, settings.keys, "conversations")
                    if isinstance(e := codec.decode(fields), ReconcileRequested)
                    and e.reason == STILL_CHANGING]
    assert len(requests) == 1
    assert await bot_fields_left(pg, settings) == 1, "the CRM's trigger kept them"


def removed(name: str) -> Delivery:
    return Delivery("s", "1-0", new_event(SessionFileRemoved, source="folder", key="k", name=name), {})


def written(name: str) -> Delivery:
    return Delivery("s", "2-0", new_event(SessionFileWritten, source="folder", key="k", name=name,
                                          flow_id=None, content_sha256="0" * 64, size_bytes=2), {})


def test_a_removal_is_an_echo_only_right_after_this_handler_moved_the_file() -> None:
    echoes = OwnEchoes(limit=2)
    echoes.moved_away("a.json")
    assert not echoes.only_echoes([removed("b.json")]), "moved by someone else"
    assert echoes.only_echoes([removed("a.json")])
    assert not echoes.only_echoes([removed("a.json")]), "a second removal is news"
    echoes.moved_away("a.json")
    assert not echoes.only_echoes([written("a.json"), removed("a.json")])
    assert not echoes.only_echoes([removed("a.json")]), "written again since the move"
    for name in ("a.json", "b.json", "c.json"):
        echoes.moved_away(name)
    assert [echoes.only_echoes([removed(n)]) for n in ("a.json", "b.json", "c.json")] == [
        False, True, True], "the oldest is forgotten past the limit"
