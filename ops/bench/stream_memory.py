"""Stream memory: bytes per event in Redis, as published and in two smaller encodings.

``--events`` events (default 100,000) in the proportions a busy CRM's
conversations stream holds them -- a relay's row change with its old and new
values (60 %), a session file written (30 %), a reconcile request (10 %) --
are appended to a fresh stream in each of three encodings, side by side in
one run, and Redis's ``MEMORY USAGE … SAMPLES 0`` (every node of the stream)
gives the bytes:

* ``json`` -- what the publisher writes today (``v``, ``type``, ``key``, and
  the event as JSON in ``data``, valid against ``events/events.schema.json``);
* ``json_no_previous`` -- the same with a row change's ``previous`` row left
  out (the row's old values: what a "changed columns only" event would drop);
* ``msgpack`` -- ``data`` as MessagePack (msgspec) instead of JSON;
* ``msgpack_no_previous`` -- both.

Reported per encoding: Redis bytes per event, the ``data`` bytes per event, and
the extrapolation to 1,000,000 events.  Keys are deleted at the end.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import msgspec
from redis.asyncio import Redis

from events import codec
from events.contract import (
    ConversationChanged,
    ConversationRow,
    EventBase,
    ReconcileRequested,
    SessionFileWritten,
)
from events.envelope import new_event
from ops.bench import common

NAME = "stream-memory"
ENCODINGS = ("json", "json_no_previous", "msgpack", "msgpack_no_previous")
BATCH = 2000
CHANNEL = "940740243"
_msgpack = msgspec.msgpack.Encoder()


def sample(n: int) -> EventBase:
    """Event ``n`` of the mix (60 % row changes, 30 % files written, 10 % requests)."""
    phone = f"5511{n:09d}"
    key = f"{phone}:{CHANNEL}"
    kind = n % 10
    if kind < 6:
        now = datetime.now(UTC)
        before = ConversationRow(id=str(n), phone=phone, channel=CHANNEL, status="active",
                                 assigned_to="bot", bot_flow_id="bienvenida-v3", bot_started_at=now)
        after = msgspec.structs.replace(before, status="closed", assigned_to=None,
                                        bot_flow_id=None, bot_started_at=None)
        return new_event(ConversationChanged, source="postgres", key=key, outbox_id=n, row=after,
                         previous=before)
    if kind < 9:
        return new_event(SessionFileWritten, source="folder", key=key,
                         name=f"whatsapp_{phone}_{CHANNEL}.json", flow_id="bienvenida-v3",
                         content_sha256="ab" * 32, size_bytes=412)
    return new_event(ReconcileRequested, source="postgres", key=key, scope="conversations",
                     reason="database listing: first start")


def fields(event: EventBase, encoding: str) -> dict[str, bytes]:
    entry = codec.encode(event)
    if encoding.endswith("_no_previous") and isinstance(event, ConversationChanged):
        event = msgspec.structs.replace(event, previous=None)
    entry["data"] = (_msgpack.encode(event) if encoding.startswith("msgpack")
                     else codec.encode_json(event))
    return entry


async def measure_encoding(redis: Redis, stream: str, events: list[EventBase],
                           encoding: str) -> dict[str, float]:
    data_bytes = 0
    for start in range(0, len(events), BATCH):
        pipe = redis.pipeline(transaction=False)
        for event in events[start:start + BATCH]:
            entry = fields(event, encoding)
            data_bytes += len(entry["data"])
            pipe.xadd(stream, entry)
        await pipe.execute()
    used = int(await redis.memory_usage(stream, samples=0) or 0)
    count = len(events)
    return {"redis_bytes_per_event": round(used / count, 1),
            "data_bytes_per_event": round(data_bytes / count, 1),
            "redis_mb_per_1m_events": round(used / count * 1_000_000 / 2**20, 1)}


async def measure(args: Any) -> dict[str, Any]:
    redis = Redis.from_url(args.redis_url, decode_responses=False)
    prefix = common.fresh_prefix(NAME)
    events = [sample(n) for n in range(args.events)]
    try:
        version = await common.redis_version(redis)
        figures = {e: await measure_encoding(redis, f"{prefix}{{events}}:{e}", events, e)
                   for e in ENCODINGS}
    finally:
        await common.delete_prefix(redis, prefix)
        await redis.aclose()
    json_bytes = figures["json"]["redis_bytes_per_event"]
    ratios = {f"{e}/json (Redis bytes)": {
        "ratio": common.ratio(figures[e]["redis_bytes_per_event"], json_bytes),
        "target": None, "met": None} for e in ENCODINGS if e != "json"}
    return {
        "servers": {"redis-server": version},
        "parameters": {"events": args.events, "mix": "60% row changes (old and new row), "
                       "30% session files written, 10% reconcile requests"},
        "figures": figures,
        "ratios": ratios,
        "notes": [
            "Redis bytes include the stream's radix tree and listpack nodes (MEMORY USAGE "
            "SAMPLES 0), so they are what one more event costs the server, not just its fields.",
        ],
    }


def main(argv: list[str]) -> int:
    p = common.parser(NAME, __doc__.splitlines()[0] if __doc__ else NAME)
    p.add_argument("--events", type=int, default=100_000)
    args = p.parse_args(argv)
    result = asyncio.run(measure(args))
    servers = result.pop("servers")
    common.emit(NAME, result, argv=argv, out=args.out, servers=servers)
    return 0
