"""The gateway's side of the session lifecycle: leases and lifecycle events.

A gateway (the process holding WhatsApp sessions in memory) says which
sessions are live.  The protocol is three Redis commands and a stream entry,
so a gateway in any language can speak it (docs/gateway.md documents it, and
``examples/node/`` does it in JavaScript):

* **start** -- ``SET {prefix}lease:{name} <json> EX ttl``, then XADD a
  ``session.started`` event to the sessions stream;
* **heartbeat** -- ``SET {prefix}lease:{name} <json> XX EX ttl``; a nil reply
  means the lease had already expired, so it is a start again;
* **stop** -- ``DEL {prefix}lease:{name}``, then XADD ``session.stopped``.

The lease key and the stream live in different Redis Cluster slots, so they
are never written in one MULTI or script: the lease is written first and the
event second.  A gateway that dies between the two leaves a lease and no
event; its next heartbeat keeps the lease, and the sessions source reports
the lease once it runs out -- never a silent gap in the other direction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from events.contract import SessionStarted, SessionStopped
from events.ids import new_event_id
from events.keys import KeySpace, checked_session
from events.loops import spawn
from events.publisher import Publisher, Retention

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 30
HEARTBEATS_PER_TTL = 3
"""``keep_alive`` refreshes the lease this many times per TTL."""


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
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("the session lease TTL must be positive")
        self._redis: Any = redis
        self._keys = keys
        self._publisher = Publisher(redis, keys, retention)
        self.gateway = gateway
        self.ttl_s = max(1, math.ceil(ttl_s))

    def _lease_value(self) -> bytes:
        started = datetime.now(UTC).isoformat()
        return json.dumps({"gateway": self.gateway, "started_at": started}).encode()

    async def start(self, name: str) -> str:
        """Take the lease and announce the session; returns the event id."""
        checked_session(name)
        await self._redis.set(self._keys.lease(name), self._lease_value(), ex=self.ttl_s)
        event = SessionStarted(id=new_event_id(), occurred_at=datetime.now(UTC), source="gateway",
                               key=name, gateway=self.gateway, lease_ttl_s=self.ttl_s)
        await self._publisher.publish(event)
        log.info("session %s started", name, extra={"key": name, "gateway": self.gateway})
        return event.id

    async def heartbeat(self, name: str) -> bool:
        """Refresh the lease; returns ``False`` when it was gone and the session was started again."""
        checked_session(name)
        refreshed = await self._redis.set(self._keys.lease(name), self._lease_value(),
                                          ex=self.ttl_s, xx=True)
        if refreshed:
            return True
        log.warning("lease of session %s had expired; starting it again", name,
                    extra={"key": name, "gateway": self.gateway})
        await self.start(name)
        return False

    async def stop(self, name: str) -> str:
        """Drop the lease and announce the end of the session; returns the event id."""
        checked_session(name)
        await self._redis.delete(self._keys.lease(name))
        event = SessionStopped(id=new_event_id(), occurred_at=datetime.now(UTC), source="gateway",
                               key=name, gateway=self.gateway)
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
