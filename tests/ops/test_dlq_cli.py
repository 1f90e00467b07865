"""``reconciler dlq list|retry|drop`` against a real Redis: reversible and audited."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from consumers.deadletter import Failed, dead_letter
from events import codec
from events.contract import ActionRecorded
from events.keys import KeySpace
from events.publisher import Publisher
from events.settings import Settings
from tests.ops.cli_support import cli
from tests.support import one_line_per_action, recorded, request


async def two_dead_letters(redis: Redis, keys: KeySpace) -> list[str]:
    stream = keys.conversations_stream
    await redis.xgroup_create(stream, "conversations", id="0", mkstream=True)
    await Publisher(redis, keys).publish_many([request("1:1"), request("2:2")])
    read = await redis.xreadgroup("conversations", "w", {stream: ">"}, count=2)
    failed = [Failed(stream, i.decode(), fields) for i, fields in read[0][1]]
    await dead_letter(redis, deadletter_stream=keys.deadletter_stream, group="conversations",
                      failed=failed, reason="permanent", error="flow table missing")
    return [i.decode() for i, _ in await redis.xrange(keys.deadletter_stream)]


async def audit(redis: Redis, keys: KeySpace) -> list[ActionRecorded]:
    return one_line_per_action(await recorded(redis, keys))


async def test_list_retry_and_drop(settings: Settings, redis: Redis, keys: KeySpace) -> None:
    first, second = await two_dead_letters(redis, keys)

    code, out, err = await cli(settings, "--json", "dlq", "list")
    assert code == 0, err
    letters = json.loads(out)["dead_letters"]
    assert [(x["entry_id"], x["key"], x["error"]) for x in letters] == [
        (first, "1:1", "flow table missing"), (second, "2:2", "flow table missing")]
    code, out, _ = await cli(settings, "dlq", "list")
    assert "ENTRY_ID" in out and first in out

    code, out, err = await cli(settings, "dlq", "drop", second, "--dry-run")
    assert code == 0, err
    assert await redis.xlen(keys.deadletter_stream) == 2  # a dry run changes nothing
    (planned,) = await audit(redis, keys)
    assert (planned.action, planned.outcome) == ("dlq_drop", "planned")

    before = await redis.xlen(keys.conversations_stream)
    code, out, err = await cli(settings, "--json", "dlq", "retry", first)
    assert code == 0, err
    new_id = json.loads(out)["new_id"]
    (_, fields), = await redis.xrange(keys.conversations_stream, new_id, new_id)
    assert codec.decode(fields).key == "1:1"
    assert await redis.xlen(keys.conversations_stream) == before + 1

    code, _, err = await cli(settings, "dlq", "drop", second)
    assert code == 0, err
    assert await redis.xlen(keys.deadletter_stream) == 0
    dropped = (await audit(redis, keys))[-1]
    assert (dropped.action, dropped.outcome) == ("dlq_drop", "done")
    assert dropped.before is not None and dropped.before["dl_error"] == "flow table missing"


async def test_unknown_or_bad_ids_are_one_clear_line(settings: Settings, redis: Redis) -> None:
    code, _, err = await cli(settings, "dlq", "retry", "1-0")
    assert code == 1 and err.strip() == "reconciler: error: no dead letter 1-0"
    code, _, err = await cli(settings, "dlq", "drop", "../etc")
    assert code == 1 and "not a stream entry id" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
