"""``/readyz`` "sources caught up" is true: each source's flag clears after its first snapshot."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from redis.asyncio import Redis

from events.readiness import READINESS
from events.settings import Settings
from events.sources.folder import run_watcher
from events.sources.gateway_leases import run_sessions_source
from tests.support import eventually


async def states() -> dict[str, tuple[bool, str]]:
    return {r.name: (r.ok, r.detail) for r in await READINESS.run() if r.name.startswith("source:")}


async def test_the_watcher_is_not_ready_until_its_first_snapshot_and_the_flag_ends_with_it(
    redis: Redis, settings: Settings
) -> None:
    later = settings.sessions_dir / "later"
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_watcher(replace(settings, sessions_dir=later), redis, stop)),
             asyncio.create_task(run_sessions_source(settings, redis, stop))]
    try:
        async def sessions_ready() -> bool:
            return (await states()).get("source:sessions") == (True, "")
        await eventually(sessions_ready, message="the sessions source's first listing")
        assert (await states())["source:files"] == (
            False, "first snapshot of the sessions folder not published yet")
        later.mkdir()

        async def files_ready() -> bool:
            return (await states()).get("source:files") == (True, "")
        await eventually(files_ready, message="the watcher's first snapshot")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert await states() == {}
