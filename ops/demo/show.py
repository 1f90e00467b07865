"""What the demo prints: every action as it happens, then a summary."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

from redis.asyncio import Redis

from events import codec
from events.contract import ActionRecorded
from events.errors import MalformedEntry
from events.ids import id_time
from events.keys import KeySpace

DESCRIPTIONS = {
    "backfill_flow": "flow id recovered from the session file",
    "close_conversation": "timed-out bot run closed",
    "clear_bot_fields": "bot fields cleared on a closed chat",
    "quarantine_file": "stale session file moved to quarantine",
    "park_queue": "messages of a lost session parked",
    "restore_parked": "parked messages put back, in order",
}


START_UP_S = 1.0
"""Actions in the first second after start are the catch-up of changes made while nothing ran."""


@dataclass
class Seen:
    action: ActionRecorded
    latency_s: float | None
    """From the change (or the deadline) that caused the action to the action."""
    live: bool
    """A reaction to a change made while the roles ran (not the catch-up at start-up)."""


@dataclass
class AuditTail:
    """Follows the audit stream and prints each action."""

    redis: Redis
    keys: KeySpace
    roles_started: float = 0.0
    """Unix time the roles started: changes before it were made while nothing watched."""
    out: TextIO = sys.stdout
    started: float = field(default_factory=time.monotonic)
    seen: list[Seen] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        last = "0-0"
        while not stop.is_set():
            reply = await self.redis.xread({self.keys.audit_stream: last}, count=100, block=200)
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    last = entry_id
                    self._show(fields)

    def _show(self, fields: dict[bytes, bytes]) -> None:
        try:
            event = codec.decode(fields)
        except MalformedEntry:
            return
        if not isinstance(event, ActionRecorded) or event.outcome == "intent":
            return  # one line per action: its outcome
        changed = id_time(event.cause_id) if event.cause_id else None
        latency = event.occurred_at.timestamp() - changed if changed is not None else None
        live = event.occurred_at.timestamp() >= self.roles_started + START_UP_S
        self.seen.append(Seen(event, latency, live=live))
        took = f"{latency * 1000:7.1f} ms after the change" if latency is not None else ""
        what = DESCRIPTIONS.get(event.action, event.action)
        print(f"  +{time.monotonic() - self.started:6.2f}s  {event.outcome:<7} {what:<42} "
              f"{event.key:<24} {took}", file=self.out, flush=True)


def summary(seen: list[Seen], *, found: dict[str, int], remaining: dict[str, int],
            delivered_after_restore: int, lost_messages: int, elapsed_s: float) -> str:
    done = [s for s in seen if s.action.outcome in ("done", "planned")]
    by_action = Counter(s.action.action for s in done)
    live = sorted(s.latency_s * 1000 for s in done if s.live and s.latency_s is not None)
    catch_up = [s for s in done if not s.live]
    lines = ["", "Summary", "-------"]
    lines.append(f"found at start:   {_counts(found) or 'nothing'}")
    lines.append(f"actions taken:    {_counts(dict(by_action)) or 'none'}")
    if catch_up:
        lines.append(f"caught up:        {len(catch_up)} actions for changes made while nothing "
                     f"watched, all within {max(s.latency_s or 0 for s in catch_up):.2f} s")
    if live:
        lines.append(f"reaction time:    median {statistics.median(live):.1f} ms, max {live[-1]:.1f} ms "
                     f"(change or deadline -> action done, over {len(live)} live actions)")
    lines.append(f"left at the end:  {_counts(remaining) or 'nothing: every store agrees'}")
    lines.append(f"queue messages:   {delivered_after_restore} delivered after their session "
                 f"came back, {lost_messages} lost")
    lines.append(f"ran for:          {elapsed_s:.1f} s")
    return "\n".join(lines)


def _counts(values: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(values.items()) if count)
