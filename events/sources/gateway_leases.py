"""The sessions source: expired gateway leases and discovered queues, as events.

A gateway announces starts and stops itself (:mod:`events.gateway`), but a
gateway that crashes says nothing: its lease simply runs out.  This source
turns that silence into a ``session.expired`` event, and it discovers the
outgoing queues (``queue:{session}``) that hold messages, so a queue of a
session nobody serves is noticed even when nothing else happens.

It follows "list, then watch":

1. make sure keyspace notifications are on (``CONFIG SET
   notify-keyspace-events``, adding ``K`` keyspace, ``x`` expired and ``l``
   list flags to whatever is set already);
2. subscribe (one dedicated pubsub connection, the client's own db -- the
   notifications are per database) to the lease keys and the queue keys; on a
   Redis Cluster, where each node notifies of its own keys only, one on every
   primary (:mod:`events.subscriber`), subscribed again when the primaries
   change;
3. only then list: SCAN the leases (a name seen live at the last scan whose
   lease is gone expired while nobody watched) and the queues; then publish a
   ``source.resynced`` marker;
4. watch: an ``expired`` lease becomes ``session.expired``; pushes to a queue
   are coalesced (:mod:`events.sources.queues`) into ``queue.observed``.

Steps 2-3 run again after every reconnect or restart, and a slow rescan
(``rescan_interval_s``) repeats step 3 without the marker, which also catches
notifications Redis dropped (pubsub is fire-and-forget).  Where CONFIG is
disabled (managed Redis) the source says so in one WARNING and relies on the
scans alone.  Redis reports an expiry only when it evicts the key (lazily, or
when its active cycle happens to sample it, which in a database with many keys
that carry a TTL can take minutes), so the source reads each known lease again
at its deadline (:mod:`events.sources.lease_deadlines`) and the expiry is seen
when it happens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.exceptions import NoPermissionError, ResponseError

from events import metrics, wiring
from events.contract import EventBase, Lane, SessionExpired, SourceResynced
from events.envelope import new_event
from events.grants import confirm_subscribed
from events.keys import KeySpace
from events.loops import HEARTBEATS, guarded, sleep_unless_stopped
from events.readiness import READINESS
from events.replies import text
from events.settings import Settings
from events.sources.lease_deadlines import LeaseDeadlines, read_ttls
from events.sources.queues import PUSH_EVENTS, SCAN_COUNT, SOURCE, QueueCoalescer, scan_queues
from events.subscriber import MergedPubSub, PrimariesWatch, primaries, refresh_topology

log = logging.getLogger(__name__)

LOOP = "source:sessions"
READY_FLAG = "source:sessions"
"""Not ready until the first listing of leases and queues is published."""
REQUIRED_FLAGS = "Kgxl"
"""Keyspace events (K) for expired keys (x), list commands (l) and generic ones (g: a lease's
expiry being set by a start or a heartbeat, so its deadline is known)."""
ALL_FLAGS_ALIAS = "g$lshzxetd"
"""What the ``A`` flag of ``notify-keyspace-events`` stands for."""
IDLE_WAIT_S = 1.0
"""Longest wait for a notification before the loop beats its heartbeat."""
EXPIRY_EVENTS = frozenset({b"expired", b"evicted"})
TTL_SET_EVENTS = frozenset({b"expire"})

_warned: set[str] = set()
"""The kinds of notification trouble already logged in this process (one WARNING each)."""


def merged_flags(current: str, required: str = REQUIRED_FLAGS) -> str:
    """``current`` plus whichever of ``required`` it lacks (``A`` covers most)."""
    have = set(current.replace("A", ALL_FLAGS_ALIAS))
    return current + "".join(flag for flag in required if flag not in have)


async def enable_notifications(redis: Any, *, rescan_interval_s: float) -> bool:
    """Turn on the keyspace notifications this source needs; ``False`` if Redis refuses.

    A user the ACL keeps from CONFIG gets ``True``: the operator is taken to have set the
    flags in redis.conf (docs/security.md says which).

    The first refusal in a process is logged as one WARNING; later ones are not.
    """
    try:
        reply = await redis.config_get("notify-keyspace-events")
    except NoPermissionError:
        _warn_once("config", "the Redis user may not run CONFIG (ACL), so notify-keyspace-events is taken "
                   f"as set by the operator: it must include {REQUIRED_FLAGS!r}", rescan_interval_s)
        return True
    except ResponseError as e:
        _warn_once("config", f"cannot read notify-keyspace-events ({e})", rescan_interval_s)
        return False
    try:
        current = next(iter(reply.values()), b"")
        current = text(current)
        wanted = merged_flags(current)
        if wanted != current:
            await redis.config_set("notify-keyspace-events", wanted)
            log.info("keyspace notifications set to %r (were %r)", wanted, current)
        return True
    except ResponseError as e:
        _warn_once("config", f"cannot set notify-keyspace-events ({e})", rescan_interval_s)
        return False


def _warn_once(kind: str, why: str, rescan_interval_s: float) -> None:
    """One WARNING per kind and process that notifications may not arrive, and what follows."""
    if kind not in _warned:
        _warned.add(kind)
        rescan = f"every {rescan_interval_s:g}s" if rescan_interval_s > 0 else "(turned off)"
        log.warning("%s; if notifications do not arrive, expired leases and queue pushes are "
                    "found only by the start-up scan and the slow rescan %s", why, rescan,
                    extra={"source": SOURCE})


def channel_prefix(redis: Any) -> str:
    pool = getattr(redis, "connection_pool", None)  # a cluster client has none: db 0
    db = int(pool.connection_kwargs.get("db", 0) or 0) if pool is not None else 0
    return f"__keyspace@{db}__:"


class _ReconnectWatch:
    """Notices when redis-py silently reconnects (and re-subscribes) the pubsub."""

    def __init__(self) -> None:
        self.reconnected = False

    async def on_connect(self, connection: Any) -> None:
        self.reconnected = True


class SessionsSource:
    """One process's watch over leases and queues."""

    def __init__(self, settings: Settings, redis: Any, *,
                 coalesce_window_s: float | None = None) -> None:
        self._settings = settings
        self._redis = redis
        self._keys: KeySpace = settings.keys
        self._publisher = wiring.publisher(settings, redis)
        self._coalescer = QueueCoalescer(redis, self._keys, self._publisher)
        if coalesce_window_s is not None:
            self._coalescer.window_s = coalesce_window_s
        self._channels = channel_prefix(redis)
        self._runs = 0
        self._legacy_reported: set[str] = set()
        self._deadlines = LeaseDeadlines()

    async def run(self, stop: asyncio.Event) -> None:
        """Subscribe, list, then watch until ``stop`` is set; raises on a lost connection.

        A change of a cluster's primaries is no failure: the source subscribes again at
        once, with no backoff (which, doubling, could outlast a failover)."""
        reason = "start" if self._runs == 0 else "restart"
        if self._runs:
            metrics.SOURCE_RECONNECTS.labels(SOURCE).inc()
            await refresh_topology(self._redis)  # the node lost may be a primary replaced
        self._runs += 1
        while not await self._subscribe_and_watch(stop, reason):
            log.info("the cluster's primaries changed: subscribing again", extra={"source": SOURCE})
            metrics.SOURCE_RECONNECTS.labels(SOURCE).inc()
            reason = "primaries changed"

    async def _subscribe_and_watch(self, stop: asyncio.Event, reason: str) -> bool:
        """Steps 2-4 on the primaries the client knows; ``False`` when those changed."""
        async with primaries(self._redis, self._settings.redis_url) as nodes:
            changes = PrimariesWatch(self._redis, nodes[0])  # of the primaries subscribed on
            notifying = all([await enable_notifications(
                node, rescan_interval_s=self._settings.rescan_interval_s) for node in nodes])
            merged, watch = MergedPubSub([node.pubsub() for node in nodes]), _ReconnectWatch()
            try:
                if notifying:
                    notifying = all([await self._subscribe(p) for p in merged.pubsubs])
                if notifying:
                    for pubsub in merged.pubsubs:
                        pubsub.connection.register_connect_callback(watch.on_connect)
                    merged.start()
                await self.resync(reason)
                return await self._watch(merged if notifying else None, watch, stop, nodes, changes)
            finally:
                await merged.aclose()

    async def _subscribe(self, pubsub: Any) -> bool:
        """Subscribe to the notifications; ``False`` (and one warning) if the ACL refuses."""
        patterns = (self._channels + self._keys.lease_glob, self._channels + self._keys.queue_glob)
        await pubsub.psubscribe(*patterns)
        try:
            await confirm_subscribed(pubsub, len(patterns))
        except NoPermissionError:
            rules = " ".join(f"'&{p}'" for p in patterns)
            _warn_once("subscribe", f"the Redis user may not subscribe to the keyspace notifications "
                       f"(ACL SETUSER <user> {rules})", self._settings.rescan_interval_s)
            return False
        return True

    async def _watch(self, pubsub: MergedPubSub | None, watch: _ReconnectWatch,
                     stop: asyncio.Event, nodes: list[Any], changes: PrimariesWatch) -> bool:
        """Watch until ``stop`` is set (``True``) or the primaries changed (``False``)."""
        interval = self._settings.rescan_interval_s
        next_rescan = time.monotonic() + interval if interval > 0 else float("inf")
        while not stop.is_set():
            HEARTBEATS.beat(LOOP)
            wait = min(IDLE_WAIT_S, self._coalescer.seconds_until_due(),
                       self._deadlines.seconds_until_next(),
                       max(0.0, next_rescan - time.monotonic()))
            if pubsub is None:
                await sleep_unless_stopped(stop, wait)
            else:
                message = await pubsub.get_message(timeout=wait)
                if message is not None:
                    await self._on_message(message)
            if self._coalescer.seconds_until_due() == 0:
                await self._coalescer.flush()
            await self._probe_due_leases(notifying=pubsub is not None)
            if watch.reconnected:
                watch.reconnected = False
                metrics.SOURCE_RECONNECTS.labels(SOURCE).inc()
                await self.resync("reconnect")
            if await changes.changed():
                return False
            if time.monotonic() >= next_rescan:
                next_rescan = time.monotonic() + interval
                if pubsub is not None:
                    for node in nodes:
                        await enable_notifications(node, rescan_interval_s=interval)
                await self.scan()
        await self._coalescer.flush(everything=True)  # stopping: publish what is pending
        return True

    async def _on_message(self, message: dict[str, Any]) -> None:
        channel = message.get("channel", b"")
        channel = text(channel)
        key = channel[len(self._channels):]
        data = message.get("data", b"")
        action = data if isinstance(data, bytes) else str(data).encode()
        session = self._keys.session_of_lease(key)
        if session is not None:
            if action in EXPIRY_EVENTS:
                await self._redis.srem(self._keys.leases_seen, session)
                await self._publish([self._expired(session, "lease expired")])
            elif action in TTL_SET_EVENTS:
                await self._track([session])
            return
        if action not in PUSH_EVENTS:
            return
        session = self._keys.session_of_queue(key)
        if session is None:
            metrics.INVALID_INPUTS.labels(SOURCE, "bad_session_name").inc()
            return
        self._coalescer.note(session)

    async def resync(self, reason: str) -> None:
        """List leases and queues, then publish the ``source.resynced`` marker."""
        await self.scan()
        marker = new_event(SourceResynced, source="gateway", key="sessions", reason=reason,
                           scope="sessions")
        await self._publish([marker], lane="bulk")
        READINESS.ready(READY_FLAG)
        log.info("sessions source resynced (%s)", reason, extra={"source": SOURCE})

    async def scan(self) -> None:
        """Publish expiries missed while unwatched and every non-empty queue."""
        metrics.SOURCE_RESYNCS.labels(SOURCE).inc()
        # expiries stay live (the notifier reads them there); the queue listing is bulk
        await self._publish(list(await self._scan_leases()))
        await self._publish(list(await scan_queues(self._redis, self._keys)), lane="bulk")

    async def _scan_leases(self) -> list[SessionExpired]:
        live: set[str] = set()
        async for raw in self._redis.scan_iter(match=self._keys.lease_glob, count=SCAN_COUNT):
            key = text(raw)
            session = self._keys.session_of_lease(key)
            if session is not None:
                live.add(session)
            else:
                self._report_legacy_lease(key)
        seen = {text(m)
                for m in await self._redis.smembers(self._keys.leases_seen)}
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self._keys.leases_seen)
        if live:
            pipe.sadd(self._keys.leases_seen, *sorted(live))
        await pipe.execute()
        await self._track(sorted(live))
        return [self._expired(s, "lease gone while unwatched") for s in sorted(seen - live)]

    async def _track(self, sessions: list[str]) -> None:
        """Learn when these leases run out (see :mod:`events.sources.lease_deadlines`)."""
        ttls = await read_ttls(self._redis, [self._keys.lease(s) for s in sessions])
        for session, ttl in zip(sessions, ttls, strict=True):
            self._deadlines.note(session, ttl)

    async def _probe_due_leases(self, *, notifying: bool) -> None:
        """Read the leases whose deadline came: a lapsed one is expired by the read itself, and
        its notification publishes ``session.expired``; without notifications, say it here."""
        due = self._deadlines.take_due()
        if not due:
            return
        ttls = await read_ttls(self._redis, [self._keys.lease(s) for s in due])
        gone = []
        for session, ttl in zip(due, ttls, strict=True):
            if ttl == -2:
                gone.append(session)
            else:
                self._deadlines.note(session, ttl)
        if gone and not notifying:
            await self._redis.srem(self._keys.leases_seen, *gone)
            await self._publish([self._expired(s, "lease expired") for s in gone])

    def _report_legacy_lease(self, key: str) -> None:
        """A gateway of an earlier release still writes the untagged lease name: say so once."""
        session = self._keys.session_of_legacy_lease(key)
        if session is None or session in self._legacy_reported:
            return
        self._legacy_reported.add(session)
        metrics.INVALID_INPUTS.labels(SOURCE, "legacy_lease").inc()
        log.warning("lease key %s has the name of an earlier release and is not read: session %s "
                    "counts as not live and its queue is parked; upgrade that gateway (the lease "
                    "is now %s, see docs/gateway.md)", key, session, self._keys.lease(session),
                    extra={"key": session, "source": SOURCE})

    def _expired(self, session: str, why: str) -> SessionExpired:
        log.info("session %s: %s", session, why, extra={"key": session, "source": SOURCE})
        return new_event(SessionExpired, source="gateway", key=session)

    async def _publish(self, events: list[EventBase], *, lane: Lane = "live") -> None:
        """Publish; the listing of leases and queues goes to the bulk lane."""
        if events:
            await self._publisher.publish_many(events, lane=lane)
            metrics.SOURCE_LAST_EVENT.labels(SOURCE).set(time.time())


async def run_sessions_source(settings: Settings, redis: Any, stop: asyncio.Event) -> None:
    """The ``sessions`` role: watch leases and queues until ``stop`` is set."""
    source = SessionsSource(settings, redis)
    with READINESS.flagged(READY_FLAG, "first listing of leases and queues not published yet"):
        await guarded(LOOP, lambda: source.run(stop), stall_after_s=max(60.0, 10 * IDLE_WAIT_S),
                      stop=stop)
