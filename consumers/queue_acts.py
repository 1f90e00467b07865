"""The act path of group ``sessions``: park, restore and drop gateway queues, as actions.

Each change is an :class:`consumers.actions.Action` run by
:class:`consumers.actions.Actions` (intent first, one outcome; planned in a
dry run).  :meth:`QueueActs.check` settles an intent left without an outcome:

* ``park_queue``: the parked batch carries the action id (its ``cause``);
* ``restore_parked``: nothing is parked any more;
* ``drop_queue`` / ``drop_parked``: the messages are no longer where they were.
  Their content is audited in the outcome, so one taken but not audited
  (a crash in between) is settled as ``failed`` with the counts of the intent.

A drop audits the content of at most ``AUDIT_CONTENT_BYTES`` per action: the
rest goes back where it was taken from, and the next round drops it.
"""

from __future__ import annotations

from typing import Any

from consumers.actions import Action, Actions, Result, done, failed, skipped
from consumers.stores.parked_queues import (
    ParkedBatch,
    ParkedQueues,
    SessionState,
    describe_messages,
)
from events.contract import ActionRecorded, EventBase
from events.keys import KeySpace

AUDIT_CONTENT_BYTES = 128 * 1024
"""Message content per audit entry; a larger drop is made (and audited) in several actions."""
PARK, RESTORE, DROP_QUEUE, DROP_PARKED = "park_queue", "restore_parked", "drop_queue", "drop_parked"
REPORT = "report_orphan_queue"


class QueueActs:
    """Carries out the changes of one sessions handler."""

    def __init__(self, *, store: ParkedQueues, keys: KeySpace, actions: Actions) -> None:
        self.store = store
        self.keys = keys
        self.actions = actions

    def action(self, verb: str, state: SessionState, cause: EventBase | None, *,
               after: dict[str, Any], reason: str = "", origin: str = "") -> Action:
        return Action(verb=verb, key=state.session, target=self.keys.queue(state.session),
                      before={"queue": state.queue_length, "parked": state.parked_length},
                      after=after, cause=cause, reason=reason, origin=origin)

    async def park(self, state: SessionState, cause: EventBase, *, now: float) -> Result:
        async def act(action_id: str) -> Result:
            # The lease is in another slot than the queue, so the script cannot check it:
            # check it here, just before.  A session that returns after this check gets
            # its messages back from the restore that runs on its SessionStarted event.
            if await self.store.lease_exists(state.session):
                return skipped("the session is live again")
            moved = await self.store.park(state.session, now=now, cause=action_id)
            if moved == 0:
                return skipped("the queue was empty by then")
            return done({"queue": 0, "parked": state.parked_length + moved},
                        reason=f"session not live; parked {moved} messages")

        after = {"queue": 0, "parked": state.parked_length + state.queue_length}
        return await self.actions.run(self.action(PARK, state, cause, after=after), act,
                                      check=self.check)

    async def restore(self, state: SessionState, cause: EventBase | None, *, origin: str = "",
                      reason: str = "session live; parked messages back at the head") -> Result:
        async def act(_action_id: str) -> Result:
            moved = await self.store.restore(state.session)
            if moved == 0:
                return skipped("nothing was parked by then")
            return done({"queue": state.queue_length + moved, "parked": 0},
                        reason=f"{reason}: {moved} messages")

        after = {"queue": state.queue_length + state.parked_length, "parked": 0}
        action = self.action(RESTORE, state, cause, after=after, reason=reason, origin=origin)
        return await self.actions.run(action, act, check=self.check if not origin else None)

    async def drop_queue(self, state: SessionState, cause: EventBase) -> Result:
        async def act(_action_id: str) -> Result:
            items = await self.store.take_queue(state.session)
            if not items:
                return skipped("the queue was empty by then")
            kept, rest = _head_within(items, AUDIT_CONTENT_BYTES)
            if rest:
                await self.store.put_back_queue(state.session, rest)
            return _dropped(kept, "queue", state.queue_length)

        action = self.action(DROP_QUEUE, state, cause, after={"queue": 0})
        return await self.actions.run(action, act, check=self.check)

    async def drop_parked(self, state: SessionState, cutoff: float, cause: EventBase) -> Result:
        async def act(_action_id: str) -> Result:
            batches, items = await self.store.take_expired(state.session, cutoff=cutoff)
            if not items:
                return skipped("no parked batch had expired by then")
            kept, rest = _batches_within(batches, items, AUDIT_CONTENT_BYTES)
            if rest[1]:
                await self.store.put_back_parked(state.session, *rest)
            return _dropped(kept, "parked", state.parked_length)

        expired = sum(b.count for b in state.batches if b.at <= cutoff)
        action = self.action(DROP_PARKED, state, cause,
                             after={"parked": state.parked_length - expired})
        return await self.actions.run(action, act, check=self.check)

    async def report(self, state: SessionState, cause: EventBase) -> Result:
        """Policy ``report``: the queue stays; the action is recorded as skipped."""
        async def act(_action_id: str) -> Result:
            return skipped("session not live; policy report leaves the queue as it is")

        action = self.action(REPORT, state, cause, after={"queue": state.queue_length,
                                                          "parked": state.parked_length})
        return await self.actions.run(action, act)

    async def check(self, intent: ActionRecorded) -> Result | None:
        """The outcome of an intent left open, from the stores; ``None`` if not carried out."""
        state = await self.store.observe(intent.key)
        before = intent.before or {}
        if intent.action == PARK:
            batch = next((b for b in state.batches if b.cause == intent.action_id), None)
            return done(reason=f"parked {batch.count} messages") if batch is not None else None
        if intent.action == RESTORE:
            return done() if state.parked_length == 0 else None
        where, length = (("queue", state.queue_length) if intent.action == DROP_QUEUE
                         else ("parked", state.parked_length))
        if intent.action in (DROP_QUEUE, DROP_PARKED) and length < int(before.get(where, 0)):
            return failed("the process stopped between taking the messages and auditing "
                          "their content; the counts are in this entry")
        return None


def _dropped(items: list[bytes], where: str, count: int) -> Result:
    return done({where: max(0, count - len(items))},
                before={"messages": describe_messages(items), "dropped": len(items)},
                reason=f"{len(items)} messages dropped, content in 'before'")


def _head_within(items: list[bytes], limit: int) -> tuple[list[bytes], list[bytes]]:
    """The longest head of ``items`` within ``limit`` bytes (at least one) and the rest."""
    size = 0
    for n, item in enumerate(items):
        size += len(item)
        if n and size > limit:
            return items[:n], items[n:]
    return items, []


def _batches_within(batches: list[ParkedBatch], items: list[bytes], limit: int,
                    ) -> tuple[list[bytes], tuple[list[ParkedBatch], list[bytes]]]:
    """Whole batches from the oldest within ``limit`` bytes (at least one), and the rest."""
    kept, size, used = 0, 0, 0
    for n, batch in enumerate(batches):
        size += sum(len(i) for i in items[used:used + batch.count])
        if n and size > limit:
            break
        used += batch.count
        kept = n + 1
    return items[:used], (batches[kept:], items[used:])
