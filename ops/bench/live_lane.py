"""Live during backlog: the latency of live single changes while a bulk backlog drains.

One consumer group (:class:`consumers.runtime.GroupConsumer`) runs against Redis
with a handler that takes ``--work-ms`` per key (default 1 ms, as a store read
would).  ``--backlog`` events (default 50,000, one key each: what a table
listing or a folder snapshot publishes) are queued first; once the group has
handled ``--warmup`` of them, the bench publishes ``--live`` live changes
(default 100), one every ``--interval-ms`` (20), each for a key of its own, and
times each from just before its XADD to the call of its handler (same process,
one clock).  Variants, in one run, on the same data:

* ``lanes`` -- the backlog goes to the bulk lane (``{events}:conversations:bulk``)
  and the group reads the live stream first (as ``consumers.consumers_role`` sets it up);
* ``one_stream`` -- the backlog and the live changes share one stream, as before
  the bulk lane: a live change waits for the backlog read before it.

Also reported per variant: how long the whole backlog took (the lane's cost to
bulk throughput) and how many backlog entries were still unhandled when the
last live change was handled.  Keys are deleted at the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from consumers.keyqueue import Delivery
from consumers.options import GroupOptions
from consumers.runtime import GroupConsumer
from events.contract import ReconcileRequested
from events.envelope import new_event
from events.keys import KeySpace
from events.publisher import Publisher
from ops.bench import common

NAME = "live-lane"
VARIANTS = ("lanes", "one_stream")
P99_TARGET_MS = 50.0
WAIT_S = 600.0
"""Longest wait for the backlog and the live changes of one variant."""


def _request(key: str) -> ReconcileRequested:
    return new_event(ReconcileRequested, source="operator", key=key, scope="conversations",
                     reason="bench")


class Probe:
    """The handler: ``work_ms`` of real waiting per key, and when each live key was handled."""

    def __init__(self, work_ms: float, warmup: int) -> None:
        self.work_s = work_ms / 1000
        self.warmup = warmup
        self.warm = asyncio.Event()
        self.bulk_handled = 0
        self.handled_at: dict[str, float] = {}
        self.bulk_left_at_last_live = 0

    async def __call__(self, key: str, deliveries: Sequence[Delivery]) -> None:
        await asyncio.sleep(self.work_s)
        if key.startswith("live-"):
            self.handled_at[key] = time.perf_counter()
        else:
            self.bulk_handled += 1
            if self.bulk_handled >= self.warmup:
                self.warm.set()


async def measure_variant(redis: Redis, args: Any, variant: str) -> dict[str, Any]:
    keys = KeySpace(prefix=common.fresh_prefix(NAME))
    live, bulk = keys.lanes("conversations")
    laned = variant == "lanes"
    options = GroupOptions(group="bench", streams=(live, bulk) if laned else (live,),
                           bulk_streams=(bulk,) if laned else (),
                           deadletter_stream=keys.deadletter_stream, concurrency=args.concurrency)
    publisher, probe = Publisher(redis, keys), Probe(args.work_ms, args.warmup)
    try:
        await publisher.publish_many([_request(f"bulk-{n}") for n in range(args.backlog)],
                                     lane="bulk" if laned else "live", batch_size=5000)
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(GroupConsumer(redis, options, probe).run(stop))
        try:
            sent = await _live_changes(publisher, probe, args)
            drained_s = await _drained(probe, args.backlog, started)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    finally:
        await common.delete_prefix(redis, keys.prefix)
    latencies = [(probe.handled_at[k] - t) * 1000 for k, t in sent.items()]
    return {"latency_ms": latencies, "backlog_drained_s": drained_s,
            "backlog_left_at_last_live": probe.bulk_left_at_last_live}


async def _live_changes(publisher: Publisher, probe: Probe, args: Any) -> dict[str, float]:
    deadline = time.monotonic() + WAIT_S
    await asyncio.wait_for(probe.warm.wait(), WAIT_S)
    sent: dict[str, float] = {}
    for n in range(args.live):
        key = f"live-{n}"
        sent[key] = time.perf_counter()
        await publisher.publish(_request(key))
        await asyncio.sleep(args.interval_ms / 1000)
    while len(probe.handled_at) < len(sent):
        if time.monotonic() > deadline:
            raise TimeoutError("the live changes were not all handled in time")
        await asyncio.sleep(0.005)
    probe.bulk_left_at_last_live = args.backlog - probe.bulk_handled
    return sent


async def _drained(probe: Probe, backlog: int, started: float) -> float:
    deadline = time.monotonic() + WAIT_S
    while probe.bulk_handled < backlog:
        if time.monotonic() > deadline:
            raise TimeoutError("the backlog was not handled in time")
        await asyncio.sleep(0.01)
    return round(time.perf_counter() - started, 3)


async def measure(args: Any) -> dict[str, Any]:
    redis = Redis.from_url(args.redis_url, decode_responses=False)
    try:
        version = await common.redis_version(redis)
        measured = {v: await measure_variant(redis, args, v) for v in VARIANTS}
    finally:
        await redis.aclose()
    figures = {v: {**{f"{k}_ms" if k != "count" else k: round(x, 3)
                      for k, x in common.percentiles(m["latency_ms"]).items()},
                   "backlog_drained_s": m["backlog_drained_s"],
                   "backlog_left_at_last_live": m["backlog_left_at_last_live"]}
               for v, m in measured.items()}
    ratios = {f"one_stream/lanes ({p})": {
        "ratio": common.ratio(figures["one_stream"][f"{p}_ms"], figures["lanes"][f"{p}_ms"]),
        "target": None, "met": None} for p in ("p50", "p99")}
    ratios["backlog drain lanes/one_stream"] = {
        "ratio": common.ratio(figures["lanes"]["backlog_drained_s"],
                              figures["one_stream"]["backlog_drained_s"]),
        "target": None, "met": None}
    return {
        "servers": {"redis-server": version},
        "parameters": {"backlog": args.backlog, "live": args.live, "interval_ms": args.interval_ms,
                       "work_ms": args.work_ms, "concurrency": args.concurrency,
                       "warmup": args.warmup},
        "figures": figures,
        "ratios": ratios,
        "targets": {"live change p99 (lanes)": common.target(figures["lanes"]["p99_ms"],
                                                             P99_TARGET_MS)},
        "notes": [
            "Latency runs from just before the live change's XADD to its handler's call in the "
            "same process; the handler waits work_ms per key (a stand-in for store reads).",
            "backlog_left_at_last_live: backlog entries still unhandled when the last live "
            "change was handled (0 means the live changes waited for the backlog).",
        ],
    }


def main(argv: list[str]) -> int:
    p = common.parser(NAME, __doc__.splitlines()[0] if __doc__ else NAME)
    p.add_argument("--backlog", type=int, default=50_000)
    p.add_argument("--live", type=int, default=100)
    p.add_argument("--interval-ms", type=float, default=20.0)
    p.add_argument("--work-ms", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--warmup", type=int, default=1000)
    args = p.parse_args(argv)
    result = asyncio.run(measure(args))
    servers = result.pop("servers")
    common.emit(NAME, result, argv=argv, out=args.out, servers=servers)
    return 0
