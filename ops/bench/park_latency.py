"""Park latency: from a push to the queue of a dead session to its messages parked.

The real ``sessions`` consumer group (:class:`consumers.runtime.GroupConsumer`
running :class:`consumers.sessions.SessionsHandler`) runs against Redis; no
session has a lease.  ``--pushes`` times (default 1,000), one after another,
the bench RPUSHes one message to the queue of one of ``--sessions`` sessions
and waits (XREAD BLOCK on the audit stream) for the ``park_queue`` entry of
that session: the latency is from just before the push to the entry's
arrival, so it includes writing the audit entry.  Variants, in one run:

* ``source`` -- the push is noticed by the sessions source
  (:mod:`events.sources.sessions`: keyspace notification, coalesced for
  ``COALESCE_WINDOW_S`` into a ``queue.observed`` event), as in production;
* ``source_no_window`` -- the same source with the coalescing window at 0,
  which shows what the window costs;
* ``direct`` -- the bench publishes ``queue.observed`` itself right after the
  push: the consumer group and handler alone.

Keys are deleted at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from consumers.audit import Auditor
from consumers.runtime import GroupConsumer, GroupOptions
from consumers.sessions import SessionsHandler
from events import codec
from events.contract import ActionRecorded, QueueObserved
from events.ids import new_event_id
from events.publisher import Publisher
from events.settings import Settings
from events.sources.queues import COALESCE_WINDOW_S
from events.sources.sessions import SessionsSource
from ops.bench import common

NAME = "park-latency"
VARIANTS = ("source", "source_no_window", "direct")
WAIT_S = 30.0
"""Longest wait for one park before the bench gives up."""


@contextlib.asynccontextmanager
async def running(redis: Redis, settings: Settings, variant: str) -> AsyncIterator[None]:
    keys = settings.keys
    auditor = Auditor(Publisher(redis, keys), dry_run=False)
    handler = SessionsHandler(settings=settings, redis=redis, auditor=auditor)
    options = GroupOptions(group="sessions", streams=(keys.sessions_stream,),
                           deadletter_stream=keys.deadletter_stream, block_ms=500)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(GroupConsumer(redis, options, handler).run(stop))]
    if variant != "direct":
        window = COALESCE_WINDOW_S if variant == "source" else 0.0
        tasks.append(asyncio.create_task(
            SessionsSource(settings, redis, coalesce_window_s=window).run(stop)))
        await wait_for_entries(redis, keys.sessions_stream)  # the source's resync marker
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)


async def wait_for_entries(redis: Redis, stream: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if await redis.xlen(stream):
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"nothing on {stream} within {WAIT_S}s")


async def wait_for_park(redis: Redis, stream: str, last_id: str, session: str) -> str:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        reply = await redis.xread({stream: last_id}, block=1000, count=100)
        for _, entries in reply or ():
            for raw_id, fields in entries:
                last_id = raw_id.decode()
                entry = codec.decode(fields)
                if isinstance(entry, ActionRecorded) and entry.action == "park_queue" \
                        and entry.key == session:
                    return last_id
    raise TimeoutError(f"no park of {session} within {WAIT_S}s")


async def measure_variant(redis: Redis, args: Any, variant: str) -> list[float]:
    prefix = common.fresh_prefix(f"{NAME}-{variant}")
    settings = Settings(redis_url=args.redis_url, key_prefix=prefix,
                        queue_pattern=f"{prefix}queue:{{session}}", rescan_interval_s=0)
    keys = settings.keys
    publisher = Publisher(redis, keys)
    latencies: list[float] = []
    try:
        async with running(redis, settings, variant):
            last_id = "0-0"
            for n in range(args.pushes):
                session = f"s{n % args.sessions}"
                queue = keys.queue(session)
                started = time.perf_counter()
                await redis.rpush(queue, f'{{"n":{n},"text":"hola"}}')
                if variant == "direct":
                    await publisher.publish(QueueObserved(
                        id=new_event_id(), occurred_at=datetime.now(UTC), source="queues",
                        key=session, queue=queue))
                last_id = await wait_for_park(redis, keys.audit_stream, last_id, session)
                latencies.append((time.perf_counter() - started) * 1000)
    finally:
        found = [k async for k in redis.scan_iter(match=f"{prefix}*", count=1000)]
        if found:
            await redis.delete(*found)
    return latencies


async def measure(args: Any) -> dict[str, Any]:
    redis = Redis.from_url(args.redis_url, decode_responses=False)
    try:
        version = await common.redis_version(redis)
        samples = {v: await measure_variant(redis, args, v) for v in args.only or VARIANTS}
    finally:
        await redis.aclose()
    figures = {v: {k: round(x, 3) for k, x in common.percentiles(s).items()}
               for v, s in samples.items()}
    ratios = {}
    for a, b in (("source", "direct"), ("source_no_window", "direct")):
        if a in figures and b in figures:
            ratios[f"{a}/{b} p50"] = {"ratio": common.ratio(figures[a]["p50"], figures[b]["p50"]),
                                      "target": None, "met": None}
    return {
        "servers": {"redis-server": version},
        "parameters": {"pushes": args.pushes, "sessions": args.sessions,
                       "coalesce_window_ms": COALESCE_WINDOW_S * 1000,
                       "push_noticed_by": "events.sources.sessions (keyspace notifications) "
                                          "in source*, the bench's own queue.observed in direct"},
        "figures": {v: {f"{k}_ms" if k.startswith("p") or k in ("min", "max", "mean") else k: x
                        for k, x in f.items()} for v, f in figures.items()},
        "ratios": ratios,
        "distributions": {f"{NAME} {v}": [round(x, 3) for x in s] for v, s in samples.items()},
        "notes": [
            "Latency runs from just before the RPUSH to the arrival of the park_queue audit "
            "entry, so it includes writing that entry.",
            f"The sessions source coalesces pushes for {COALESCE_WINDOW_S * 1000:g} ms; that "
            "window bounds the source variant's latency from below.",
        ],
    }


def main(argv: list[str]) -> int:
    p = common.parser(NAME, __doc__.splitlines()[0] if __doc__ else NAME)
    p.add_argument("--pushes", type=int, default=1000)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--only", nargs="*", choices=list(VARIANTS), help="run only these variants")
    args = p.parse_args(argv)
    result = asyncio.run(measure(args))
    servers = result.pop("servers")
    common.emit(NAME, result, argv=argv, out=args.out, servers=servers)
    return 0
