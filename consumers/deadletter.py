"""The dead-letter stream: entries that could not be handled, with why.

A dead letter keeps the original entry's fields untouched and adds ``dl_*``
fields (origin stream, entry id, group, error, delivery count, time).  It is
written and the original acked in one MULTI, so an entry is never both lost
and acked.  Dead letters can be listed, retried (re-published to their
origin stream, then removed) or dropped from the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from events import metrics

ERROR_TEXT_LIMIT = 2000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    entry_id: str
    origin_stream: str
    origin_id: str
    group: str
    reason: str
    error: str
    deliveries: int
    failed_at: float
    fields: dict[str, str]
    """The original entry's fields."""


@dataclass(frozen=True, slots=True)
class Failed:
    """One entry to dead-letter."""

    stream: str
    entry_id: str
    fields: Mapping[bytes, bytes]
    deliveries: int = 1


async def dead_letter(
    redis: Redis,
    *,
    deadletter_stream: str,
    group: str,
    failed: Sequence[Failed],
    reason: str,
    error: str,
) -> None:
    """Move entries to the dead-letter stream and ack them, atomically per entry."""
    if not failed:
        return
    pipe = redis.pipeline(transaction=True)
    now = f"{time.time():.3f}"
    for item in failed:
        fields: dict[bytes | str, bytes | str] = {k: v for k, v in item.fields.items()}
        fields.update(
            {
                "dl_stream": item.stream,
                "dl_id": item.entry_id,
                "dl_group": group,
                "dl_reason": reason,
                "dl_error": error[:ERROR_TEXT_LIMIT],
                "dl_deliveries": str(item.deliveries),
                "dl_at": now,
            }
        )
        pipe.xadd(deadletter_stream, fields)
        pipe.xack(item.stream, group, item.entry_id)
    await pipe.execute()
    metrics.DEAD_LETTERS.labels(group, reason).inc(len(failed))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _parse(entry_id: bytes | str, raw: Mapping[bytes, bytes]) -> DeadLetter:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    meta = {k: fields.pop(k) for k in list(fields) if k.startswith("dl_")}
    return DeadLetter(
        entry_id=_text(entry_id),
        origin_stream=meta.get("dl_stream", ""),
        origin_id=meta.get("dl_id", ""),
        group=meta.get("dl_group", ""),
        reason=meta.get("dl_reason", ""),
        error=meta.get("dl_error", ""),
        deliveries=int(meta.get("dl_deliveries", "0") or 0),
        failed_at=float(meta.get("dl_at", "0") or 0),
        fields=fields,
    )


async def list_dead_letters(redis: Redis, deadletter_stream: str, *, count: int = 100) -> list[DeadLetter]:
    entries = await redis.xrange(deadletter_stream, count=count)
    return [_parse(entry_id, fields) for entry_id, fields in entries]


async def retry_dead_letter(redis: Redis, deadletter_stream: str, entry_id: str) -> str:
    """Re-publish a dead letter to its origin stream and remove it; returns the new id."""
    entries = await redis.xrange(deadletter_stream, entry_id, entry_id)
    if not entries:
        raise LookupError(f"no dead letter {entry_id}")
    letter = _parse(*entries[0])
    pipe = redis.pipeline(transaction=True)
    pipe.xadd(letter.origin_stream, letter.fields)
    pipe.xdel(deadletter_stream, entry_id)
    new_id, _ = await pipe.execute()
    return _text(new_id)


async def drop_dead_letter(redis: Redis, deadletter_stream: str, entry_id: str) -> DeadLetter:
    """Remove a dead letter for good; returns what was removed (for the audit trail)."""
    entries = await redis.xrange(deadletter_stream, entry_id, entry_id)
    if not entries:
        raise LookupError(f"no dead letter {entry_id}")
    await redis.xdel(deadletter_stream, entry_id)
    return _parse(*entries[0])
