"""``reconciler dlq list|retry ID|drop ID``: the dead-letter stream, from the CLI.

``retry`` re-publishes the entry to its origin stream (the consumers see it
again) and removes the dead letter; ``drop`` removes it for good.  Both are
written to the audit stream by the operator, ``drop`` with the whole entry in
``before`` so it can be put back; ``--dry-run`` records the planned action
and changes nothing.

With partitioned streams (``RECONCILER_STREAM_PARTITIONS``) each partition has
its dead letters in its own stream (in its slot, since a dead letter is written
and acked in one MULTI); ``list`` merges them oldest first and shows an id as
``ID@N`` for partition N, which ``retry`` and ``drop`` take back.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from consumers.actions import Action, Actions, Result, done
from consumers.deadletter import (
    DeadLetter,
    drop_dead_letter,
    list_dead_letters,
    retry_dead_letter,
)
from events.ids import new_event_id
from events.keys import KeySpace, label_of
from events.replies import text
from events.settings import Settings
from ops.runtime_env import open_environment, settings_from_args
from ops.tables import emit

ENTRY_ID = re.compile(r"^([0-9]{1,20}-[0-9]{1,20})(@[0-9]{1,4})?$")
LIST_COLUMNS = ("entry_id", "group", "type", "key", "reason", "deliveries", "failed_at", "error")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("dlq", help="list, retry or drop dead letters")
    actions = parser.add_subparsers(dest="dlq_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the dead letters, oldest first")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    for name, summary in (("retry", "re-publish to its origin stream and remove it"),
                          ("drop", "remove it for good (audited, with the entry)")):
        sub = actions.add_parser(name, help=summary)
        sub.add_argument("entry_id", metavar="ID", help="the dead letter's id, as `dlq list` shows it")
        sub.add_argument("--dry-run", action="store_true", help="audit the plan, change nothing")
    parser.set_defaults(handler=run)


def row(letter: DeadLetter, stream: str) -> dict[str, Any]:
    return {"entry_id": f"{letter.entry_id}{label_of(stream)}", "group": letter.group,
            "type": letter.fields.get("type", ""), "key": letter.fields.get("key", ""),
            "reason": letter.reason, "deliveries": letter.deliveries,
            "failed_at": datetime.fromtimestamp(letter.failed_at, UTC), "error": letter.error,
            "origin": f"{letter.origin_stream} {letter.origin_id}"}


async def find(redis: Redis, keys: KeySpace, ref: str) -> tuple[str, str, dict[str, str]]:
    """The dead-letter stream, entry id and fields (``dl_*`` included) of one dead letter,
    named as ``dlq list`` shows it."""
    match = ENTRY_ID.match(ref)
    if not match:
        raise ValueError(f"not a stream entry id: {ref[:40]!r} (expected e.g. 1714564800000-0)")
    entry_id, label = match.group(1), match.group(2) or ""
    for stream in keys.deadletter_streams:
        if label_of(stream) == label:
            entries = await redis.xrange(stream, entry_id, entry_id)
            if entries:
                return stream, entry_id, {text(k): text(v) for k, v in entries[0][1].items()}
    raise LookupError(f"no dead letter {ref}")


async def listing(redis: Redis, keys: KeySpace, limit: int) -> list[dict[str, Any]]:
    """The oldest ``limit`` dead letters over every dead-letter stream, oldest first."""
    rows = [(letter.failed_at, row(letter, stream)) for stream in keys.deadletter_streams
            for letter in await list_dead_letters(redis, stream, count=limit)]
    return [r for _, r in sorted(rows, key=lambda pair: pair[0])[:limit]]



async def act(redis: Redis, settings: Settings, action: str, entry_id: str, dry_run: bool,
              ) -> dict[str, Any]:
    """Retry or drop one dead letter (or, in a dry run, only audit the plan)."""
    stream, own_id, fields = await find(redis, settings.keys, entry_id)
    result: dict[str, Any] = {"action": action, "entry_id": entry_id, "dry_run": dry_run,
                              "origin_stream": fields.get("dl_stream", "")}

    async def act(_action_id: str) -> Result:
        if action == "retry":
            result["new_id"] = await retry_dead_letter(redis, stream, own_id)
        else:
            await drop_dead_letter(redis, stream, own_id)
        return done({k: v for k, v in result.items() if k in ("origin_stream", "new_id")})

    executor = Actions.for_settings(redis, settings, source="operator", dry_run=dry_run)
    await executor.run(Action(
        verb=f"dlq_{action}", target=f"{stream} {own_id}",
        key=f"deadletter/{entry_id}", reason="operator request", origin=new_event_id(),
        before=fields if action == "drop" else None,
        after={"origin_stream": result["origin_stream"]}), act)
    return result


async def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args.config)
    keys = settings.keys
    async with open_environment(settings, need_pg=False) as env:
        if args.dlq_action == "list":
            emit({"dead_letters": await listing(env.redis, keys, args.limit)}, as_json=args.json,
                 columns={"dead_letters": LIST_COLUMNS})
            return 0
        result = await act(env.redis, settings, args.dlq_action, args.entry_id, args.dry_run)
    emit(result, as_json=args.json)
    return 0
