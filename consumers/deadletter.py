"""The dead-letter stream: entries that could not be handled, with why.

A dead letter keeps the original entry's fields and adds ``dl_*`` fields
(origin stream, entry id, group, error, delivery count, time).  It is
written and the original acked in one MULTI, so an entry is never both lost
and acked; the dead letters of a partition's streams go to the dead-letter
stream in that partition's slot (:func:`events.keys.beside`).  Dead letters
can be listed, retried (re-published to their origin stream, then removed) or
dropped from the CLI.

Two bounds keep a flood of junk from filling Redis: a field longer than
:data:`EXCERPT_BYTES` is kept as an excerpt of that length, its full size
recorded in ``dl_truncated`` (such a letter cannot be retried: the original
is gone), and the stream is capped at ``max_len`` entries (``MAXLEN ~``;
``RECONCILER_DEADLETTER_MAX_LEN``, 0 for no cap), the oldest going first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from events import metrics
from events.keys import beside
from events.replies import text

ERROR_TEXT_LIMIT = 2000
EXCERPT_BYTES = 2048
"""Longest field value a dead letter keeps whole."""
DEFAULT_MAX_LEN = 100_000
"""Approximate cap on the dead-letter stream."""


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
    """The original entry's fields (excerpts of those named in ``truncated``)."""
    truncated: str = ""
    """``name=full size`` of each field cut to an excerpt, comma-separated."""


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
    max_len: int = DEFAULT_MAX_LEN,
) -> None:
    """Move entries to the dead-letter stream and ack them, atomically per entry: an
    entry of a partition goes to the dead-letter stream beside it (its slot)."""
    if not failed:
        return
    by_slot: dict[str, list[Failed]] = {}
    for item in failed:
        by_slot.setdefault(beside(deadletter_stream, item.stream), []).append(item)
    for stream, items in by_slot.items():
        await _dead_letter_in_slot(redis, stream, group, items, reason, error, max_len)
    metrics.DEAD_LETTERS.labels(group, reason).inc(len(failed))


async def _dead_letter_in_slot(redis: Redis, deadletter_stream: str, group: str,
                               failed: Sequence[Failed], reason: str, error: str,
                               max_len: int) -> None:
    pipe = redis.pipeline(transaction=True)
    now = f"{time.time():.3f}"
    trim: dict[str, Any] = {"maxlen": max_len, "approximate": True} if max_len > 0 else {}
    for item in failed:
        fields = _excerpt(item.fields)
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
        pipe.xadd(deadletter_stream, fields, **trim)
        pipe.xack(item.stream, group, item.entry_id)
    await pipe.execute()


def _excerpt(original: Mapping[bytes, bytes]) -> dict[bytes | str, bytes | str]:
    """The fields, each cut to :data:`EXCERPT_BYTES`; ``dl_truncated`` lists full sizes."""
    fields: dict[bytes | str, bytes | str] = {}
    cut: list[str] = []
    for name, value in original.items():
        if len(value) > EXCERPT_BYTES:
            cut.append(f"{text(name[:64])}={len(value)}")
            value = value[:EXCERPT_BYTES]
        fields[name[:EXCERPT_BYTES]] = value
    if cut:
        fields["dl_truncated"] = ",".join(cut)
    return fields



def _parse(entry_id: bytes | str, raw: Mapping[bytes, bytes]) -> DeadLetter:
    fields = {text(k): text(v) for k, v in raw.items()}
    meta = {k: fields.pop(k) for k in list(fields) if k.startswith("dl_")}
    return DeadLetter(
        entry_id=text(entry_id),
        origin_stream=meta.get("dl_stream", ""),
        origin_id=meta.get("dl_id", ""),
        group=meta.get("dl_group", ""),
        reason=meta.get("dl_reason", ""),
        error=meta.get("dl_error", ""),
        deliveries=int(meta.get("dl_deliveries", "0") or 0),
        failed_at=float(meta.get("dl_at", "0") or 0),
        fields=fields,
        truncated=meta.get("dl_truncated", ""),
    )


async def dead_letter_count(redis: Redis, streams: Sequence[str]) -> int:
    """Dead letters waiting, over ``streams`` (``KeySpace.deadletter_streams``)."""
    return sum([int(await redis.xlen(stream)) for stream in streams])


async def list_dead_letters(redis: Redis, deadletter_stream: str, *, count: int = 100) -> list[DeadLetter]:
    entries = await redis.xrange(deadletter_stream, count=count)
    return [_parse(entry_id, fields) for entry_id, fields in entries]


async def retry_dead_letter(redis: Redis, deadletter_stream: str, entry_id: str) -> str:
    """Re-publish a dead letter to its origin stream and remove it; returns the new id."""
    entries = await redis.xrange(deadletter_stream, entry_id, entry_id)
    if not entries:
        raise LookupError(f"no dead letter {entry_id}")
    letter = _parse(*entries[0])
    if letter.truncated:
        raise LookupError(f"dead letter {entry_id} keeps only an excerpt of an oversized entry "
                          f"({letter.truncated} bytes): it cannot be retried; drop it")
    pipe = redis.pipeline(transaction=True)
    pipe.xadd(letter.origin_stream, letter.fields)
    pipe.xdel(deadletter_stream, entry_id)
    new_id, _ = await pipe.execute()
    return text(new_id)


async def drop_dead_letter(redis: Redis, deadletter_stream: str, entry_id: str) -> DeadLetter:
    """Remove a dead letter for good; returns what was removed (for the audit trail)."""
    entries = await redis.xrange(deadletter_stream, entry_id, entry_id)
    if not entries:
        raise LookupError(f"no dead letter {entry_id}")
    await redis.xdel(deadletter_stream, entry_id)
    return _parse(*entries[0])
