"""Stream memory: bytes per event in Redis, as published and in other encodings.

``--events`` events (default 100,000) in the proportions a busy CRM's
conversations stream holds them -- a relay's row change with its old and new
values (60 %), a session file written (30 %), a reconcile request (10 %) --
are appended to a fresh stream in each encoding, side by side in one run, and
Redis's ``MEMORY USAGE … SAMPLES 0`` (every node of the stream) gives the bytes:

* ``json`` -- what the publisher writes (``v``, ``type``, ``key``, and the event
  as JSON in ``data``, valid against ``events/events.schema.json``; a field at
  its default, such as a null bot field, is left out);
* ``json_with_defaults`` -- the same with every field written, defaults too
  (what the publisher wrote before);
* ``json_changed_previous`` -- a row change's ``previous`` row cut to its id and
  the columns that changed (what a "changed columns only" contract would write);
* ``json_no_previous`` -- a row change's ``previous`` row left out;
* ``msgpack`` -- ``data`` as MessagePack (msgspec) instead of JSON.

The first two are also measured on row changes alone (a bulk ``UPDATE``'s
backlog).  Reported per encoding: Redis bytes per event, the ``data`` bytes per event, and
the extrapolation to 1,000,000 events.  Keys are deleted at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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
    RowChange,
    SessionFileWritten,
)
from events.envelope import new_event
from ops.bench import common

NAME = "stream-memory"
ENCODINGS = ("json", "json_with_defaults", "json_changed_previous", "json_no_previous", "msgpack")
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
    if encoding != "json":
        entry["data"] = _ENCODE[encoding](event)
    return entry


def with_defaults(value: Any) -> Any:
    """``value`` as builtins with every struct field written, defaults too."""
    if isinstance(value, msgspec.Struct):
        tag = value.__struct_config__.tag
        head = {"type": tag} if isinstance(tag, str) else {}
        return head | {f: with_defaults(getattr(value, f)) for f in value.__struct_fields__}
    return value


def _changed_previous(event: EventBase) -> bytes:
    """The published JSON with a row change's ``previous`` cut to its id and what changed."""
    doc = msgspec.json.decode(codec.encode_json(event))
    if isinstance(event, RowChange) and event.previous is not None and event.row is not None:
        old, new = with_defaults(event.previous), with_defaults(event.row)
        doc["previous"] = {f: v for f, v in old.items() if f == "id" or v != new[f]}
    return msgspec.json.encode(doc)


_ENCODE: dict[str, Callable[[EventBase], bytes]] = {
    "json_with_defaults": lambda e: msgspec.json.encode(with_defaults(e)),
    "json_changed_previous": _changed_previous,
    "json_no_previous": lambda e: codec.encode_json(
        msgspec.structs.replace(e, previous=None) if isinstance(e, RowChange) else e),
    "msgpack": _msgpack.encode,
}


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
    backlog = [sample(n - n % 10) for n in range(args.events)]  # a bulk UPDATE's: row changes
    try:
        version = await common.redis_version(redis)
        figures = {e: await measure_encoding(redis, f"{prefix}{{events}}:{e}", events, e)
                   for e in ENCODINGS}
        for e in ENCODINGS[:2]:
            figures[f"{e}, row changes only"] = await measure_encoding(
                redis, f"{prefix}{{events}}:{e}:rows", backlog, e)
    finally:
        await common.delete_prefix(redis, prefix)
        await redis.aclose()
    redis_bytes = {e: f["redis_bytes_per_event"] for e, f in figures.items()}
    pairs = [("json", "json_with_defaults")] + [(e, "json") for e in ENCODINGS[2:]] + [
        ("json, row changes only", "json_with_defaults, row changes only")]
    ratios = {f"{e}/{base} (Redis bytes)": {
        "ratio": common.ratio(redis_bytes[e], redis_bytes[base]), "target": None, "met": None}
        for e, base in pairs}
    return {
        "servers": {"redis-server": version},
        "parameters": {"events": args.events, "mix": "60% row changes (old and new row), "
                       "30% session files written, 10% reconcile requests; "
                       "'row changes only': every event a row change, as a bulk UPDATE's backlog"},
        "figures": figures,
        "ratios": ratios,
        "notes": [
            "Redis bytes include the stream's radix tree and listpack nodes (MEMORY USAGE "
            "SAMPLES 0), so they are what one more event costs the server, not just its fields.",
            _why_not_300_mb(figures["json, row changes only"]),
        ],
    }


def _why_not_300_mb(row_changes: dict[str, float]) -> str:
    """Where a published row change's bytes go, against 300 MB per 1,000,000 events
    (``row_changes``: the figures of a stream of row changes alone)."""
    data = codec.encode_json(sample(0))
    doc = msgspec.json.decode(data)
    values, names = _value_bytes(doc), _name_bytes(doc)
    rest = row_changes["redis_bytes_per_event"] - row_changes["data_bytes_per_event"]
    return (f"A row change's data is {len(data)} bytes: {values} of values, {names} of field "
            f"names, {len(data) - values - names} of JSON punctuation. Each costs Redis "
            f"about {rest:.0f} bytes besides its data (v, type, key, the stream's structures), so "
            f"its values alone come to about {values + rest:.0f} bytes, over the "
            f"{300 * 2**20 / 1_000_000:.0f} bytes an event that 300 MB per 1,000,000 allows: "
            "no encoding that keeps every value gets there.")


def _value_bytes(doc: Any) -> int:
    if isinstance(doc, dict):
        return sum(_value_bytes(v) for v in doc.values())
    return len(str(doc))


def _name_bytes(doc: Any) -> int:
    if isinstance(doc, dict):
        return sum(len(k) + _name_bytes(v) for k, v in doc.items())
    return 0


def main(argv: list[str]) -> int:
    p = common.parser(NAME, __doc__.splitlines()[0] if __doc__ else NAME)
    p.add_argument("--events", type=int, default=100_000)
    args = p.parse_args(argv)
    result = asyncio.run(measure(args))
    servers = result.pop("servers")
    common.emit(NAME, result, argv=argv, out=args.out, servers=servers)
    return 0
