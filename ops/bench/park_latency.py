"""Park latency: from a push to the queue of a dead session to its messages parked.

The real ``sessions`` consumer group (:class:`consumers.runtime.GroupConsumer`
running :class:`consumers.gateway_session_group.SessionsHandler`) runs against Redis; no
session has a lease.  ``--pushes`` times (default 1,000), one after another,
the bench RPUSHes one message to the queue of one of ``--sessions`` sessions
and waits (XREAD BLOCK on the audit stream) for the ``park_queue`` entry of
that session: the latency is from just before the push to the entry's
arrival, so it includes writing the audit entry.  Variants, in one run:

* ``source`` -- the push is noticed by the sessions source
  (:mod:`events.sources.gateway_leases`: keyspace notification, coalesced for
  ``COALESCE_WINDOW_S`` into a ``queue.observed`` event), as in production;
* ``source_no_window`` -- the same source with the coalescing window at 0,
  which shows what the window costs;
* ``direct`` -- the bench publishes ``queue.observed`` itself right after the
  push: the consumer group and handler alone;
* ``poll_1s`` / ``poll_60s`` -- no source and no consumer: a polling loop
  (:mod:`ops.bench.polling`) SCANs the queue keys every 1 s / 60 s, checks each
  one's lease and moves the messages of a queue without one to its parked
  list; ``--poll-1s-pushes`` (100) pushes spread at random over
  ``--poll-1s-span`` s (20) and ``--poll-60s-pushes`` (15) over one 60 s
  period, timed from the push to the messages moved.

Each push goes to a session of its own unless ``--sessions`` is smaller than
``--pushes``: pushes to one queue less than the coalescing window apart are
coalesced by design, and that wait is not the latency of a change.
Keys are deleted at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from consumers.actions import Actions
from consumers.gateway_session_group import SessionsHandler
from consumers.options import GroupOptions
from consumers.runtime import GroupConsumer
from events.contract import QueueObserved
from events.envelope import new_event
from events.publisher import Publisher
from events.settings import Settings
from events.sources.gateway_leases import SessionsSource
from events.sources.queues import COALESCE_WINDOW_S
from ops.bench import common, polling

NAME = "park-latency"
VARIANTS = ("source", "source_no_window", "direct", "poll_1s", "poll_60s")
POLLED = {"poll_1s": 1.0, "poll_60s": 60.0}
P50_TARGET_MS, P99_TARGET_MS = 5.0, 25.0
WAIT_S = 30.0
"""Longest wait for one park before the bench gives up."""


@contextlib.asynccontextmanager
async def running(redis: Redis, settings: Settings, variant: str) -> AsyncIterator[None]:
    keys = settings.keys
    handler = SessionsHandler(settings=settings, redis=redis,
                              actions=Actions.for_settings(redis, settings, dry_run=False))
    options = GroupOptions(group="sessions", streams=(keys.sessions_stream,),
                           deadletter_stream=keys.deadletter_stream, block_ms=500)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(GroupConsumer(redis, options, handler).run(stop))]
    if variant != "direct":
        window = COALESCE_WINDOW_S if variant == "source" else 0.0
        tasks.append(asyncio.create_task(
            SessionsSource(settings, redis, coalesce_window_s=window).run(stop)))
        await wait_for_entries(redis, *keys.lanes("sessions"))  # the resync marker (bulk lane)
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)


async def wait_for_entries(redis: Redis, *streams: str) -> None:
    """Until one of ``streams`` holds an entry."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for stream in streams:
            if await redis.xlen(stream):
                return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"nothing on {' or '.join(streams)} within {WAIT_S}s")


async def measure_variant(redis: Redis, args: Any, variant: str) -> dict[str, list[float]]:
    prefix = common.fresh_prefix(f"{NAME}-{variant}")
    settings = Settings(redis_url=args.redis_url, key_prefix=prefix,
                        queue_pattern=f"{prefix}queue:{{session}}", rescan_interval_s=0)
    keys = settings.keys
    publisher = Publisher(redis, keys)
    latencies: list[float] = []
    try:
        if variant in POLLED:
            return await measure_polled(redis, settings, args, variant)
        async with running(redis, settings, variant):
            last_id = "0-0"
            for n in range(args.pushes):
                session = f"s{n % (args.sessions or args.pushes)}"
                queue = keys.queue(session)
                started = time.perf_counter()
                await redis.rpush(queue, f'{{"n":{n},"text":"hola"}}')
                if variant == "direct":
                    await publisher.publish(new_event(
                        QueueObserved, source="queues", key=session, queue=queue))
                last_id = await common.wait_for_action(redis, keys.audit_stream, last_id,
                                                       action="park_queue", key=session,
                                                       timeout_s=WAIT_S)
                latencies.append((time.perf_counter() - started) * 1000)
    finally:
        await common.delete_prefix(redis, prefix)
    return {"latency_ms": latencies}


async def measure_polled(redis: Redis, settings: Settings, args: Any,
                         variant: str) -> dict[str, list[float]]:
    """A scheduler-like loop: SCAN the queues every period, park those without a lease."""
    keys = settings.keys
    pushes = args.poll_1s_pushes if variant == "poll_1s" else args.poll_60s_pushes
    span = args.poll_1s_span if variant == "poll_1s" else args.poll_60s_span

    async def change(n: int) -> str:
        session = f"p{n}"
        await redis.rpush(keys.queue(session), f'{{"n":{n},"text":"hola"}}')
        return session

    async def poll() -> list[tuple[str, float]]:
        queues = [k async for k in redis.scan_iter(match=keys.queue_glob, count=1000, _type="list")]
        sessions = [s for s in (keys.session_of_queue(k.decode()) for k in queues) if s]
        pipe = redis.pipeline(transaction=False)
        for session in sessions:
            pipe.exists(keys.lease(session))
        acted = []
        for session, live in zip(sessions, await pipe.execute(), strict=True):
            if live:
                continue
            while await redis.lmove(keys.queue(session), keys.parked(session), "LEFT", "RIGHT"):
                pass
            acted.append((session, time.perf_counter()))
        return acted

    return await polling.run_polled(period_s=POLLED[variant], changes=pushes, span_s=span,
                                    change=change, poll=poll)


async def measure(args: Any) -> dict[str, Any]:
    redis = Redis.from_url(args.redis_url, decode_responses=False)
    try:
        version = await common.redis_version(redis)
        measured = {v: await measure_variant(redis, args, v) for v in args.only or VARIANTS}
    finally:
        await redis.aclose()
    samples = {v: m["latency_ms"] for v, m in measured.items()}
    figures = {v: {k: round(x, 3) for k, x in common.percentiles(s).items()}
               for v, s in samples.items()}
    for v in POLLED:
        if v in measured:
            part = polling.summary(measured[v], common.percentiles)
            figures[v].update({k: part[k] for k in ("wait_for_poll_p50_ms", "poll_work_p50_ms")})
    ratios = _ratios(figures)
    targets = {f"push -> parked {point} (source)": common.target(figures["source"][point], limit)
               for point, limit in (("p50", P50_TARGET_MS), ("p99", P99_TARGET_MS))
               if "source" in figures}
    return {
        "servers": {"redis-server": version},
        "parameters": _parameters(args),
        "figures": {v: {f"{k}_ms" if k[1:2].isdigit() or k in ("min", "max", "mean") else k: x
                        for k, x in f.items()} for v, f in figures.items()},
        "ratios": ratios,
        "targets": targets,
        "distributions": {f"{v} (polling)" if v in POLLED else v: [round(x, 3) for x in s]
                          for v, s in samples.items()},
        "notes": [
            "Latency runs from just before the RPUSH to the arrival of the park_queue audit "
            "entry, so it includes writing that entry.",
            f"The sessions source coalesces pushes to one queue for {COALESCE_WINDOW_S * 1000:g} ms "
            "(the first push at once, later ones at the window's end). Each push here goes to a "
            "session of its own; with 20 sessions pushed in turn (each queue pushed every ~20 ms) "
            "one push in 20 waited for the window's end and p99 was 31.8 ms, by design.",
            "poll_*: the polling loop runs live, its pushes spread at random over the span; "
            "latency is from the push to the messages moved, split into the wait for the next "
            "poll (wait_for_poll) and the SCAN, lease checks and moves (poll_work).",
        ],
    }


def _ratios(figures: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Each variant against the one it is compared with: p50, and p99 for the polled ones."""
    ratios = {}
    for a, b in (("source", "direct"), ("source_no_window", "direct"), ("poll_1s", "source"),
                 ("poll_60s", "source")):
        for point in ("p50", "p99"):
            if a in figures and b in figures and (point == "p50" or a.startswith("poll")):
                ratios[f"{a}/{b} ({point})"] = {
                    "ratio": common.ratio(figures[a][point], figures[b][point]),
                    "target": None, "met": None}
    return ratios


def _parameters(args: Any) -> dict[str, Any]:
    return {"pushes": args.pushes, "sessions": args.sessions or args.pushes,
            "poll_1s": {"period_s": 1.0, "pushes": args.poll_1s_pushes,
                        "spread_over_s": args.poll_1s_span},
            "poll_60s": {"period_s": 60.0, "pushes": args.poll_60s_pushes,
                         "spread_over_s": args.poll_60s_span},
            "coalesce_window_ms": COALESCE_WINDOW_S * 1000,
            "push_noticed_by": "events.sources.gateway_leases (keyspace notifications) "
                               "in source*, the bench's own queue.observed in direct"}


def main(argv: list[str]) -> int:
    p = common.parser(NAME, __doc__.splitlines()[0] if __doc__ else NAME)
    p.add_argument("--pushes", type=int, default=1000)
    p.add_argument("--sessions", type=int, default=0, help="sessions pushed in turn (0: one per push)")
    p.add_argument("--poll-1s-pushes", type=int, default=100)
    p.add_argument("--poll-1s-span", type=float, default=20.0, help="seconds")
    p.add_argument("--poll-60s-pushes", type=int, default=15)
    p.add_argument("--poll-60s-span", type=float, default=60.0, help="seconds")
    p.add_argument("--only", nargs="*", choices=list(VARIANTS), help="run only these variants")
    args = p.parse_args(argv)
    result = asyncio.run(measure(args))
    servers = result.pop("servers")
    common.emit(NAME, result, argv=argv, out=args.out, servers=servers)
    return 0
