"""The gateway's side of the session lifecycle: leases, the start handshake, events.

A gateway (the process holding WhatsApp sessions in memory) says which
sessions are live.  The protocol is one Lua script, two Redis commands and a
stream entry, so a gateway in any language can speak it (``docs/gateway.md``
prints it, and ``examples/node/`` does it in JavaScript):

* **start** -- run :data:`events.parked_scripts.START` over the lease, the
  queue, the parked list and the parked-meta hash: it sets the lease
  (``SET {prefix}lease:{queue:name} <json> EX ttl``) and puts the session's
  parked messages back at the head of its queue, oldest first, in one step;
  then XADD a ``session.started`` event to the sessions stream.  When
  something is parked, the restore is audited intent first, on the audit
  stream (the ``{events}`` slot too): ``intent`` (with its open-actions
  entry), the script, then ``done`` by :data:`events.action_log.OUTCOME_LUA`
  (one action id, from the ``session.started`` id).  With nothing parked the
  script takes the lease only, so a start with nothing to restore writes no
  audit.  Only after the script returns may the gateway drain the queue: the
  order then holds even when no reconciler runs;
* **heartbeat** -- ``SET {prefix}lease:{queue:name} <json> XX EX ttl``; a nil
  reply means the lease had already expired, so the client starts again
  (handshake included: messages parked meanwhile come back first);
* **stop** -- ``DEL`` the lease, then XADD ``session.stopped``.

The lease shares the queue's hash tag, so the handshake is one script in one
Redis Cluster slot.  The sessions stream is in another slot, so the event is
a second step: a gateway that dies between the two leaves a lease and no
event; its next heartbeat keeps the lease, and the sessions source reports
the lease once it runs out -- never a silent gap in the other direction.

Example (a gateway in Python)::

    sessions = GatewaySessions(redis, KeySpace(), gateway="gw-1", parked_retention_s=7 * 86400)
    async with sessions.keep_alive("940740243"):
        ...  # drain queue:940740243: parked messages are already back at its head
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from events.action_log import SETTLED_TTL_S, Outcomes, write_intent
from events.contract import ActionOutcome, ActionRecorded, SessionStarted, SessionStopped
from events.envelope import new_event
from events.keys import KeySpace
from events.loops import spawn
from events.parked_scripts import START
from events.publisher import Publisher, Retention

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 30
HEARTBEATS_PER_TTL = 3
"""``keep_alive`` refreshes the lease this many times per TTL."""


def restore_action_id(queue: str, started_id: str) -> str:
    """The action id of a handshake's restore: one per start (its ``session.started`` id)."""
    return hashlib.sha256(f"restore_parked|{queue}|{started_id}".encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Started:
    event_id: str
    """The id of the ``session.started`` event."""
    restored: int
    """Parked messages the handshake put back at the head of the queue."""


class GatewaySessions:
    """Start, heartbeat and stop the sessions of one gateway."""

    def __init__(
        self,
        redis: Redis,
        keys: KeySpace,
        *,
        gateway: str | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        retention: Retention | None = None,
        parked_retention_s: float | None = None,
        settled_ttl_s: float = SETTLED_TTL_S,
    ) -> None:
        """``parked_retention_s``: the reconciler's ``RECONCILER_PARKED_RETENTION_S``.

        Given, the handshake leaves batches parked longer than that where they
        are, for the reconciler to drop with their content audited; ``None``
        restores every parked message.  ``settled_ttl_s``: the reconciler's
        ``RECONCILER_SETTLED_TTL_S`` (each outcome sets its key's hash to it).
        """
        if ttl_s <= 0:
            raise ValueError("the session lease TTL must be positive")
        self._redis: Any = redis
        self._keys = keys
        self._publisher = Publisher(redis, keys, retention)
        self._outcomes = Outcomes(redis, self._publisher, keys, settled_ttl_s=settled_ttl_s)
        self.gateway = gateway
        self.ttl_s = max(1, math.ceil(ttl_s))
        self.parked_retention_s = parked_retention_s
        self._start = redis.register_script(START)

    def _lease_value(self) -> bytes:
        started = datetime.now(UTC).isoformat()
        return json.dumps({"gateway": self.gateway, "started_at": started}).encode()

    async def start(self, name: str) -> Started:
        """Take the lease, restore the parked messages, then announce the session.

        When it returns, the session's queue holds its parked messages at the
        head, oldest first, ahead of anything pushed meanwhile: the gateway
        may start draining.  A restore is audited intent first: ``intent``
        (open, as every action's: :mod:`events.action_log`), the script, then
        ``done`` (or ``skipped`` when nothing was left).  A gateway that dies
        in between leaves the intent open for the sessions group to settle
        from the stores the next time it handles the session.
        """
        event = new_event(SessionStarted, source="gateway", key=name, gateway=self.gateway,
                          lease_ttl_s=self.ttl_s)
        parked = int(await self._redis.llen(self._keys.parked(name)))
        if not parked:
            await self._handshake(name, restore=False)
            # Parked just before the lease took? (Once it exists nothing more is parked.)
            parked = int(await self._redis.llen(self._keys.parked(name)))
        restored = 0
        if parked:
            action_id = restore_action_id(self._keys.queue(name), event.id)
            await write_intent(self._redis, self._publisher, self._keys,
                               self._restore_audit(event, action_id, "intent", parked))
            restored = await self._handshake(name, restore=True)
            await self._publisher.publish(event)
            await self._outcomes.write(self._restore_audit(
                event, action_id, "done" if restored else "skipped", parked, restored))
        else:
            await self._publisher.publish(event)
        log.info("session %s started; %d parked messages back at the head of its queue", name,
                 restored, extra={"key": name, "gateway": self.gateway})
        return Started(event_id=event.id, restored=restored)

    def _restore_audit(self, started: SessionStarted, action_id: str, outcome: ActionOutcome,
                       parked: int, restored: int = 0) -> ActionRecorded:
        """A step of the handshake's restore, caused by ``session.started``."""
        if outcome == "intent":
            reason, after = f"start handshake: restore {parked} parked messages", None
        elif restored:
            reason = f"start handshake: {restored} parked messages back at the head"
            after = {"parked": parked - restored, "restored": restored}
        else:
            reason, after = "nothing to restore (restored already, or past retention)", None
        return new_event(
            ActionRecorded, source="gateway", key=started.key, cause_id=started.id,
            cause_type="session.started",
            action="restore_parked", action_id=action_id, target=self._keys.queue(started.key),
            outcome=outcome, reason=reason, before={"parked": parked}, after=after)

    async def _handshake(self, name: str, *, restore: bool) -> int:
        """The START script: the lease, and (``restore``) the parked messages back, in one step."""
        k = self._keys
        cutoff_ms = 0
        if self.parked_retention_s is not None:
            cutoff_ms = max(1, int((time.time() - self.parked_retention_s) * 1000))
        restored = await self._start(
            keys=[k.lease(name), k.queue(name), k.parked(name), k.parked_meta(name)],
            args=[self._lease_value(), self.ttl_s, cutoff_ms, "1" if restore else "0"])
        return int(restored)

    async def heartbeat(self, name: str, *, restart: bool = True) -> bool:
        """Refresh the lease; ``False`` when it was gone (lapsed, stopped or never taken).

        With ``restart`` (what :meth:`keep_alive` relies on: it knows it
        started the session) a missing lease is a start again, handshake
        included; without it nothing is written.
        """
        refreshed = await self._redis.set(self._keys.lease(name), self._lease_value(),
                                          ex=self.ttl_s, xx=True)
        if refreshed:
            return True
        if not restart:
            return False
        log.warning("lease of session %s had expired; starting it again", name,
                    extra={"key": name, "gateway": self.gateway})
        await self.start(name)
        return False

    async def stop(self, name: str) -> str:
        """Drop the lease and announce the end of the session; returns the event id."""
        await self._redis.delete(self._keys.lease(name))
        event = new_event(SessionStopped, source="gateway", key=name, gateway=self.gateway)
        await self._publisher.publish(event)
        log.info("session %s stopped", name, extra={"key": name, "gateway": self.gateway})
        return event.id

    @contextlib.asynccontextmanager
    async def keep_alive(self, name: str) -> AsyncIterator[None]:
        """Start ``name``, heartbeat it every TTL/3 while the block runs, then stop it."""
        await self.start(name)
        done = asyncio.Event()
        interval = self.ttl_s / HEARTBEATS_PER_TTL

        async def beat() -> None:
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), timeout=interval)
                if not done.is_set():
                    await self.heartbeat(name)

        # A beat in flight is never cancelled (redis-py may not return the
        # connection); the loop notices ``done`` and returns.
        task = spawn(f"gateway-heartbeat:{name}", beat, stall_after_s=self.ttl_s)
        try:
            yield
        finally:
            done.set()
            await task
            await self.stop(name)
