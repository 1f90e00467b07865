"""Rebuilding the read models from the streams gives exactly the live-built state."""

from __future__ import annotations

import asyncio
import random

from redis.asyncio import Redis

from events.contract import EventBase
from events.keys import KeySpace
from events.publisher import Publisher
from events.settings import Settings
from projections import queries
from projections.models import models
from projections.rebuild import REPLAY_COMMIT_ITEMS, Progress, replay
from projections.runner import run_projections
from projections.store import ProjectionStore
from tests.projections import factory as f
from tests.support import eventually

EVENTS = 100_000


def story(count: int, seed: int = 7) -> list[EventBase]:
    """A mixed, deterministic stream: rows, files, timeouts, actions and sessions."""
    rng = random.Random(seed)
    out: list[EventBase] = []
    for i in range(count):
        t = i / 100
        key = f"55{rng.randrange(5000):06d}:9407{rng.randrange(3)}"
        session = f"s{rng.randrange(200)}"
        roll = rng.random()
        if roll < 0.35:
            out.append(f.db(key, t, status=rng.choice(["active", "active", "closed"]),
                            flow=rng.choice(["flow-a", None])))
        elif roll < 0.6:
            out.append(f.file_written(key, t, flow=rng.choice(["flow-a", "flow-b"])))
        elif roll < 0.7:
            out.append(f.file_removed(key, t))
        elif roll < 0.75:
            out.append(f.timed_out(key, t))
        elif roll < 0.85:
            out.append(f.action(key, t, rng.choice(["quarantine_file", "backfill_flow"])))
        elif roll < 0.9:
            out.append(rng.choice([f.started, f.expired])(session, t))
        elif roll < 0.95:
            out.append(f.queue_seen(session, t, rng.randrange(10), "queue:" + session))
        else:
            out.append(f.action(session, t, "park_queue", after={"count": rng.randrange(1, 9)}))
    return out


async def state(redis: Redis, keys: KeySpace) -> dict[str, tuple[int, dict[str, bytes], dict[str, str]]]:
    out = {}
    for name in models():
        store = ProjectionStore(redis, keys, name)
        version = await store.ensure_version()
        out[name] = (version, await store.all_items(version), await store.positions(version))
    return out


async def test_replay_rebuilds_the_live_state_entry_for_entry(
    settings: Settings, redis: Redis, keys: KeySpace,
) -> None:
    stop = asyncio.Event()
    role = asyncio.create_task(run_projections(settings, redis, stop))
    try:
        ids = await Publisher(redis, keys).publish_many(story(EVENTS))
        last: dict[str, str] = {}
        for stream in (keys.conversations_stream, keys.sessions_stream, keys.audit_stream):
            last[stream] = (await redis.xinfo_stream(stream))["last-generated-id"].decode()
        assert len(ids) == EVENTS

        async def caught_up() -> bool:
            live = await state(redis, keys)
            return all(all(positions.get(s) == last[s] for s in positions) and len(positions) == 2
                       for _, _, positions in live.values())

        await eventually(caught_up, timeout=240, interval=0.5, message="the live runner to catch up")
        live = await state(redis, keys)

        seen: list[Progress] = []
        for name in models():
            # conversations commits whenever 2,000 items wait; sessions only once, at the end
            commit_items = 2_000 if name == "conversations" else REPLAY_COMMIT_ITEMS
            result = await replay(redis, keys, name, progress=seen.append, commit_items=commit_items)
            assert result.replaced == live[name][0] and result.version != live[name][0]
        rebuilt = await state(redis, keys)
        for name in models():
            assert rebuilt[name][0] != live[name][0]
            assert rebuilt[name][2] == live[name][2]
            assert rebuilt[name][1] == live[name][1], f"{name}: rebuilt items differ"
        assert seen[-1].applied == seen[-1].total
        assert not await redis.exists(ProjectionStore(redis, keys, "conversations").key(
            live["conversations"][0], "items"))  # the old version is gone

        # the live runner follows the switch and keeps folding into the new version
        late = f.file_written("5500000001:777", 2000)
        await Publisher(redis, keys).publish(late)

        async def folded() -> bool:
            return await queries.conversation(redis, keys, late.key) is not None

        await eventually(folded, timeout=60, message="the runner to fold into the new version")
    finally:
        stop.set()
        await asyncio.wait_for(role, timeout=30)
