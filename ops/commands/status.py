"""``reconciler status``: is everything flowing? One screen, read-only.

* per consumer group: consumers, pending, lag, age of the oldest pending
  entry, dead letters (from XINFO / XPENDING, :mod:`ops.group_metrics`);
* per source: when it last published, reconnects and resyncs (gaps it
  closed by re-listing), from its bookkeeping hash when it keeps one and from
  the newest ``STATUS_SCAN`` entries of the event streams;
* timers: deadlines scheduled and already due;
* projections: current version, items, inconsistencies by kind.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

from redis.asyncio import Redis

from consumers.deadletter import dead_letter_count
from events import codec
from events.contract import CONVERSATIONS, SESSIONS, SnapshotFinished, SourceResynced
from events.errors import MalformedEntry
from events.keys import KeySpace
from events.replies import text
from events.timer_wheel import TimerWheel
from ops.embedded_state import live_servers
from ops.group_metrics import GroupCollector
from ops.redact import redact
from ops.runtime_env import Environment, open_environment, settings_from_args
from ops.tables import emit
from projections.models import models
from projections.runner import inconsistency_counts
from projections.store import ProjectionStore

STATUS_SCAN = 5000
"""Newest entries per stream looked at for per-source figures."""
DEADLETTER_SCAN = 10_000
SOURCES = ("postgres", "folder", "gateway", "queues", "timers")



async def dead_letters_by_group(redis: Redis, keys: KeySpace) -> Counter[str]:
    counts: Counter[str] = Counter()
    for stream in keys.deadletter_streams:
        entries = await redis.xrevrange(stream, count=DEADLETTER_SCAN)
        counts.update(text(fields.get(b"dl_group", b"?")) for _, fields in entries)
    return counts


async def groups(redis: Redis, keys: KeySpace) -> list[dict[str, Any]]:
    letters = await dead_letters_by_group(redis, keys)
    return [{"stream": s.stream, "group": s.group, "consumers": s.consumers, "pending": s.pending,
             "lag": s.lag, "oldest_pending_s": round(s.oldest_pending_age_s, 1),
             "dead_letters": letters.get(s.group, 0)}
            for s in await GroupCollector(redis, keys).collect()]


def _source_row(name: str) -> dict[str, Any]:
    return {"source": name, "last_event_s_ago": None, "resyncs": 0, "last_snapshot": None}


async def sources(redis: Redis, keys: KeySpace) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {name: _source_row(name) for name in SOURCES}
    now_ms = time.time() * 1000
    for stream in (*keys.lanes(CONVERSATIONS), *keys.lanes(SESSIONS)):
        for entry_id, fields in await redis.xrevrange(stream, count=STATUS_SCAN):
            try:
                event = codec.decode(fields)
            except MalformedEntry:
                continue
            row = rows.setdefault(event.source, _source_row(event.source))
            age = round(max(0.0, (now_ms - int(text(entry_id).partition("-")[0])) / 1000), 1)
            if row["last_event_s_ago"] is None or age < row["last_event_s_ago"]:
                row["last_event_s_ago"] = age
            if isinstance(event, SourceResynced):
                row["resyncs"] += 1
            elif isinstance(event, SnapshotFinished) and (
                    row["last_snapshot"] is None or event.occurred_at > row["last_snapshot"]):
                row["last_snapshot"] = event.occurred_at
    for name, row in rows.items():
        state = await redis.hgetall(keys.source_state(name))
        row.update({text(k): text(v) for k, v in state.items()})
    return list(rows.values())


async def projections(redis: Redis, keys: KeySpace) -> list[dict[str, Any]]:
    out = []
    for name in models():
        store = ProjectionStore(redis, keys, name)
        version = await store.current_version()
        row: dict[str, Any] = {"projection": name, "version": version, "items": 0,
                               "inconsistent": None}
        if version is not None:
            row["items"] = int(await redis.hlen(store.key(version, "items")))
            if name == "conversations":
                counts = await inconsistency_counts(store, version)
                row["inconsistent"] = {k: n for k, (n, _) in counts.items() if n}
        out.append(row)
    return out


async def collect(redis: Redis, keys: KeySpace) -> dict[str, Any]:
    wheel = TimerWheel(redis, keys)
    return {
        "timers_scheduled": await wheel.count(),
        "timers_due": await wheel.count(due_by=time.time()),
        "dead_letters": await dead_letter_count(redis, keys.deadletter_streams),
        "groups": await groups(redis, keys),
        "sources": await sources(redis, keys),
        "projections": await projections(redis, keys),
    }


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("status", help="consumer groups, sources, timers (read-only)")
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args.config)
    async with open_environment(settings, need_pg=False) as env:
        emit({**urls(env), **await collect(env.redis, env.settings.keys)}, as_json=args.json)
    return 0


def urls(env: Environment) -> dict[str, str | None]:
    """Where the stores are, so ``redis-cli -u`` and ``psql`` can follow.

    Embedded servers (no password) are shown as they are; a URL from the
    settings is redacted.  With no ``DATABASE_URL`` it is the embedded
    PostgreSQL of the data folder, if one runs.
    """
    live = live_servers(env.settings.data_dir)
    embedded = {**live, **env.embedded}

    def shown(name: str, url: str | None) -> str | None:
        if url is None:
            return embedded.get(name)
        return url if url == embedded.get(name) else redact(url)

    return {"redis_url": shown("redis", env.settings.redis_url),
            "database_url": shown("postgres", env.settings.database_url)}
