"""``reconciler status`` and ``reconciler replay`` against a real Redis."""

from __future__ import annotations

import json
import time

from redis.asyncio import Redis

from consumers.deadletter import Failed, dead_letter
from events.contract import SourceResynced
from events.ids import new_event_id
from events.keys import KeySpace
from events.publisher import Publisher
from events.settings import Settings
from tests.ops.cli_support import cli
from tests.projections import factory as f
from tests.support import request

KEY = "5511999:940740243"


async def test_status_shows_groups_dead_letters_sources_and_timers(
    settings: Settings, redis: Redis, keys: KeySpace,
) -> None:
    stream = keys.conversations_stream
    publisher = Publisher(redis, keys)
    await redis.xgroup_create(stream, "conversations", id="0", mkstream=True)
    await publisher.publish_many([request(KEY), request("5511888:940740243")])
    read = await redis.xreadgroup("conversations", "worker-1", {stream: ">"}, count=2)
    (first_id, first_fields), _ = read[0][1]
    await dead_letter(redis, deadletter_stream=keys.deadletter_stream, group="conversations",
                      failed=[Failed(stream, first_id.decode(), first_fields)], reason="permanent",
                      error="bad payload")
    await publisher.publish_many([f.file_written("5511777:1", time.time() - f.T0.timestamp())])
    await publisher.publish(SourceResynced(id=new_event_id(), occurred_at=f.T0, source="folder",
                                           key="folder", reason="watcher restarted"))
    now_ms = int(time.time() * 1000)
    await redis.zadd(keys.deadlines(), {"due": now_ms - 1000, "later": now_ms + 3_600_000})

    code, out, err = await cli(settings, "--json", "status")
    assert code == 0, err
    status = json.loads(out)
    (group,) = status["groups"]
    assert (group["group"], group["consumers"], group["pending"], group["dead_letters"]) == (
        "conversations", 1, 1, 1)
    assert group["lag"] == 2  # the file event and the resync marker were never read
    assert (status["timers_due"], status["timers_scheduled"], status["dead_letters"]) == (1, 2, 1)
    folder = next(s for s in status["sources"] if s["source"] == "folder")
    assert folder["resyncs"] == 1 and folder["last_event_s_ago"] < 600

    code, out, _ = await cli(settings, "status")
    assert code == 0 and "GROUPS" in out and "conversations" in out and "OLDEST_PENDING_S" in out


async def test_replay_command_rebuilds_and_reports(settings: Settings, redis: Redis,
                                                   keys: KeySpace) -> None:
    await Publisher(redis, keys).publish_many(
        # the file was written 40 s before the row closed: past the settle window, so stale
        [f.file_written(KEY, 1), f.db(KEY, 41, status="closed"), f.started("default", 42)])
    code, out, err = await cli(settings, "--json", "replay", "conversations")
    assert code == 0, err
    result = json.loads(out)
    assert result["events"] == 2 and result["version"] == 1
    code, out, err = await cli(settings, "--json", "replay", "conversations")
    assert json.loads(out)["replaced_version"] == 1

    code, out, _ = await cli(settings, "--json", "status")
    rows = {p["projection"]: p for p in json.loads(out)["projections"]}
    assert rows["conversations"]["items"] == 1
    assert rows["conversations"]["inconsistent"] == {"stale_file": 1, "bot_fields_on_closed": 1}

    code, out, err = await cli(settings, "replay", "nonsense")
    assert code != 0 and "Traceback" not in err and "invalid choice" in err
