"""File capture latency: from a session file write to its event on the stream.

The folder watcher (:class:`events.sources.folder.FolderWatcher`) runs against
Redis and a fresh temporary folder.  ``--writes`` times (default 500), one
after another, the bench replaces one of ``--files`` session files atomically
(temporary file + ``os.replace``, as bots do) with a new ``flowId`` and waits
(XREAD BLOCK on the conversations stream) for the ``session_file.written``
event carrying it.  The latency is from just before the write to the entry's
arrival.  Then a burst: ``--burst`` files written as fast as Python can, timed
until the last one's event arrived.  Variants, in one run:

* ``tuned`` -- the watcher as shipped (small watchfiles ``step``/``debounce``);
* ``watchfiles_defaults`` -- the same watcher with watchfiles' default
  ``step=50``/``debounce=1600`` ms, which shows what the tuning buys;
* ``polling`` -- the watcher with ``RECONCILER_WATCH_POLLING`` on (stat every
  300 ms, for network file systems); ``--polling-writes`` times only.

Keys and the folder are deleted at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from events import codec
from events.contract import SessionFileWritten, SnapshotFinished
from events.settings import Settings
from events.sources.folder import WATCH_DEBOUNCE_MS, WATCH_STEP_MS, FolderWatcher
from ops.bench import common

NAME = "file-capture"
WAIT_S = 30.0
"""Longest wait for one event before the bench gives up."""
P50_TARGET_MS = 10.0

VARIANTS: dict[str, dict[str, Any]] = {
    "tuned": {"step_ms": WATCH_STEP_MS, "debounce_ms": WATCH_DEBOUNCE_MS, "polling": False},
    "watchfiles_defaults": {"step_ms": 50, "debounce_ms": 1600, "polling": False},
    "polling": {"step_ms": WATCH_STEP_MS, "debounce_ms": WATCH_DEBOUNCE_MS, "polling": True},
}


class Tail:
    """Reads the conversations streams (both lanes: the snapshot is on the bulk one) from
    where it last stopped."""

    def __init__(self, redis: Redis, streams: tuple[str, ...]) -> None:
        self.redis = redis
        self.positions: dict[str, bytes | str] = dict.fromkeys(streams, "0-0")  # fresh prefix

    async def until(self, wanted: Any) -> None:
        """Block until an event for which ``wanted(event)`` is true has arrived."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            reply = await self.redis.xread(self.positions, block=1000, count=1000)
            for stream, entries in reply or ():
                for entry_id, fields in entries:
                    self.positions[stream.decode()] = entry_id
                    if wanted(codec.decode(fields)):
                        return
        raise TimeoutError("no event arrived in time")


@contextlib.asynccontextmanager
async def running(redis: Redis, settings: Settings, variant: str) -> AsyncIterator[Tail]:
    options = VARIANTS[variant]
    tail = Tail(redis, settings.keys.lanes("conversations"))
    watcher = FolderWatcher(replace(settings, watch_polling=options["polling"]), redis,
                            step_ms=options["step_ms"], debounce_ms=options["debounce_ms"])
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    try:
        await tail.until(lambda e: isinstance(e, SnapshotFinished))
        await asyncio.sleep(0.2)  # let the watch settle in before timing
        yield tail
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def write(folder: Path, name: str, flow: str) -> None:
    tmp = folder / f".{name}.tmp"
    tmp.write_text(json.dumps({"flowId": flow, "step": "greeting"}))
    os.replace(tmp, folder / name)


def is_flow(flow: str) -> Any:
    return lambda e: isinstance(e, SessionFileWritten) and e.flow_id == flow


async def one_by_one(tail: Tail, folder: Path, *, writes: int, files: int, tag: str) -> list[float]:
    latencies: list[float] = []
    for i in range(writes):
        flow = f"{tag}-{i}"
        started = time.perf_counter()
        write(folder, f"whatsapp_55{i % files:07d}_1.json", flow)
        await tail.until(is_flow(flow))
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def burst(tail: Tail, folder: Path, *, count: int, tag: str) -> dict[str, float]:
    started = time.perf_counter()
    for i in range(count):
        write(folder, f"whatsapp_66{i:07d}_1.json", f"{tag}-{i}")
    await tail.until(is_flow(f"{tag}-{count - 1}"))
    seconds = time.perf_counter() - started
    return {"burst_files": count, "burst_seconds": round(seconds, 3),
            "burst_files_per_s": round(count / seconds, 1)}


async def measure(redis: Redis, args: Any) -> dict[str, Any]:
    figures: dict[str, dict[str, Any]] = {}
    distributions: dict[str, list[float]] = {}
    for variant in VARIANTS:
        folder = Path(tempfile.mkdtemp(prefix="bench-sessions-"))
        settings = Settings(sessions_dir=folder, key_prefix=common.fresh_prefix(NAME),
                            rescan_interval_s=0)
        polling = VARIANTS[variant]["polling"]
        try:
            async with running(redis, settings, variant) as tail:
                writes = args.polling_writes if polling else args.writes
                samples = await one_by_one(tail, folder, writes=writes, files=args.files, tag=variant)
                stats = {k: round(v, 3) for k, v in common.percentiles(samples).items()}
                if not polling:
                    stats.update(await burst(tail, folder, count=args.burst, tag=f"{variant}-b"))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            await common.delete_prefix(redis, settings.key_prefix)
        figures[variant] = stats
        distributions[f"{variant} (poll)" if polling else variant] = [round(s, 3) for s in samples]
    return {"figures": figures, "distributions": distributions}


def _ratios(figures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    tuned = figures["tuned"]["p50"]
    out: dict[str, Any] = {}
    for other in ("watchfiles_defaults", "polling"):
        out[f"{other}/tuned (p50)"] = {"ratio": common.ratio(figures[other]["p50"], tuned),
                                       "target": None, "met": None}
    return out


async def _main(argv: list[str]) -> int:
    p = common.parser(NAME, "latency from a session file write to its event on the stream")
    p.add_argument("--writes", type=int, default=500)
    p.add_argument("--polling-writes", type=int, default=20)
    p.add_argument("--files", type=int, default=100)
    p.add_argument("--burst", type=int, default=2000)
    args = p.parse_args(argv)
    redis = Redis.from_url(args.redis_url)
    try:
        result = await measure(redis, args)
        server = await common.redis_version(redis)
    finally:
        await redis.aclose()
    result["ratios"] = _ratios(result["figures"])
    result["targets"] = {"write -> event p50 (tuned)": common.target(
        result["figures"]["tuned"]["p50"], P50_TARGET_MS)}
    result["parameters"] = {"writes": args.writes, "polling_writes": args.polling_writes,
                            "files": args.files, "burst": args.burst,
                            "variants": VARIANTS}
    result["notes"] = [
        "Latency is from just before an atomic replace (tmp file + os.replace) to the "
        "session_file.written entry read back with XREAD BLOCK on the same machine.",
        "watchfiles yields a change after `step` ms without further changes; `debounce` "
        "caps grouping under a continuous stream of changes.",
    ]
    common.emit(NAME, result, argv=argv, out=args.out, servers={"redis-server": server})
    return 0


def main(argv: list[str]) -> int:
    return asyncio.run(_main(argv))
